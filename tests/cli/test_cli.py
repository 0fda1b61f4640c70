"""The CLI through Typer's CliRunner, and as a real subprocess."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import onnx
import pytest
from typer.testing import CliRunner

from rescompile._io import sha256_file
from rescompile.cli import app
from tests.conftest import files_under
from tests.tolerance import Tolerance

runner = CliRunner()
COMMANDS = ["train", "export", "optimize", "inspect", "calibrate", "build", "bench", "predict", "compare", "models"]


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def one_line_error(result, pattern: str) -> None:
    assert result.exit_code != 0
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith(">> ")]  # stage markers
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert pattern in lines[0], lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(command):
    res = invoke(command, "--help")
    assert res.exit_code == 0
    assert "Example" in res.stdout and f"rescompile {command}" in res.stdout


def test_root_help_and_version():
    res = invoke("--help")
    assert res.exit_code == 0 and all(c in res.stdout for c in COMMANDS)
    # The no-argument build loads the shipped model; only --retrain trains (see the test below).
    text = " ".join(res.stdout.split())
    assert "to train the embedded default" not in text and "shipped trained" in text and "--retrain" in text
    assert invoke("--version").stdout.startswith("rescompile ")


def test_models_lists_architectures_as_json():
    data = json.loads(invoke("models", "--json").stdout)
    assert data["resnet20"]["family"] == "cifar" and data["resnet50"]["input"] == 224


def test_train_json_writes_checkpoint(tmp_path):
    res = invoke("train", "--epochs", "1", "--warmup-epochs", "0", "--max-train-images", "64", "-o", tmp_path, "--json", "--optimizer", "adam")
    assert res.exit_code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert Path(summary["checkpoint"]) == tmp_path / "best.pt" and (tmp_path / "best.pt").exists()
    assert 0.0 <= summary["test_acc"] <= 1.0 and summary["test_images"] == 360


def test_train_shows_progress_and_table(tmp_path):
    res = invoke("train", "--epochs", "1", "--warmup-epochs", "0", "--max-train-images", "64", "-o", tmp_path)
    assert res.exit_code == 0
    assert "test top-1" in res.stdout and "resnet20 1" in res.stderr  # progress bar on stderr


def test_export_checkpoint_to_onnx(trained, tmp_path):
    out = tmp_path / "m.onnx"
    res = invoke("export", trained.checkpoint, "-o", out, "--json")
    assert res.exit_code == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["check"]["passed"]  # max |diff| within 1e-4 + 1e-3 * max|logit|: the real check
    # FP32 against FP32: only logits that tie within float rounding may order differently.
    Tolerance(1, 5, "FP32 vs FP32 on 5 random inputs").check_agreement_rate(result["check"]["top1_agreement"])
    onnx.checker.check_model(onnx.load(str(out)))


def test_build_from_checkpoint_writes_bundle_with_hashes(trained, tmp_path):
    res = invoke("build", "--no-bench", trained.checkpoint, "-o", tmp_path / "b")
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["spec"]["arch"] == "resnet20" and manifest["export"]["check"]["passed"]
    assert set(manifest["files"]) == {
        "fp32_onnx", "optimized_onnx", "fusion_report", "labels", "checkpoint", "qdq_onnx", "cpu_int8_onnx", "cpu_int8_pixels_onnx",
        "openvino_int8_onnx", "calibration_cache", "scales", "accuracy",
    }
    assert manifest["precision"] == "int8"
    cal = manifest["calibration"]
    assert cal["images"] == 500 and cal["lint_passed"] and cal["trt_cache_version"] == "10.3.0"
    # The default calibrator, unless the safety net measured it losing accuracy on this briefly trained
    # model and says which it kept instead (which one depends on the last bits of the training run).
    safety = json.loads((tmp_path / "b" / "accuracy.json").read_text())["safety_net"]
    assert cal["method"] == "entropy" or (safety["changed"] and safety["note"].startswith("entropy") and cal["method"] in safety["note"])
    Tolerance.from_rate(0.03, 360, "a briefly trained model on the 360 test images").check_agreement_rate(
        cal["accuracy"]["int8_tensorrt_reference"]["top1_agreement"], "int8_tensorrt_reference")
    assert manifest["optimize"]["residual_blocks"] == manifest["optimize"]["fusable_blocks"] == 9
    report = json.loads((tmp_path / "b" / "fusion_report.json").read_text())
    assert len(report["blocks"]) == 9
    for entry in manifest["files"].values():
        assert sha256_file(tmp_path / "b" / entry["path"]) == entry["sha256"]
    assert manifest["versions"]["torch"] and manifest["model"]["metrics"]["test_acc"] == pytest.approx(trained.test_acc)
    assert "test top-1" in res.stdout and "INT8 accuracy" in res.stdout and "lint: passes" in res.stdout


def test_build_fp32_skips_calibration(trained, tmp_path):
    res = invoke("build", "--no-bench", trained.checkpoint, "-o", tmp_path / "b", "--precision", "fp32", "--json")
    assert res.exit_code == 0, res.stderr
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["precision"] == "fp32" and manifest["calibration"] is None
    assert set(manifest["files"]) == {"fp32_onnx", "optimized_onnx", "fusion_report", "labels", "checkpoint"}
    assert manifest["cpu_artifact"] == {"path": "model_opt.onnx", "runtime": "onnxruntime", "precision": "fp32"}


def test_build_with_no_arguments_uses_the_embedded_model_without_training(home, monkeypatch):
    import rescompile.pipeline as pipeline
    from rescompile.models.default import embedded_default

    def no_training(*a, **k):
        raise AssertionError("the embedded default model needs no training")

    monkeypatch.setattr("rescompile.train.train", no_training)
    res = invoke("build")
    assert res.exit_code == 0, res.stderr
    bundle = home / "builds" / "resnet20-digits"
    assert (bundle / "manifest.json").exists() and (bundle / "model_fp32.onnx").exists()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["model"]["source"] == str(embedded_default().path)
    assert manifest["model"]["metrics"]["test_acc"] >= 0.97  # floor: the shipped weights' recorded metric, not re-measured
    assert not pipeline.default_model_path().exists()  # nothing trained, nothing cached
    # ...and ends with the benchmark against FP32 PyTorch
    text = " ".join(res.stdout.split())
    assert (bundle / "bench" / "report.md").exists()
    assert re.search(r"is \d+\.\dx (faster|slower) than PyTorch FP32 eager at batch 1 with [+-]\d+\.\d points top-1", text), text


def test_build_retrain_trains_the_default_from_scratch(home, monkeypatch):
    import rescompile.pipeline as pipeline

    monkeypatch.setattr(pipeline, "DEFAULT_TRAIN", replace(pipeline.DEFAULT_TRAIN, epochs=1, warmup_epochs=0, max_train_images=64))
    res = invoke("build", "--retrain", "--no-bench", "--precision", "fp32", "--json")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["model"] == str(pipeline.default_model_path())
    assert pipeline.default_model_path().exists()


def test_compare_prints_both_accuracies_and_plots(tmp_path):
    res = invoke(
        "compare", "--epochs", "1", "--warmup-epochs", "0", "--max-train-images", "64", "--input-size", "16", "-o", tmp_path, "--json"
    )
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert set(data["results"]) == {"resnet30", "plain30"}
    assert all(0 <= r["test_acc"] <= 1 for r in data["results"].values())
    assert Path(data["plot"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_inputs_one_line_errors_and_nothing_written(trained, tmp_path):
    out = tmp_path / "out"
    one_line_error(invoke("export", "nope.pt", "-o", out / "x.onnx"), "no such model file")
    one_line_error(invoke("build", "--no-bench", "resnet21", "-o", out), "no such model file or architecture name")
    one_line_error(invoke("train", "--arch", "resnet21", "-o", out), "unknown architecture 'resnet21'")
    one_line_error(invoke("export", trained.checkpoint, "--arch", "resnet56", "-o", out / "x.onnx"), "not resnet56")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    one_line_error(invoke("train", "--dataset", tmp_path / "empty", "-o", out), "holds no readable images")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07garbage")
    one_line_error(invoke("build", "--no-bench", tmp_path / "bad.onnx", "-o", out), "not a readable ONNX model")
    assert files_under(out) == set()


def test_unknown_choice_is_a_usage_error():
    res = invoke("train", "--optimizer", "lion")
    assert res.exit_code == 2 and "lion" in res.stderr


def test_real_subprocess(trained, tmp_path):
    exe = [sys.executable, "-m", "rescompile"]
    ok = subprocess.run([*exe, "build", "--no-bench", str(trained.checkpoint), "-o", str(tmp_path / "b"), "--json"], capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["manifest"].endswith("manifest.json")
    bad = subprocess.run([*exe, "export", "missing.pt", "-o", str(tmp_path / "x.onnx")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and bad.stderr.strip().count("\n") == 0 and "no such model file" in bad.stderr
