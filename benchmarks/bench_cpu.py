"""The README's CPU results table: every backend against FP32 PyTorch eager, in one run per model.

Models: the embedded default ResNet-20 (digits, 32x32; real accuracy), and torchvision
resnet18 / resnet50 at 224x224 (random weights: latency only; calibrated on 512 real digit
images through their resize-256 / crop-224 preprocessing). For each: `rescompile build`
(no benchmark), then `rescompile bench` over batch sizes with N threads. Its peer is the same
optimized ONNX quantized by ONNX Runtime's own `quantize_static` (QDQ format, per-channel
weights, uint8 activations, the same 512 calibration images) with the weight width ONNX Runtime
advises for this CPU (8-bit with VNNI, 7-bit without); the other width is measured too, and the
artifact is compared with the faster of the two.

    python benchmarks/bench_cpu.py [--threads 2] [--models resnet20,resnet18,resnet50] [--batch-sizes 1,32]

Targets: resnet18 and resnet50 at 224x224, batch 1: the CPU INT8 artifact >= 1.1x the faster
quantize_static and >= 4.5x (resnet18) / 4.0x (resnet50) PyTorch FP32 eager; ResNet-20 at
32x32 >= 1.0x the faster peer at every batch size. Writes a Markdown table to OUT/results.md
and everything else under OUT. The CPU's AVX-512/VNNI flags are part of every figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import numpy as np


def run(name: str, out: Path, threads: int, batch_sizes: tuple[int, ...], from_pixels: bool = False) -> dict:
    from rescompile.bench import run_bench
    from rescompile.config import BenchConfig, BuildConfig, CalibConfig, DataConfig, Precision
    from rescompile.data.datasets import load_dataset
    from rescompile.models.default import embedded_default
    from rescompile.pipeline import build
    from rescompile.bench.peers import ort_quantize_static
    from rescompile.stages.calibrate.qdq import has_vnni
    from rescompile.stages.calibrate.stage import sample

    bundle = out / name
    digits = load_dataset("digits")
    calib = CalibConfig(num_images=512, batch_size=16)
    if name == "resnet20":
        cfg = BuildConfig(source=str(embedded_default().path), output_dir=bundle, calib=calib, bench=False)
    else:
        cfg = BuildConfig(source=name, num_classes=10, output_dir=bundle, precision=Precision.int8, calib=calib,
                          calib_data=DataConfig("digits"), bench=False)
    result = build(cfg)
    images = sample(digits.train, calib)
    vnni = has_vnni()
    other = ort_quantize_static(result.files["optimized_onnx"], bundle / "peer_other_width.onnx", result.model.spec, images,
                                reduce_range=vnni)  # the width the built-in peer does not use
    report = run_bench(BenchConfig(
        bundle=bundle, batch_sizes=batch_sizes, threads=threads, max_eval_images=360 if name == "resnet20" else 60,
        extra_onnx=(("ort-int8-qstatic-alt", f"ONNX Runtime INT8 (quantize_static, {'7' if vnni else '8'}-bit weights)", other),),
        min_runs=30, max_s=8.0, warmup_s=2.0, from_pixels=from_pixels,
    ))
    return {"name": name, "report": report}


def table(results: list[dict]) -> str:
    lines = ["| model | backend | batch | p50 ms | p90 ms | p99 ms | images/s | vs PyTorch FP32 | top-1 |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rep = r["report"]
        for m in rep.measurements:
            if m.stats is None:
                continue
            acc = rep.accuracy_of(m.key)
            top1 = "-" if acc is None or acc.top1 is None or r["name"] != "resnet20" else f"{acc.top1:.2%}"
            lines.append(
                f"| {r['name']} | {rep.backend(m.key).name} | {m.batch} | {m.stats.p50:.2f} | {m.stats.p90:.2f} | {m.stats.p99:.2f} | "
                f"{m.stats.throughput:.0f} | {m.speedup:.2f}x | {top1} |"
            )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_cpu"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="resnet20,resnet18,resnet50")
    parser.add_argument("--batch-sizes", default="1,32")
    parser.add_argument("--from-pixels", action="store_true",
                        help="time every backend from uint8 pixels (float-input ones normalise inside the timed call) and add the "
                             "pixel-input artifact, which is then the one compared")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run(name, args.out, args.threads, batch_sizes, args.from_pixels) for name in args.models.split(",")]
    from rescompile.bench.env import describe_cpu_flags

    env = results[0]["report"].environment
    head = (f"{dt.date.today().isoformat()}, {env['cpu']} ({env['cpu_cores']} cores; {describe_cpu_flags(env)}), "
            f"{args.threads} threads, " + ("timed from uint8 pixels, " if args.from_pixels else "") +
            f"torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}\n\n")
    text = head + table(results)
    for r in results:
        text += f"\n{r['name']}: {r['report'].verdict}\n"
        for w in r["report"].warnings:
            text += f"  warning: {w}\n"
    (args.out / "results.md").write_text(text)
    print(text)
    ok = True
    targets = {"resnet18": (1.1, 4.5), "resnet50": (1.1, 4.0), "resnet20": (1.0, None)}
    for r in results:
        rep = r["report"]
        for batch in batch_sizes:
            torch_m, art = rep.get("torch-fp32", batch), rep.get("ort-int8-pixels", batch) or rep.get("ort-int8", batch)
            peers = [m for m in (rep.get("ort-int8-qstatic", batch), rep.get("ort-int8-qstatic-alt", batch)) if m and m.stats]
            if not (torch_m and art and peers and art.stats and torch_m.stats):
                continue
            vs_peer = min(p.stats.p50 for p in peers) / art.stats.p50
            vs_torch = torch_m.stats.p50 / art.stats.p50
            want_peer, want_torch = targets.get(r["name"], (1.0, None))
            met = vs_peer >= want_peer and (want_torch is None or batch != 1 or vs_torch >= want_torch)
            ok &= met
            print(f"{r['name']} batch {batch}: CPU INT8 artifact {vs_torch:.2f}x PyTorch FP32 eager, {vs_peer:.2f}x the faster "
                  f"quantize_static (targets: peer >= {want_peer}x" + (f", PyTorch >= {want_torch}x at batch 1" if want_torch else "")
                  + f"): {'met' if met else 'NOT MET'}")
    (args.out / "results.json").write_text(json.dumps([{"name": r["name"], **r["report"].to_dict(keep_samples=False)} for r in results],
                                                      indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
