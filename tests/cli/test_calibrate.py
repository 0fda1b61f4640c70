"""rescompile calibrate and build --precision int8 from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from rescompile.stages.calibrate.cache import parse_cache, read_cache
from tests.cli.test_cli import invoke, one_line_error
from tests.conftest import files_under, write_image_folder

SAMPLES = Path(__file__).resolve().parents[2] / "calibration" / "digits"
FAST = ("--num-images", "64")


def test_calibrate_from_the_sample_folder(trained, tmp_path):
    out = tmp_path / "int8"
    res = invoke("calibrate", trained.checkpoint, "--data", SAMPLES, *FAST, "--method", "percentile", "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["method"] == "percentile" and data["percentile"] == 99.99 and data["images"] == 64
    assert data["lint"]["passed"] and data["accuracy"]["evaluated"]
    assert {"model_int8_qdq.onnx", "model_int8_cpu.onnx", "calibration.cache", "scales.json", "accuracy.json"} <= files_under(out)
    assert read_cache(out / "calibration.cache").header == "TRT-100300-EntropyCalibration2"
    assert "fewer" not in res.stderr


def test_calibrate_prints_tables_and_cache_version(trained, tmp_path):
    res = invoke("calibrate", trained.checkpoint, "--data", SAMPLES, *FAST, "--trt-version", "8.6.1", "-o", tmp_path)
    assert res.exit_code == 0, res.stderr
    assert "INT8 accuracy" in res.stdout and "reference Q/DQ" in res.stdout and "lint: passes" in res.stdout
    assert (tmp_path / "calibration.cache").read_text().startswith("TRT-8601-EntropyCalibration2\n")


def test_calibrate_from_an_existing_cache(trained, tmp_path):
    first = tmp_path / "a"
    assert invoke("calibrate", trained.checkpoint, "--data", SAMPLES, *FAST, "-o", first).exit_code == 0
    res = invoke("calibrate", first / "model_fp32.onnx", "--from-cache", first / "calibration.cache", "-o", tmp_path / "b", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["method"] == "cache:EntropyCalibration2"
    assert (tmp_path / "b" / "calibration.cache").read_bytes() == (first / "calibration.cache").read_bytes()


def test_a_cache_from_another_tensorrt_version_warns_and_is_retagged(trained, tmp_path):
    first = tmp_path / "a"
    assert invoke("calibrate", trained.checkpoint, "--data", SAMPLES, *FAST, "--trt-version", "8.6.1", "-o", first).exit_code == 0
    res = invoke("calibrate", first / "model_fp32.onnx", "--from-cache", first / "calibration.cache", "-o", tmp_path / "b")
    assert res.exit_code == 0
    assert "written for TensorRT 8.6.1" in res.stderr
    old, new = parse_cache((first / "calibration.cache").read_text()), read_cache(tmp_path / "b" / "calibration.cache")
    assert new.version == "10.3.0" and new.scales == old.scales


def test_bad_caches_are_one_line_errors(trained, tmp_path):
    model = tmp_path / "m"
    assert invoke("calibrate", trained.checkpoint, "--data", SAMPLES, *FAST, "-o", model).exit_code == 0
    text = (model / "calibration.cache").read_text()
    out = tmp_path / "out"
    cases = {
        "truncated.cache": "\n".join(text.splitlines()[:3] + [text.splitlines()[3][:-3]]),  # cut inside its hex value
        "foreign.cache": text + "some other model's tensor: 3c010204\n",
        "garbage.cache": "not a cache\n",
    }
    for name, body in cases.items():
        (tmp_path / name).write_text(body)
    one_line_error(invoke("calibrate", model / "model_fp32.onnx", "--from-cache", tmp_path / "truncated.cache", "-o", out), "line 4")
    one_line_error(invoke("calibrate", model / "model_fp32.onnx", "--from-cache", tmp_path / "foreign.cache", "-o", out), "not in the model")
    one_line_error(invoke("calibrate", model / "model_fp32.onnx", "--from-cache", tmp_path / "garbage.cache", "-o", out), "header")
    one_line_error(invoke("calibrate", model / "model_fp32.onnx", "--from-cache", tmp_path / "nope.cache", "-o", out), "nope.cache")
    assert files_under(out) == set()


def test_bad_data_is_a_one_line_error_and_writes_nothing(trained, tmp_path):
    out = tmp_path / "out"
    (tmp_path / "empty").mkdir()
    one_line_error(invoke("calibrate", trained.checkpoint, "--data", tmp_path / "empty", "-o", out), "no class sub-folders")
    one_line_error(invoke("calibrate", trained.checkpoint, "--data", tmp_path / "missing", "-o", out), "missing")
    nan = np.random.default_rng(0).random((40, 32, 32, 3)).astype(np.float32)
    nan[0, 0, 0, 0] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    one_line_error(invoke("calibrate", trained.checkpoint, "--data", tmp_path / "nan.npy", "-o", out), "NaN")
    np.save(tmp_path / "small.npy", np.zeros((40, 28, 28, 3), np.uint8))
    one_line_error(invoke("calibrate", trained.checkpoint, "--data", tmp_path / "small.npy", "-o", out), "28x28 images")
    np.save(tmp_path / "five.npy", np.zeros((40, 32, 32, 5), np.uint8))
    one_line_error(invoke("calibrate", trained.checkpoint, "--data", tmp_path / "five.npy", "-o", out), "channels")
    few = write_image_folder(tmp_path / "few", per_class=3, size=32)
    one_line_error(invoke("calibrate", trained.checkpoint, "--data", few, "-o", out), "only 9 calibration image")
    assert files_under(out) == set()


def test_unreadable_files_are_skipped_with_a_count(trained, tmp_path):
    folder = write_image_folder(tmp_path / "imgs", classes=tuple("abcd"), per_class=6, size=32)
    (folder / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (folder / "b" / "notes.txt").write_text("hello")
    # --no-fallback: random-noise images say nothing about INT8 accuracy (the safety net has its own tests)
    res = invoke("calibrate", trained.checkpoint, "--data", folder, "-o", tmp_path / "out", "--json", "--no-fallback")
    assert res.exit_code == 0, res.stderr
    assert "skipped 1 unreadable image file" in res.stderr
    assert json.loads(res.stdout)["images"] == 24


def test_int8_without_calibration_data_says_how_to_fix_it(tmp_path):
    out = tmp_path / "b"
    res = invoke("build", "--no-bench", "resnet18", "--num-classes", "10", "--input-size", "32", "-o", out)
    assert res.exit_code != 0
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]  # (after a warning on random weights)
    assert len(errors) == 1 and "INT8 needs calibration data" in errors[0] and "--calib-data" in errors[0]
    assert files_under(out) == set()


def test_build_int8_with_auto_and_max_drop(trained, tmp_path):
    out = tmp_path / "b"
    res = invoke("build", "--no-bench", trained.checkpoint, "-o", out, "--method", "auto", "--max-accuracy-drop", "0.5", *FAST, "--json")
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["calibration"]["method"] in {"entropy", "percentile", "mse", "max"}
    acc = json.loads((out / "accuracy.json").read_text())
    assert len(acc["auto_candidates"]) == 5 and len(acc["sensitivity"]) == 22
    # --max-accuracy-drop is a contract, not a tolerance: the float-layer loop judged these same test
    # images, so the drop it reports is the one it stopped at.
    assert acc["accuracy"]["int8_tensorrt_reference"]["drop_points"] <= 0.5 + 1e-9  # floor: the option's own bound


def test_calibrate_from_scales_json(trained, tmp_path):
    first = tmp_path / "a"
    assert invoke("calibrate", trained.checkpoint, "--data", SAMPLES, *FAST, "-o", first).exit_code == 0
    res = invoke("calibrate", first / "model_fp32.onnx", "--from-scales", first / "scales.json", "-o", tmp_path / "b", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["method"] == "scales.json"
    assert read_cache(tmp_path / "b" / "calibration.cache").scales == read_cache(first / "calibration.cache").scales
    doc = json.loads((first / "scales.json").read_text())
    doc["tensors"]["not/in/the/model"] = {"amax": 1.0}
    (tmp_path / "foreign.json").write_text(json.dumps(doc))
    one_line_error(invoke("calibrate", first / "model_fp32.onnx", "--from-scales", tmp_path / "foreign.json", "-o", tmp_path / "c"),
                   "not in the model")
    doc["tensors"] = {"input": {"amax": -1}}
    (tmp_path / "negative.json").write_text(json.dumps(doc))
    one_line_error(invoke("calibrate", first / "model_fp32.onnx", "--from-scales", tmp_path / "negative.json", "-o", tmp_path / "c"),
                   "not a positive finite number")
    one_line_error(invoke("calibrate", first / "model_fp32.onnx", "--from-scales", first / "scales.json", "--from-cache",
                          first / "calibration.cache", "-o", tmp_path / "c"), "not both")
    assert files_under(tmp_path / "c") == set()


def test_a_named_dataset_is_resized_to_the_model_like_in_training(tmp_path):
    """A model trained on digits at 48x48 calibrates on digits (32x32 arrays) through its own resize."""
    res = invoke("calibrate", "resnet20", "--input-size", "48", "--data", "digits", "--num-images", "32", "--no-fallback",
                 "-o", tmp_path / "o", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["images"] == 32
