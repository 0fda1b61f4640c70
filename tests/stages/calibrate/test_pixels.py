"""The pixel-input CPU artifact: uint8 pixels in, the model's normalisation folded into its first conv."""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rescompile.data.images import iter_batches
from rescompile.data.preprocess import Preprocessing
from rescompile.stages.calibrate.accuracy import Evaluator, session
from rescompile.stages.calibrate.calibrators import compute_amax
from rescompile.stages.calibrate.pixels import PIXELS_INPUT, PIXELS_METADATA_KEY, pixel_input_model
from rescompile.stages.calibrate.qdq import has_vnni, qdq_for_cpu
from rescompile.stages.calibrate.stage import input_range
from tests.tolerance import Tolerance


def cpu_model(model, stats, prep: Preprocessing | None = None, reduce_range: bool = False):
    amax = compute_amax(stats, "max")
    spec = model.spec if prep is None else dataclasses.replace(model.spec, preprocessing=prep)
    bounds = input_range(model.onnx, spec)  # the input's amax covers pixels 0..255, as calibrate() makes it
    amax.update(bounds)
    tmin = {t: s.min for t, s in stats.items()}
    if prep is not None:  # the input's minimum under this preprocessing (pixel 0 in every channel)
        tmin.update({t: min(-m / s for m, s in zip(prep.mean, prep.std)) for t in bounds})
    return qdq_for_cpu(model.onnx, amax, tmin, reduce_range=reduce_range)


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    s = session(model, reference=False)
    return s.run(None, {s.get_inputs()[0].name: x})[0]


@pytest.fixture(scope="module")
def test_images(digits):
    return digits.test.subset(np.arange(0, len(digits.test), 2))


def test_pixel_model_keeps_the_float_artifacts_accuracy(r20, r20_stats, test_images):
    prep = r20.spec.preprocessing
    narrow = not has_vnni()  # as calibrate() does: 7-bit weights where ONNX Runtime's u8s8 kernels would saturate
    cpu = cpu_model(r20, r20_stats, reduce_range=narrow)
    fold = pixel_input_model(cpu, r20.onnx, prep, reduce_range=narrow)
    assert fold.model is not None, fold.reason
    inp = fold.model.graph.input[0]
    assert inp.name == PIXELS_INPUT and inp.type.tensor_type.elem_type == TensorProto.UINT8
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim][1:] == [prep.input_size, prep.input_size, 3]
    assert {p.key: p.value for p in fold.model.metadata_props}[PIXELS_METADATA_KEY] == "uint8-rgb-nhwc"
    ev = Evaluator(r20.onnx, test_images, prep)
    pix, flt = ev.pixels(fold.model), ev(cpu, reference=False)
    # r20 is trained for five epochs on the machine the test runs on, and the artifacts run ONNX
    # Runtime's integer kernels of this CPU: a few of these 180 borderline images may move. The
    # pixel artifact differs from the float one only on the padding border of the first conv.
    n = len(test_images)
    Tolerance(3, n, "INT8 of a briefly trained model").check_agreement_rate(pix.top1_agreement, "pixels vs FP32")
    Tolerance(2, n, "INT8 of a briefly trained model").check_drop_points(100 * (ev.fp32.top1 - pix.top1), "pixels vs FP32")
    Tolerance(1, n, "only the padding border differs").check_gap_points(100 * (flt.top1_agreement - pix.top1_agreement))
    images = test_images.images(range(16))
    a, b = run(fold.model, prep.pixels(images)), run(cpu, prep(images))
    assert np.abs(a - b).max() <= 0.05 * np.abs(b).max()


def test_raw_pixel_preprocessing_folds_exactly(r20, r20_stats, test_images):
    """mean 0, std 1/255 (a model that takes 0-255 floats): zero point 0, no border gap, and the same
    first-conv weights and input scale as the float artifact, so the outputs are the same."""
    prep = Preprocessing(input_size=32, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3)
    cpu = cpu_model(r20, r20_stats, prep)
    fold = pixel_input_model(cpu, r20.onnx, prep, reduce_range=False)
    assert fold.zero_point == 0 and fold.border_offset == 0.0
    images = test_images.images(range(32))
    a, b = run(fold.model, prep.pixels(images)), run(cpu, prep(images))
    np.testing.assert_allclose(a, b, atol=1e-4 * np.abs(b).max())


