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

What each TensorRT version supports on each device (developer guide "Hardware Compatibility",
"Version Compatibility", "Working with DLA"; support matrices 10.x/11.x) is checked here, before
any build starts: `check_support` refuses a combination TensorRT would reject (or would build
into something other than what was asked), with the reason and the alternative, and
`support_table` renders the same rules for the README.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from rescompile.config import EngineConfig, HardwareCompat, Int8Source, Precision
from rescompile.errors import ConfigError
from rescompile import nvidia
from rescompile.nvidia import GpuInfo, major

OLDEST_TRT = 10  # build_serialized_network + tensor-name I/O + the APIs used here
# HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY first appears in the bindings at v10.9.0
# (v10.3.0 has NONE and AMPERE_PLUS only); it needs a Turing or later GPU to build on, AMPERE_PLUS
# an Ampere or later one (pyCoreDoc.h, HardwareCompatibilityLevel).
SAME_CC_SINCE = (10, 9, 0)
SAME_CC_MIN_CC = (7, 5)
AMPERE_PLUS_MIN_CC = (8, 0)
# DLA (support matrices, "Working with DLA"): TensorRT 10.7 is the last 10.x with DLA; 11.0-11.4.0
# have none on Linux; 11.4.1 brings it back on Jetson AGX Orin with JetPack 7.2.2, strongly typed.
DLA_LAST_10 = (10, 7, 99)
DLA_SINCE_11 = (11, 4, 1)
DLA_CC = ("7.2", "8.7")  # Xavier and Orin have DLA cores; Thor (11.0) has none


def _version(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in re.findall(r"\d+", text)[:3]]
    return tuple((parts + [0, 0, 0])[:3])  # type: ignore[return-value]


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


def check_support(trt_version: str, cfg: EngineConfig, precision: Precision, gpu: GpuInfo | None = None) -> list[str]:
    """Refuse what TensorRT ``trt_version`` does not support for ``cfg`` on ``gpu`` (the GPU that
    builds; None when the plan is made for another machine). Returns notes for what it adjusts."""
    v = _version(trt_version)
    notes: list[str] = []
    hw = cfg.hardware_compatibility
    jetson = gpu is not None and gpu.jetson
    if hw != HardwareCompat.none:
        if cfg.dla_core is not None:
            raise ConfigError("hardware compatibility is not supported with DLA", "Drop --hardware-compat or --dla-core")
        if jetson:
            raise ConfigError(
                f"hardware compatibility is not supported on JetPack ({gpu.name})",
                "Drop --hardware-compat: an engine built on the module runs on modules of the same kind",
            )
        if hw == HardwareCompat.same_cc and v < SAME_CC_SINCE:
            raise ConfigError(
                f"--hardware-compat same-cc needs TensorRT 10.9 or later (this is TensorRT {trt_version})",
                "Use --hardware-compat ampere+ on an Ampere or later GPU, or upgrade TensorRT",
            )
        if hw == HardwareCompat.ampere_plus and gpu is not None and _cc(gpu) < AMPERE_PLUS_MIN_CC:
            raise ConfigError(
                f"--hardware-compat ampere+ needs an Ampere or later GPU to build on; {gpu.name} is {gpu.sm}",
                "Build on an sm_80+ GPU, or drop --hardware-compat",
            )
        if hw == HardwareCompat.same_cc and gpu is not None and _cc(gpu) < SAME_CC_MIN_CC:
            raise ConfigError(
                f"--hardware-compat same-cc needs a Turing or later GPU to build on; {gpu.name} is {gpu.sm}",
                "Build on an sm_75+ GPU, or drop --hardware-compat",
            )
    if cfg.dla_core is not None:
        if precision == Precision.fp32:
            raise ConfigError("DLA runs FP16 and INT8 only", "Use --precision fp16 or int8 with --dla-core")
        if gpu is not None and not gpu.jetson:
            raise ConfigError(f"{gpu.name} has no DLA cores (only Jetson Xavier and Orin modules do)", "Drop --dla-core")
        if gpu is not None and gpu.compute_capability not in DLA_CC:
            raise ConfigError(f"{gpu.name} ({gpu.sm}) has no DLA cores (only Jetson Xavier and Orin modules do)", "Drop --dla-core")
        # An Orin Nano/NX module is sm_87 without DLA, and on a module without the requested core
        # config.DLA_core is ignored (NvInfer.h, IBuilderConfig::setDLACore): the engine would run
        # on the GPU with a manifest saying DLA. Ask TensorRT how many cores this module has.
        cores = nvidia.dla_cores() if gpu is not None else None
        if cores is not None and cfg.dla_core >= cores:
            have = "no DLA cores" if cores == 0 else f"{cores} DLA core(s), numbered 0-{cores - 1}"
            raise ConfigError(f"{gpu.name} has {have} (TensorRT's Builder.num_DLA_cores), so DLA core {cfg.dla_core} cannot run it",
                              "Drop --dla-core" if cores == 0 else f"Pass --dla-core 0..{cores - 1}")
        if DLA_LAST_10 < v < DLA_SINCE_11:
            raise ConfigError(
                f"TensorRT {trt_version} does not support DLA (10.7 is the last 10.x with DLA; 11.4.1 brings it back on Orin)",
                "Use JetPack 6 (TensorRT 10.3), or TensorRT 11.4.1+ with JetPack 7.2.2 on Jetson AGX Orin",
            )
        if v[0] >= 11 and precision.needs_calibration:
            # DLA runs INT8 only through implicit quantization (NVIDIA/TensorRT#2222: "DLA doesn't support
            # QAT... convert it to implicit quantization"; Model Optimizer PR #1661, 2026: "DLA still only
            # supports IQ"), and TensorRT 11 has none: its DLA guide migrates models to FP16 types.
            raise ConfigError(
                f"TensorRT {trt_version} runs DLA with strongly typed FP16 networks only (DLA's INT8 needs implicit "
                "quantization, which TensorRT 11 removed)",
                "Use --precision fp16 with --dla-core, or JetPack 6 (TensorRT 10.3) for INT8 on DLA",
            )
        if v[0] >= 11:
            notes.append("TensorRT 11 runs DLA on Jetson AGX Orin with JetPack 7.2.2 and strongly typed FP16 networks only")
        if not cfg.min_batch == cfg.opt_batch == cfg.max_batch:
            notes.append(
                f"DLA needs one batch size (min = opt = max): the engine takes batches of exactly {cfg.opt_batch} "
                "(--opt-batch chooses it)"
            )
    return notes


