"""What a real ``tensorrt`` module offers, in the kinds of tests/trt_api/surface.py.

Runs inside the subprocess that imports the real bindings (so it imports nothing from rescompile
or the stand-ins). pybind11 facts it relies on: a ``def_property`` / ``def_readwrite`` member is
a ``property`` on the class (``fset`` is None for ``def_property_readonly``); a ``py::enum_`` is
a class with a ``__members__`` mapping whose members are instances of it; ``.def`` methods are
``instancemethod`` objects (callable); the package ``__init__.py`` adds plain Python functions.
"""

from __future__ import annotations

import inspect
from typing import Any

_MISSING = object()


def _is_enum(obj: Any) -> bool:
    return isinstance(obj, type) and isinstance(getattr(obj, "__members__", None), dict)


def _is_enum_value(obj: Any) -> bool:
    return _is_enum(type(obj)) and any(obj is m or obj == m for m in type(obj).__members__.values())


def kind_of(obj: Any, *, member: bool) -> str:
    """The surface kind of ``obj``: found on a class (``member``) or on the module."""
    if isinstance(obj, property):
        return "property" if obj.fset is not None else "readonly"
    if isinstance(obj, type):
        return "enum" if _is_enum(obj) else "class"
    if _is_enum_value(obj):
        return "value"
    if callable(obj) or isinstance(obj, (staticmethod, classmethod)):
        return "method" if member else "function"
    return "readonly" if not member else "attribute"


def lookup(module: Any, path: str) -> Any:
    """The object at dotted ``path``; a class member as stored (its descriptor), not as read."""
    obj = module
    for part in path.split("."):
        if isinstance(obj, type):
            obj = inspect.getattr_static(obj, part, _MISSING)
        else:
            obj = getattr(obj, part, _MISSING)
        if obj is _MISSING:
            return _MISSING
    return obj


def observe(module: Any, paths: list[str]) -> dict[str, Any]:
    """{"kinds": {path: kind or None}, "ints": {path: int}, "members": {enum path: [names]}}."""
    kinds: dict[str, str | None] = {}
    ints: dict[str, int] = {}
    members: dict[str, list[str]] = {}
    for path in paths:
        obj = lookup(module, path)
        if obj is _MISSING:
            kinds[path] = None
            continue
        kinds[path] = kind_of(obj, member="." in path)
        if kinds[path] == "value":
            ints[path] = int(obj)
        elif kinds[path] == "enum":
            members[path] = list(obj.__members__)
    return {"kinds": kinds, "ints": ints, "members": members}


def _split_top(text: str) -> list[str]:
    """Split a pybind parameter list on the commas outside brackets."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "([<{":
            depth += 1
        elif ch in ")]>}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if text[start:].strip():
        parts.append(text[start:])
    return [p.strip() for p in parts]


def signatures(obj: Any, name: str) -> list[list[list]]:
    """The overloads pybind11 wrote into a method's docstring: each a list of [param, has default]
    (without self). A docstring without a signature line (a plain Python function) gives []."""
    import re

    out = []
    for line in (getattr(obj, "__doc__", None) or "").splitlines():
        match = re.match(rf"\s*(?:\d+\.\s*)?{re.escape(name)}\((.*)\)\s*->", line)
        if not match or match.group(1).startswith("*args"):
            continue
        params = []
        for part in _split_top(match.group(1)):
            pname = part.split(":", 1)[0].split("=", 1)[0].strip()
            if pname != "self":
                params.append([pname, " = " in part or part.rstrip().endswith("=None")])
        out.append(params)
    return out
