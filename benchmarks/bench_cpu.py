"""The README's CPU results table: every backend against FP32 PyTorch eager, in one run per model.

Models: the embedded default ResNet-20 (digits, 32x32; real accuracy), and torchvision
resnet18 / resnet50 at 224x224 (random weights: latency only; calibrated on 512 real digit
images through their resize-256 / crop-224 preprocessing). For each: `rescompile build`
(no benchmark), then `rescompile bench` over batch sizes with N threads. The CPU INT8 artifact
runs on ONNX Runtime and, with `rescompile[openvino]`, on OpenVINO (the bundle's
model_int8_openvino.onnx); what `rescompile.runtime.load` runs is the one the build measured
faster (manifest cpu_artifact.choice). Its peers quantize the same optimized ONNX from the same 512 calibration images:
ONNX Runtime's own `quantize_static` (QDQ format, per-channel weights, uint8 activations) with
the weight width ONNX Runtime advises for this CPU (8-bit with VNNI, 7-bit without) and the
other width too, and NNCF's `nncf.quantize` (default settings) run on OpenVINO when nncf and
openvino are installed. The artifact is compared with the fastest peer.

    python benchmarks/bench_cpu.py [--threads 2] [--models resnet20,resnet18,resnet50] [--batch-sizes 1,32]

Targets: resnet18 and resnet50 at 224x224, batch 1: what runtime.load runs >= 1.1x the fastest
peer (NNCF + OpenVINO and ONNX Runtime quantize_static); ResNet-20 at 32x32, batch 1 and 32:
>= 1.0x the fastest peer. Writes Markdown tables to OUT/results.md (every backend, then the
comparison per model and batch size, "-" where a backend was not measured) and everything else
under OUT. The CPU's AVX-512/VNNI flags are part of every figure.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import sys
from pathlib import Path

import numpy as np

# What rescompile.runtime.load runs on a CPU: the artifact on ONNX Runtime or the OpenVINO form, as the build measured.
ARTIFACTS = ("ort-int8", "ov-int8")
# Other tools' INT8 of the same model: quantize_static at both weight widths, and NNCF on OpenVINO.
PEERS = ("ort-int8-qstatic", "ort-int8-qstatic-alt", "ov-int8-nncf")
TARGETS = {"resnet18": {1: 1.1}, "resnet50": {1: 1.1}, "resnet20": {1: 1.0, 32: 1.0}}  # model: {batch: x the fastest peer}


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
        min_runs=30, max_s=8.0, warmup_s=2.0, from_pixels=from_pixels, peers=("ort", "nncf"),
    ))
    choice = json.loads((bundle / "manifest.json").read_text())["cpu_artifact"].get("choice") or {}
    return {"name": name, "report": report, "loads": choice.get("fastest", "onnxruntime"), "dispatch": choice.get("dispatch")}


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


def p50(rep, key: str, batch: int) -> float | None:
    m = rep.get(key, batch)
    return m.stats.p50 if m is not None and m.stats is not None else None


def fastest(rep, keys: tuple[str, ...], batch: int) -> tuple[str, float] | None:
    """(key, p50) of the fastest of ``keys`` measured at ``batch``, or None."""
    timed = [(ms, key) for key in keys if (ms := p50(rep, key, batch)) is not None]
    return min(timed)[::-1] if timed else None


def loaded(r: dict, batch: int) -> tuple[str, float] | None:
    """(key, p50) of what runtime.load runs: the CPU engine the build measured faster (manifest
    cpu_artifact.choice), at this batch size where the faster one changed with the batch size."""
    from rescompile.runtime.split import engine_for

    ort_key, ov_key = artifact_keys(r["report"], batch)
    openvino = (engine_for(r["dispatch"], batch) if r.get("dispatch") else r["loads"]) == "openvino"
    key = ov_key if openvino else ort_key
    ms = p50(r["report"], key, batch)
    return None if ms is None else (key, ms)


def artifact_keys(rep, batch: int) -> tuple[str, ...]:
    """The artifact's keys: with --from-pixels, the pixel-input artifact stands for ONNX Runtime's."""
    return tuple("ort-int8-pixels" if k == "ort-int8" and p50(rep, "ort-int8-pixels", batch) is not None else k for k in ARTIFACTS)


def comparison(results: list[dict], batch_sizes: tuple[int, ...]) -> str:
    lines = ["| model | batch | ONNX Runtime INT8 (rescompile) | OpenVINO INT8 (rescompile) | OpenVINO INT8 (NNCF) | "
             "ONNX Runtime quantize_static (faster width) | runtime.load runs | vs the fastest peer |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        rep = r["report"]
        for batch in batch_sizes:
            ort_key, ov_key = artifact_keys(rep, batch)
            qstatic = fastest(rep, PEERS[:2], batch)
            cells = [p50(rep, ort_key, batch), p50(rep, ov_key, batch), p50(rep, "ov-int8-nncf", batch), qstatic and qstatic[1]]
            art, peer = loaded(r, batch), fastest(rep, PEERS, batch)
            runs = "-" if art is None else ("OpenVINO" if art[0] == ov_key else "ONNX Runtime")
            ratio = "-" if art is None or peer is None else f"{peer[1] / art[1]:.2f}x ({rep.backend(peer[0]).name})"
            lines.append(f"| {r['name']} | {batch} | " + " | ".join("-" if ms is None else f"{ms:.2f} ms" for ms in cells)
                         + f" | {runs} | {ratio} |")
    return "\n".join(lines) + "\n"


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


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
            f"torch {env['versions']['torch']}, onnxruntime {env['versions']['onnxruntime']}, "
            f"openvino {version('openvino')}, nncf {version('nncf')}\n\n")
    text = head + table(results) + "\n" + comparison(results, batch_sizes)
    for r in results:
        text += f"\n{r['name']}: {r['report'].verdict}\n"
        for w in r["report"].warnings:
            text += f"  warning: {w}\n"
    (args.out / "results.md").write_text(text)
    print(text)
    ok = True
    for r in results:
        rep = r["report"]
        for batch in batch_sizes:
            art, peer = loaded(r, batch), fastest(rep, PEERS, batch)
            if art is None or peer is None:
                continue
            vs_peer = peer[1] / art[1]
            torch_ms = p50(rep, "torch-fp32", batch)
            want = TARGETS.get(r["name"], {}).get(batch)
            met = want is None or vs_peer >= want
            ok &= met
            print(f"{r['name']} batch {batch}: what runtime.load runs ({rep.backend(art[0]).name}) is {vs_peer:.2f}x the fastest peer "
                  f"({rep.backend(peer[0]).name})" + ("" if torch_ms is None else f", {torch_ms / art[1]:.2f}x PyTorch FP32 eager")
                  + (": no target" if want is None else f" (target: >= {want}x the fastest peer): {'met' if met else 'NOT MET'}"))
    (args.out / "results.json").write_text(json.dumps([{"name": r["name"], **r["report"].to_dict(keep_samples=False)} for r in results],
                                                      indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
