"""The ResNet family as users have it: ONNX ResNets whose input is NHWC behind Keras'
in-graph preprocessing, exported in float16 or bfloat16, or with a fully dynamic height and width.

Every model is built here, small and seeded: a ResNet-20 (9 residual blocks) with random BatchNorm
statistics, exported with torch's legacy exporter. TensorFlow/Keras cannot be installed on our
machines, so the Keras/tf2onnx front is written with onnx.helper the way those exporters write it:
an NHWC input, Rescaling as Mul (and Add), Normalization as Sub and Div by per-channel constants,
then Transpose(0, 3, 1, 2) in front of the first Conv (or, after tf2onnx's transpose optimizer,
the Transpose first and the constants shaped [1, C, 1, 1]).
"""

from __future__ import annotations

import copy
import inspect
import json
import warnings
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from rescompile.bundle import read_manifest
from rescompile.models.cifar import CifarResNet
from rescompile.models.intake import normalize_onnx
from tests.cli.test_cli import invoke
from tests.tolerance import Tolerance

BLOCKS = 9  # ResNet-20: three stages of three basic blocks
SIZE = 32
MEAN = np.asarray([0.49, 0.48, 0.45], np.float32)  # Keras Normalization's adapted mean/std, in 0-1 units
STD = np.asarray([0.25, 0.24, 0.26], np.float32)
# Random nets: INT8 agrees with FP32 on only part of random inputs, which the safety net rightly
# refuses (tests/foreign/test_foreign.py); these tests are about reading the files.
RANDOM_NET = ("--no-fallback",)


def resnet20(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = CifarResNet(20).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # identity BNs would hide folding mistakes
                c = m.num_features
                m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    return model


def export(model: torch.nn.Module, path: Path, example: torch.Tensor, dynamic_hw: bool = False) -> onnx.ModelProto:
    """torch's legacy (TorchScript) exporter, opset 17, dynamic batch (and height/width)."""
    axes = {0: "batch", 2: "height", 3: "width"} if dynamic_hw else {0: "batch"}
    kwargs = {"opset_version": 17, "input_names": ["input"], "output_names": ["logits"],
              "dynamic_axes": {"input": axes, "logits": {0: "batch"}}}
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (example,), str(path), **kwargs)
    return onnx.load(str(path))


def keras_front(body: onnx.ModelProto, front: list[tuple[str, object]], *, transpose_first: bool = False) -> onnx.ModelProto:
    """``body`` (NCHW input "input") behind an NHWC input and the elementwise ops of ``front``:
    (op, constant) pairs, "Cast" taking none; names as tf2onnx writes them."""
    m = copy.deepcopy(body)
    g = m.graph
    g.input.remove(next(i for i in g.input if i.name == "input"))
    g.input.insert(0, helper.make_tensor_value_info("keras_tensor:0", TensorProto.FLOAT, ["unk__0", SIZE, SIZE, 3]))
    nodes, inits, name = [], [], "keras_tensor:0"
    if transpose_first:
        nodes.append(helper.make_node("Transpose", [name], ["functional/transpose:0"], "functional/transpose", perm=[0, 3, 1, 2]))
        name = "functional/transpose:0"
    for k, (op, value) in enumerate(front):
        out = f"functional/pre_{k}/{op.lower()}:0"
        if op == "Cast":
            nodes.append(helper.make_node("Cast", [name], [out], f"functional/pre_{k}/Cast", to=TensorProto.FLOAT))
        else:
            const = np.asarray(value, np.float32)
            if const.size > 1:
                const = const.reshape(1, 3, 1, 1) if transpose_first else const.reshape(3)
            inits.append(numpy_helper.from_array(const, f"functional/pre_{k}/ReadVariableOp:0"))
            nodes.append(helper.make_node(op, [name, inits[-1].name], [out], f"functional/pre_{k}/{op}"))
        name = out
    if transpose_first:
        nodes[-1].output[0] = "input"
    else:
        nodes.append(helper.make_node("Transpose", [name], ["input"], "functional/conv2d/Conv2D__6", perm=[0, 3, 1, 2]))
    for n in reversed(nodes):
        g.node.insert(0, n)
    g.initializer.extend(inits)
    return m


