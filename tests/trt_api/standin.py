"""Stand-in `tensorrt` modules, one per TensorRT version, generated from surface.ROWS.

What a version's bindings lack is absent here too, so touching it raises AttributeError exactly
as TensorRT would (e.g. ``HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY`` on 10.3,
``BuilderFlag.INT8`` or ``IInt8EntropyCalibrator2`` on 11). Objects are as strict as pybind11's:
setting an attribute that is not a read-write property fails; a Python subclass (a calibrator,
a logger) may add its own. A pure-virtual method ("abstract") is not defined on the base, so
the simulated builder fails when a subclass forgot it, as TensorRT's trampoline does.

Behaviour comes from `machine.py`: a simulated TensorRT that parses an ONNX file, checks what
the real builder checks (calibration profile, cache tag, DLA shapes, timing-cache device), and
"builds" a plan that the simulated runtime executes with ONNX Runtime. Behaviour is installed
only for names the version has.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from tests.trt_api.surface import ENUM_INTS, ROWS, VERSIONS

CONTAINERS = ("class", "enum")


# Releases whose bindings have exactly another release's rows: 11.4's were compared row by row with
# 11.1's against NVIDIA's compiled 11.4.0.106 bindings (tests/trt_bindings) and none differed; 11.4.1
# (JetPack 7.2.2, DLA on Orin again) is simulated on them.
ALIASES = {"11.4.1": "11.1.0"}


def surface(version: str) -> dict[str, str]:
    """path -> kind for every name TensorRT ``version`` has."""
    version = ALIASES.get(version, version)
    if version not in VERSIONS:
        raise KeyError(f"no surface recorded for TensorRT {version}; recorded: {', '.join(VERSIONS)}")
    return {path: kind for path, kind, versions, _ in ROWS if version in versions}


class EnumValue:
    """A pybind11 enum member: named, an int, hashable, equal only to itself."""

    __slots__ = ("owner", "name", "value")

    def __init__(self, owner: str, name: str, value: int) -> None:
        object.__setattr__(self, "owner", owner)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "value", value)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"'{self.owner}' member is read-only")

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __hash__(self) -> int:
        return hash((self.owner, self.name))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, EnumValue) and (other.owner, other.name) == (self.owner, self.name)

    def __repr__(self) -> str:
        return f"<{self.owner}.{self.name}: {self.value}>"

    __str__ = lambda self: f"{self.owner}.{self.name}"  # noqa: E731


def _enum(path: str, members: list[str], ints: dict[str, int]) -> type:
    short = path.rsplit(".", 1)[-1]
    values = {m: EnumValue(short, m, ints.get(f"{path}.{m}", i)) for i, m in enumerate(members)}
    cls = type(short, (), {**values, "__members__": dict(values)})
    return cls


class StrictObject:
    """Instances of a generated TensorRT class: only the version's properties can be set."""

    _trt_path = "?"
    _trt_props: dict[str, str] = {}
    _trt_defaults: dict[str, Callable[[], Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        object.__setattr__(self, "_sti", {})
        init = type(self).__dict__.get("_trt_init") or _find_init(type(self))
        if init is not None:
            init(self, *args, **kwargs)

    def _state(self) -> dict[str, Any]:
        try:
            return object.__getattribute__(self, "_sti")
        except AttributeError:  # a subclass that did not call the base __init__
            object.__setattr__(self, "_sti", {})
            return object.__getattribute__(self, "_sti")

    def __getattr__(self, name: str) -> Any:
        props = type(self)._trt_props
        if name in props:
            state = self._state()
            if name not in state and name in type(self)._trt_defaults:
                state[name] = type(self)._trt_defaults[name]()
            return state.get(name)
        raise AttributeError(f"'tensorrt.{type(self)._trt_path}' object has no attribute '{name}'")

    def __setattr__(self, name: str, value: Any) -> None:
        cls = type(self)
        kind = cls._trt_props.get(name)
        if kind == "property":
            self._state()[name] = value
            return
        if kind == "readonly":
            raise AttributeError(f"can't set attribute '{name}' of 'tensorrt.{cls._trt_path}' (read-only)")
        if getattr(cls, "_trt_generated", None) is not cls:  # a Python subclass has a __dict__
            object.__setattr__(self, name, value)
            return
        raise AttributeError(f"'tensorrt.{cls._trt_path}' object has no attribute '{name}'")


def _find_init(cls: type) -> Callable | None:
    for klass in cls.__mro__:
        if "_trt_init" in klass.__dict__:
            return klass.__dict__["_trt_init"]
    return None


def _missing_behaviour(path: str) -> Callable:
    def method(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"stand-in: {path} exists in this TensorRT but the simulation gives it no behaviour")

    return method


def make_tensorrt(version: str, behaviour: dict[str, Any] | None = None) -> types.ModuleType:
    """The stand-in ``tensorrt`` module for ``version``. ``behaviour`` maps "Class.method" (or
    "Class.__init__", "function") to a function, "Class.prop" to a default factory (via the key
    "Class.prop=default"), and "Class@base" to a Python base class (e.g. bytes); entries for
    names this version lacks are ignored."""
    names = surface(version)
    ints = ENUM_INTS.get(ALIASES.get(version, version), {})
    behaviour = behaviour or {}
    for key in behaviour:
        path = key.split("=")[0].split("@")[0]
        if path not in {p for p, *_ in ROWS} and path != "__init__" and not path.endswith(".__init__"):
            raise KeyError(f"behaviour for {path!r}, which no TensorRT version in the surface has")
    trt = types.ModuleType("tensorrt")
    containers = sorted((p for p, k in names.items() if k in CONTAINERS), key=lambda p: p.count("."))
    built: dict[str, Any] = {}
    for path in containers:
        kind = names[path]
        member_names = [p[len(path) + 1:] for p in names if p.startswith(path + ".") and "." not in p[len(path) + 1:]]
        if kind == "enum":
            obj = _enum(path, [m for m in member_names if names[f"{path}.{m}"] == "value"], ints)
        else:
            props = {m: names[f"{path}.{m}"] for m in member_names if names[f"{path}.{m}"] in ("property", "readonly")}
            defaults = {k.split("=")[0].split(".", 1)[1]: v for k, v in behaviour.items()
                        if k.endswith("=default") and k.split("=")[0].rsplit(".", 1)[0] == path}
            defaults = {k: v for k, v in defaults.items() if k in props}
            body: dict[str, Any] = {"_trt_path": path, "_trt_props": props, "_trt_defaults": defaults}
            for m in member_names:
                k = names[f"{path}.{m}"]
                if k == "method":
                    body[m] = behaviour.get(f"{path}.{m}") or _missing_behaviour(f"{path}.{m}")
                elif k == "function":
                    body[m] = staticmethod(behaviour.get(f"{path}.{m}") or _missing_behaviour(f"{path}.{m}"))
                # "abstract": left undefined; a subclass must define it
            if f"{path}.__init__" in behaviour:
                body["_trt_init"] = behaviour[f"{path}.__init__"]
            bases: tuple[type, ...] = (StrictObject,)
            if f"{path}@base" in behaviour:
                bases = (StrictObject, behaviour[f"{path}@base"])
            obj = type(path.rsplit(".", 1)[-1], bases, body)
            obj._trt_generated = obj
            obj.__module__ = "tensorrt"
        built[path] = obj
        owner = path.rsplit(".", 1)[0] if "." in path else None
        setattr(built[owner] if owner else trt, path.rsplit(".", 1)[-1], obj)
    # Values that live outside their enum: Logger.WARNING (an alias of Logger.Severity.WARNING),
    # module-level dtype aliases (float32 -> DataType.FLOAT).
    dtype_alias = {"float32": "FLOAT", "float16": "HALF", "bfloat16": "BF16", "int8": "INT8", "int32": "INT32",
                   "int64": "INT64", "bool": "BOOL", "uint8": "UINT8", "fp8": "FP8", "int4": "INT4", "fp4": "FP4", "e8m0": "E8M0"}
    for path, kind in names.items():
        if kind != "value":
            continue
        owner, member = path.rsplit(".", 1) if "." in path else ("", path)
        if owner in built and names.get(owner) == "enum":
            continue
        if owner == "":
            setattr(trt, member, getattr(built["DataType"], dtype_alias[member]))
        else:  # Logger.Severity is ILogger.Severity in the bindings (one enum, exposed twice)
            severity = built["ILogger.Severity"]
            if f"{owner}.Severity" in built:
                setattr(built[owner], "Severity", severity)
            setattr(built[owner], member, getattr(severity, member))
    for path, kind in names.items():
        if kind in ("function", "readonly") and "." not in path:
            if path == "__version__":
                trt.__version__ = version
            else:
                setattr(trt, path, behaviour.get(path) or _missing_behaviour(path))
    return trt
