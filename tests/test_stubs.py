"""The .pyi stubs must describe the runtime API: every stubbed name exists at
runtime, and every public runtime name is stubbed."""

import ast
import importlib
import pathlib

import pytest

import spead2

PKG = pathlib.Path(spead2.__file__).parent
MODULES = {
    "spead2": PKG / "__init__.pyi",
    "spead2.recv": PKG / "recv" / "__init__.pyi",
    "spead2.recv.asyncio": PKG / "recv" / "asyncio.pyi",
    "spead2.send": PKG / "send" / "__init__.pyi",
    "spead2.send.asyncio": PKG / "send" / "asyncio.pyi",
}


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


@pytest.mark.parametrize("module_name", sorted(MODULES))
def test_stub_matches_runtime(module_name):
    path = MODULES[module_name]
    assert path.exists(), f"missing stub {path}"
    module = importlib.import_module(module_name)
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
        public = {n for n in dir(module) if not n.startswith("_")}
        submodules = {"recv", "send", "numba", "tools", "asyncio", "prometheus", "place"}
        missing = public - set(names) - submodules
        assert not missing, f"public names of {module_name} missing from its stub: {sorted(missing)}"


def test_version():
    assert isinstance(spead2.__version__, str) and spead2.__version__[0].isdigit()
