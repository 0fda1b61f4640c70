"""The ResNet family, trained on the digits, through `rescompile build` with the default command:
residual blocks found against the definition's count, and INT8 against FP32 over the 540 held-out
images for the TensorRT Q/DQ model (reference semantics) and the CPU artifact (as ONNX Runtime
deploys it), beside ONNX Runtime's quantize_static of the same optimized model on the same images
(symmetric int8 activations: what TensorRT can run; uint8: what ONNX Runtime runs on a CPU).

Members: tests/foreign/family.py (SE-ResNet by the dynamo exporter, pre-activation, ResNeXt, wide
bottleneck, ResNet-D), and three files made from its ResNet-D as other tools hand them over: a
Keras-style NHWC front that rescales and normalises raw 0-255 pixels in the graph, a float16
export, and an already quantized model (quantize_static, QDQ, symmetric int8, per channel).

    python benchmarks/family.py
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    import torch
    from typer.testing import CliRunner

    from rescompile.bench.env import cpu_model, describe_cpu_flags, environment
    from rescompile.cli import app
    from tests.foreign.corpus import reference_outputs
    from tests.foreign.family import MEMBERS, build_member, deployed, digits_split, export, float16, keras_nhwc, quantize_static, train

    env = environment(threads=None)
    print(f"# {dt.date.today()} | {cpu_model()} | flags: {describe_cpu_flags(env)} | {env['versions']}", flush=True)
    runner = CliRunner()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cases = []
        for name in MEMBERS:
            f, data = build_member(name, tmp / name)
            cases.append((name, f.path, f.blocks, data, f.path, []))
        # three files made from a trained ResNet-D, as other tools hand them over
        split = digits_split()
        torch.manual_seed(0)
        net = MEMBERS["resnet_d"]()
        train(net, split)
        te = split["test"]
        base = {"calib": split["x"][split["train"][:512]], "eval_x": split["x"][te], "eval_y": split["y"][te],
                "mean": split["mean"], "std": split["std"]}
        (tmp / "extra").mkdir()
        fp32 = tmp / "extra" / "resnet_d_fp32.onnx"
        export(net, fp32)
        nhwc = keras_nhwc(net, base, tmp / "extra" / "keras_nhwc.onnx")
        cases.append(("keras_nhwc (Rescaling+Normalization in graph)", tmp / "extra" / "keras_nhwc.onnx", net.residual_blocks, nhwc,
                      tmp / "extra" / "keras_nhwc.onnx", []))
        float16(net, tmp / "extra" / "fp16.onnx")
        cases.append(("float16 export", tmp / "extra" / "fp16.onnx", net.residual_blocks, base, fp32, []))
        pre = quantize_static(fp32, tmp / "extra" / "prequant.onnx", base["calib"], symmetric_int8=True)
        cases.append(("pre-quantized (quantize_static s8 sym)", pre, net.residual_blocks, base, fp32, ["--fp32-reference", str(fp32)]))
        for name, path, blocks, data, reference, extra in cases:
            folder = path.parent
            np.save(folder / f"{path.stem}_calib.npy", data["calib"])
            np.savez(folder / f"{path.stem}_eval.npz", images=data["eval_x"], labels=data["eval_y"])
            out = folder / f"{path.stem}_bundle"
            res = runner.invoke(app, ["build", str(path), "--calib-data", str(folder / f"{path.stem}_calib.npy"), "--eval-data",
                                      str(folder / f"{path.stem}_eval.npz"), "--no-bench", "-o", str(out), *extra], catch_exceptions=False)
            if res.exit_code:
                print(f"{name}: build failed: {res.stderr.strip().splitlines()[-1]}", flush=True)
                continue
            manifest = json.loads((out / "manifest.json").read_text())
            x, y = data["eval_x"], data["eval_y"]
            ref = reference_outputs(reference, x).argmax(1)
            qdq = reference_outputs(out / "model_int8_qdq.onnx", x).argmax(1)
            cpu = deployed(out / "model_int8_cpu.onnx", x).argmax(1)
            opt = out / "model_opt.onnx"
            s8 = reference_outputs(quantize_static(opt, folder / "s8.onnx", data["calib"], symmetric_int8=True), x).argmax(1)
            u8 = deployed(quantize_static(opt, folder / "u8.onnx", data["calib"], symmetric_int8=False), x).argmax(1)
            right = int((ref == y).sum())
            row = (name, blocks, manifest["optimize"]["residual_blocks"], manifest["calibration"]["method"], 100 * right / len(y),
                   right - int((qdq == y).sum()), int((qdq != ref).sum()), int((s8 != ref).sum()),
                   right - int((cpu == y).sum()), int((cpu != ref).sum()), int((u8 != ref).sum()))
            rows.append(row)
            print(row, flush=True)
    print("\n| model | blocks (true / found) | calibration | FP32 top-1 | TensorRT Q/DQ: lost / differ | quantize_static s8: differ "
          "| CPU artifact: lost / differ | quantize_static u8: differ |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} / {r[2]} | {r[3]} | {r[4]:.2f}% | {r[5]:+d} / {r[6]} | {r[7]} | {r[8]:+d} / {r[9]} | {r[10]} |")
    print(f"\n(images of {len(y)}; lost = FP32's correct images that INT8 gets wrong, net; differ = top-1 differs from FP32)")


if __name__ == "__main__":
    main()
