"""ONNX Runtime CPU latency of torchvision resnet18 (224x224, batch 1) before and after `optimize`.

"Before" is the model as a training-oriented export leaves it: BatchNorm kept as separate
nodes, no constant folding. "After" is rescompile's optimized ONNX. Both run in the same
process with the same ONNX Runtime settings (default graph optimizations, N intra-op
threads), on the same input; warmup is not timed; every sample is kept.

    python benchmarks/optimize_latency.py [--threads 2] [--runs 200] [--model resnet18]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def export_unoptimized(name: str, path: Path) -> tuple[int, int]:
    import torch

    from rescompile.models.load import load_model

    torch.manual_seed(0)
    m = load_model(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            m.module.eval(), (torch.zeros(1, *m.spec.input_shape),), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=torch.onnx.TrainingMode.PRESERVE, do_constant_folding=False,
        )
    return m.spec.input_shape


def time_session(path: Path, x: np.ndarray, threads: int, runs: int, warmup_s: float = 2.0) -> list[float]:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    feed = {s.get_inputs()[0].name: x}
    end = time.perf_counter() + warmup_s
    while time.perf_counter() < end:
        s.run(None, feed)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        s.run(None, feed)
        samples.append((time.perf_counter() - t0) * 1e3)
    return samples


def main() -> int:
    import onnxruntime as ort

    from rescompile.stages.optimize import optimize_onnx

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw, opt = Path(tmp) / "raw.onnx", Path(tmp) / "opt.onnx"
        shape = export_unoptimized(args.model, raw)
        result = optimize_onnx(raw, opt)
        x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
        # Interleave the two models' runs so drift on a shared machine hits both alike.
        before, after = [], []
        for _ in range(4):
            before += time_session(raw, x, args.threads, args.runs // 4)
            after += time_session(opt, x, args.threads, args.runs // 4)
    print(f"machine : {platform.processor() or platform.machine()}, {args.threads} threads, onnxruntime {ort.__version__}")
    print(f"model   : {args.model} {shape[1]}x{shape[2]}, batch 1; rewrites {result.report.rewrites}")
    print(f"nodes   : {result.report.nodes_before} -> {result.report.nodes_after}; BatchNormalization {result.report.bn_before} -> {result.report.bn_after}")
    print(f"{'':8}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'std':>7}")
    for label, s in (("before", before), ("after", after)):
        q = np.percentile(s, [50, 90, 99])
        print(f"{label:8}{q[0]:9.2f}{q[1]:9.2f}{q[2]:9.2f}{statistics.mean(s):9.2f}{statistics.stdev(s):7.2f}")
    p_before, p_after = float(np.median(before)), float(np.median(after))
    print(f"speed-up at p50: {p_before / p_after:.2f}x ({'not slower: PASS' if p_after <= p_before * 1.02 else 'SLOWER: FAIL'})")
    return 0 if p_after <= p_before * 1.02 else 1


if __name__ == "__main__":
    sys.exit(main())
