"""Which CPU engine runs the bundle fastest here: ONNX Runtime on the CPU artifact or OpenVINO on
its OpenVINO form, timed side by side at build time and recorded in the manifest.

Neither wins everywhere (benchmarks/openvino_forms.py): OpenVINO is ahead on 224x224 ResNets with
or without VNNI and on batches, while on a 32x32 ResNet-20 at batch 1, where per-call overhead
dominates, they tie or ONNX Runtime leads. So the build measures at batch 1, 4, 8, 16 and 32
instead of guessing; ``rescompile.runtime.load`` follows what it measured. Where the other engine
is more than MARGIN faster at some batch sizes, the choice records from which batch size each
engine runs (``dispatch``), and the runtime sends each call to the engine measured faster at the
largest measured size not above it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from rescompile._lazy import has_module
from rescompile.models.spec import ModelSpec
from rescompile.runtime.split import dispatch

log = logging.getLogger(__name__)

ROUNDS = 5  # alternating rounds; each engine's samples are pooled over them
RUNS_PER_ROUND = 20  # at most, at batch 1; fewer for a batch that takes long (ROUND_BUDGET_S)
ROUND_BUDGET_S = 0.25
# Before each round, a pause and one untimed call: ONNX Runtime's worker threads spin for a while
# after a call, and on a small CPU they take the cores from OpenVINO's threads if its round starts
# right away (measured: a 32x32 ResNet-20 at batch 8 on 2 AVX-512 VNNI cores, OpenVINO 1.27 ms
# straight after ONNX Runtime, 0.75 ms after 50 ms): each engine is timed as it runs on its own.
SETTLE_S = 0.05
# One frame at a time, as a camera app classifies, a few cameras, and a batch, as a server or an
# offline job does: the engines' order can change between them (a 32x32 ResNet-20 on AVX2 kernels:
# a tie at batch 1, OpenVINO 1.1-1.25x faster from batch 4).
BATCHES = (1, 4, 8, 16, 32)
# The engine for every batch size: OpenVINO when it is faster at every batch size, or more than
# this much faster at one and within it at the others: within it the two are a tie on a busy
# machine, and ONNX Runtime keeps the pixel-input artifact (no numpy normalisation in classify).
# At a batch size where the other engine is more than this much faster, that one runs instead.
MARGIN = 0.05


def measure_cpu_engines(files: dict[str, Path], spec: ModelSpec, threads: int | None = None) -> dict[str, Any] | None:
    """{"fastest", "p50_ms": {engine: {batch: ms}}, "batches", "threads", "cpu", "cpu_flags", ...}
    when both engines can run here, else None (nothing to choose between, or an engine missing)."""
    if "cpu_int8_onnx" not in files or "openvino_int8_onnx" not in files:
        return None
    missing = [m for m in ("onnxruntime", "openvino") if not has_module(m)]
    if missing:
        log.info("CPU engine not measured: %s not installed here", " and ".join(missing))
        return None
    from rescompile.bench.env import cpu_flags, cpu_model
    from rescompile.runtime.onnxruntime import OnnxRuntimeRunner
    from rescompile.runtime.openvino import OpenVINORunner

    # OpenVINO keys its model cache by file path, and the bundle is still in its staging folder: a
    # blob cached now would never be read again, so this compile is not cached.
    runners = {
        "onnxruntime": OnnxRuntimeRunner(files["cpu_int8_onnx"], spec=spec, threads=threads),
        "openvino": OpenVINORunner(files["openvino_int8_onnx"], spec=spec, threads=threads, cache_dir=False),
    }
    p50: dict[str, dict[str, float]] = {k: {} for k in runners}
    runs: dict[str, int] = {}
    try:
        for batch in BATCHES:
            x = np.random.default_rng(0).standard_normal((batch, *spec.input_shape)).astype(np.float32)
            samples = _alternate(runners, x)
            runs[str(batch)] = min(len(v) for v in samples.values())
            for key, values in samples.items():
                p50[key][str(batch)] = round(float(np.median(values)), 4)
    finally:
        for runner in runners.values():
            runner.close()
    ratios = [p50["openvino"][b] / p50["onnxruntime"][b] for b in runs]
    openvino = all(r < 1 for r in ratios) or (min(ratios) < 1 - MARGIN and max(ratios) <= 1 + MARGIN)
    fastest = "openvino" if openvino else "onnxruntime"
    said = ", ".join(f"{r:.2f}x the time at batch {b}" for r, b in zip(ratios, runs))
    other = "onnxruntime" if openvino else "openvino"
    by_batch = {b: other if (r > 1 + MARGIN if openvino else r < 1 - MARGIN) else fastest for r, b in zip(ratios, runs)}
    return {
        "fastest": fastest,
        "by_batch": by_batch,
        "dispatch": dispatch(by_batch),
        "p50_ms": p50,
        "batches": list(BATCHES),
        "threads": threads,
        "runs": runs,
        "cpu": cpu_model(),
        "cpu_flags": cpu_flags(),
        "margin": MARGIN,
        "why": f"OpenVINO took {said} of ONNX Runtime",
    }


def _alternate(runners: dict[str, Any], x: np.ndarray) -> dict[str, list[float]]:
    """Each runner's per-call milliseconds on ``x``, in alternating rounds after a warm-up."""
    import time

    per_round = {}
    for key, runner in runners.items():  # warm up (first calls allocate and pick kernels), and size the rounds
        for _ in range(2):
            t0 = time.perf_counter()
            runner.infer(x)
            took = time.perf_counter() - t0
        per_round[key] = max(2, min(RUNS_PER_ROUND, int(ROUND_BUDGET_S / max(took, 1e-6))))
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(ROUNDS):
        for key, runner in runners.items():
            time.sleep(SETTLE_S)
            runner.infer(x)
            for _ in range(per_round[key]):
                t0 = time.perf_counter()
                runner.infer(x)
                samples[key].append((time.perf_counter() - t0) * 1000.0)
    return samples
