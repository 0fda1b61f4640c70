"""Which ONNX, which network mode and which builder flags an engine needs: a pure decision.

Two TensorRT worlds (TensorRT developer guide, "Explicit vs Implicit Quantization" and the
TensorRT 11 release notes):

- TensorRT 11 removed implicit quantization and the precision flags: networks are strongly
  typed, so the types in the ONNX are the engine's types. FP32 builds the optimized ONNX,
  FP16 an FP16 copy of it, INT8 the Q/DQ ONNX (its unquantized layers keep FP32).
- TensorRT 10 (JetPack 6) still has the INT8/FP16 builder flags and the calibrator API,
  deprecated. INT8 comes from the Q/DQ ONNX (explicit quantization, recommended) or from the
  calibration cache (`--int8-source cache`: implicit INT8, what older Jetson pipelines and
  DeepStream use). FP16 is enabled next to INT8 so layers without an INT8 kernel fall back to
  FP16 instead of FP32.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from rescompile.config import EngineConfig, HardwareCompat, Int8Source, Precision
from rescompile.errors import ConfigError
from rescompile.nvidia import major

OLDEST_TRT = 10  # build_serialized_network + tensor-name I/O + the APIs used here


@dataclass(frozen=True)
class EnginePlan:
    trt_version: str
    precision: Precision
    onnx_role: str  # bundle file the network is parsed from: optimized_onnx | fp16_onnx | qdq_onnx
    onnx_path: Path
    strongly_typed: bool
    fp16: bool
    int8: bool
    int8_source: str  # "qdq" | "cache" | "none"
    cache_path: Path | None
    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    reason: str  # one line: what was chosen and why
    workspace_bytes: int | None = None
    optimization_level: int | None = None
    timing_cache: Path | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True
    hardware_compatibility: str | None = None
    version_compatible: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def trt_major(self) -> int:
        return int(major(self.trt_version) or 0)

    @property
    def profile(self) -> dict[str, list[int]]:
        return {"min": list(self.min_shape), "opt": list(self.opt_shape), "max": list(self.max_shape)}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["precision"] = self.precision.value
        for key in ("onnx_path", "cache_path", "timing_cache"):
            d[key] = None if d[key] is None else Path(d[key]).name
        d["profiles"] = [self.profile]
        for key in ("min_shape", "opt_shape", "max_shape"):
            d.pop(key)
        return d


def _check_batches(cfg: EngineConfig) -> None:
    if not 1 <= cfg.min_batch <= cfg.opt_batch <= cfg.max_batch:
        raise ConfigError(
            f"batch sizes must satisfy 1 <= min <= opt <= max, got {cfg.min_batch}/{cfg.opt_batch}/{cfg.max_batch}",
            "Fix --min-batch/--opt-batch/--max-batch",
        )
    if cfg.optimization_level is not None and not 0 <= cfg.optimization_level <= 5:
        raise ConfigError(f"builder optimization level must be 0-5, got {cfg.optimization_level}", "Use --opt-level 0..5")
    if cfg.workspace_mib is not None and cfg.workspace_mib < 1:
        raise ConfigError(f"workspace must be at least 1 MiB, got {cfg.workspace_mib}", "Pass --workspace-mib N")


def _need(files: dict[str, Path], role: str, what: str) -> Path:
    path = files.get(role)
    if path is None:
        raise ConfigError(f"the bundle has no {what} ({role})", "Rebuild the bundle with --precision int8 (it calibrates)")
    return Path(path)


def plan_engine(
    precision: Precision, trt_version: str, files: dict[str, Path], input_name: str, chw: tuple[int, int, int],
    cfg: EngineConfig = EngineConfig(),
) -> EnginePlan:
    """Decide how to build an engine of ``precision`` for TensorRT ``trt_version`` from the bundle ``files``."""
    _check_batches(cfg)
    trt_major = major(trt_version)
    if trt_major is None or trt_major < OLDEST_TRT:
        raise ConfigError(
            f"TensorRT {trt_version} is not supported: rescompile builds for TensorRT 10 (JetPack 6) and 11",
            "Upgrade TensorRT (JetPack 6 ships 10.3)",
        )
    typed = trt_major >= 11
    notes: list[str] = []
    cache: Path | None = None
    int8 = precision.needs_calibration
    source = cfg.int8_source
    if int8 and typed and source == Int8Source.cache:
        raise ConfigError(
            f"TensorRT {trt_version} has no calibration-cache path (implicit INT8 was removed in TensorRT 11)",
            "Use --int8-source qdq (the default)",
        )
    if int8 and source == Int8Source.cache:
        role, onnx_path = "optimized_onnx", _need(files, "optimized_onnx", "optimized ONNX")
        cache = _need(files, "calibration_cache", "calibration cache")
        int8_source = "cache"
        why = f"TensorRT {trt_version}: implicit INT8 from the calibration cache (--int8-source cache; deprecated in 10)"
    elif int8:
        role, onnx_path, int8_source = "qdq_onnx", _need(files, "qdq_onnx", "Q/DQ ONNX"), "qdq"
        why = (
            f"TensorRT {trt_version}: strongly typed network from the Q/DQ ONNX (the only INT8 path in TensorRT 11)"
            if typed
            else f"TensorRT {trt_version}: explicit INT8 from the Q/DQ ONNX, FP16 for layers without INT8 kernels"
        )
    elif precision == Precision.fp16 and typed:
        role, onnx_path, int8_source = "fp16_onnx", _need(files, "fp16_onnx", "FP16 ONNX"), "none"
        why = f"TensorRT {trt_version}: strongly typed network from the FP16 ONNX (TensorRT 11 has no FP16 flag)"
    else:
        role, onnx_path, int8_source = "optimized_onnx", _need(files, "optimized_onnx", "optimized ONNX"), "none"
        why = f"TensorRT {trt_version}: {precision.value.upper()} network from the optimized ONNX" + (
            " (strongly typed)" if typed else ""
        )
    fp16 = not typed and precision in (Precision.fp16, Precision.int8, Precision.best)
    if typed and precision == Precision.best:
        notes.append("TensorRT 11 builds the types in the ONNX: 'best' is the Q/DQ model, its float layers in FP32")
    if cfg.dla_core is not None:
        if precision == Precision.fp32:
            raise ConfigError("DLA runs FP16 and INT8 only", "Use --precision fp16 or int8 with --dla-core")
        notes.append(f"DLA core {cfg.dla_core}" + (" with GPU fallback" if cfg.gpu_fallback else " without GPU fallback"))
    c, h, w = chw
    hw = None if cfg.hardware_compatibility == HardwareCompat.none else cfg.hardware_compatibility.value
    if hw and cfg.dla_core is not None:
        raise ConfigError("hardware compatibility is not supported with DLA", "Drop --hardware-compat or --dla-core")
    return EnginePlan(
        trt_version=trt_version, precision=precision, onnx_role=role, onnx_path=onnx_path, strongly_typed=typed,
        fp16=fp16, int8=int8 and not typed, int8_source=int8_source, cache_path=cache, input_name=input_name,
        min_shape=(cfg.min_batch, c, h, w), opt_shape=(cfg.opt_batch, c, h, w), max_shape=(cfg.max_batch, c, h, w),
        reason=why, workspace_bytes=None if cfg.workspace_mib is None else cfg.workspace_mib << 20,
        optimization_level=cfg.optimization_level, timing_cache=cfg.timing_cache, dla_core=cfg.dla_core,
        gpu_fallback=cfg.gpu_fallback, hardware_compatibility=hw, version_compatible=cfg.version_compatible, notes=notes,
    )
