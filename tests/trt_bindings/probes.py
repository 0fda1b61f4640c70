"""What runs inside the subprocess: ``python -m tests.trt_bindings.probes WORLD FUNC ARGS_JSON``.

WORLD is "real" (``tensorrt`` is NVIDIA's bindings over stub libraries, see bindings.py) or
"standin:<surface version>:<__version__>" (``tensorrt`` is the stand-in of tests/trt_api, with
the simulated machine's behaviour, reporting the given ``__version__``). The result is printed as
JSON after a marker line, so Polygraphy's and TensorRT's own output may share stdout.

Every probe stops before a Builder, Runtime or parser object would exist: with the stub
libraries those raise ``TypeError: ... factory function returned nullptr``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.trt_bindings.bindings import MARK
CACHE = b"TRT-100300-EntropyCalibration2\ninput: 3c010a14\nconv1/Conv: 3d4ccccd\n"
ALGORITHMS = {  # cache header algorithm -> CalibrationAlgoType member TensorRT's C++ getAlgorithm returns
    "EntropyCalibration2": "ENTROPY_CALIBRATION_2", "EntropyCalibration": "ENTROPY_CALIBRATION",
    "MinMaxCalibration": "MINMAX_CALIBRATION", "LegacyCalibration": "LEGACY_CALIBRATION",
}
ROLES = ("optimized_onnx", "qdq_onnx", "fp16_onnx", "calibration_cache")


def use_standin(surface: str, version: str) -> None:
    from tests.trt_api.machine import Machine, tensorrt_for

    trt = tensorrt_for(Machine(surface))
    trt.__version__ = version
    sys.modules["tensorrt"] = trt


def norm(value: Any) -> Any:
    """JSON form of what TensorRT returns: an enum member as "Enum.NAME=int"."""
    if hasattr(value, "name") and not isinstance(value, (int, str, bytes)) and hasattr(value, "__int__"):
        return f"{value}={int(value)}"
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "bytes:" + bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [norm(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else f"<{type(value).__name__}>"


def _raised(exc: BaseException) -> str:
    return f"raised {type(exc).__name__}"


# -- the surface ------------------------------------------------------------------------------

def observe(paths: list[str]) -> dict:
    import tensorrt

    from tests.trt_bindings.introspect import observe as look

    return {"version": tensorrt.__version__, "file": getattr(tensorrt, "__file__", None), **look(tensorrt, paths)}


def methods(paths: list[str]) -> dict:
    """The pybind signatures of the methods at ``paths`` (see introspect.signatures)."""
    import tensorrt

    from tests.trt_bindings.introspect import lookup, signatures

    return {p: signatures(lookup(tensorrt, p), p.rsplit(".", 1)[1]) for p in paths}


# -- rescompile before a Builder exists -------------------------------------------------------

class RecordingConfig:
    """An IBuilderConfig stand-in that records what settings_for sets (no Builder needed)."""

    def __init__(self) -> None:
        object.__setattr__(self, "calls", [])

    def __setattr__(self, name: str, value: Any) -> None:
        self.calls.append(["set", name, norm(value)])

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self.calls.append(["set_memory_pool_limit", norm(pool), size])

    def set_flag(self, flag: Any) -> None:
        self.calls.append(["set_flag", norm(flag)])


def _calibrator(trt: Any, algorithm: str) -> dict:
    from rescompile.stages.build.loaders import cache_calibrator

    try:
        cal = cache_calibrator(trt, CACHE, algorithm)
    except Exception as exc:  # noqa: BLE001 - the answer is the exception
        return {"made": _raised(exc)}
    out = {"made": type(cal).__mro__[1].__name__, "get_batch_size": cal.get_batch_size(),
           "get_batch": norm(cal.get_batch(["input"])), "read_calibration_cache": norm(cal.read_calibration_cache()),
           "write_calibration_cache": norm(cal.write_calibration_cache(memoryview(CACHE)))}
    if algorithm == "LegacyCalibration":
        out.update(get_quantile=cal.get_quantile(), get_regression_cutoff=cal.get_regression_cutoff(),
                   read_histogram_cache=norm(cal.read_histogram_cache(0)))
    return out


def prebuilder(nptype_names: list[str]) -> dict:
    """The answers of rescompile's code that runs before a Builder/Runtime exists."""
    import numpy as np
    import tensorrt as trt

    from rescompile import nvidia
    from rescompile.config import Precision
    from rescompile.stages.build import plan as planmod
    from rescompile.stages.build.loaders import settings_for

    version = nvidia.tensorrt_version()
    out: dict[str, Any] = {"tensorrt_version": version}
    # nvidia.dla_cores() creates a Builder (NULL here, the simulated machine's count there): keep
    # the plan checks to what they decide before one exists, with TensorRT "unable to say".
    if hasattr(nvidia, "dla_cores"):
        nvidia.dla_cores = lambda: None
    out["support"] = {
        f"{dev} | {col}": planmod.support_cell(version, gpu, dla, precision, options).replace(version, "<version>")
        for dev, gpu, dla in planmod.TABLE_DEVICES for col, precision, options in planmod.TABLE_COLUMNS
    }
    base = planmod.plan_engine(Precision.fp32, version, {r: Path(r) for r in ROLES}, "input", (3, 32, 32))
    cases = {"defaults": {}, "workspace": {"workspace_bytes": 1 << 28}, "ampere+": {"hardware_compatibility": "ampere+"},
             "same-cc": {"hardware_compatibility": "same-cc"}, "dla with fallback": {"dla_core": 1, "gpu_fallback": True},
             "dla without fallback": {"dla_core": 0, "gpu_fallback": False}}
    settings = {}
    for name, changes in cases.items():
        config = RecordingConfig()
        try:
            settings_for(replace(base, **changes))(None, None, config)
            settings[name] = config.calls
        except Exception as exc:  # noqa: BLE001
            settings[name] = [_raised(exc), *config.calls]
    out["settings_for"] = settings
    # runtime/tensorrt.py, stages/build/engine.py, doctor.py: loggers and the enums they compare against
    out["logger"] = {
        "Logger()": norm(trt.Logger().min_severity), "Logger(Logger.WARNING)": norm(trt.Logger(trt.Logger.WARNING).min_severity),
        "Logger(Logger.ERROR)": norm(trt.Logger(trt.Logger.ERROR).min_severity),
        "Logger.Severity is ILogger.Severity": trt.Logger.Severity is trt.ILogger.Severity,
        "Logger.WARNING == ILogger.Severity.WARNING": trt.Logger.WARNING == trt.ILogger.Severity.WARNING,
    }
    out["enums"] = {name: norm(value) for name, value in (
        ("TensorIOMode.INPUT", trt.TensorIOMode.INPUT), ("LayerInformationFormat.JSON", trt.LayerInformationFormat.JSON))}
    nptypes = {}
    for name in nptype_names:  # runtime/tensorrt.py TensorRTRunner._np_dtype
        member = getattr(trt.DataType, name, None)
        try:
            nptypes[name] = "absent" if member is None else str(np.dtype(trt.nptype(member)))
        except TypeError:
            nptypes[name] = "TypeError"
    out["nptype"] = nptypes
    out["calibrators"] = {algorithm: _calibrator(trt, algorithm) for algorithm in ALGORITHMS}
    return out


