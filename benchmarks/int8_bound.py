"""How fast any INT8 ResNet can run on this CPU, beside PyTorch FP32 eager: the arithmetic bound.

For each model: its multiply-accumulates (every Conv2d and Linear, counted on the module), PyTorch FP32 eager
at batch 1 on N threads (the `rescompile bench` reference backend, same timing code), and two lower bounds on
the latency of an INT8 model that computes every multiply-accumulate:

- instruction set: MACs / the peak rate of AVX2's u8 x s8 dot-product sequence (vpmaddubsw, vpmaddwd, vpaddd:
  what an x86 CPU without VNNI has) on N threads, measured by benchmarks/int8_peak.c (needs a C compiler);
  where the CPU has AVX512-VNNI, also MACs / the peak rate of vpdpbusd (AMX, where present, is not bounded);
- ONNX Runtime conv kernels: the sum of the model's convolutions each run alone through ONNX Runtime's
  uint8 NHWC QLinearConv (symmetric int8 per-channel weights), less the cost of a call with no arithmetic
  (a 4-channel 1x1 conv on one pixel): the convs with nothing else in between.

PyTorch's time divided by a bound is the largest speed-up over PyTorch an INT8 artifact can show here.
Run it under benchmarks/without_vnni.py to see ONNX Runtime and PyTorch on their AVX2 kernels (the
instruction-set bound is the AVX2 one either way):

    python benchmarks/int8_bound.py [--threads 2] [--models resnet18,resnet50,resnet20]
    python benchmarks/without_vnni.py -- python benchmarks/int8_bound.py
    python benchmarks/without_vnni.py --isa avx512-vnni -- python benchmarks/int8_bound.py   (VNNI, no AMX)

Writes OUT/int8_bound.md and OUT/int8_bound.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PEAK_SOURCE = HERE / "int8_peak.c"
# The targets at batch 1 (PyTorch FP32 eager / artifact); ResNet-20 has none against PyTorch.
TARGETS = {"resnet18": 4.5, "resnet50": 4.0}


@dataclass(frozen=True)
class ConvShape:
    """One convolution (a Linear is a 1x1 conv on a 1x1 image): what its cost depends on."""

    cin: int
    cout: int
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    groups: int
    in_hw: tuple[int, int]
    out_hw: tuple[int, int]
    linear: bool = False

    @property
    def macs(self) -> int:
        return self.cout * (self.cin // self.groups) * self.kernel[0] * self.kernel[1] * self.out_hw[0] * self.out_hw[1]


def layer_shapes(module, input_shape: tuple[int, int, int]) -> list[ConvShape]:
    """Every Conv2d and Linear the module runs on one image, in execution order."""
    import torch

    shapes: list[ConvShape] = []

    def conv_hook(mod, args, out):
        x = args[0]
        pad = mod.padding if isinstance(mod.padding, tuple) else None
        if pad is None:  # "same"/"valid": recover it from the sizes
            pad = tuple(max(0, ((o - 1) * s + (k - 1) * d + 1 - i) // 2) for o, s, k, d, i in
                        zip(out.shape[-2:], mod.stride, mod.kernel_size, mod.dilation, x.shape[-2:]))
        shapes.append(ConvShape(mod.in_channels, mod.out_channels, tuple(mod.kernel_size), tuple(mod.stride), tuple(pad),
                                mod.groups, tuple(x.shape[-2:]), tuple(out.shape[-2:])))

    def linear_hook(mod, args, out):
        shapes.append(ConvShape(mod.in_features, mod.out_features, (1, 1), (1, 1), (0, 0), 1, (1, 1), (1, 1), linear=True))

    handles = []
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
    try:
        with torch.inference_mode():
            module(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
    return shapes


def qlinearconv_model(shape: ConvShape, seed: int = 0):
    """A one-node ONNX model: ONNX Runtime's channels-last uint8 QLinearConv with this shape (no layout changes)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    kh, kw = shape.kernel
    weight = rng.integers(-63, 64, (shape.cout, shape.cin // shape.groups, kh, kw)).astype(np.int8)
    consts = [numpy_helper.from_array(weight, "w")] + [
        numpy_helper.from_array(np.asarray(value, dtype=dtype), name) for name, value, dtype in (
            ("x_scale", 0.02, np.float32), ("x_zero", 128, np.uint8),
            ("w_scale", np.full(shape.cout, 0.01), np.float32), ("w_zero", np.zeros(shape.cout), np.int8),
            ("y_scale", 0.05, np.float32), ("y_zero", 0, np.uint8))]
    node = helper.make_node(
        "QLinearConv", ["x", "x_scale", "x_zero", "w", "w_scale", "w_zero", "y_scale", "y_zero"], ["y"],
        domain="com.microsoft", channels_last=1, kernel_shape=[kh, kw], strides=list(shape.stride), group=shape.groups,
        pads=[shape.padding[0], shape.padding[1], shape.padding[0], shape.padding[1]])
    graph = helper.make_graph(
        [node], "conv", [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, *shape.in_hw, shape.cin])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, None)], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


