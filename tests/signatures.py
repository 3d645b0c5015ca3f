"""Call signatures as comparable data, from three sources: a stub file
(:func:`stub_functions`, via :mod:`ast`), a Python function
(:mod:`inspect`) and a pybind11 function (the signature lines pybind11 writes
at the top of its docstring: pybind11 functions have no
``__text_signature__``, so :func:`inspect.signature` cannot read them).

A signature is a tuple of :class:`Param` (``self``/``cls`` left out); a
callable has one signature per overload.  Used by ``test_stubs.py``; imports
nothing from spead2, so it can also describe the reference's objects.
"""

from __future__ import annotations

import ast
import inspect
import re
from typing import NamedTuple, Optional

POSITIONAL_ONLY = "positional-only"
POSITIONAL = "positional"
VAR_POSITIONAL = "*args"
KEYWORD_ONLY = "keyword-only"
VAR_KEYWORD = "**kwargs"

#: A stub's ``= ...``: the parameter has a default, its value is not stated.
UNSTATED = "..."


class Param(NamedTuple):
    name: str
    kind: str
    #: None: required; UNSTATED; else the default as source text (a stub's
    #: expression, or the repr of the runtime value)
    default: Optional[str]
    annotated: bool

    def describe(self) -> str:
        text = {VAR_POSITIONAL: "*", VAR_KEYWORD: "**"}.get(self.kind, "") + self.name
        if self.kind == KEYWORD_ONLY:
            text = "kw:" + text
        elif self.kind == POSITIONAL_ONLY:
            text = "posonly:" + text
        if self.default is not None:
            text += "=" + self.default
        return text


def describe(signature) -> str:
    return "(" + ", ".join(p.describe() for p in signature) + ")"


def _drop_first(params, drop: bool):
    """Leave out the instance (or class) parameter of a method."""
    if drop and params and params[0].kind in (POSITIONAL, POSITIONAL_ONLY):
        return params[1:]
    return params


# ----------------------------------------------------------------- stubs

def _stub_default(node) -> str:
    if isinstance(node, ast.Constant) and node.value is Ellipsis:
        return UNSTATED
    try:
        return repr(ast.literal_eval(node))
    except ValueError:
        return ast.unparse(node)


def stub_signature(func: ast.FunctionDef, in_class: bool):
    a = func.args
    params = []
    positional = list(a.posonlyargs) + list(a.args)
    defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
    for i, (arg, default) in enumerate(zip(positional, defaults)):
        kind = POSITIONAL_ONLY if i < len(a.posonlyargs) else POSITIONAL
        params.append(Param(arg.arg, kind, None if default is None else _stub_default(default),
                            arg.annotation is not None))
    if a.vararg:
        params.append(Param(a.vararg.arg, VAR_POSITIONAL, None, a.vararg.annotation is not None))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        params.append(Param(arg.arg, KEYWORD_ONLY, None if default is None else _stub_default(default),
                            arg.annotation is not None))
    if a.kwarg:
        params.append(Param(a.kwarg.arg, VAR_KEYWORD, None, a.kwarg.annotation is not None))
    return tuple(_drop_first(params, in_class and "staticmethod" not in _decorators(func)))


def _decorators(func) -> set:
    return {ast.unparse(d) for d in func.decorator_list}


def stub_functions(tree: ast.Module):
    """{qualified name: [signature per overload]} for every function and
    method in the stub (nested classes included); properties are left out."""
    out: dict = {}

    def visit(body, prefix, in_class):
        for node in body:
            if isinstance(node, ast.ClassDef):
                visit(node.body, prefix + node.name + ".", True)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                decorators = _decorators(node)
                if "property" in decorators or any(d.endswith((".setter", ".deleter")) for d in decorators):
                    continue
                out.setdefault(prefix + node.name, []).append(stub_signature(node, in_class))

    visit(tree.body, "", False)
    return out


# --------------------------------------------------------------- runtime

_KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: POSITIONAL_ONLY,
    inspect.Parameter.POSITIONAL_OR_KEYWORD: POSITIONAL,
    inspect.Parameter.VAR_POSITIONAL: VAR_POSITIONAL,
    inspect.Parameter.KEYWORD_ONLY: KEYWORD_ONLY,
    inspect.Parameter.VAR_KEYWORD: VAR_KEYWORD,
}


