"""Interrupted and concurrent runs, untrusted checkpoints, and the doctor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cli.test_cli import invoke, one_line_error

FAST = ("--num-images", "64", "--no-bench")


def snapshot(path: Path, staging: bool = True) -> dict[str, bytes]:
    """Every file under ``path`` (the lock file aside; staging folders too unless ``staging`` is False)."""
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
        if p.is_file() and p.name != ".rescompile.lock" and (staging or not p.relative_to(path).parts[0].startswith(".staging-"))
    }


@pytest.fixture()
def complete_bundle(trained, tmp_path):
    out = tmp_path / "b"
    assert invoke("build", trained.checkpoint, "-o", out, *FAST).exit_code == 0
    return out


@pytest.mark.parametrize("where", ["export", "calibrate", "build", "manifest"])
def test_an_interrupted_build_leaves_the_bundle_as_it_was(complete_bundle, trained, monkeypatch, where):
    import rescompile.pipeline as pipeline

    before = snapshot(complete_bundle)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    target = {"export": "onnx_from_torch", "calibrate": "calibrate_model", "build": "build_engine_into", "manifest": "write_manifest"}[where]
    monkeypatch.setattr(pipeline, target, interrupted)
    res = invoke("build", trained.checkpoint, "-o", complete_bundle, *FAST)
    assert res.exit_code == 130 and "interrupted" in res.stderr
    assert snapshot(complete_bundle) == before  # every file as it was, the manifest still true
    assert not [p for p in complete_bundle.iterdir() if p.name.startswith(".staging-")]


def test_an_interrupted_first_build_leaves_nothing(trained, tmp_path, monkeypatch):
    import rescompile.pipeline as pipeline

    monkeypatch.setattr(pipeline, "calibrate_model", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    out = tmp_path / "new"
    assert invoke("build", trained.checkpoint, "-o", out, *FAST).exit_code == 130
    assert not out.exists()


def test_a_killed_build_leaves_no_partial_artifact_and_the_next_one_cleans_up(complete_bundle, trained):
    """SIGKILL in the middle of a real build process: the bundle is still the old, complete one."""
    from rescompile.bundle import read_manifest, verify

    before = snapshot(complete_bundle)
    proc = subprocess.Popen([sys.executable, "-m", "rescompile", "build", str(trained.checkpoint), "-o", str(complete_bundle), *FAST],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(complete_bundle.glob(".staging-*/model_fp32.onnx")):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    # A SIGKILL cannot be caught: the bundle itself is untouched, and the killed run's hidden
    # staging folder is all that is left of it.
    assert snapshot(complete_bundle, staging=False) == before
    assert list(complete_bundle.glob(".staging-*"))
    m = read_manifest(complete_bundle)
    assert set(verify(m)) == set(m.files)
    assert invoke("build", trained.checkpoint, "-o", complete_bundle, *FAST).exit_code == 0
    assert not list(complete_bundle.glob(".staging-*"))  # the killed run's leftovers are gone


def test_a_second_concurrent_build_fails_fast(complete_bundle, trained):
    from rescompile._io import output_lock

    with output_lock(complete_bundle):  # as if another build were running
        start = time.time()
        res = invoke("build", trained.checkpoint, "-o", complete_bundle, *FAST)
        assert time.time() - start < 30
    one_line_error(res, "is being written by another rescompile run")
    assert f"pid {os.getpid()}" in res.stderr


def test_concurrent_calibrations_into_one_folder(trained, tmp_path):
    from rescompile._io import output_lock

    out = tmp_path / "c"
    with output_lock(out):
        res = invoke("calibrate", trained.checkpoint, "-o", out, "--num-images", "64")
    one_line_error(res, "is being written by another rescompile run")


def test_an_interrupted_calibration_leaves_no_partial_artifacts(trained, tmp_path, monkeypatch):
    import rescompile.stages.calibrate.stage as stage

    out = tmp_path / "c"
    assert invoke("calibrate", trained.checkpoint, "-o", out, "--num-images", "64").exit_code == 0
    before = snapshot(out)
    monkeypatch.setattr(stage, "write_cache", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    res = invoke("calibrate", trained.checkpoint, "-o", out, "--num-images", "64", "--method", "max")
    assert res.exit_code == 130
    assert snapshot(out) == before


def test_a_malicious_pickle_checkpoint_is_refused(tmp_path):
    import pickle

    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump({"state_dict": Exploit()}, fh)
    for command in (("export", evil, "-o", tmp_path / "x.onnx"), ("build", evil, "-o", tmp_path / "b", "--no-bench"),
                    ("calibrate", evil, "-o", tmp_path / "c")):
        one_line_error(invoke(*command), "refuses (loading it could run code from the file)")
        assert "--trust-checkpoint" in invoke(*command).stderr
    assert not marker.exists()


def test_trust_checkpoint_is_an_explicit_choice(trained, tmp_path):
    import datetime

    import torch

    from rescompile.models.load import load_model

    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": load_model(str(trained.checkpoint)).module.state_dict(), "saved": datetime.date(2026, 1, 1)}, plain)
    one_line_error(invoke("build", plain, "--arch", "resnet20", "-o", tmp_path / "a", "--no-bench", "--precision", "fp32"),
                   "refuses")
    res = invoke("build", plain, "--arch", "resnet20", "-o", tmp_path / "b", "--no-bench", "--precision", "fp32", "--trust-checkpoint")
    assert res.exit_code == 0, res.stderr


def test_doctor_reports_this_machine():
    res = invoke("doctor", "--json")
    assert res.exit_code == 0
    data = json.loads(res.stdout)
    names = {c["name"]: c for c in data["checks"]}
    assert {"python", "torch", "gpu", "tensorrt", "onnxruntime", "onnxsim", "polygraphy"} <= set(names)
    assert "CPUExecutionProvider" in names["onnxruntime"]["detail"]
    from rescompile import nvidia

    if nvidia.find_gpu() is None and nvidia.tensorrt_version() is None:
        assert not names["gpu"]["ok"] and not names["tensorrt"]["ok"] and names["tensorrt"]["fix"]
        assert "no NVIDIA GPU, no TensorRT" in data["commands"]["build"]
        assert "--from-bundle" in data["commands"]["build"]
        text = invoke("doctor").stdout
        for command in ("train", "export", "calibrate", "build", "bench", "predict"):
            assert f"{command}: " in text
