"""Compare tests/trt_api/surface.py (and the stand-ins made from it) with what a real module offers.

Pure functions over the rows and an observation (introspect.observe run on the real module), so
the comparison itself is tested with deliberately wrong rows.
"""

from __future__ import annotations

import re
from typing import Any

# Enums whose surface rows list only the members rescompile/Polygraphy touch (surface.py says
# "LayerType lists only the members touched"); every other listed enum is complete.
PARTIAL_ENUMS = frozenset({"LayerType"})


def expected_kinds(rows: list[tuple], version: str) -> dict[str, str | None]:
    """path -> kind in ``version``, None for a path whose rows all exclude ``version``."""
    out: dict[str, str | None] = {}
    for path, kind, versions, *_ in rows:
        if version in versions:
            out[path] = kind
        else:
            out.setdefault(path, None)
    return out


def touched_paths(polygraphy_touches: list[tuple], rescompile_touches: list[tuple]) -> set[str]:
    """The paths rescompile and Polygraphy use, with every container above them."""
    out: set[str] = set()
    for path, *_ in [*polygraphy_touches, *rescompile_touches]:
        parts = path.split(".")
        out.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
    return out


def _kind_ok(expected: str, real: str | None) -> bool:
    if expected == "abstract":
        # A pure virtual the Python subclass must define: the base either does not bind it
        # (IInt8LegacyCalibrator.get_quantile) or binds a method that, unless overridden, ends in
        # the trampoline's "pure virtual" error (checked by the calibrator test) or a doc stub.
        return real in (None, "method")
    return real == expected


def surface_mismatches(
    rows: list[tuple], enum_ints: dict[str, int], version: str, observed: dict[str, Any], *,
    only: set[str] | None = None, absent_too: bool = True,
) -> list[str]:
    """Every way the rows for ``version`` differ from ``observed`` (an introspect.observe result).

    ``only``: check these paths alone; ``absent_too``: also check that paths the rows exclude are
    absent (off for a real release that surface.py does not describe row by row)."""
    kinds, ints, members = observed["kinds"], observed["ints"], observed.get("members", {})
    problems: list[str] = []
    expected = expected_kinds(rows, version)
    for path, kind in sorted(expected.items()):
        if only is not None and path not in only:
            continue
        if path not in kinds:
            problems.append(f"{path}: not observed (the checker was not asked about it)")
            continue
        real = kinds[path]
        if kind is None:
            if absent_too and real is not None:
                problems.append(f"{path}: surface.py lists it absent in {version}, the real module has it ({real})")
        elif real is None and kind != "abstract":
            problems.append(f"{path}: surface.py lists it ({kind}) in {version}, the real module lacks it")
        elif not _kind_ok(kind, real):
            problems.append(f"{path}: surface.py says {kind}, the real module has {real}")
    for path, value in sorted(enum_ints.items()):
        if (only is None or path in only) and path in ints and ints[path] != value:
            problems.append(f"{path}: ENUM_INTS says {value}, the real module has {ints[path]}")
        elif (only is None or path in only) and path in kinds and kinds[path] is None:
            problems.append(f"{path}: ENUM_INTS lists a value, the real module lacks the member")
    if absent_too:
        for enum, real_members in sorted(members.items()):
            if expected.get(enum) != "enum" or enum in PARTIAL_ENUMS or (only is not None and enum not in only):
                continue
            listed = {p[len(enum) + 1:] for p, k in expected.items()
                      if k == "value" and p.startswith(enum + ".") and "." not in p[len(enum) + 1:]}
            if not listed:  # an alias of an enum listed elsewhere (Logger.Severity is ILogger.Severity)
                continue
            extra = sorted(set(real_members) - listed)
            if extra:
                problems.append(f"{enum}: listed as complete, the real enum also has {', '.join(extra)}")
    return problems


# -- the stand-in side ---------------------------------------------------------------------------

def standin_kind(trt: Any, path: str) -> str | None:
    """The kind the stand-in module offers at ``path`` (None: it offers nothing there). A generated
    class keeps its methods in its own __dict__ and its attributes in ``_trt_props``."""
    from tests.trt_api.standin import EnumValue, StrictObject

    missing = object()
    obj: Any = trt
    parts = path.split(".")
    for i, part in enumerate(parts):
        if isinstance(obj, type) and issubclass(obj, StrictObject):
            props = obj.__dict__.get("_trt_props", {})
            if part in props:
                return props[part] if i == len(parts) - 1 else None
            obj = obj.__dict__.get(part, missing)
        elif isinstance(obj, type):  # a generated enum: its members are class attributes
            obj = obj.__dict__.get(part, missing)
        else:
            obj = getattr(obj, part, missing)
        if obj is missing:
            return None
    if isinstance(obj, EnumValue):
        return "value"
    if isinstance(obj, type):
        return "enum" if "__members__" in obj.__dict__ else "class"
    if callable(obj):
        return "method" if "." in path else "function"
    return "readonly" if "." not in path else "attribute"


def standin_offers_too_much(trt: Any, observed: dict[str, Any], paths: set[str]) -> list[str]:
    """Names (among ``paths``) the stand-in offers that the real module lacks or has as another kind."""
    problems = []
    for path in sorted(paths):
        kind = standin_kind(trt, path)
        if kind is None:
            continue
        real = observed["kinds"].get(path)
        if real is None:
            problems.append(f"{path}: the stand-in offers it ({kind}), the real module lacks it")
        elif real != kind:
            problems.append(f"{path}: the stand-in offers a {kind}, the real module has a {real}")
    return problems


def standin_signatures(trt: Any, paths: set[str]) -> dict[str, list[list]]:
    """[[param, has default], ...] of the stand-in's behaviour for the methods at ``paths`` that
    have one (a method without behaviour takes anything and raises NotImplementedError)."""
    import inspect

    out = {}
    for path in sorted(paths):
        owner, name = path.rsplit(".", 1)
        cls: Any = trt
        for part in owner.split("."):
            cls = getattr(cls, part, None)
        func = getattr(cls, "__dict__", {}).get(name)
        if func is None or not callable(func):
            continue
        params = list(inspect.signature(func).parameters.values())[1:]  # without self
        if any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params):
            continue
        out[path] = [[p.name, p.default is not p.empty] for p in params]
    return out


def calls_only_the_standin_accepts(standin: dict[str, list[list]], real: dict[str, list[list[list]]]) -> list[str]:
    """Methods where some call the stand-in accepts would be refused by every real overload: a
    parameter the real one names differently (a keyword call binds by name), one more
    parameter, or a default the real one lacks."""
    problems = []
    for path, params in sorted(standin.items()):
        overloads = real.get(path) or []
        if not overloads:
            continue  # a plain Python function in the package __init__.py: no pybind signature
        names = [p for p, _ in params]
        required = sum(1 for _, has_default in params if not has_default)

        def covers(overload: list[list]) -> bool:
            real_required = sum(1 for _, has_default in overload if not has_default)
            same = all(n == r or re.fullmatch(r"arg\d+", r)  # pybind's argN: positional only, any name
                       for n, (r, _) in zip(names, overload))
            return len(params) <= len(overload) and required >= real_required and same

        if not any(covers(o) for o in overloads):
            shown = " | ".join("(" + ", ".join(p + ("=…" if d else "") for p, d in o) + ")" for o in overloads)
            problems.append(f"{path}: stand-in ({', '.join(p + ('=…' if d else '') for p, d in params)}), real {shown}")
    return problems
