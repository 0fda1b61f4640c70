"""build: bundle files -> a TensorRT engine where TensorRT and an NVIDIA GPU are present.

`engine_from_onnx(plan, ...)` runs the Polygraphy chain for an EnginePlan (see plan.py for how
the plan is chosen for TensorRT 10 and 11) and writes the engine, the timing cache and the
engine's layer report. Where there is no TensorRT or no GPU, `build_target()` says so and the
pipeline keeps the CPU artifact instead.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rescompile import nvidia
from rescompile._io import write_bytes_atomic, write_json_atomic
from rescompile.stages.build.engine import EngineReport, engine_information, engine_report
from rescompile.stages.build.loaders import build_engine_bytes, loader_chain
from rescompile.stages.build.plan import EnginePlan, plan_engine

__all__ = ["EnginePlan", "EngineResult", "Target", "build_target", "engine_from_onnx", "plan_engine"]

log = logging.getLogger(__name__)

ENGINE = "model.engine"
TIMING_CACHE = "timing.cache"
ENGINE_LAYERS = "engine_layers.json"


@dataclass(frozen=True)
class Target:
    """Where engines can be built: TensorRT version and GPU, or why not."""

    trt_version: str | None
    gpu: nvidia.GpuInfo | None

    @property
    def can_build(self) -> bool:
        return self.trt_version is not None and self.gpu is not None

    @property
    def explanation(self) -> str:
        if self.can_build:
            return f"TensorRT {self.trt_version} on {self.gpu.name} ({self.gpu.sm})"
        missing = " and ".join(
            what for what, absent in (("no NVIDIA GPU", self.gpu is None), ("no TensorRT", self.trt_version is None)) if absent
        )
        return f"{missing} here: no engine is built; the bundle holds the CPU artifact for ONNX Runtime"


def build_target() -> Target:
    return Target(nvidia.tensorrt_version(), nvidia.find_gpu())


@dataclass
class EngineResult:
    path: Path
    plan: EnginePlan
    build_seconds: float
    bytes: int
    report: EngineReport | None
    layers_path: Path | None
    timing_cache: Path | None


def _cache_text(plan: EnginePlan) -> tuple[bytes | None, str]:
    """The calibration cache, re-tagged for the TensorRT that builds (TensorRT ignores a cache
    whose tag differs from its own version and would silently calibrate again), and for DLA as
    EntropyCalibration2 (the calibrator DLA requires; the scales are the same numbers)."""
    if plan.int8_source != "cache" or plan.cache_path is None:
        return None, "EntropyCalibration2"
    from rescompile.stages.calibrate.cache import CalibrationCache, read_cache, version_code

    cache = read_cache(plan.cache_path)
    code = version_code(plan.trt_version)
    if cache.version_code != code:
        log.warning("calibration cache tagged for TensorRT %s; re-tagged for TensorRT %s to build", cache.version, plan.trt_version)
        cache = CalibrationCache(code, cache.algorithm, dict(cache.scales))
    if plan.dla_core is not None and cache.algorithm != "EntropyCalibration2":
        log.warning("calibration cache tagged %s; DLA requires EntropyCalibration2, so it is replayed as such", cache.algorithm)
        cache = CalibrationCache(cache.version_code, "EntropyCalibration2", dict(cache.scales))
    return cache.to_text().encode(), cache.algorithm


def timing_cache_record(path: Path) -> Path:
    """The JSON beside a timing cache that says which TensorRT and GPU made it."""
    return path.with_name(path.name + ".json")


def _timing_record(plan: EnginePlan, gpu: nvidia.GpuInfo | None) -> dict[str, Any]:
    return {"tensorrt_version": plan.trt_version, "gpu": gpu.name if gpu else None,
            "compute_capability": gpu.compute_capability if gpu else None}


def _timing_cache_usable(plan: EnginePlan, gpu: nvidia.GpuInfo | None) -> bool:
    """A timing cache holds tactic timings of one GPU under one TensorRT: another machine's is not
    loaded (TensorRT reports the mismatch, Polygraphy carries on and would merge it and write it
    back). A cache without a record (from trtexec, say) is loaded as the user asked."""
    path = plan.timing_cache
    if path is None or not Path(path).exists():
        return False
    record_path = timing_cache_record(Path(path))
    if not record_path.exists():
        return True
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        record = {}
    here = _timing_record(plan, gpu)
    made = {k: record.get(k) for k in here}
    if made != here:
        log.warning(
            "timing cache %s was made by TensorRT %s on %s; this is TensorRT %s on %s: not loaded, a new one replaces it",
            Path(path).name, made["tensorrt_version"], made["gpu"], here["tensorrt_version"], here["gpu"],
        )
        return False
    return True


def engine_from_onnx(
    plan: EnginePlan, out_dir: Path, *, blocks: list[dict[str, Any]] | None = None, node_names: dict[str, str] | None = None,
    gpu: nvidia.GpuInfo | None = None,
) -> EngineResult:
    """Build the engine ``plan`` describes into ``out_dir`` (needs TensorRT and a GPU: ``gpu``,
    found when not given)."""
    gpu = gpu or nvidia.find_gpu()
    text, algorithm = _cache_text(plan)
    usable = _timing_cache_usable(plan, gpu)
    if not usable and plan.timing_cache is not None and Path(plan.timing_cache).exists():
        # Polygraphy merges the file it saves into with whatever is there (ignoring mismatches):
        # another machine's cache is removed first, so the new one holds this GPU's timings only.
        Path(plan.timing_cache).unlink()
        timing_cache_record(Path(plan.timing_cache)).unlink(missing_ok=True)
    chain = loader_chain(plan, cache_text=text, algorithm=algorithm, load_timing_cache=usable)
    start = time.perf_counter()
    data = build_engine_bytes(chain)
    seconds = time.perf_counter() - start
    path = write_bytes_atomic(out_dir / ENGINE, data)
    report, layers_path = None, None
    try:
        info = engine_information(data, version_compatible=plan.version_compatible, dla_core=plan.dla_core)
        layers_path = write_json_atomic(out_dir / ENGINE_LAYERS, info)
        report = engine_report(info, blocks or [], node_names or {})
    except Exception as exc:  # the report is a diagnosis; the engine itself is fine
        log.warning("could not read the engine's layer information: %s", exc)
    timing = plan.timing_cache if plan.timing_cache is not None and Path(plan.timing_cache).exists() else None
    if timing is not None:
        write_json_atomic(timing_cache_record(Path(timing)), _timing_record(plan, gpu))
    return EngineResult(path, plan, seconds, len(data), report, layers_path, timing)


def node_names_by_output(onnx_path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    return {o: (n.name or o) for n in model.graph.node for o in n.output}


def read_blocks(fusion_report: Path) -> list[dict[str, Any]]:
    return list(json.loads(Path(fusion_report).read_text()).get("blocks", []))
