"""Which CPU engine runs the bundle fastest here: ONNX Runtime on the CPU artifact or OpenVINO on
its OpenVINO form, timed side by side at build time and recorded in the manifest.

Neither wins everywhere (benchmarks/openvino_forms.py): OpenVINO is ahead on 224x224 ResNets with
or without VNNI, ONNX Runtime on a 32x32 ResNet-20 at batch 1, where per-call overhead dominates.
So the build measures instead of guessing (OpenVINO must win by MARGIN); ``rescompile.runtime.load``
follows what it measured.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rescompile._lazy import has_module
from rescompile.models.spec import ModelSpec

log = logging.getLogger(__name__)

ROUNDS = 5  # alternating rounds; each engine's samples are pooled over them
RUNS_PER_ROUND = 20
BATCH = 1  # what an app classifying one frame at a time runs
# OpenVINO is chosen only when it is this much faster: within it the two are a tie on a busy
# machine, and ONNX Runtime keeps the pixel-input artifact (no numpy normalisation in classify).
MARGIN = 0.05


def measure_cpu_engines(files: dict[str, Path], spec: ModelSpec, threads: int | None = None) -> dict[str, Any] | None:
    """{"fastest", "p50_ms", "batch", "threads", "cpu", "cpu_flags", ...} when both engines can
    run here, else None (nothing to choose between, or an engine missing)."""
    if "cpu_int8_onnx" not in files or "openvino_int8_onnx" not in files:
        return None
    missing = [m for m in ("onnxruntime", "openvino") if not has_module(m)]
    if missing:
        log.info("CPU engine not measured: %s not installed here", " and ".join(missing))
        return None
    import time

    from rescompile.bench.env import cpu_flags, cpu_model
    from rescompile.runtime.onnxruntime import OnnxRuntimeRunner
    from rescompile.runtime.openvino import OpenVINORunner

    x = np.random.default_rng(0).standard_normal((BATCH, *spec.input_shape)).astype(np.float32)
    runners = {
        "onnxruntime": OnnxRuntimeRunner(files["cpu_int8_onnx"], spec=spec, threads=threads),
        "openvino": OpenVINORunner(files["openvino_int8_onnx"], spec=spec, threads=threads),
    }
    samples: dict[str, list[float]] = {k: [] for k in runners}
    try:
        for runner in runners.values():  # warm up: first calls allocate and pick kernels
            for _ in range(5):
                runner.infer(x)
        for _ in range(ROUNDS):
            for key, runner in runners.items():
                for _ in range(RUNS_PER_ROUND):
                    t0 = time.perf_counter()
                    runner.infer(x)
                    samples[key].append((time.perf_counter() - t0) * 1000.0)
    finally:
        for runner in runners.values():
            runner.close()
    p50 = {k: round(float(np.median(v)), 4) for k, v in samples.items()}
    fastest = "openvino" if p50["openvino"] < p50["onnxruntime"] * (1 - MARGIN) else "onnxruntime"
    return {
        "fastest": fastest,
        "p50_ms": p50,
        "batch": BATCH,
        "threads": threads,
        "runs": ROUNDS * RUNS_PER_ROUND,
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "margin": MARGIN,
        "why": (f"openvino measured more than {MARGIN:.0%} faster at batch {BATCH} on this CPU" if fastest == "openvino"
                else f"openvino did not measure more than {MARGIN:.0%} faster at batch {BATCH} on this CPU"),
    }