def nchw_front(body: onnx.ModelProto, front: list[tuple[str, object]]) -> onnx.ModelProto:
    """``body`` with normalisation written into its NCHW graph (constants shaped [1, C, 1, 1]) before the first Conv."""
    m = copy.deepcopy(body)
    g, name = m.graph, "pixels"
    g.input[0].name = name
    for k, (op, value) in enumerate(front):
        const = np.asarray(value, np.float32)
        g.initializer.append(numpy_helper.from_array(const.reshape(1, 3, 1, 1) if const.size > 1 else const, f"pre{k}"))
        g.node.insert(k, helper.make_node(op, [name, f"pre{k}"], ["input" if k == len(front) - 1 else f"pre{k}_out"]))
        name = f"pre{k}_out"
    return m


# Keras Rescaling(1/255) + Normalization(mean, var): x / 255, then (x - mean) / std
NORMALISED = [("Mul", 1 / 255), ("Sub", MEAN), ("Div", STD)]
FRONTS = {
    "rescaling_normalization": (NORMALISED, False, "scales its input by"),
    "tf2onnx_cast_mul_add": ([("Cast", None), ("Mul", 1 / 127.5), ("Add", -1.0)], False, "scales its input by 1/127.5 and subtracts 1"),
    "transpose_pushed_up": (NORMALISED, True, "scales its input by"),
}


@pytest.fixture(scope="module")
def family(tmp_path_factory):
    folder = tmp_path_factory.mktemp("family")
    model = resnet20(0)
    body = export(model, folder / "body.onnx", torch.zeros(1, 3, SIZE, SIZE))
    files = {"torch": model, "body": folder / "body.onnx"}
    for name, (front, first, _) in FRONTS.items():
        onnx.save(keras_front(body, front, transpose_first=first), str(folder / f"{name}.onnx"))
        files[name] = folder / f"{name}.onnx"
    # A Normalization layer adapted on 0-1 images, without Rescaling: the graph takes 0-1 pixels.
    onnx.save(keras_front(body, [("Sub", MEAN), ("Div", STD)]), str(folder / "unit_pixels.onnx"))
    files["unit_pixels"] = folder / "unit_pixels.onnx"
    onnx.save(nchw_front(body, NORMALISED), str(folder / "nchw_normalised.onnx"))
    files["nchw_normalised"] = folder / "nchw_normalised.onnx"
    export(copy.deepcopy(model).half(), folder / "fp16.onnx", torch.zeros(1, 3, SIZE, SIZE, dtype=torch.float16))
    files["fp16"] = folder / "fp16.onnx"
    files["bf16"], files["bf16_reference"] = bfloat16_model(body, folder)
    export(model, folder / "dynamic.onnx", torch.zeros(1, 3, SIZE, SIZE), dynamic_hw=True)
    files["dynamic"] = folder / "dynamic.onnx"
    rng = np.random.default_rng(1)
    np.save(folder / "nchw.npy", rng.standard_normal((64, 3, SIZE, SIZE)).astype(np.float32))
    np.save(folder / "nhwc_pixels.npy", rng.uniform(0, 255, (64, SIZE, SIZE, 3)).astype(np.float32))
    files["nchw_data"], files["nhwc_data"] = folder / "nchw.npy", folder / "nhwc_pixels.npy"
    return files


def bfloat16_model(body: onnx.ModelProto, folder: Path) -> tuple[Path, Path]:
    """``body`` with bfloat16 input, output and weights (written with onnx.helper: torch cannot export a
    bfloat16 Conv), and its float32 twin with the same bfloat16-rounded weights (the reference)."""
    bf16, ref = copy.deepcopy(body), copy.deepcopy(body)
    for model, dtype in ((bf16, ml_dtypes.bfloat16), (ref, np.float32)):
        g = model.graph
        for t in g.initializer:
            if t.data_type == TensorProto.FLOAT:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(ml_dtypes.bfloat16).astype(dtype), t.name))
        del g.value_info[:]
        if dtype is ml_dtypes.bfloat16:
            g.input[0].type.tensor_type.elem_type = g.output[0].type.tensor_type.elem_type = TensorProto.BFLOAT16
    onnx.save(bf16, str(folder / "bf16.onnx"))
    onnx.save(ref, str(folder / "bf16_reference.onnx"))
    return folder / "bf16.onnx", folder / "bf16_reference.onnx"