def _cc(gpu: GpuInfo) -> tuple[int, int]:
    return _version(gpu.compute_capability)[:2]


def plan_engine(
    precision: Precision, trt_version: str, files: dict[str, Path], input_name: str, chw: tuple[int, int, int],
    cfg: EngineConfig = EngineConfig(), *, gpu: GpuInfo | None = None,
) -> EnginePlan:
    """Decide how to build an engine of ``precision`` for TensorRT ``trt_version`` from the bundle
    ``files``; ``gpu`` is the GPU that will build it (None: the plan is for another machine)."""
    _check_batches(cfg)
    trt_major = major(trt_version)
    if trt_major is None or trt_major < OLDEST_TRT:
        raise ConfigError(
            f"TensorRT {trt_version} is not supported: rescompile builds for TensorRT 10 (JetPack 6) and 11",
            "Upgrade TensorRT (JetPack 6 ships 10.3)",
        )
    typed = trt_major >= 11
    notes: list[str] = check_support(trt_version, cfg, precision, gpu)
    if cfg.dla_core is not None:
        cfg = replace(cfg, min_batch=cfg.opt_batch, max_batch=cfg.opt_batch)
    cache: Path | None = None
    int8 = precision.needs_calibration
    source = cfg.int8_source
    if int8 and cfg.dla_core is not None:
        # DLA cannot run Q/DQ (explicitly quantized) networks: with GPU fallback their INT8 layers
        # silently run on the GPU (NVIDIA/TensorRT#2222, NVIDIA-AI-IOT/cuDLA-samples#19). INT8 on DLA
        # comes from the calibration cache (implicit INT8), the path DeepStream uses on Jetson.
        if source == Int8Source.qdq:
            raise ConfigError(
                "DLA does not run Q/DQ (explicitly quantized) networks: their INT8 layers would fall back to the GPU",
                "Drop --int8-source qdq: INT8 on DLA is built from the calibration cache (--int8-source cache)",
            )
        source = Int8Source.cache
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
        notes.append(f"DLA core {cfg.dla_core}" + (" with GPU fallback" if cfg.gpu_fallback else " without GPU fallback"))
        if int8_source == "cache":
            notes.append("DLA takes implicit INT8 from an EntropyCalibration2 cache: the cache is tagged so")
    c, h, w = chw
    hw = None if cfg.hardware_compatibility == HardwareCompat.none else cfg.hardware_compatibility.value
    return EnginePlan(
        trt_version=trt_version, precision=precision, onnx_role=role, onnx_path=onnx_path, strongly_typed=typed,
        fp16=fp16, int8=int8 and not typed, int8_source=int8_source, cache_path=cache, input_name=input_name,
        min_shape=(cfg.min_batch, c, h, w), opt_shape=(cfg.opt_batch, c, h, w), max_shape=(cfg.max_batch, c, h, w),
        reason=why, workspace_bytes=None if cfg.workspace_mib is None else cfg.workspace_mib << 20,
        optimization_level=cfg.optimization_level, timing_cache=cfg.timing_cache, dla_core=cfg.dla_core,
        gpu_fallback=cfg.gpu_fallback, hardware_compatibility=hw, version_compatible=cfg.version_compatible, notes=notes,
    )


