"""The .pyi stubs must describe the runtime API.

* names: every stubbed name exists at runtime, and every public runtime name
  is stubbed;
* signatures: every stubbed function and method has, at runtime, the same
  parameters (names, positional or keyword-only, which have defaults, and the
  default values the stub states), overload for overload; every parameter is
  annotated;
* the reference: where the reference's stubs (shipped in its wheel) describe
  the same function, the parameters agree too, except for the differences
  listed in REFERENCE_DIFFERENCES (each with its reason; see
  doc/differences.rst).
"""

import ast
import importlib
import inspect
import pathlib

import pytest

import spead2
from signatures import describe, is_passthrough, runtime_signatures, stub_functions, unmatched

PKG = pathlib.Path(spead2.__file__).parent
MODULES = {
    "spead2": "__init__.pyi",
    "spead2.recv": "recv/__init__.pyi",
    "spead2.recv.asyncio": "recv/asyncio.pyi",
    "spead2.recv.numba": "recv/numba.pyi",
    "spead2.recv.numba_place": "recv/numba_place.pyi",
    "spead2.recv.place": "recv/place.pyi",
    "spead2.send": "send/__init__.pyi",
    "spead2.send.asyncio": "send/asyncio.pyi",
    "spead2.numba": "numba.pyi",
}
NEEDS_NUMBA = {"spead2.numba", "spead2.recv.numba", "spead2.recv.numba_place"}

#: Stubbed callables whose runtime signature cannot be read.
UNREADABLE = {
    # A numba intrinsic: jitted code calls it as intp_to_voidptr(src); the
    # Python object is numba's dispatcher (its function takes typingctx too).
    "spead2.numba.intp_to_voidptr",
}

#: Python wrappers written (*args, **kwargs) that pass their arguments on to
#: another method of their class than the one of the same name further along
#: the MRO (which is what an (*args, **kwargs) method is checked against).
FORWARDS = {
    # connect(...) runs cls(...) in an executor
    "spead2.send.asyncio.TcpStream.connect": "__init__",
}

#: Where our stubs' parameters differ from the reference's stubs, and why
#: (doc/differences.rst, "Signatures and stubs").
REFERENCE_DIFFERENCES = {
    "spead2.Flavour.__init__":
        "every argument has a default here (a Python class); the reference's binding has two forms, "
        "(version, item_pointer_bits, heap_address_bits, bug_compat=0) and ()",
    "spead2.recv.ChunkRingStream.__init__":
        "(thread_pool, config=StreamConfig(), chunk_stream_config, data_ringbuffer, free_ringbuffer) in "
        "both bindings; a stub can only write that as two overloads (the reference's stub omits the default)",
    "spead2.recv.ChunkStreamRingGroup.emplace_back":
        "config defaults to StreamConfig() here (doc/recv-group.rst; the reference requires it): two "
        "overloads, as for ChunkRingStream",
    "spead2.recv.StreamStats.__getitem__": "a Python method here: one signature for an index or a name",
    "spead2.recv.StreamStats.__setitem__": "a Python method here: one signature for an index or a name",
    "spead2.recv.StreamStats.get": "a Python method here: its parameters are called name and default",
    "spead2.send.Heap.__init__":
        "flavour defaults to Flavour() in both packages; the reference's stub omits the default",
    "spead2.send.HeapGenerator.add_to_heap": "takes item_group too (an extension)",
    "spead2.send.HeapReferenceList.__getitem__":
        "the parameter is called slice (the reference's binding leaves it unnamed: arg0)",
    "spead2.send.TcpStream.__init__": "takes connect_timeout (keyword only; an extension)",
    "spead2.send.asyncio.TcpStream.connect":
        "takes connect_timeout (keyword only; an extension), and, as it passes its arguments to the "
        "constructor, the socket form too",
}


def _stub(module_name):
    return PKG / MODULES[module_name]


def _import(module_name):
    if module_name in NEEDS_NUMBA:
        pytest.importorskip("numba")
    return importlib.import_module(module_name)