def time_ms(fn, budget) -> float:
    from rescompile.bench.timing import measure

    return measure(fn, 1, budget).p50


def ort_conv_ms(shape: ConvShape, threads: int, budget) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(qlinearconv_model(shape).SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).integers(0, 256, (1, *shape.in_hw, shape.cin)).astype(np.uint8)
    return time_ms(lambda: session.run(None, {"x": x}), budget)


def torch_ms(module, input_shape: tuple[int, int, int], threads: int, budget) -> float:
    from rescompile.bench.backends import TorchBackend

    backend = TorchBackend(module, input_shape, threads=threads)
    return time_ms(backend.prepare(np.random.default_rng(2).standard_normal((1, *input_shape)).astype(np.float32)), budget)


def peak_rates(threads: int) -> tuple[dict | None, str]:
    """AVX2 u8s8 and FP32 FMA peak rates (GMAC/s) on ``threads`` threads, and AVX512-VNNI's where the
    CPU has it (``vnni_gmacs``), or None and why not."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return None, f"not an x86-64 CPU ({platform.machine()})"
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        return None, "no C compiler (set CC) to build benchmarks/int8_peak.c"
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "int8_peak"
        built = subprocess.run([cc, "-O2", "-mavx2", "-mfma", "-pthread", str(PEAK_SOURCE), "-o", str(exe)],
                               capture_output=True, text=True)
        if built.returncode:
            return None, f"{cc} could not build int8_peak.c: {built.stderr.strip().splitlines()[-1:]}"
        ran = subprocess.run([str(exe), str(threads)], capture_output=True, text=True)
    found = dict(re.findall(r"(\w+)=([\d.]+)", ran.stdout))
    if ran.returncode or "u8s8_gmacs" not in found:
        return None, f"int8_peak failed: {ran.stderr.strip() or ran.stdout.strip()}"
    return {k: float(v) for k, v in found.items() if k.endswith("_gmacs")}, ""


def load(name: str):
    from rescompile.models.default import embedded_default
    from rescompile.models.load import load_model

    loaded = load_model(str(embedded_default().path)) if name == "resnet20" else load_model(name, num_classes=10)
    return loaded.module.eval(), tuple(loaded.spec.input_shape)


# A 1x1 conv of 4 channels on one pixel: what ONNX Runtime spends on a call apart from the arithmetic.
TRIVIAL = ConvShape(4, 4, (1, 1), (1, 1), (0, 0), 1, (1, 1), (1, 1))


def bound(name: str, threads: int, peak: dict | None, budget, call_ms: float) -> dict:
    module, input_shape = load(name)
    shapes = layer_shapes(module, input_shape)
    macs = sum(s.macs for s in shapes)
    cache: dict[ConvShape, float] = {}
    conv_ms = 0.0
    for s in shapes:
        if not s.linear:
            if s not in cache:
                cache[s] = max(0.0, ort_conv_ms(s, threads, budget) - call_ms)
            conv_ms += cache[s]
    eager = torch_ms(module, input_shape, threads, budget)
    row = {"model": name, "input": list(input_shape), "gmacs": macs / 1e9, "convs": sum(not s.linear for s in shapes),
           "torch_fp32_ms": eager, "torch_gmacs": macs / eager / 1e6, "ort_convs_ms": conv_ms,
           "ort_convs_gmacs": sum(s.macs for s in shapes if not s.linear) / conv_ms / 1e6,
           "max_vs_torch_ort": eager / conv_ms, "target_vs_torch": TARGETS.get(name),
           "layers": [{**asdict(s), "count": sum(t == s for t in shapes), "ort_ms": ms, "gmacs_per_s": s.macs / ms / 1e6}
                      for s, ms in cache.items()]}
    if peak:
        isa_ms = macs / peak["u8s8_gmacs"] / 1e6
        row.update(isa_ms=isa_ms, max_vs_torch_isa=eager / isa_ms)
        if "vnni_gmacs" in peak:
            row["vnni_ms"] = macs / peak["vnni_gmacs"] / 1e6
    return row


def table(rows: list[dict], peak: dict | None) -> str:
    vnni = bool(peak and "vnni_gmacs" in peak)
    lines = ["| model | GMACs | PyTorch FP32 eager | AVX2 u8s8 bound | max vs PyTorch | " + ("AVX512-VNNI bound | " if vnni else "")
             + "ONNX Runtime convs alone | max vs PyTorch | target |",
             "|---|---|---|---|---|---|---|---|" + ("---|" if vnni else "")]
    for r in rows:
        isa = f"{r['isa_ms']:.2f} ms | {r['max_vs_torch_isa']:.2f}x" if peak else "- | -"
        if vnni:
            isa += f" | {r['vnni_ms']:.2f} ms"
        target = f"{r['target_vs_torch']}x" if r["target_vs_torch"] else "-"
        lines.append(f"| {r['model']} {r['input'][1]}x{r['input'][2]} | {r['gmacs']:.3f} | {r['torch_fp32_ms']:.2f} ms "
                     f"({r['torch_gmacs']:.0f} GMAC/s) | {isa} | {r['ort_convs_ms']:.2f} ms ({r['ort_convs_gmacs']:.0f} GMAC/s) | "
                     f"{r['max_vs_torch_ort']:.2f}x | {target} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/int8_bound"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", default="resnet18,resnet50,resnet20")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from rescompile.bench.env import describe_cpu_flags, environment
    from rescompile.bench.timing import TimingBudget

    budget = TimingBudget(warmup_s=0.5, min_runs=20, max_s=2.0)
    peak, why = peak_rates(args.threads)
    call_ms = ort_conv_ms(TRIVIAL, args.threads, budget)
    rows = [bound(name, args.threads, peak, budget, call_ms) for name in args.models.split(",")]
    env = environment(args.threads)
    text = (f"{dt.date.today().isoformat()}, {env['cpu']} ({env['cpu_cores']} cores; {describe_cpu_flags(env)}), "
            f"{args.threads} threads, batch 1, torch {env['versions'].get('torch')}, onnxruntime {env['versions'].get('onnxruntime')}\n\n")
    if peak:
        text += (f"AVX2 peak on {args.threads} threads: u8s8 {peak['u8s8_gmacs']:.0f} GMAC/s, FP32 FMA {peak['fp32_gmacs']:.0f} GMAC/s "
                 f"({peak['u8s8_gmacs'] / peak['fp32_gmacs']:.2f}x)" + (f"; AVX512-VNNI vpdpbusd {peak['vnni_gmacs']:.0f} GMAC/s"
                                                                        if "vnni_gmacs" in peak else "") + "\n\n")
    else:
        text += f"AVX2 peak not measured: {why}\n\n"
    text += f"ONNX Runtime's cost of a call apart from the arithmetic: {call_ms * 1000:.0f} us, taken off each conv timed alone\n\n"
    text += table(rows, peak)
    vnni = any(f in env["cpu_flags"] for f in ("avx512_vnni", "avx_vnni", "amx_int8"))
    # AMX tiles run int8 faster than vpdpbusd, and their rate is not measured: then no instruction-set bound holds.
    vnni_bound = bool(peak and "vnni_gmacs" in peak) and "amx_int8" not in env["cpu_flags"]
    if vnni:
        text += ("\nThis CPU has VNNI/AMX: its INT8 kernels are not bound by the AVX2 sequence; the ONNX Runtime bound applies"
                 + (", and the AVX512-VNNI one (no AMX here)" if vnni_bound else ", and with AMX no instruction-set bound is measured") + ".\n")
    for r in rows:
        if r["target_vs_torch"]:
            isa = r.get("max_vs_torch_isa", float("inf")) if not vnni else (r["torch_fp32_ms"] / r["vnni_ms"] if vnni_bound else float("inf"))
            best = min(r["max_vs_torch_ort"], isa)
            text += (f"\n{r['model']}: {r['target_vs_torch']}x PyTorch needs {r['torch_fp32_ms'] / r['target_vs_torch']:.2f} ms; "
                     f"the bounds allow at most {best:.2f}x" + (" (target beyond the bound)" if best < r["target_vs_torch"] else "") + "\n")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "int8_bound.md").write_text(text)
    (args.out / "int8_bound.json").write_text(json.dumps({"environment": env, "peak": peak, "ort_call_ms": call_ms, "peak_missing": why or None,
                                                          "models": rows}, indent=2, default=str))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
