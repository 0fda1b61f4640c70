"""rescompile predict and the example app, on a bundle built with no arguments but the precision."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rescompile.bundle import read_manifest, verify
from tests.cli.test_cli import invoke, one_line_error
from tests.tolerance import Tolerance

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def default_bundle(tmp_path_factory):
    """`rescompile build --precision int8` with nothing else: the embedded default model."""
    import os

    from rescompile.config import rescompile_home

    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("RESCOMPILE_HOME")
    os.environ["RESCOMPILE_HOME"] = str(home)
    try:
        res = invoke("build", "--precision", "int8")
        assert res.exit_code == 0, res.stderr
        yield rescompile_home() / "builds" / "resnet20-digits"
    finally:
        if old is None:
            os.environ.pop("RESCOMPILE_HOME", None)
        else:
            os.environ["RESCOMPILE_HOME"] = old


@pytest.fixture(scope="module")
def digit_pngs(tmp_path_factory):
    """The digits test split as PNG files named by label (images the model never saw)."""
    from PIL import Image

    from rescompile.data.datasets import load_dataset

    test = load_dataset("digits").test
    root = tmp_path_factory.mktemp("pngs")
    for i in range(0, len(test), 6):
        Image.fromarray(test.image(i)).save(root / f"{i:03d}_label{test.labels[i]}.png")
    return root


def test_default_int8_bundle_is_valid(default_bundle):
    m = read_manifest(default_bundle)
    assert m.precision == "int8" and set(verify(m)) == set(m.files)
    assert {"qdq_onnx", "cpu_int8_onnx", "calibration_cache", "labels"} <= set(m.files)


def cpu_runner(bundle, batch: int = 1) -> tuple[str, str]:
    """(backend, file) runtime.load runs on a CPU for a call of ``batch`` images: the engine the
    build measured faster, at that batch size where the faster one changed with it."""
    choice = json.loads((bundle / "manifest.json").read_text())["cpu_artifact"].get("choice") or {}
    table = choice.get("dispatch")  # [[from_batch, engine], ...]
    engine = [e for b, e in table if b <= batch][-1] if table else choice.get("fastest")
    openvino = engine == "openvino"
    return ("openvino", "model_int8_openvino.onnx") if openvino else ("onnxruntime", "model_int8_cpu.onnx")


def test_predict_classifies_digits(default_bundle, digit_pngs, monkeypatch):
    monkeypatch.setenv("RESCOMPILE_HOME", str(default_bundle.parents[1]))
    res = invoke("predict", digit_pngs, "--json", "--top-k", "2")  # the default bundle, a folder of images
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    backend, _ = cpu_runner(default_bundle)
    expected = {"onnxruntime": "onnxruntime on model_int8_cpu_pixels.onnx (uint8 pixels in)", "openvino": "openvino on model_int8_openvino.onnx"}
    assert data["runner"] == expected[backend]
    preds = data["predictions"]
    assert len(preds) == 60 and all(len(p["top"]) == 2 for p in preds)
    right = sum(p["top"][0]["label"] == Path(p["image"]).stem.split("label")[1] for p in preds)
    assert right >= 57  # floor: the INT8 model keeps the FP32 model's ~99%: at most 3 of these 60 wrong
    table = invoke("predict", *sorted(digit_pngs.iterdir())[:3], "--bundle", default_bundle)
    assert table.exit_code == 0 and f"predictions ({backend}" in table.stdout


def test_classify_runs_the_pixel_artifact_and_agrees_with_the_float_one(default_bundle, digit_pngs):
    from rescompile import runtime
    from rescompile.runtime.base import read_image

    m = read_manifest(default_bundle)
    assert "cpu_int8_pixels_onnx" in m.files  # written by the build, listed and hashed like every artifact
    acc = json.loads((default_bundle / "accuracy.json").read_text())["accuracy"]
    pix, flt = acc["int8_cpu_pixels_onnxruntime"], acc["int8_cpu_onnxruntime"]
    # Measured at build time on the 360-image test split, by ONNX Runtime's integer kernels, which
    # differ between CPUs (VNNI or not, and 7-bit weights without it): one borderline image may move.
    # The default loses nothing on the CPUs measured (README), which is a claim of the README, not of this test.
    n = pix["images"]
    one = Tolerance(1, n, "the shipped model; ONNX Runtime's kernels differ by CPU")
    one.check_drop_points(pix["drop_points"], "pixel artifact")
    Tolerance(2, n, "two borderline images of the shipped model").check_agreement_rate(pix["top1_agreement"], "pixel artifact")
    one.check_gap_points(100 * (pix["top1_agreement"] - flt["top1_agreement"]), "pixel vs float artifact")
    files = sorted(digit_pngs.iterdir())
    with runtime.load(default_bundle, backend="onnxruntime") as fast, runtime.load(default_bundle, backend="onnxruntime", pixels=False) as plain:
        assert fast.takes_pixels and fast.pixels_source.endswith("model_int8_cpu_pixels.onnx") and not plain.takes_pixels
        images = [read_image(f) for f in files]
        pixels = fast.spec.preprocessing.pixels(images)
        a, b = fast.infer_pixels(pixels), plain.infer(fast.spec.preprocessing(images))
        Tolerance(1, len(files), "the two artifacts differ only on the padding border").check_agreement(a.argmax(1), b.argmax(1))
        assert np.abs(a - b).max() <= 0.1 * np.abs(b).max()
        assert fast.infer(fast.spec.preprocessing(images[:2])).shape == (2, 10)  # float input still works (its session opens on demand)
        assert [p.index for p in fast.classify(files[0], top_k=3)] == [int(i) for i in np.argsort(-a[0])[:3]]


def test_predict_bad_inputs(default_bundle, tmp_path):
    one_line_error(invoke("predict", tmp_path / "missing.png", "--bundle", default_bundle), "no such image file or folder")
    (tmp_path / "empty").mkdir()
    one_line_error(invoke("predict", tmp_path / "empty", "--bundle", default_bundle), "holds no image files")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    one_line_error(invoke("predict", tmp_path / "bad.png", "--bundle", default_bundle), "cannot read image")
    one_line_error(invoke("predict", tmp_path / "bad.png", "--bundle", tmp_path / "nothing"), "nothing")
    (tmp_path / "garbage.engine").write_bytes(b"\x00garbage")
    res = invoke("predict", tmp_path / "bad.png", "--bundle", tmp_path / "garbage.engine")
    assert res.exit_code != 0 and res.stderr.strip().startswith("error:")


def test_a_tampered_bundle_is_refused(default_bundle, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(default_bundle, copy)
    with open(copy / "model_opt.onnx", "ab") as fh:
        fh.write(b"\0")
    one_line_error(invoke("build", "--no-bench", "--from-bundle", copy), "does not match its manifest")
    (copy / "manifest.json").unlink()
    one_line_error(invoke("build", "--no-bench", "--from-bundle", copy), "not a rescompile bundle")


def test_unknown_precision_is_a_usage_error():
    res = invoke("build", "--no-bench", "--precision", "int4")
    assert res.exit_code == 2 and "int4" in res.stderr


def test_example_app_runs_without_pytorch(default_bundle, digit_pngs):
    code = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None  # any import of PyTorch would fail\n"
        f"sys.argv = ['app.py', {str(default_bundle)!r}, {str(digit_pngs)!r}, '--top-k', '1']\n"
        f"runpy.run_path({str(ROOT / 'examples' / 'classify_images' / 'app.py')!r}, run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "running {} on {}".format(*cpu_runner(default_bundle)) and len(lines) == 61
    right = sum(line.split(":")[0].split("label")[1].split(".")[0] == line.split(": ")[1].split(" ")[0] for line in lines[1:])
    assert right >= 57
    assert np.isfinite(float(lines[1].split("[")[1].split(" ms")[0]))
