"""The Polygraphy loader chain that turns an EnginePlan into serialized engine bytes.

Polygraphy's TensorRT loaders are lazy: constructing NetworkFromOnnxPath -> CreateConfig ->
EngineBytesFromNetwork imports nothing from TensorRT, so the chain (and every option that
reaches the builder) is built and checked without TensorRT; only calling it needs TensorRT.
Settings that need TensorRT's enums at construction time (memory pool, hardware
compatibility, DLA core) are applied by one PostprocessConfig function that imports tensorrt
when the builder runs. The cache calibrator (a subclass of a TensorRT class) is made when the
build starts and handed to CreateConfig, which is where Polygraphy also sets the calibration
profile that TensorRT 10 needs to calibrate a network with dynamic shapes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rescompile.errors import EngineBuildError, MissingDependencyError
from rescompile.stages.build.plan import EnginePlan

_ALGORITHM_BASES = {  # cache header algorithm -> TensorRT calibrator base class
    "EntropyCalibration2": "IInt8EntropyCalibrator2",
    "EntropyCalibration": "IInt8EntropyCalibrator",
    "MinMaxCalibration": "IInt8MinMaxCalibrator",
    "LegacyCalibration": "IInt8LegacyCalibrator",
}


@dataclass
class LoaderChain:
    network: Any  # polygraphy NetworkFromOnnxPath
    config: Any  # polygraphy PostprocessConfig(CreateConfig, apply_settings)
    create_config: Any  # the CreateConfig inside it
    engine_bytes: Any  # polygraphy EngineBytesFromNetwork: call it to build
    settings: Callable[[Any, Any, Any], None]
    calibration: tuple[bytes, str] | None = None  # (cache text, algorithm) for implicit INT8


def cache_calibrator(trt: Any, cache: bytes, algorithm: str) -> Any:
    """A calibrator that only replays ``cache`` (TensorRT reads it and never asks for data)."""
    base = getattr(trt, _ALGORITHM_BASES.get(algorithm, "IInt8EntropyCalibrator2"))

    class CacheCalibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)  # the pybind trampoline must be initialised explicitly

        def get_batch_size(self) -> int:
            return 1

        def get_batch(self, names: list[str]) -> None:
            return None  # no data: TensorRT only gets here when it rejected the cache

        def read_calibration_cache(self) -> bytes:
            return cache

        def write_calibration_cache(self, data: bytes) -> None:
            return None

    if algorithm == "LegacyCalibration":
        # IInt8LegacyCalibrator's own methods are pure virtual: TensorRT calls them and a Python
        # subclass without them fails inside the build. With a cache they only need to exist:
        # the values are TensorRT's documented defaults and no histogram is kept.
        def get_quantile(self) -> float:
            return 0.9999

        def get_regression_cutoff(self) -> float:
            return 1.0

        def read_histogram_cache(self, length: int) -> None:
            return None

        def write_histogram_cache(self, data: bytes, length: int) -> None:
            return None

        for fn in (get_quantile, get_regression_cutoff, read_histogram_cache, write_histogram_cache):
            setattr(CacheCalibrator, fn.__name__, fn)
    return CacheCalibrator()


def settings_for(plan: EnginePlan):
    """The function PostprocessConfig calls with (builder, network, config) at build time,
    after CreateConfig has set the flags, the profiles and the calibrator."""

    def apply(builder: Any, network: Any, config: Any) -> None:
        trt = importlib.import_module("tensorrt")
        # Layer names, types and formats in the engine inspector (the INT8/fusion report).
        config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
        if plan.workspace_bytes is not None:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
        if plan.hardware_compatibility == "ampere+":
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
        elif plan.hardware_compatibility == "same-cc":
            config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
        if plan.dla_core is not None:
            config.default_device_type = trt.DeviceType.DLA
            config.DLA_core = plan.dla_core
            if plan.gpu_fallback:
                config.set_flag(trt.BuilderFlag.GPU_FALLBACK)

    return apply


def _quiet_polygraphy() -> None:
    """Polygraphy logs to stdout at INFO; keep it to warnings unless rescompile runs verbose.
    Not errors only: TensorRT's own warnings ("Missing scale and zero-point for tensor ...", a
    layer falling back from DLA to the GPU) reach the user through Polygraphy's logger."""
    import logging

    from polygraphy.logger import G_LOGGER

    if not logging.getLogger("rescompile").isEnabledFor(logging.INFO):
        G_LOGGER.module_severity = G_LOGGER.WARNING