def run_onnx(path: Path, x: np.ndarray) -> np.ndarray:
    """ONNX Runtime, graph optimizations off (the graph exactly as written), fed the type it declares."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    return session.run(None, {session.get_inputs()[0].name: x.astype(dtype)})[0].astype(np.float32)


def torch_on_pixels(model: torch.nn.Module, pixels: np.ndarray) -> np.ndarray:
    """What the Keras model computes from uint8 NHWC pixels: its Rescaling + Normalization, then the body."""
    x = (pixels.astype(np.float32) / 255 - MEAN) / STD
    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def stderr_text(res) -> str:
    return " ".join(res.stderr.split())  # rich wraps lines at the terminal width


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


# ----------------------------------------------------------------------------- NHWC behind preprocessing


@pytest.mark.parametrize("name", sorted(FRONTS))
def test_keras_nhwc_front_is_read_as_nhwc_with_its_preprocessing(family, name):
    res = invoke("inspect", family[name], "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["totals"]["residual_blocks"] == BLOCKS
    _, report = normalize_onnx(onnx.load(str(family[name])), family[name])
    assert report.layout == "nhwc"
    assert report.input_preprocessing is not None and report.input_preprocessing["takes"] == "0-255 pixels"
    text = " | ".join(report.notes)
    assert "input is NHWC" in text and FRONTS[name][2] in text and "it takes raw 0-255 pixels" in text
    if name != "tf2onnx_cast_mul_add":  # x / 255 then (x - mean) / std: one affine map per channel
        assert np.allclose(report.input_preprocessing["scale"], 1 / (255 * STD), rtol=1e-5)
        assert np.allclose(report.input_preprocessing["shift"], -MEAN / STD, rtol=1e-5)


def test_keras_nhwc_optimize_keeps_the_outputs(family, tmp_path):
    out = tmp_path / "opt.onnx"
    res = invoke("optimize", family["rescaling_normalization"], "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["totals"]["residual_blocks"] == BLOCKS
    x = np.random.default_rng(2).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32)
    before, after = run_onnx(family["rescaling_normalization"], x), run_onnx(out, x)
    assert relative_error(after, before) <= 1e-4


def test_keras_nhwc_build_feeds_pixels_the_graph_normalises_itself(family, tmp_path):
    """No --mean/--std: the bundle feeds raw 0-255 NHWC pixels (the graph divides by 255 and
    normalises itself), and runtime, predict and bench run it; ImageNet mean/std on top would change every logit."""
    from PIL import Image

    from rescompile import runtime
    from rescompile.runtime.onnxruntime import OnnxRuntimeRunner

    out = tmp_path / "b"
    res = invoke("build", family["rescaling_normalization"], "--calib-data", family["nhwc_data"], "--num-images", "64", *RANDOM_NET,
                 "--no-bench", "-o", out)
    assert res.exit_code == 0, res.stderr
    text = stderr_text(res)
    assert "images are fed as raw 0-255 RGB pixels, not with ImageNet mean/std" in text
    assert "64 model-ready tensors [32,32,3], fed as they are" in text
    m = read_manifest(out)
    prep = m.spec.preprocessing
    assert m.doc["input"]["layout"] == prep.layout == "nhwc" and m.spec.input_shape == (SIZE, SIZE, 3)
    assert prep.mean == (0.0, 0.0, 0.0) and np.allclose(prep.std, 1 / 255)
    assert m.doc["optimize"]["residual_blocks"] == BLOCKS and m.doc["intake"]["input_preprocessing"]["ops"][:3] == ["Mul", "Sub", "Div"]
    pixels = np.random.default_rng(3).integers(0, 256, (4, SIZE, SIZE, 3), dtype=np.uint8)
    with OnnxRuntimeRunner(out / "model_opt.onnx", spec=m.spec) as fp32:  # the bundle's preprocessing + its FP32 model
        assert relative_error(fp32.infer_pixels(pixels), torch_on_pixels(family["torch"], pixels)) <= 1e-4
    with runtime.load(out) as r:
        assert r.layout == "nhwc" and r.infer(pixels.astype(np.float32)).shape == (4, 10)
        assert len(r.classify(pixels[0], top_k=2)) == 2
    images = tmp_path / "png"
    images.mkdir()
    for i, img in enumerate(pixels):
        Image.fromarray(img).save(images / f"{i}.png")
    res = invoke("predict", images, "--bundle", out, "--top-k", "1", "--json")
    assert res.exit_code == 0, res.stderr and len(json.loads(res.stdout)["predictions"]) == 4
    res = invoke("bench", out, "--batch-sizes", "1", "--threads", "1", "--warmup-s", "0.05", "--min-runs", "3", "--max-s", "0.1",
                 "-o", tmp_path / "r", "--json")
    assert res.exit_code == 0, res.stderr


def test_a_graph_normalising_0_1_input_is_fed_0_1_pixels_and_named_preprocessing_still_wins(family):
    from rescompile.data.preprocess import PreprocessingOverride
    from rescompile.models.load import load_model

    assert load_model(family["unit_pixels"]).spec.preprocessing.std == (1.0, 1.0, 1.0)  # (x - mean) / std of 0-1 pixels
    assert load_model(family["unit_pixels"]).spec.preprocessing.mean == (0.0, 0.0, 0.0)
    named = load_model(family["rescaling_normalization"], preprocessing=PreprocessingOverride(scale=1.0)).spec.preprocessing
    assert named.std == (1.0, 1.0, 1.0) and named.layout == "nhwc"
    nchw = load_model(family["nchw_normalised"])  # the same preprocessing in an NCHW graph: raw pixels too
    assert nchw.spec.preprocessing.layout == "nchw" and np.allclose(nchw.spec.preprocessing.std, 1 / 255)
    assert np.allclose(nchw.intake.input_preprocessing["shift"], -MEAN / STD, rtol=1e-5)
    plain = load_model(family["body"]).spec.preprocessing  # nothing in the graph: ImageNet's, as before
    assert np.allclose(plain.mean, (0.485, 0.456, 0.406)) and plain.layout == "nchw"


# ----------------------------------------------------------------------------- float16 and bfloat16


def test_a_dtype_mismatch_is_not_reported_as_damage(family):
    from rescompile._ort import cpu_session, run
    from rescompile.errors import ModelError

    session = cpu_session(str(family["fp16"]))
    with pytest.raises(ModelError) as info:
        run(session, None, {"input": np.zeros((1, 3, SIZE, SIZE), np.float32)})
    assert "tensor(float16)" in str(info.value) and "damaged" not in str(info.value).lower()


def inspected_and_optimized(source: Path, out: Path, note: str) -> Path:
    """`inspect` finds every block of ``source``, and `optimize` writes ``out`` saying ``note``."""
    res = invoke("inspect", source, "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["totals"]["residual_blocks"] == BLOCKS
    res = invoke("optimize", source, "-o", out)
    assert res.exit_code == 0, res.stderr
    assert note in stderr_text(res)
    return out


def test_float16_model_inspects_optimizes_and_matches_its_source(family, tmp_path):
    out = inspected_and_optimized(family["fp16"], tmp_path / "opt.onnx", "in float16 converted to float32")
    optimized = onnx.load(str(out))
    assert optimized.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert all(t.data_type != TensorProto.FLOAT16 for t in optimized.graph.initializer)
    x = np.random.default_rng(4).standard_normal((8, 3, SIZE, SIZE)).astype(np.float16).astype(np.float32)
    source, fp32 = run_onnx(family["fp16"], x), run_onnx(out, x)
    assert relative_error(fp32, source) <= 2e-3  # float16 keeps ~3 digits; through 20 layers the source drifts by ~3e-4
    # float16 against float32 on 8 random inputs of a random net: logits this close may order differently.
    Tolerance(2, len(x), "float16 rounding near a tie").check_agreement(fp32.argmax(1), source.argmax(1))


def test_float16_model_builds_in_float32_and_the_runtime_takes_float16(family, tmp_path):
    from rescompile import runtime
    from rescompile.bench.backends import OrtBackend

    out = tmp_path / "b"
    res = invoke("build", family["fp16"], "--calib-data", family["nchw_data"], "--num-images", "64", *RANDOM_NET, "--no-bench", "-o", out)
    assert res.exit_code == 0, res.stderr
    m = read_manifest(out)
    assert m.doc["intake"]["input_dtype"] == "float16" and m.doc["optimize"]["residual_blocks"] == BLOCKS
    for role in ("fp32_onnx", "optimized_onnx", "qdq_onnx", "cpu_int8_onnx"):
        model = onnx.load(str(m.file(role)))
        assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT, role
        assert not any(t.data_type == TensorProto.FLOAT16 for t in model.graph.initializer), role
    x16 = np.random.default_rng(5).standard_normal((4, 3, SIZE, SIZE)).astype(np.float16)
    with runtime.load(out) as r:
        assert np.array_equal(r.infer(x16), r.infer(x16.astype(np.float32)))
    with runtime.load(family["fp16"]) as r:  # the source itself still takes float16: fed float16
        assert np.allclose(r.infer(x16.astype(np.float32)), run_onnx(family["fp16"], x16), rtol=0, atol=1e-6)
    backend = OrtBackend("ort-src", "source", family["fp16"], "fp16")
    assert backend.logits(x16.astype(np.float32)).shape == (4, 10)


def test_bfloat16_model_is_run_as_its_float32_conversion(family, tmp_path):
    from rescompile import runtime
    from rescompile.errors import ModelError
    from rescompile._ort import cpu_session

    with pytest.raises(ModelError) as info:  # why intake converts it: ONNX Runtime has no bfloat16 Conv
        cpu_session(str(family["bf16"]))
    assert "damaged" not in str(info.value).lower()
    opt = inspected_and_optimized(family["bf16"], tmp_path / "opt.onnx", "bfloat16 converted to float32")
    x = np.random.default_rng(6).standard_normal((4, 3, SIZE, SIZE)).astype(ml_dtypes.bfloat16).astype(np.float32)
    assert relative_error(run_onnx(opt, x), run_onnx(family["bf16_reference"], x)) <= 1e-4
    out = tmp_path / "b"
    res = invoke("build", family["bf16"], "--calib-data", family["nchw_data"], "--num-images", "64", *RANDOM_NET, "--no-bench", "-o", out)
    assert res.exit_code == 0, res.stderr
    m = read_manifest(out)
    assert m.doc["intake"]["input_dtype"] == "bfloat16" and m.doc["optimize"]["residual_blocks"] == BLOCKS
    with runtime.load(out) as r:
        assert np.array_equal(r.infer(x.astype(ml_dtypes.bfloat16)), r.infer(x))


# ----------------------------------------------------------------------------- dynamic height and width


def test_dynamic_size_is_taken_from_the_calibration_data(family, tmp_path):
    out = tmp_path / "b"
    res = invoke("build", family["dynamic"], "--calib-data", family["nchw_data"], "--num-images", "64", *RANDOM_NET, "--no-bench",
                 "-o", out)
    assert res.exit_code == 0, res.stderr
    text = stderr_text(res)
    assert "input size 32x32 taken from the calibration data" in text and "assuming 224x224" not in text
    assert "64 model-ready tensors [3,32,32], fed as they are" in text
    m = read_manifest(out)
    assert m.spec.input_shape == (3, SIZE, SIZE) and m.doc["optimize"]["residual_blocks"] == BLOCKS


def test_dynamic_size_without_data_or_with_a_given_size(family, tmp_path, caplog):
    from rescompile.data.arrays import array_image_size
    from rescompile.models.load import load_model

    assert load_model(family["dynamic"]).spec.input_size == 224 and "assuming 224x224" in caplog.text
    assert load_model(family["dynamic"], input_size=48, data_size=SIZE).spec.input_size == 48  # --input-size wins
    assert load_model(family["body"], data_size=64).spec.input_size == SIZE  # a static model keeps its own
    np.save(tmp_path / "nhw.npy", np.zeros((2, 40, 40), np.uint8))
    np.savez(tmp_path / "imgs.npz", images=np.zeros((2, 24, 24, 3), np.uint8), labels=np.zeros(2))
    np.save(tmp_path / "oblong.npy", np.zeros((2, 3, 32, 48), np.float32))
    assert array_image_size(family["nchw_data"]) == SIZE and array_image_size(family["nhwc_data"]) == SIZE
    assert array_image_size(tmp_path / "nhw.npy") == 40 and array_image_size(tmp_path / "imgs.npz") == 24
    assert array_image_size(tmp_path / "oblong.npy") is None and array_image_size("digits") is None
    assert array_image_size(tmp_path) is None