# -- what rescompile does on each TensorRT version and device (the README's table) -------------

TABLE_VERSIONS = (("10.3 (JetPack 6)", "10.3.0"), ("10.4-10.7", "10.7.0"), ("10.8", "10.8.0"), ("10.9-10.x", "10.16.0"),
                  ("11.0-11.4.0", "11.1.0"), ("11.4.1+", "11.4.1"))
TABLE_DEVICES = (
    ("desktop GPU (sm_89)", GpuInfo("desktop GPU", "8.9"), None),
    ("Jetson Orin GPU", GpuInfo("Jetson AGX Orin", "8.7", jetson=True), None),
    ("Jetson Orin DLA", GpuInfo("Jetson AGX Orin", "8.7", jetson=True), 0),
)
TABLE_COLUMNS = (
    ("`--precision int8` (default)", Precision.int8, {}),
    ("`fp16`", Precision.fp16, {}),
    ("`fp32`", Precision.fp32, {}),
    ("`--int8-source cache`", Precision.int8, {"int8_source": Int8Source.cache}),
    ("`--hardware-compat ampere+`", Precision.int8, {"hardware_compatibility": HardwareCompat.ampere_plus}),
    ("`--hardware-compat same-cc`", Precision.int8, {"hardware_compatibility": HardwareCompat.same_cc}),
)


_SHORT_REFUSALS = (  # ConfigError message -> the table's few words
    ("same-cc needs TensorRT 10.9", "no: needs 10.9+"),
    ("not supported on JetPack", "no: not on JetPack"),
    ("not supported with DLA", "no: not with DLA"),
    ("does not support DLA", "no: no DLA in this TensorRT"),
    ("has no calibration-cache path", "no: implicit INT8 removed in 11"),
    ("DLA runs FP16 and INT8 only", "no: DLA is FP16/INT8 only"),
    ("runs DLA with strongly typed FP16 networks only", "no: DLA is FP16 only in 11"),
    ("does not run Q/DQ", "no: DLA runs no Q/DQ"),
    ("has no DLA cores", "no: no DLA cores"),
    ("needs an Ampere or later GPU", "no: needs an sm_80+ GPU"),
    ("needs a Turing or later GPU", "no: needs an sm_75+ GPU"),
)


def support_cell(version: str, gpu: GpuInfo, dla_core: int | None, precision: Precision, options: dict) -> str:
    """One cell of the table: what the plan builds, or why it refuses."""
    files = {role: Path(role) for role in ("optimized_onnx", "qdq_onnx", "fp16_onnx", "calibration_cache")}
    try:
        plan = plan_engine(precision, version, files, "input", (3, 32, 32), EngineConfig(dla_core=dla_core, **options), gpu=gpu)
    except ConfigError as exc:
        return next((short for key, short in _SHORT_REFUSALS if key in exc.message), "no: " + exc.message)
    onnx = {"qdq_onnx": "Q/DQ ONNX", "fp16_onnx": "FP16 ONNX", "optimized_onnx": "optimized ONNX"}[plan.onnx_role]
    flags = [name for name, on in (("INT8", plan.int8), ("FP16", plan.fp16)) if on]
    parts = [onnx + (" + " + "/".join(flags) + " flag" + ("s" if len(flags) > 1 else "") if flags else "")]
    if plan.int8_source == "cache":
        parts.append("calibration cache")
    if plan.strongly_typed:
        parts.append("strongly typed")
    if plan.hardware_compatibility:
        parts.append({"ampere+": "AMPERE_PLUS", "same-cc": "SAME_COMPUTE_CAPABILITY"}[plan.hardware_compatibility])
    if plan.dla_core is not None:
        parts.append("DLA, one batch size")
    return ", ".join(parts)


def support_table() -> str:
    """The README's table, from the same rules the plan applies."""
    head = "| TensorRT | device | " + " | ".join(c[0] for c in TABLE_COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(TABLE_COLUMNS) + 2)]
    for label, version in TABLE_VERSIONS:
        for device, gpu, dla in TABLE_DEVICES:
            cells = [support_cell(version, gpu, dla, precision, options) for _, precision, options in TABLE_COLUMNS]
            lines.append(f"| {label} | {device} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
