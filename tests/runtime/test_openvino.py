"""The OpenVINO runner on a real bundle: the bundle's OpenVINO form and its CPU artifact, the
predictions of ONNX Runtime, the model cache, the automatic choice the build measured, and the
one-line error when openvino is missing."""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest

from rescompile import runtime
from rescompile.data.datasets import load_dataset
from rescompile.errors import MissingDependencyError
from tests.bench.test_bench import bundle  # noqa: F401  the bench tests' bundle fixture (a trained ResNet-20, INT8)
from tests.tolerance import Tolerance

# Both runtimes run the same uint8 Q/DQ CPU artifact, but each with its own int8 kernels (their
# own requantization rounding and accumulation order): a borderline image of a briefly trained
# model may flip; a runner that fed the wrong file, layout or normalisation differs on dozens.
SAME_FILE = Tolerance(2, 360, "two runtimes' int8 kernels on the same Q/DQ file; a wrong feed differs on dozens")
# The OpenVINO form and the CPU artifact share every scale; only signed tensors are rounded on
# another grid (int8 around 0, not uint8 around 128): a few more borderline images may flip.
SAME_SCALES = Tolerance(4, 360, "two Q/DQ forms of one set of scales on two runtimes; a wrong feed differs on dozens")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh RESCOMPILE_HOME, so OpenVINO's cache starts empty."""
    monkeypatch.setenv("RESCOMPILE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").test


def test_openvino_runs_the_openvino_form_with_the_predictions_of_onnx_runtime(bundle, digits, home):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    with runtime.load(bundle, backend="openvino") as ov, runtime.load(bundle, backend="onnxruntime") as ort:
        assert ov.backend == "openvino" and ov.source == str(bundle / "model_int8_openvino.onnx")
        assert not ov.takes_pixels  # the OpenVINO form takes normalised floats; classify normalises in numpy
        x = digits.batch(np.arange(len(digits)), ov.spec.preprocessing)
        got, ref = ov.infer(x), ort.infer(x)
        assert got.shape == ref.shape == (len(digits), 10) and got.dtype == np.float32
        SAME_SCALES.check_agreement(got.argmax(1), ref.argmax(1), "openvino form vs CPU artifact, float input")
        assert ov.infer(x[:1]).shape == (1, 10) and ov.infer(x[:7]).shape == (7, 10)  # any batch size, after the big one
        (top,) = ov.classify(digits.images(np.arange(1))[0], top_k=1)
        assert top.label == ov.spec.label(int(got[0].argmax()))
    assert ov.closed
    with pytest.raises(runtime.RunnerError, match="closed"):
        ov.infer(x[:1])


def test_openvino_runs_the_cpu_artifact_and_its_pixel_form_with_onnx_runtime_s_predictions(bundle, digits, home):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    with runtime.load(bundle, backend="openvino", pixels=True) as ov, runtime.load(bundle, backend="onnxruntime") as ort:
        assert ov.source == str(bundle / "model_int8_cpu.onnx")
        assert ov.takes_pixels and ov.pixels_source == str(bundle / "model_int8_cpu_pixels.onnx")  # as ONNX Runtime picks
        x = digits.batch(np.arange(len(digits)), ov.spec.preprocessing)
        SAME_FILE.check_agreement(ov.infer(x).argmax(1), ort.infer(x).argmax(1), "openvino vs onnxruntime, float input")
        pixels = ov.spec.preprocessing.pixels(digits.images(np.arange(len(digits))))
        SAME_FILE.check_agreement(ov.infer_pixels(pixels).argmax(1), ort.infer_pixels(pixels).argmax(1), "pixel input")


def test_pixels_false_runs_the_float_artifact_only(bundle, home):
    pytest.importorskip("openvino")
    with runtime.load(bundle, backend="openvino", pixels=False, threads=1) as ov:
        assert not ov.takes_pixels and ov.input_shape == (3, 32, 32)


def test_a_second_load_reads_openvino_s_cache(bundle, home):
    pytest.importorskip("openvino")
    cache = home / "cache" / "openvino"
    first = runtime.load(bundle, backend="openvino", pixels=False)
    first.close()
    blobs = sorted(p.name for p in cache.iterdir())
    assert len(blobs) == 1  # the compiled CPU artifact
    second = runtime.load(bundle, backend="openvino", pixels=False)
    second.close()
    assert sorted(p.name for p in cache.iterdir()) == blobs  # a hit: nothing compiled or written again
    assert 0 < second.load_seconds and 0 < first.load_seconds


def test_an_onnx_file_runs_on_openvino_when_asked(bundle, digits, home):
    pytest.importorskip("openvino")
    with runtime.load(bundle / "model_opt.onnx", backend="openvino") as ov:
        assert ov.spec is not None and not ov.takes_pixels  # the spec is read from the ONNX metadata
        assert ov.infer(digits.batch(np.arange(4), ov.spec.preprocessing)).shape == (4, 10)


@pytest.mark.parametrize("target", ["bundle", "onnx"])
def test_missing_openvino_is_one_line_naming_the_extra(bundle, monkeypatch, target):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    path = bundle if target == "bundle" else bundle / "model_int8_cpu.onnx"
    with pytest.raises(MissingDependencyError) as err:
        runtime.load(path, backend="openvino")
    text = str(err.value)
    assert "\n" not in text and "pip install 'rescompile[openvino]'" in text and "openvino" in text.split(":")[0].lower()


