"""The README's CPU results table: every backend against FP32 PyTorch eager, in one run per model.

Models: the embedded default ResNet-20 (digits, 32x32; real accuracy), and torchvision
resnet18 / resnet50 at 224x224 (random weights: latency only; calibrated on 512 real digit
images through their resize-256 / crop-224 preprocessing). For each: `rescompile build`
(no benchmark), then `rescompile bench` over batch sizes with N threads, with one more
backend for comparison: the same optimized ONNX quantized by ONNX Runtime's own
`quantize_static` (QDQ format, per-channel weights, uint8 activations, the same 512
calibration images).

    python benchmarks/bench_cpu.py [--threads 2] [--models resnet20,resnet18,resnet50] [--batch-sizes 1,8,32]

Target (issue 6): resnet18, batch 1, 2 threads: the CPU INT8 artifact >= 3.5x faster than
PyTorch FP32 eager at p50, and no slower than quantize_static. Writes a Markdown table to
OUT/results.md and everything else under OUT.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path

import numpy as np


def quantize_static_model(src: Path, dst: Path, spec, images) -> Path:
    """ONNX Runtime's own static quantization of the same model, from the same images."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from rescompile.data.images import iter_batches

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(x for x, _ in iter_batches(images, spec.preprocessing, 16))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {"input": x}

    quantize_static(
        str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )
    return dst


def run(name: str, out: Path, threads: int, batch_sizes: tuple[int, ...]) -> dict:
    from rescompile.bench import run_bench
    from rescompile.config import BenchConfig, BuildConfig, CalibConfig, DataConfig, Precision
    from rescompile.data.datasets import load_dataset
    from rescompile.pipeline import build, default_model, default_model_path
    from rescompile.stages.calibrate.stage import sample

    bundle = out / name
    digits = load_dataset("digits")
    calib = CalibConfig(num_images=512, batch_size=16)
    if name == "resnet20":
        default_model()  # trained once and cached
        cfg = BuildConfig(source=str(default_model_path()), output_dir=bundle, calib=calib, bench=False)
    else:
        cfg = BuildConfig(source=name, num_classes=10, output_dir=bundle, precision=Precision.int8, calib=calib,
                          calib_data=DataConfig("digits"), bench=False)
    result = build(cfg)
    images = sample(digits.train, calib)
    qs = quantize_static_model(result.files["optimized_onnx"], bundle / "model_int8_ort_quantize_static.onnx", result.model.spec, images)
    report = run_bench(BenchConfig(
        bundle=bundle, batch_sizes=batch_sizes, threads=threads, max_eval_images=360 if name == "resnet20" else 60,
        extra_onnx=(("ort-int8-qstatic", "ONNX Runtime INT8 (quantize_static)", qs),), min_runs=30, max_s=8.0, warmup_s=2.0,
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
    parser.add_argument("--batch-sizes", default="1,8,32")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    results = [run(name, args.out, args.threads, batch_sizes) for name in args.models.split(",")]
    env = results[0]["report"].environment
    head = (f"{dt.date.today().isoformat()}, {env['cpu']} ({env['cpu_cores']} cores), {args.threads} threads, "
            f"torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}\n\n")
    text = head + table(results)
    for r in results:
        text += f"\n{r['name']}: {r['report'].verdict}\n"
        for w in r["report"].warnings:
            text += f"  warning: {w}\n"
    (args.out / "results.md").write_text(text)
    print(text)
    ok = True
    r18 = next((r["report"] for r in results if r["name"] == "resnet18"), None)
    if r18 is not None:
        torch1, int8, qs = (r18.get(k, 1) for k in ("torch-fp32", "ort-int8", "ort-int8-qstatic"))
        speed = torch1.stats.p50 / int8.stats.p50
        vs_qs = qs.stats.p50 / int8.stats.p50
        ok = speed >= 3.5 and vs_qs >= 1.0
        print(f"resnet18 batch 1: CPU INT8 artifact {speed:.2f}x faster than PyTorch FP32 eager (target >= 3.5x), "
              f"{vs_qs:.2f}x the speed of quantize_static (target >= 1.0): {'met' if ok else 'NOT MET'}")
    (args.out / "results.json").write_text(json.dumps([{"name": r["name"], **r["report"].to_dict(keep_samples=False)} for r in results],
                                                      indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
