"""Every calibrator on models it was not tuned on: top-1 drop and agreement with FP32 over the
whole held-out set, for the TensorRT Q/DQ model (reference Q/DQ semantics: ONNX Runtime with graph
optimizations off) and the CPU INT8 artifact (ONNX Runtime as deployed).

Models: rescompile's embedded digits ResNet-20; a digits ResNet whose input is normalised outside
the graph with MNIST-like statistics (background -0.45, strokes +3.0: the spiky input); the same
network taking raw 0-255 pixels; torchvision resnet18 trained briefly on digits at 32x32 and 64x64.
Each calibrator runs with --no-fallback (what it does alone); "default" is `rescompile calibrate`
as shipped (entropy with the safety net).

    python benchmarks/calibrators.py [--threads 2] [--skip-resnet18 | --only-resnet18]

The models made elsewhere come from tests/foreign/corpus.py: the same definitions the tests use.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
METHODS = [("entropy", ["--method", "entropy", "--no-fallback"]), ("max", ["--method", "max", "--no-fallback"]),
           ("percentile 99.99", ["--method", "percentile", "--no-fallback"]), ("mse", ["--method", "mse", "--no-fallback"]),
           ("default (entropy + safety net)", [])]


def cpu_line() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), platform.machine())
    flags = set(next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), []))
    marks = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f in flags]
    return f"{name} ({', '.join(marks) or 'no AVX2/AVX-512/VNNI'})"


def session(path: Path, reference: bool, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    so.intra_op_num_threads = threads
    if reference:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def predict(path: Path, x: np.ndarray, reference: bool, threads: int) -> np.ndarray:
    s = session(path, reference, threads)
    name = s.get_inputs()[0].name
    return np.concatenate([s.run(None, {name: x[i:i + 128]})[0] for i in range(0, len(x), 128)]).argmax(1)


def calibrate(source: Path, out: Path, data: list[str], extra: list[str]) -> str | None:
    """None when the artifacts were written, else the error line (the safety net may refuse)."""
    cmd = ["rescompile", "calibrate", str(source), "-o", str(out), *data, *extra, "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        return next((ln for ln in done.stderr.splitlines() if ln.startswith("error:")), done.stderr[-300:])
    return None


def judge(fp32_onnx: Path, out: Path, x: np.ndarray, y: np.ndarray, threads: int) -> dict:
    ref = predict(fp32_onnx, x, True, threads)
    qdq = predict(out / "model_int8_qdq.onnx", x, True, threads)
    cpu = predict(out / "model_int8_cpu.onnx", x, False, threads)
    fp32 = (ref == y).mean()
    return {"fp32": fp32, **{k: (100 * (fp32 - (p == y).mean()), (p == ref).mean()) for k, p in (("qdq", qdq), ("cpu", cpu))}}


def foreign_models(tmp: Path) -> list[tuple[str, Path, list[str], np.ndarray, np.ndarray]]:
    from tests.foreign.corpus import trained_normalised_digits

    rows = []
    for label, stats, name in (("normalised input (MNIST-like, spiky)", (0.13, 0.29), "spiky"),
                               ("raw 0-255 pixels", (0.0, 1.0 / 255.0), "raw255")):
        f, data = trained_normalised_digits(tmp, stats=stats, name=name)
        np.save(tmp / f"{name}_calib.npy", data["calib"])
        rows.append((label, f.path, ["--data", str(tmp / f"{name}_calib.npy")], data["eval_x"], data["eval_y"]))
    return rows


def own_models(tmp: Path, skip_resnet18: bool, threads: int, only_resnet18: bool = False) -> list[tuple[str, Path, list[str], np.ndarray, np.ndarray]]:
    from rescompile.config import DataConfig, Optimizer, TrainConfig
    from rescompile.data.datasets import load_dataset
    from rescompile.models.default import embedded_default
    from rescompile.models.load import load_model
    from rescompile.train import train

    test = load_dataset(DataConfig("digits")).test
    sources = [] if only_resnet18 else [("rescompile digits ResNet-20 (embedded)", embedded_default().path)]
    if not skip_resnet18:
        # Adam at 1e-3 trains resnet18 on 1,258 digits in a few epochs (SGD at 0.1 needs many more).
        for size, epochs in ((32, 6), (64, 4)):
            result = train(TrainConfig(arch="resnet18", input_size=size, epochs=epochs, optimizer=Optimizer.adam, lr=1e-3,
                                       warmup_epochs=0, num_threads=threads, output_dir=tmp / f"r18_{size}"))
            sources.append((f"torchvision resnet18 at {size}x{size} (digits, {epochs} epochs, test {result.test_acc:.1%})", result.checkpoint))
    rows = []
    for label, path in sources:
        spec = load_model(path).spec
        x = spec.preprocessing(test.images(range(len(test))))
        rows.append((label, Path(path), ["--data", "digits"], x, np.asarray(test.labels)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-resnet18", action="store_true")
    ap.add_argument("--only-resnet18", action="store_true")
    args = ap.parse_args()
    print(f"date: {dt.date.today().isoformat()}  CPU: {cpu_line()}  threads: {args.threads}")
    print("| model | calibrator | FP32 top-1 | Q/DQ drop (pts) | Q/DQ agreement | CPU INT8 drop (pts) | CPU INT8 agreement |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        models = own_models(tmp, args.skip_resnet18, args.threads, args.only_resnet18)
        for label, source, data, x, y in [*models, *([] if args.only_resnet18 else foreign_models(tmp))]:
            for i, (method, extra) in enumerate(METHODS):
                out = tmp / f"out_{abs(hash((label, method)))}"
                refused = calibrate(source, out, data, extra)
                if refused:
                    print(f"| {label if i == 0 else ''} | {method} | stopped: {refused[:160]} | | | | |", flush=True)
                    continue
                fp32_onnx = source if source.suffix == ".onnx" else out / "model_opt.onnx"
                r = judge(fp32_onnx, out, x, y, args.threads)
                note = json.loads((out / "accuracy.json").read_text()).get("safety_net", {}).get("note")
                print(f"| {label if i == 0 else ''} | {method}{' (' + note + ')' if note else ''} | {r['fp32']:.2%} | "
                      f"{r['qdq'][0]:+.2f} | {r['qdq'][1]:.2%} | {r['cpu'][0]:+.2f} | {r['cpu'][1]:.2%} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