def test_the_build_records_which_cpu_engine_it_measured_faster(bundle):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from rescompile.bench.env import cpu_flags, cpu_model

    doc = json.loads((bundle / "manifest.json").read_text())
    artifact = doc["cpu_artifact"]
    assert artifact["openvino"]["path"] == "model_int8_openvino.onnx" and "openvino_int8_onnx" in doc["files"]
    choice = artifact["choice"]
    p50, batches = choice["p50_ms"], [str(b) for b in choice["batches"]]
    assert set(p50) == {"onnxruntime", "openvino"} and batches == ["1", "32"]
    assert all(set(p50[k]) == set(batches) and all(v > 0 for v in p50[k].values()) for k in p50)
    ratios = [p50["openvino"][b] / p50["onnxruntime"][b] for b in batches]
    m = choice["margin"]
    faster = all(r < 1 for r in ratios) or (min(ratios) < 1 - m and max(ratios) <= 1 + m)
    assert choice["fastest"] == ("openvino" if faster else "onnxruntime") and 0 < m <= 0.1
    assert all(choice["runs"][b] >= 10 for b in batches)  # 5 rounds of at least 2 calls each
    assert choice["cpu"] == cpu_model() and choice["cpu_flags"] == cpu_flags()  # the figure says where it was measured
    accuracy = doc["calibration"]["accuracy"]["int8_openvino"]
    assert accuracy["runtime"] == "openvino" and accuracy["written"] and accuracy["images"] == 360


def _with_choice(bundle, tmp_path, fastest):
    copy = tmp_path / f"b-{fastest}"
    shutil.copytree(bundle, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    if fastest is None:
        doc["cpu_artifact"].pop("choice", None)
    else:
        doc["cpu_artifact"]["choice"] = {**doc["cpu_artifact"]["choice"], "fastest": fastest}
    (copy / "manifest.json").write_text(json.dumps(doc))
    return copy


@pytest.mark.parametrize("fastest, expected, source", [
    ("openvino", "openvino", "model_int8_openvino.onnx"),
    ("onnxruntime", "onnxruntime", "model_int8_cpu.onnx"),
    (None, "onnxruntime", "model_int8_cpu.onnx"),  # a bundle whose build measured nothing: ONNX Runtime, as before
])
def test_auto_runs_the_cpu_engine_the_build_measured_faster(bundle, tmp_path, monkeypatch, home, caplog, fastest, expected, source):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from rescompile import nvidia

    monkeypatch.setattr(nvidia, "tensorrt_version", lambda: None)
    copy = _with_choice(bundle, tmp_path, fastest)
    with caplog.at_level("INFO", logger="rescompile.runtime"), runtime.load(copy) as r:
        assert r.backend == expected and r.source == str(copy / source)
    if fastest is not None:
        assert "the build measured" in caplog.text and "the time at batch 32" in caplog.text  # the log says why, with the figures


def test_auto_takes_onnx_runtime_when_the_faster_openvino_is_not_installed(bundle, tmp_path, monkeypatch, caplog):
    pytest.importorskip("onnxruntime")
    from rescompile import nvidia

    monkeypatch.setattr(nvidia, "tensorrt_version", lambda: None)
    copy = _with_choice(bundle, tmp_path, "openvino")
    monkeypatch.setitem(sys.modules, "openvino", None)
    with caplog.at_level("INFO", logger="rescompile.runtime"), runtime.load(copy) as r:
        assert r.backend == "onnxruntime"
    assert "not installed" in caplog.text


def test_auto_takes_openvino_when_onnx_runtime_is_not_installed(bundle, tmp_path, monkeypatch, home):
    pytest.importorskip("openvino")
    from rescompile import nvidia

    monkeypatch.setattr(nvidia, "tensorrt_version", lambda: None)
    copy = _with_choice(bundle, tmp_path, "onnxruntime")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with runtime.load(copy) as r:
        assert r.backend == "openvino" and r.source == str(copy / "model_int8_openvino.onnx")


def test_the_build_s_engine_timing_and_openvino_check_leave_the_model_cache_empty(bundle, home):
    """OpenVINO keys its cache by file path: a blob of a staging or temporary file would never be read again."""
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    import onnx

    from rescompile.bundle import read_manifest
    from rescompile.stages.build.cpu import measure_cpu_engines
    from rescompile.stages.calibrate.accuracy import Evaluator

    man = read_manifest(bundle)
    files = {role: man.file(role) for role in ("cpu_int8_onnx", "openvino_int8_onnx")}
    choice = measure_cpu_engines(files, man.spec, threads=1)
    assert choice["fastest"] in ("openvino", "onnxruntime") and set(choice["p50_ms"]["openvino"]) == {"1", "32"}
    images = load_dataset("digits").test
    fp32 = onnx.load(str(man.file("optimized_onnx")))
    evaluate = Evaluator(fp32, images, man.spec.preprocessing)
    score = evaluate.openvino(onnx.load(str(files["openvino_int8_onnx"])))
    assert score.images == len(images) and score.top1_agreement > 0.9  # it ran the INT8 model on every image (36 of 360 spare)
    cache = home / "cache" / "openvino"
    assert not cache.exists() or not any(cache.iterdir())