# -- the calibrator on the real trampoline ----------------------------------------------------

def _wrong_calibrator(trt: Any, cache: bytes, algorithm: str) -> Any:
    """A calibrator with the return types TensorRT's trampoline refuses (for the checks' own test)."""
    base = trt.IInt8EntropyCalibrator2

    class Wrong(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)

        def get_batch_size(self) -> str:
            return "1"  # not castable to int

        def get_batch(self, names: list[str]) -> list[str]:
            return names  # names, not device pointers

        def read_calibration_cache(self) -> str:
            return cache.decode()  # str has no buffer protocol

        def write_calibration_cache(self, data: bytes) -> None:
            return None

    return Wrong()


def _as_tensorrt_calls(cal: Any, algorithm: str) -> dict:
    base = type(cal).__mro__[1]
    r: dict[str, Any] = {"made": base.__name__, "expected_algorithm": ALGORITHMS[algorithm]}
    r["get_batch_size via trampoline"] = base.get_batch_size(cal)
    r["get_algorithm via C++"] = norm(base.get_algorithm(cal))
    r["get_algorithm"] = norm(cal.get_algorithm())
    batch = cal.get_batch(["input"])
    r["get_batch castable"] = batch is None or (isinstance(batch, (list, tuple)) and all(isinstance(p, int) for p in batch))
    cache = cal.read_calibration_cache()
    try:  # the documentation stub is bound with a py::buffer parameter: pybind checks the buffer protocol
        base.write_calibration_cache(cal, cache)
        r["read_calibration_cache is a buffer"] = cache is None or bytes(memoryview(cache)) == CACHE
    except TypeError as exc:
        r["read_calibration_cache is a buffer"] = _raised(exc)
    r["write_calibration_cache(memoryview)"] = norm(cal.write_calibration_cache(memoryview(CACHE)))
    if algorithm == "LegacyCalibration":
        r["legacy returns"] = [type(cal.get_quantile()).__name__, type(cal.get_regression_cutoff()).__name__,
                               norm(cal.read_histogram_cache(0)), norm(cal.write_histogram_cache(memoryview(CACHE), len(CACHE)))]
    return r


