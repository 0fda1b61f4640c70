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
    from rescompile.runtime.split import dispatch

    doc = json.loads((bundle / "manifest.json").read_text())
    artifact = doc["cpu_artifact"]
    assert artifact["openvino"]["path"] == "model_int8_openvino.onnx" and "openvino_int8_onnx" in doc["files"]
    choice = artifact["choice"]
    p50, batches = choice["p50_ms"], [str(b) for b in choice["batches"]]
    assert set(p50) == {"onnxruntime", "openvino"} and batches == ["1", "4", "8", "16", "32"]
    assert all(set(p50[k]) == set(batches) and all(v > 0 for v in p50[k].values()) for k in p50)
    ratios = [p50["openvino"][b] / p50["onnxruntime"][b] for b in batches]
    m = choice["margin"]
    faster = all(r < 1 for r in ratios) or (min(ratios) < 1 - m and max(ratios) <= 1 + m)
    assert choice["fastest"] == ("openvino" if faster else "onnxruntime") and 0 < m <= 0.1
    # at each batch size the overall choice, unless the other engine was more than the margin faster there
    faster_there = {b: ("onnxruntime" if r > 1 + m else "openvino") if faster else ("openvino" if r < 1 - m else "onnxruntime")
                    for b, r in zip(batches, ratios)}
    assert choice["by_batch"] == faster_there
    assert choice["dispatch"] == dispatch(choice["by_batch"])
    assert all(choice["runs"][b] >= 10 for b in batches)  # 5 rounds of at least 2 calls each
    assert choice["cpu"] == cpu_model() and choice["cpu_flags"] == cpu_flags()  # the figure says where it was measured
    accuracy = doc["calibration"]["accuracy"]["int8_openvino"]
    assert accuracy["runtime"] == "openvino" and accuracy["written"] and accuracy["images"] == 360


def _with_choice(bundle, tmp_path, fastest, by_batch=None):
    copy = tmp_path / f"b-{fastest}-{len(by_batch or ())}"
    shutil.copytree(bundle, copy)
    doc = json.loads((copy / "manifest.json").read_text())
    if fastest is None:
        doc["cpu_artifact"].pop("choice", None)
    else:  # what this machine measured is replaced: the tests do not depend on it
        by_batch = by_batch or {b: fastest for b in doc["cpu_artifact"]["choice"]["by_batch"]}
        doc["cpu_artifact"]["choice"] = {**doc["cpu_artifact"]["choice"], "fastest": fastest, "by_batch": by_batch}
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
    assert choice["fastest"] in ("openvino", "onnxruntime") and set(choice["p50_ms"]["openvino"]) == {"1", "4", "8", "16", "32"}
    images = load_dataset("digits").test
    fp32 = onnx.load(str(man.file("optimized_onnx")))
    evaluate = Evaluator(fp32, images, man.spec.preprocessing)
    score = evaluate.openvino(onnx.load(str(files["openvino_int8_onnx"])))
    assert score.images == len(images)
    RAN = Tolerance(36, len(images), "only that OpenVINO ran the INT8 model on the images; a wrong feed agrees on about a tenth")
    RAN.check_agreement_rate(score.top1_agreement, "OpenVINO form on the check's compile")
    cache = home / "cache" / "openvino"
    assert not cache.exists() or not any(cache.iterdir())


SPLIT = {"1": "onnxruntime", "4": "onnxruntime", "8": "onnxruntime", "16": "openvino", "32": "openvino"}


@pytest.mark.parametrize("by_batch, expected", [
    (SPLIT, [[1, "onnxruntime"], [16, "openvino"]]),
    ({"32": "openvino", "1": "onnxruntime", "8": "openvino"}, [[1, "onnxruntime"], [8, "openvino"]]),  # key order does not matter
    ({"1": "openvino", "8": "onnxruntime", "32": "openvino"}, [[1, "openvino"], [8, "onnxruntime"], [32, "openvino"]]),
    ({"1": "openvino", "8": "openvino", "32": "openvino"}, None),  # one engine everywhere: no table
    ({"1": "onnxruntime", "8": "onnxruntime"}, None),
    ({"1": "onnxruntime", "8": "tensorrt"}, None),  # not a CPU engine
    ({"one": "onnxruntime"}, None),
    ({}, None),
])
def test_dispatch_runs_each_engine_from_the_batch_at_which_it_became_faster(by_batch, expected):
    from rescompile.runtime.split import dispatch, engine_for

    assert dispatch(by_batch) == expected
    if expected:
        measured = sorted(int(b) for b in by_batch)
        for n in range(1, 70):  # a call of n images: the engine measured faster at the largest measured size <= n
            nearest = max([b for b in measured if b <= n], default=measured[0])
            assert engine_for(expected, n) == by_batch[str(nearest)]


