"""GPU results for users with TensorRT: TensorRT INT8 and FP16 engines against FP32 PyTorch eager on CUDA.

For each model: `rescompile build --precision int8` (which builds the INT8 engine here), then
`rescompile bench` on the GPU over batch sizes: PyTorch FP32 eager (CUDA, the reference),
optionally channels_last and torch.compile, ONNX Runtime FP32 with the CUDA execution
provider when installed, TensorRT INT8 compute-only and end-to-end (host-device copies
included), and an FP16 engine built on the spot so INT8 is always seen next to FP16. Engine
build times are reported apart from latency. On a Jetson, `tegrastats` adds power draw and
energy per image, and the power mode is recorded.

    python benchmarks/bench_gpu.py [--models resnet20,resnet18,resnet50] [--batch-sizes 1,8,32] [--compile]

Needs TensorRT 10 or 11 and an NVIDIA GPU; exits with a one-line explanation otherwise.
Writes OUT/results.md (the table) and each model's report under OUT/<model>/bench.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/bench_gpu"))
    parser.add_argument("--models", default="resnet20,resnet18,resnet50")
    parser.add_argument("--batch-sizes", default="1,8,32")
    parser.add_argument("--compile", action="store_true", help="also torch.compile")
    args = parser.parse_args()

    from rescompile import nvidia
    from rescompile.bench import run_bench
    from rescompile.config import BenchConfig, BuildConfig, CalibConfig, DataConfig, EngineConfig
    from rescompile.pipeline import build, default_model, default_model_path

    if nvidia.tensorrt_version() is None or nvidia.find_gpu() is None:
        print("needs TensorRT and an NVIDIA GPU (this machine has "
              f"TensorRT {nvidia.tensorrt_version() or 'none'}, GPU {getattr(nvidia.find_gpu(), 'name', 'none')}); "
              "benchmarks/bench_cpu.py is the CPU version", file=sys.stderr)
        return 2
    batch_sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    engine = EngineConfig(min_batch=1, opt_batch=max(1, min(8, max(batch_sizes))), max_batch=max(batch_sizes))
    lines = [f"{dt.date.today().isoformat()}, {nvidia.find_gpu().name}, TensorRT {nvidia.tensorrt_version()}", "",
             "| model | backend | batch | p50 ms | p99 ms | images/s | vs PyTorch FP32 | top-1 |", "|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for name in args.models.split(","):
        bundle = args.out / name
        calib = CalibConfig(num_images=512)
        if name == "resnet20":
            default_model()
            cfg = BuildConfig(source=str(default_model_path()), output_dir=bundle, calib=calib, engine=engine, bench=False)
        else:
            cfg = BuildConfig(source=name, num_classes=10, output_dir=bundle, calib=calib, calib_data=DataConfig("digits"),
                              engine=engine, bench=False)
        build(cfg)
        report = run_bench(BenchConfig(bundle=bundle, batch_sizes=batch_sizes, device="cuda", compile=args.compile,
                                       channels_last=True, max_eval_images=360 if name == "resnet20" else 64))
        for m in report.measurements:
            if m.stats is None:
                continue
            acc = report.accuracy_of(m.key)
            top1 = "-" if acc is None or acc.top1 is None or name != "resnet20" else f"{acc.top1:.2%}"
            lines.append(f"| {name} | {report.backend(m.key).name} | {m.batch} | {m.stats.p50:.3f} | {m.stats.p99:.3f} | "
                         f"{m.stats.throughput:.0f} | {m.speedup:.2f}x | {top1} |")
        verdicts.append(f"{name}: {report.verdict}" + "".join(f"\n  warning: {w}" for w in report.warnings))
    text = "\n".join(lines) + "\n\n" + "\n".join(verdicts) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