def stub_names(tree):
    """Top-level names and, for classes, their member names: (name, is_annotation)."""
    out = {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            members = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    members.add((item.name, False))
                elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                    members.add((item.target.id, True))
            out[node.name] = members
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            out[node.name] = set()
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out[node.target.id] = set()
    return out


def resolve(module, qualname):
    """The runtime object of a stub's qualified name, and its class (None
    for a module-level function)."""
    owner = None
    obj = module
    for part in qualname.split("."):
        owner, obj = obj, getattr(obj, part)
    return obj, (owner if isinstance(owner, type) else None)


def _is_static(cls, name):
    # __new__ is stored as a staticmethod but takes the class first, as stubs write it.
    return name != "__new__" and isinstance(inspect.getattr_static(cls, name), staticmethod)


def runtime_of(full, obj, cls, definer=None):
    """The runtime signatures of a stubbed callable.  A method written
    (*args, **kwargs) is described by the method it forwards to: the same
    name further along the MRO of `cls` (or the method FORWARDS names)."""
    name = full.rsplit(".", 1)[1]
    sigs = runtime_signatures(obj, cls is not None, cls is not None and _is_static(cls, name))
    if cls is None or not is_passthrough(sigs):
        return sigs
    target = FORWARDS.get(full, name)
    mro = cls.__mro__
    if definer is None and target == name:
        definer = next(k for k in mro if name in vars(k))
    start = mro.index(definer) + 1 if definer is not None else 0
    for klass in mro[start:]:
        if target in vars(klass):
            return runtime_of(f"{full.rsplit('.', 1)[0]}.{target}", getattr(klass, target), cls, klass)
    return sigs


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_stub_matches_runtime(module_name):
    path = _stub(module_name)
    assert path.exists(), f"missing stub {path}"
    module = _import(module_name)
    names = stub_names(ast.parse(path.read_text()))
    for name, members in names.items():
        assert hasattr(module, name), f"{module_name}.{name} is in the stub but not at runtime"
        obj = getattr(module, name)
        compiled = type(obj).__name__ == "pybind11_type"
        for member, annotation in members:
            if annotation and not compiled:
                continue  # an instance attribute of a pure-Python class
            assert hasattr(obj, member), f"{module_name}.{name}.{member} is stubbed but missing"
    if module_name != "spead2.recv.asyncio":
        public = getattr(module, "__all__", None)
        if public is None:
            public = [n for n in dir(module) if not n.startswith("_")]
        public = {n for n in public if not n.startswith("_")}
        submodules = {"recv", "send", "numba", "tools", "asyncio", "prometheus", "place", "numba_place"}
        missing = public - set(names) - submodules
        if module_name in NEEDS_NUMBA:
            missing -= {"types", "numba", "cgutils", "intrinsic", "Record", "ir"}
        assert not missing, f"public names of {module_name} missing from its stub: {sorted(missing)}"


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_stub_signatures_match_runtime(module_name):
    module = _import(module_name)
    functions = stub_functions(ast.parse(_stub(module_name).read_text()))
    problems = []
    for qualname, stub_sigs in sorted(functions.items()):
        full = f"{module_name}.{qualname}"
        for sig in stub_sigs:
            unannotated = [p.name for p in sig if not p.annotated]
            if unannotated:
                problems.append(f"{full}: parameters without a type in the stub: {unannotated}")
        if full in UNREADABLE:
            continue
        obj, cls = resolve(module, qualname)
        runtime = runtime_of(full, obj, cls)
        missing, extra = unmatched(stub_sigs, runtime)
        for sig in missing:
            problems.append(f"{full}: stub {describe(sig)} has no runtime counterpart")
        for sig in extra:
            problems.append(f"{full}: runtime {describe(sig)} is not in the stub")
    assert not problems, "\n".join(problems)


def _reference_stub_dir():
    import refvenv

    python = refvenv.reference_python()
    if python is None:
        pytest.skip(refvenv.unavailable_reason())
    found = sorted(refvenv.venv_dir().glob("lib/python*/site-packages/spead2/__init__.pyi"))
    if not found:
        pytest.skip("the reference's wheel has no stubs")
    return found[0].parent


def test_stub_signatures_match_reference_stubs():
    ref_dir = _reference_stub_dir()
    differences = {}
    for module_name, rel in sorted(MODULES.items()):
        ref_path = ref_dir / rel
        if not ref_path.exists():
            continue
        ours = stub_functions(ast.parse(_stub(module_name).read_text()))
        theirs = stub_functions(ast.parse(ref_path.read_text()))
        for qualname in sorted(set(ours) & set(theirs)):
            # The reference's stubs write "= ..." for nearly every default, so
            # only names, kinds and the presence of defaults are compared.
            missing, extra = unmatched(ours[qualname], theirs[qualname], compare_defaults=False)
            if missing or extra:
                differences[f"{module_name}.{qualname}"] = (
                    "ours: " + "; ".join(describe(s) for s in missing)
                    + " | reference: " + "; ".join(describe(s) for s in extra)
                )
    unexplained = {k: v for k, v in differences.items() if k not in REFERENCE_DIFFERENCES}
    assert not unexplained, "\n".join(f"{k}: {v}" for k, v in sorted(unexplained.items()))
    stale = set(REFERENCE_DIFFERENCES) - set(differences)
    assert not stale, f"listed as differences but the stubs agree now: {sorted(stale)}"


def test_version():
    assert isinstance(spead2.__version__, str) and spead2.__version__[0].isdigit()