def loader_chain(
    plan: EnginePlan, *, cache_text: bytes | None = None, algorithm: str = "EntropyCalibration2", load_timing_cache: bool = True,
) -> LoaderChain:
    """Construct (not run) the Polygraphy chain for ``plan``. ``load_timing_cache=False`` starts
    from an empty timing cache (and still saves one to ``plan.timing_cache``)."""
    try:
        from polygraphy.backend.trt import (
            CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, PostprocessConfig, Profile,
        )
    except ImportError as exc:
        raise MissingDependencyError(
            f"Polygraphy is not installed ({exc})", "Install the TensorRT extra: pip install 'rescompile[trt]'"
        ) from exc
    _quiet_polygraphy()
    network = NetworkFromOnnxPath(str(plan.onnx_path), strongly_typed=plan.strongly_typed)
    profile = Profile().add(plan.input_name, min=plan.min_shape, opt=plan.opt_shape, max=plan.max_shape)
    timing = plan.timing_cache
    create = CreateConfig(
        fp16=plan.fp16,
        int8=plan.int8,
        tf32=False,  # FP32 means FP32: TF32 would silently change the numbers being benchmarked
        profiles=[profile],
        builder_optimization_level=plan.optimization_level,
        load_timing_cache=str(timing) if load_timing_cache and timing is not None and Path(timing).exists() else None,
        version_compatible=plan.version_compatible or None,
        use_dla=plan.dla_core is not None,
        allow_gpu_fallback=plan.gpu_fallback if plan.dla_core is not None else None,
    )
    settings = settings_for(plan)
    config = PostprocessConfig(create, settings)
    engine_bytes = EngineBytesFromNetwork(network, config=config, save_timing_cache=str(timing) if timing is not None else None)
    calibration = (cache_text, algorithm) if plan.int8_source == "cache" and cache_text is not None else None
    return LoaderChain(network, config, create, engine_bytes, settings, calibration)


def build_engine_bytes(chain: LoaderChain) -> bytes:
    """Run the chain. Polygraphy's "tensorrt is required" and its exceptions (a parse or build
    failure, after TensorRT's own log lines) become rescompile's one-line errors."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as exc:
        raise MissingDependencyError(
            "TensorRT is not installed, so no engine can be built here",
            "Install TensorRT (JetPack 6 includes it; elsewhere pip install tensorrt from NVIDIA's index) "
            "or keep the bundle's CPU artifact",
        ) from exc
    from polygraphy.exception import PolygraphyException

    if chain.calibration is not None:
        chain.create_config.calibrator = cache_calibrator(trt, *chain.calibration)
    try:
        data = chain.engine_bytes()
    except TypeError as exc:
        if "nullptr" not in str(exc):
            raise
        # pybind's "factory function returned nullptr": libnvinfer loaded but could not create a
        # builder (no GPU it can use, a driver too old for it).
        raise EngineBuildError(
            f"TensorRT {getattr(trt, '__version__', '?')} could not create a builder ({' '.join(str(exc).split())})",
            "Check that the GPU is visible (nvidia-smi) and its driver supports this TensorRT; `rescompile doctor` says what it finds",
        ) from exc
    except PolygraphyException as exc:
        what = " ".join(str(exc).split()) or "no reason given"
        raise EngineBuildError(
            f"TensorRT {getattr(trt, '__version__', '?')} could not build the engine from {Path(chain.network.path).name}: {what}",
            "TensorRT's log above names the layer; run with -v for the whole log",
        ) from exc
    if data is None:
        raise EngineBuildError("TensorRT returned no engine (its log above says why)", "Run with -v for the whole log")
    return bytes(data)
