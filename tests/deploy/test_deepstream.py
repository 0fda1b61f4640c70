"""The DeepStream nvinfer configuration of real bundles: every key, values that reproduce the
manifest's preprocessing on real images, and the single-scale approximation measured and removed."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from rescompile.config import BuildConfig, CalibConfig, PreprocessingOverride
from rescompile.data.datasets import load_dataset
from rescompile.data.preprocess import Preprocessing
from rescompile.deploy.deepstream import BUDGET, Scaling, parse_config, pixel_input_qdq, write_deepstream
from rescompile.stages.calibrate.accuracy import session
from tests.tolerance import Tolerance

IMAGENET = PreprocessingOverride(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
KEYS = {"gpu-id", "onnx-file", "model-engine-file", "int8-calib-file", "labelfile-path", "batch-size", "network-mode",
        "net-scale-factor", "offsets", "model-color-format", "infer-dims", "network-input-order", "network-type", "process-mode",
        "gie-unique-id", "output-blob-names", "classifier-threshold", "maintain-aspect-ratio"}


def _build(out, preprocessing=None):
    from rescompile.models.default import embedded_default
    from rescompile.pipeline import build

    source = None if preprocessing is None else str(embedded_default().path)  # an override applies to a model file
    build(BuildConfig(source=source, output_dir=out, bench=False, calib=CalibConfig(num_images=64), preprocessing=preprocessing))
    return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return _build(tmp_path_factory.mktemp("ds") / "resnet20-digits")


@pytest.fixture(scope="module")
def imagenet_bundle(tmp_path_factory):
    """The same model declared ImageNet-normalised: three different std values."""
    return _build(tmp_path_factory.mktemp("ds") / "resnet20-imagenet", IMAGENET)


@pytest.fixture(scope="module")
def images():
    test = load_dataset("digits").test
    return [test.image(i) for i in range(0, len(test), 3)]


def config_of(bundle):
    here = bundle / "deploy" / "deepstream"
    return here, parse_config((here / "config_infer_primary.txt").read_text())


def test_the_default_bundle_has_every_key_with_the_bundle_s_files(bundle):
    doc = json.loads((bundle / "manifest.json").read_text())
    here, cfg = config_of(bundle)
    assert KEYS <= set(cfg)
    assert "Gst-nvinfer" in (here / "config_infer_primary.txt").read_text().splitlines()[1] or "DS_plugin_gst-nvinfer" in (
        here / "config_infer_primary.txt").read_text()
    assert (here / cfg["onnx-file"]).resolve() == (bundle / "model_int8_qdq.onnx").resolve()  # explicit INT8: the Q/DQ ONNX
    assert (here / cfg["int8-calib-file"]).resolve() == (bundle / "calibration.cache").resolve()  # nvinfer turns INT8 on only with it
    assert cfg["network-mode"] == "1" and cfg["network-type"] == "1" and cfg["process-mode"] == "1"
    profile = doc["engine_plan"]["profiles"][0]
    assert cfg["batch-size"] == str(profile["opt"][0]) and cfg["infer-dims"] == "3;32;32" and cfg["network-input-order"] == "0"
    assert cfg["output-blob-names"] == doc["output"]["name"] and cfg["model-color-format"] == "0"
    assert (here / cfg["labelfile-path"]).read_text().strip().split(";") == doc["spec"]["labels"]  # a classifier's one-line format
    assert doc["deploy"]["deepstream_config"] == "deploy/deepstream/config_infer_primary.txt"
    assert json.loads((bundle / "accuracy.json").read_text())["deepstream_preprocessing"] == {"exact": True}


def test_scale_and_offsets_reproduce_the_manifest_s_preprocessing_on_real_images(bundle, images):
    """nvinfer's y = net-scale-factor * (pixel - offsets[c]), recomputed from the config's own values,
    on real digit images, equals rescompile's preprocessing: the config's numbers, not a formula, are checked."""
    doc = json.loads((bundle / "manifest.json").read_text())
    prep = Preprocessing.from_dict(doc["spec"]["preprocessing"])
    _, cfg = config_of(bundle)
    scale, offsets = float(cfg["net-scale-factor"]), np.array([float(v) for v in cfg["offsets"].split(";")], np.float64)
    pixels = prep.pixels(images).astype(np.float64)  # what nvinfer holds after scaling the frame to infer-dims (RGB)
    ds = (scale * (pixels - offsets)).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(ds, prep(images), atol=1e-4)


def test_single_scale_cost_is_measured_and_the_pixel_input_model_removes_it(imagenet_bundle, images):
    doc = json.loads((imagenet_bundle / "manifest.json").read_text())
    prep = Preprocessing.from_dict(doc["spec"]["preprocessing"])
    row = json.loads((imagenet_bundle / "accuracy.json").read_text())["deepstream_preprocessing"]
    assert row["exact"] is False and row["images"] == 360 and 0 <= row["agreement"] <= 1
    assert {"top1_exact", "top1_single_scale", "budget", "over_budget", "scale"} <= set(row)
    assert row["budget"] == max(BUDGET, 1 / 360) and row["over_budget"] == (1 - row["agreement"] > row["budget"])
    _, cfg = config_of(imagenet_bundle)
    scaling = Scaling.of(prep)
    assert float(cfg["net-scale-factor"]) == pytest.approx(scaling.scale, rel=1e-8) and not scaling.exact
    per_channel = [1 / (255 * s) for s in IMAGENET.std]
    assert min(per_channel) < scaling.scale < max(per_channel)  # the nearest single scale lies between them
    # The pixel-input Q/DQ ONNX: fed 0-255 pixels as nvinfer does with scale 1 and offsets 0, it gives
    # the Q/DQ model's own logits on exactly preprocessed input (the same arithmetic, reordered).
    qdq = onnx.load(str(imagenet_bundle / "model_int8_qdq.onnx"))
    pix = pixel_input_qdq(qdq, prep)
    exact = session(qdq, reference=True)
    folded = session(pix, reference=True)
    x = prep(images)
    raw = prep.pixels(images).astype(np.float32).transpose(0, 3, 1, 2).copy()
    a = exact.run(None, {exact.get_inputs()[0].name: x})[0]
    b = folded.run(None, {folded.get_inputs()[0].name: raw})[0]
    Tolerance(1, len(images), "float rounding of (x - o) * s against x * s - o/std at a quantizer's rounding edge").check_agreement(
        a.argmax(1), b.argmax(1), "pixel-input Q/DQ vs Q/DQ")


def test_over_budget_the_config_runs_the_pixel_input_model_with_scale_1(imagenet_bundle, tmp_path):
    doc = json.loads((imagenet_bundle / "manifest.json").read_text())
    files = {role: imagenet_bundle / entry["path"] for role, entry in doc["files"].items()}
    written = write_deepstream(imagenet_bundle, doc, files, {"exact": False, "over_budget": True})
    here, cfg = config_of(imagenet_bundle)
    try:
        assert written["deepstream_pixels_onnx"] == here / "model_int8_qdq_pixels.onnx"
        assert (here / cfg["onnx-file"]).resolve() == written["deepstream_pixels_onnx"].resolve()
        assert float(cfg["net-scale-factor"]) == 1.0 and cfg["offsets"] == "0;0;0"
        assert cfg["model-engine-file"].startswith("model_int8_qdq_pixels.onnx_b")  # nvinfer builds it from the pixel model
    finally:  # leave the module's bundle as the build wrote it
        written["deepstream_pixels_onnx"].unlink()
        write_deepstream(imagenet_bundle, doc, files, json.loads((imagenet_bundle / "accuracy.json").read_text())["deepstream_preprocessing"])


def test_a_bgr_model_asks_for_bgr_frames():
    prep = Preprocessing(channel_order="bgr", mean=(0.4, 0.5, 0.6), std=(0.2, 0.2, 0.2))
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    scaling = Scaling.of(prep)
    assert scaling.exact
    np.testing.assert_allclose(scaling.apply(pixels, prep), prep.normalize(pixels), atol=1e-4)


def test_an_implicit_int8_dla_plan_gets_the_optimized_onnx_the_cache_and_its_dla_core(bundle, tmp_path):
    """Implicit INT8 (DLA on TensorRT 10): nvinfer builds from the optimized ONNX and reads the
    calibration cache; the planned DLA core is asked for."""
    doc = json.loads((bundle / "manifest.json").read_text())
    files = {role: bundle / entry["path"] for role, entry in doc["files"].items()}
    doc["engine_plan"] = {**doc["engine_plan"], "int8_source": "cache", "dla_core": 1}
    out = tmp_path / "dla"
    out.mkdir()
    write_deepstream(out, doc, files)
    here = out / "deploy" / "deepstream"
    cfg = parse_config((here / "config_infer_primary.txt").read_text())
    assert (here / cfg["onnx-file"]).resolve() == (bundle / "model_opt.onnx").resolve()
    assert (here / cfg["int8-calib-file"]).resolve() == (bundle / "calibration.cache").resolve()
    assert cfg["enable-dla"] == "1" and cfg["use-dla-core"] == "1" and cfg["network-mode"] == "1"