def test_a_measured_split_runs_each_call_on_the_engine_faster_at_its_size(bundle, digits, tmp_path, monkeypatch, home, caplog):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from rescompile import nvidia
    from rescompile.runtime.split import BatchSplitRunner

    monkeypatch.setattr(nvidia, "tensorrt_version", lambda: None)
    copy = _with_choice(bundle, tmp_path, "onnxruntime", SPLIT)
    x = digits.batch(np.arange(40), bundle_spec(copy).preprocessing)
    with runtime.load(copy, backend="onnxruntime") as ort, runtime.load(copy, backend="openvino") as ov:
        want_small, want_large = ort.infer(x[:15]), ov.infer(x[:16])
    with caplog.at_level("INFO", logger="rescompile.runtime"), runtime.load(copy) as r:
        assert isinstance(r, BatchSplitRunner) and r.backend == "onnxruntime below batch 16, openvino from it"
        assert r.runner_for(15).backend == "onnxruntime" and r.runner_for(1).source == str(copy / "model_int8_cpu.onnx")
        assert r.takes_pixels and r.pixels_source == str(copy / "model_int8_cpu_pixels.onnx")  # classify: ONNX Runtime's pixel twin
        np.testing.assert_array_equal(r.infer(x[:15]), want_small)  # ONNX Runtime on the CPU artifact
        r.classify(digits.images(np.arange(1))[0])
        assert r.load_seconds == 0  # OpenVINO not compiled while no call has been large
        np.testing.assert_allclose(r.infer(x[:16]), want_large, rtol=0, atol=1e-5)  # OpenVINO on its form
        assert r.runner_for(16).backend == "openvino" and r.runner_for(32).source == str(copy / "model_int8_openvino.onnx")
        assert r.load_seconds > 0 and r.infer(x).shape == (40, 10)
    assert r.closed and r.runner_for(1).closed and r.runner_for(16).closed
    assert "below batch 16" in caplog.text and "the time at batch 16" in caplog.text  # the log says why, with the figures


def test_a_table_that_starts_on_openvino_classifies_on_openvino(bundle, digits, tmp_path, monkeypatch, home):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from rescompile import nvidia

    monkeypatch.setattr(nvidia, "tensorrt_version", lambda: None)
    copy = _with_choice(bundle, tmp_path, "openvino", {"1": "openvino", "4": "onnxruntime", "8": "onnxruntime", "16": "openvino", "32": "openvino"})
    with runtime.load(copy) as r:
        assert r.backend == "openvino from batch 1, onnxruntime from batch 4, openvino from batch 16"
        assert [r.engine_for(n) for n in (1, 3, 4, 15, 16, 99)] == ["openvino", "openvino", "onnxruntime", "onnxruntime", "openvino", "openvino"]
        assert not r.takes_pixels and r.runner_for(1).source == str(copy / "model_int8_openvino.onnx")
        image = digits.images(np.arange(1))[0]
        with runtime.load(copy, backend="openvino") as ov:
            assert r.classify(image) == ov.classify(image)  # the same engine on the same file


@pytest.mark.parametrize("case", ["openvino missing", "backend forced", "pixels required"])
def test_no_split_where_one_engine_is_asked_for_or_installed(bundle, tmp_path, monkeypatch, home, case):
    pytest.importorskip("onnxruntime")
    from rescompile import nvidia

    monkeypatch.setattr(nvidia, "tensorrt_version", lambda: None)
    copy = _with_choice(bundle, tmp_path, "onnxruntime", SPLIT)
    kwargs = {"backend forced": {"backend": "onnxruntime"}, "pixels required": {"pixels": True}}.get(case, {})
    if case == "openvino missing":
        monkeypatch.setitem(sys.modules, "openvino", None)
    with runtime.load(copy, **kwargs) as r:
        assert r.backend == "onnxruntime" and r.runner_for(32) is r


def test_a_closed_split_runner_compiles_nothing_more(bundle, tmp_path, monkeypatch, home):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    from rescompile import nvidia

    monkeypatch.setattr(nvidia, "tensorrt_version", lambda: None)
    r = runtime.load(_with_choice(bundle, tmp_path, "onnxruntime", SPLIT))
    r.close()
    with pytest.raises(runtime.RunnerError, match="closed"):
        r.runner_for(16)
    assert r.load_seconds == 0


def bundle_spec(path):
    from rescompile.bundle import read_manifest

    return read_manifest(path).spec