def trampolines(wrong: bool = False) -> dict:
    """Call rescompile's cache calibrator (``wrong``: a deliberately wrong one) the way TensorRT
    does. ``Base.method(obj)`` on a pybind method bound to a C++ virtual runs the trampoline
    (pyInt8.cpp pyCalibratorTrampoline), which finds the Python override and casts its result to
    the C++ return type (or prints "Exception caught ..." and returns -1). get_batch /
    read_calibration_cache / write_calibration_cache are reached through utils::getOverride from
    C++ only; their Python results are checked against what that code casts them to: None or a
    list of ints (device pointers), None or a py::buffer."""
    import tensorrt as trt

    from rescompile.stages.build.loaders import cache_calibrator

    make = _wrong_calibrator if wrong else cache_calibrator
    names = ["IInt8Calibrator", "IInt8EntropyCalibrator2", "IInt8EntropyCalibrator", "IInt8MinMaxCalibrator",
             "IInt8LegacyCalibrator", "CalibrationAlgoType"]
    out: dict[str, Any] = {"present": {n: hasattr(trt, n) for n in names}, "calibrators": {}}
    for algorithm in (["EntropyCalibration2"] if wrong else ALGORITHMS):
        try:
            cal = make(trt, CACHE, algorithm)
        except Exception as exc:  # noqa: BLE001
            out["calibrators"][algorithm] = {"made": _raised(exc)}
            continue
        out["calibrators"][algorithm] = _as_tensorrt_calls(cal, algorithm)
    if out["present"]["IInt8EntropyCalibrator2"] and not wrong:
        class Bare(trt.IInt8EntropyCalibrator2):  # no overrides: what TensorRT meets when a method is missing
            def __init__(self) -> None:
                trt.IInt8EntropyCalibrator2.__init__(self)

        out["bare get_batch_size via trampoline"] = trt.IInt8EntropyCalibrator2.get_batch_size(Bare())
    return out


# -- version strings and the Polygraphy chain -------------------------------------------------

def versions(cache_dir: str) -> dict:
    """Every rescompile parser of TensorRT's version, on this module's ``__version__``."""
    import tensorrt as trt
    from polygraphy import mod

    from rescompile import nvidia
    from rescompile.config import EngineConfig, Int8Source, Precision
    from rescompile.runtime.compat import parse_version
    from rescompile.stages.build import _cache_text
    from rescompile.stages.build.plan import _version, plan_engine
    from rescompile.stages.calibrate.cache import version_code, write_cache

    v = trt.__version__
    out: dict[str, Any] = {"__version__": v, "nvidia.tensorrt_version": nvidia.tensorrt_version(), "nvidia.major": nvidia.major(v),
                           "compat.parse_version": list(parse_version(v) or [])[:3], "plan._version": list(_version(v)),
                           "polygraphy >= 10.0": mod.version(v) >= mod.version("10.0")}
    try:
        out["cache.version_code"] = version_code(v)
    except Exception as exc:  # noqa: BLE001
        out["cache.version_code"] = f"{_raised(exc)}: {exc}"
    if nvidia.major(v) == 10:  # implicit INT8 from a cache: _cache_text re-tags it for this TensorRT
        cache = write_cache(Path(cache_dir) / "calibration.cache", {"input": 0.01}, version="10.3.0")
        files = {r: Path(r) for r in ROLES} | {"calibration_cache": cache}
        try:
            plan = plan_engine(Precision.int8, v, files, "input", (3, 32, 32), EngineConfig(int8_source=Int8Source.cache))
            text, _algorithm = _cache_text(plan)
            out["_cache_text header"] = text.decode().splitlines()[0]
        except Exception as exc:  # noqa: BLE001
            out["_cache_text header"] = f"{_raised(exc)}: {exc}"
    return out


def polygraphy_chain(onnx_path: str) -> dict:
    """rescompile's loader chain run on the real module: everything up to trt.Builder must work."""
    import traceback

    import tensorrt as trt

    from rescompile import doctor, nvidia
    from rescompile.config import EngineConfig, Int8Source, Precision
    from rescompile.stages.build.loaders import build_engine_bytes, loader_chain
    from rescompile.stages.build.plan import plan_engine

    v = trt.__version__
    files = {r: Path(onnx_path) for r in ROLES}
    int8 = EngineConfig(int8_source=Int8Source.cache) if v.startswith("10.") else EngineConfig()
    plan = plan_engine(Precision.int8, v, files, "input", (3, 32, 32), int8)
    chain = loader_chain(plan, cache_text=CACHE, algorithm="EntropyCalibration2")
    out: dict[str, Any] = {"calibration": chain.calibration is not None}
    try:
        build_engine_bytes(chain)
        out["build"] = "returned"
    except Exception as exc:  # noqa: BLE001
        chain_of = [exc]
        while chain_of[-1].__cause__ is not None or chain_of[-1].__context__ is not None:
            chain_of.append(chain_of[-1].__cause__ or chain_of[-1].__context__)
        out["build"] = " <- ".join(f"{_raised(e)}: {e}" for e in chain_of)
        frame = traceback.extract_tb(chain_of[-1].__traceback__)[-1]
        out["first failure at"] = f"{Path(frame.filename).name}:{frame.lineno} {frame.line}"
    out["calibrator set"] = type(chain.create_config.calibrator).__name__ if chain.create_config.calibrator else None
    dla_cores = getattr(nvidia, "dla_cores", None) or doctor._dla_cores
    out["dla_cores"] = dla_cores()  # a Builder: None, as where TensorRT cannot create one
    return out


def main(argv: list[str]) -> None:
    world, func, args = argv[0], argv[1], json.loads(argv[2])
    if world.startswith("standin:"):
        _, surface, version = world.split(":", 2)
        use_standin(surface, version)
    elif world != "real":
        raise SystemExit(f"unknown world {world!r}")
    result = globals()[func](*args)
    sys.stdout.flush()
    print("\n" + MARK + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