def test_bgr_models_take_rgb_pixels(r20, r20_stats, test_images):
    prep = dataclasses.replace(r20.spec.preprocessing, channel_order="bgr", mean=(0.2, 0.5, 0.7), std=(0.3, 0.25, 0.2))
    cpu = cpu_model(r20, r20_stats, prep)
    fold = pixel_input_model(cpu, r20.onnx, prep, reduce_range=True)
    assert fold.model is not None and fold.zero_point == round(255 * 0.45)
    assert fold.border_offset == pytest.approx(255 * 0.25, abs=0.6)
    colour = np.random.default_rng(0).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)  # channels that differ
    a, b = run(fold.model, colour), run(cpu, prep.normalize(colour))
    # Only the border taps of the first conv differ (pixel Z there, the channel mean in the float model).
    assert np.abs(a - b).max() <= 0.25 * np.abs(b).max()
    swapped = run(fold.model, np.ascontiguousarray(colour[..., ::-1]))
    assert np.abs(swapped - b).max() > np.abs(a - b).max()  # the channel order is folded in, not ignored


def test_onnx_runtime_runs_it_without_quantizing_or_transposing_the_input(r20, r20_stats, tmp_path):
    import onnxruntime as ort

    fold = pixel_input_model(cpu_model(r20, r20_stats), r20.onnx, r20.spec.preprocessing, reduce_range=False)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(fold.model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    graph = onnx.load(str(tmp_path / "optimized.onnx")).graph
    ops = [n.op_type for n in graph.node]
    first = next(n for n in graph.node if n.op_type == "QLinearConv")
    assert first.input[0] == PIXELS_INPUT  # the pixels are the first conv's quantized input, as they are
    assert "QuantizeLinear" not in ops and "DequantizeLinear" not in ops and "Conv" not in ops
    assert ops.count("Transpose") <= 1  # at most the one before the classifier


def test_a_model_whose_input_is_not_a_convs_says_why():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3, 8, 8])
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
             helper.make_node("Relu", ["d"], ["y"])]
    inits = [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]), helper.make_tensor("z", TensorProto.UINT8, [], [0])]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))
    fold = pixel_input_model(model, model, Preprocessing(input_size=8), reduce_range=False)
    assert fold.model is None and "convolution" in fold.reason


def test_normalize_is_the_documented_formula():
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (3, 5, 7, 3), dtype=np.uint8)
    for order in ("rgb", "bgr"):
        for layout in ("nchw", "nhwc"):
            p = Preprocessing(input_size=5, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), channel_order=order, layout=layout)
            src = pixels[..., ::-1] if order == "bgr" else pixels
            want = (src.astype(np.float64) / 255.0 - np.asarray(p.mean)) / np.asarray(p.std)
            want = want if layout == "nhwc" else want.transpose(0, 3, 1, 2)
            got = p.normalize(pixels)
            assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == want.shape
            np.testing.assert_allclose(got, want, atol=2e-6)


def test_calibrate_writes_it_only_when_it_was_checked(r20, digits, tmp_path):
    from rescompile.config import CalibConfig
    from rescompile.data.images import TensorSet
    from rescompile.stages.calibrate.stage import CPU_PIXELS_ONNX, calibrate

    calib = digits.train.subset(np.arange(64))
    test = digits.test.subset(np.arange(0, len(digits.test), 3))
    cfg = CalibConfig(method="max", num_images=64, min_images=1, fallback=False)
    images = calibrate(r20.onnx, r20.spec, tmp_path / "images", images=calib, config=cfg, eval_test=test)
    assert images.pixels_path == tmp_path / "images" / CPU_PIXELS_ONNX and images.pixels_path.is_file()
    Tolerance(2, len(test), "INT8 (max calibrator) of a briefly trained model").check_agreement_rate(
        images.accuracy["int8_cpu_pixels_onnxruntime"]["top1_agreement"])
    assert images.accuracy["cpu_pixels"]["written"] and images.accuracy["cpu_pixels"]["zero_point"] == 78
    # Evaluation data that are model-ready tensors cannot check a model that takes pixels: not written.
    tensors = TensorSet(np.concatenate([x for x, _ in iter_batches(test, r20.spec.preprocessing, 64)]), test.labels, test.classes)
    unchecked = calibrate(r20.onnx, r20.spec, tmp_path / "tensors", images=calib, config=cfg, eval_test=tensors)
    assert unchecked.pixels_path is None and not (tmp_path / "tensors" / CPU_PIXELS_ONNX).exists()
    assert "model-ready tensors" in unchecked.accuracy["cpu_pixels"]["reason"]
