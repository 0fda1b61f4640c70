"""The ResNet family (tests/foreign/family.py): blocks found by structure, built with the default
command, INT8 within the suite's tolerance and as close to FP32 as ONNX Runtime's own quantizer."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from rescompile.stages.optimize import inspect_onnx
from tests.cli.test_cli import invoke
from tests.foreign.corpus import reference_outputs
from tests.foreign.family import MEMBERS, build_member, deployed, export, float16, keras_nhwc, quantize_static
from tests.tolerance import Tolerance

HELD_OUT = 540
# Trained here, on this CPU's kernels: their borderline images move by 0-2 from CPU to CPU
# (benchmarks/tolerance_noise.py), the bounds of tests/stages/calibrate/test_safety.py.
LOST = Tolerance(3, HELD_OUT, "INT8 of a model trained on this CPU: the bound every calibrator meets elsewhere")
DIFFER = Tolerance(5, HELD_OUT, "agreement with FP32 >= 99.07%, as for every calibrator elsewhere")
PEER_NOISE = 2  # images: two quantizers' counts are compared within the noise band measured for one


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    root = tmp_path_factory.mktemp("family")
    built = {}
    for name in MEMBERS:
        f, data = build_member(name, root / name)
        np.save(root / name / "calib.npy", data["calib"])
        np.savez(root / name / "eval.npz", images=data["eval_x"], labels=data["eval_y"])
        built[name] = (f, data, root / name)
    return built


@pytest.mark.parametrize("name", list(MEMBERS))
def test_blocks_are_found_by_structure_and_described(family, name):
    f, _data, _folder = family[name]
    report = inspect_onnx(f.path)
    blocks = report.blocks
    assert len(blocks) == f.blocks, [b.name for b in blocks]
    if name == "se_resnet":
        assert all(b.gates and any("squeeze-excitation" in h for h in b.holds) for b in blocks)
        assert all(not b.add_relu_fusable and any("pointwise" in x for x in b.blockers) for b in blocks)
    if name == "preact_resnet":
        assert all(b.preactivation for b in blocks)
        assert [b.skip for b in blocks] == ["identity", "projection", "identity"]
    if name == "resnext":
        assert all(b.groups == 4 and b.kind == "bottleneck" for b in blocks)
    if name == "resnet_d":
        assert [b.skip for b in blocks] == ["identity", "pool-projection", "identity"]
    if name in ("resnext", "wide_resnet", "resnet_d"):
        assert all(not b.gates and not b.preactivation for b in blocks)


@pytest.mark.parametrize("name", list(MEMBERS))
def test_every_member_builds_with_the_default_command_and_holds_int8(family, name, tmp_path):
    f, data, folder = family[name]
    out = tmp_path / "b"
    res = invoke("build", f.path, "--calib-data", folder / "calib.npy", "--eval-data", folder / "eval.npz", "--no-bench", "-o", out)
    assert res.exit_code == 0, res.stderr
    assert "Traceback" not in res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["optimize"]["residual_blocks"] == f.blocks
    opt = onnx.load(str(out / "model_opt.onnx"))
    assert not any(n.op_type == "BatchNormalization" for n in opt.graph.node)
    x, y = data["eval_x"], data["eval_y"]
    src, got = reference_outputs(f.path, x[:64]), reference_outputs(out / "model_opt.onnx", x[:64])
    assert np.abs(src - got).max() <= 1e-4 * max(1.0, np.abs(src).max())
    ref = reference_outputs(f.path, x).argmax(1)
    qdq = reference_outputs(out / "model_int8_qdq.onnx", x).argmax(1)
    LOST.check_drop(qdq, ref, y, name)
    DIFFER.check_agreement(qdq, ref, name)
    # As close to FP32 as ONNX Runtime's own quantizer on the same images, within the noise band of
    # one quantizer, each in the form its runtime runs: the TensorRT Q/DQ model against quantize_static
    # with symmetric int8 activations (reference semantics: what TensorRT computes; uint8 ones, with
    # twice the levels for a ReLU output, TensorRT cannot run), the CPU artifact against
    # quantize_static's uint8 model, both as ONNX Runtime deploys them.
    opt = out / "model_opt.onnx"
    peer_trt = reference_outputs(quantize_static(opt, tmp_path / "s8.onnx", data["calib"], symmetric_int8=True), x).argmax(1)
    peer_cpu = deployed(quantize_static(opt, tmp_path / "u8.onnx", data["calib"], symmetric_int8=False), x).argmax(1)
    cpu = deployed(out / "model_int8_cpu.onnx", x).argmax(1)
    for ours, peer, what in ((qdq, peer_trt, "TensorRT Q/DQ"), (cpu, peer_cpu, "CPU artifact")):
        differ, peer_differ = int((ours != ref).sum()), int((peer != ref).sum())
        assert differ <= peer_differ + PEER_NOISE, (name, what, differ, peer_differ)


def test_squeeze_excitation_gets_the_placement_tensorrt_runs(family, tmp_path):
    """The skip input is quantized (the block input stays INT8 between kernels); the gate's Mul and
    the sigmoid path stay float, as TensorRT runs them in one pointwise kernel with the Add; the SE
    1x1 convs are quantized like every conv (measured: the same agreement as leaving them float)."""
    f, _data, folder = family["se_resnet"]
    out = tmp_path / "c"
    res = invoke("calibrate", f.path, "--data", folder / "calib.npy", "--num-images", "128", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["lint"]["passed"]
    q = onnx.load(str(out / "model_int8_qdq.onnx"))
    producers = {o: n for n in q.graph.node for o in n.output}
    gates = [n for n in q.graph.node if n.op_type == "Mul" and all(i in producers for i in n.input)]
    assert len(gates) == 3
    for mul in gates:
        assert all(producers[i].op_type != "DequantizeLinear" for i in mul.input)
    adds = [n for n in q.graph.node if n.op_type == "Add" and all(i in producers for i in n.input)]
    assert len(adds) == 3 and all(sum(producers[i].op_type == "DequantizeLinear" for i in a.input) == 1 for a in adds)


def test_the_same_network_as_other_tools_hand_it_over(family, tmp_path):
    """The trained ResNet-D behind a Keras-style NHWC front that rescales and normalises raw 0-255
    pixels in the graph, exported in float16, and already quantized by quantize_static: each builds
    with the default command, its blocks found, INT8 within the suite's tolerance of its FP32 model."""
    f, data, _folder = family["resnet_d"]
    net = data["model"]
    fp32 = tmp_path / "fp32.onnx"
    export(net, fp32)
    pixels = keras_nhwc(net, data, tmp_path / "keras.onnx")
    float16(net, tmp_path / "fp16.onnx")
    pre = quantize_static(fp32, tmp_path / "pre.onnx", data["calib"], symmetric_int8=True)
    cases = [("keras", tmp_path / "keras.onnx", pixels, tmp_path / "keras.onnx", ()),
             ("fp16", tmp_path / "fp16.onnx", data, fp32, ()),
             ("prequantized", pre, data, fp32, ("--fp32-reference", fp32))]
    for name, path, d, reference, extra in cases:
        np.save(tmp_path / f"{name}_calib.npy", d["calib"])
        np.savez(tmp_path / f"{name}_eval.npz", images=d["eval_x"], labels=d["eval_y"])
        out = tmp_path / f"{name}_bundle"
        res = invoke("build", path, "--calib-data", tmp_path / f"{name}_calib.npy", "--eval-data", tmp_path / f"{name}_eval.npz",
                     "--no-bench", "-o", out, *extra)
        assert res.exit_code == 0, (name, res.stderr)
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["optimize"]["residual_blocks"] == f.blocks, name
        x, y = d["eval_x"], d["eval_y"]
        ref = reference_outputs(reference, x).argmax(1)
        qdq = reference_outputs(out / "model_int8_qdq.onnx", x).argmax(1)
        LOST.check_drop(qdq, ref, y, name)
        DIFFER.check_agreement(qdq, ref, name)
    assert manifest["calibration"]["method"] == "prequantized"
    assert json.loads((tmp_path / "fp16_bundle" / "manifest.json").read_text())["intake"]["input_dtype"] == "float16"
    keras = json.loads((tmp_path / "keras_bundle" / "manifest.json").read_text())
    assert keras["intake"]["layout"] == "nhwc" and keras["spec"]["preprocessing"]["std"] == pytest.approx([1 / 255] * 3)