def _split_top_level(text: str):
    """Split at commas outside brackets and quotes."""
    parts, current, depth, quote = [], [], 0, None
    for ch in text:
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{<":
            depth += 1
        elif ch in ")]}>":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def _parameter_text(line: str) -> str:
    """The text between the outer parentheses of ``name(...) -> ret``."""
    start = line.index("(")
    depth, quote = 0, None
    for i in range(start, len(line)):
        ch = line[i]
        if quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                return line[start + 1:i]
    raise ValueError(f"unbalanced signature line: {line!r}")


def parse_pybind11_line(line: str, in_class: bool):
    params = []
    kind = POSITIONAL
    for part in _split_top_level(_parameter_text(line)):
        if part == "*":
            kind = KEYWORD_ONLY
            continue
        if part == "/":
            params = [p._replace(kind=POSITIONAL_ONLY) for p in params]
            continue
        if part.startswith("**"):
            params.append(Param(part[2:].split(":")[0], VAR_KEYWORD, None, True))
            continue
        if part.startswith("*"):
            params.append(Param(part[1:].split(":")[0], VAR_POSITIONAL, None, True))
            kind = KEYWORD_ONLY
            continue
        name, _, rest = part.partition(":")
        _, eq, default = rest.partition(" = ")
        params.append(Param(name.strip(), kind, default.strip() if eq else None, bool(rest)))
    # pybind11 names the instance parameter "self"; static methods have none.
    return tuple(_drop_first(params, in_class and bool(params) and params[0].name == "self"))


def pybind11_signatures(func, in_class: bool):
    """The overloads of a pybind11 function, from its docstring, each in
    its :func:`python_forms`."""
    doc = func.__doc__ or ""
    lines = doc.splitlines()
    if len(lines) >= 2 and lines[1].strip() == "Overloaded function.":
        sigs = []
        for line in lines[2:]:
            m = re.match(r"^(\d+)\. (\S+\(.*)$", line)
            if m:
                sigs.extend(python_forms(parse_pybind11_line(m.group(2), in_class)))
        return sigs
    return python_forms(parse_pybind11_line(lines[0], in_class))


def is_pybind11_function(obj) -> bool:
    doc = getattr(obj, "__doc__", None) or ""
    name = getattr(obj, "__name__", None)
    return (
        type(obj).__name__ in ("builtin_function_or_method", "instancemethod", "method")
        and name is not None
        and doc.startswith(name + "(")
    )


def runtime_signatures(obj, in_class: bool, static: bool = False):
    """[signature per overload] of a runtime callable; @a in_class: a
    method looked up on its class (@a static: a staticmethod)."""
    if is_pybind11_function(obj):
        return pybind11_signatures(obj, in_class)
    sig = inspect.signature(obj)
    params = []
    for p in sig.parameters.values():
        default = None if p.default is inspect.Parameter.empty else repr(p.default)
        params.append(Param(p.name, _KINDS[p.kind], default, p.annotation is not inspect.Parameter.empty))
    # A classmethod seen through its class is bound: its cls is gone already.
    drop = in_class and not static and not inspect.ismethod(obj)
    return [tuple(_drop_first(params, drop))]


def is_passthrough(signatures) -> bool:
    """``(*args, **kwargs)``: a wrapper that forwards its arguments."""
    return len(signatures) == 1 and [p.kind for p in signatures[0]] == [VAR_POSITIONAL, VAR_KEYWORD]


# ------------------------------------------------------------ comparison

def python_forms(signature):
    """The signature as Python can write it.  pybind11 allows a required
    positional parameter after one with a default (``UdpStream(thread_pool,
    endpoints, config=..., buffer_size=..., ttl)``); a stub writes that as two
    overloads: everything up to the last required parameter positional and
    required, or the required ones (and what follows them) keyword-only."""
    positional = [i for i, p in enumerate(signature) if p.kind in (POSITIONAL, POSITIONAL_ONLY)]
    first_default = next((i for i in positional if signature[i].default is not None), None)
    late = [i for i in positional if first_default is not None and i > first_default
            and signature[i].default is None]
    if not late:
        return [tuple(signature)]
    last_required = late[-1]
    all_positional = tuple(
        p._replace(default=None) if i <= last_required else p for i, p in enumerate(signature))
    keyword = tuple(
        p._replace(kind=KEYWORD_ONLY) if i >= late[0] and p.kind == POSITIONAL else p
        for i, p in enumerate(signature))
    return [all_positional, keyword]


def defaults_match(stub: Optional[str], runtime: Optional[str]) -> bool:
    """Whether a stub's default agrees with a runtime default."""
    if stub is None or runtime is None:
        return stub is None and runtime is None
    if stub == UNSTATED or stub == runtime:
        return True
    # An enum member: the stub's ``RateMethod.AUTO`` against the runtime's
    # ``<RateMethod.AUTO: 2>``.
    if re.fullmatch(r"[A-Za-z_][\w.]*", stub):
        tail = ".".join(stub.split(".")[-2:])
        return re.search(r"\b" + re.escape(tail) + r"\b", runtime) is not None
    return False


def same_shape(a, b, compare_defaults=True) -> bool:
    """Same names, kinds and presence of defaults (and agreeing defaults)."""
    if len(a) != len(b):
        return False
    for p, q in zip(a, b):
        if (p.name, p.kind) != (q.name, q.kind):
            return False
        if (p.default is None) != (q.default is None):
            return False
        if compare_defaults and not defaults_match(p.default, q.default):
            return False
    return True


def unmatched(stub_sigs, other_sigs, compare_defaults=True):
    """(stub overloads with no counterpart, other overloads with none), the
    overloads paired in any order."""
    left = list(other_sigs)
    missing = []
    for sig in stub_sigs:
        for i, other in enumerate(left):
            if same_shape(sig, other, compare_defaults):
                del left[i]
                break
        else:
            missing.append(sig)
    return missing, left
