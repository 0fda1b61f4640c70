"""rescompile build: precisions, engine options, the bundle's manifest and --from-bundle, without TensorRT."""

from __future__ import annotations

import importlib.util
import json

import onnx
import pytest

from rescompile.bundle import read_manifest, verify
from rescompile.stages.build import build_target
from tests.cli.test_cli import invoke, one_line_error
from tests.conftest import files_under
from tests.tolerance import Tolerance

FAST = ("--num-images", "64")


@pytest.fixture(scope="module")
def int8_bundle(trained, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "b"
    res = invoke("build", "--no-bench", trained.checkpoint, "-o", out, *FAST, "--max-batch", "64", "--opt-batch", "16")
    assert res.exit_code == 0, res.stderr
    return out, res


def test_int8_bundle_is_complete_and_self_describing(int8_bundle, trained):
    out, res = int8_bundle
    m = read_manifest(out)
    assert m.format_version == 2 and m.precision == "int8"
    assert set(verify(m)) == set(m.files)  # every file is there and hashes as recorded
    doc = m.doc
    assert doc["input"] == {"name": "input", "shape": ["batch", 3, 32, 32], "dtype": "float32", "layout": "nchw"}
    assert doc["output"]["shape"] == ["batch", 10]
    artifact = doc["cpu_artifact"]
    assert {k: artifact[k] for k in ("path", "runtime", "precision")} == {"path": "model_int8_cpu.onnx", "runtime": "onnxruntime", "precision": "int8"}
    assert artifact["openvino"] == {"path": "model_int8_openvino.onnx", "runtime": "openvino", "precision": "int8"}
    # The CPU engine is chosen by measurement where both can run (tests/runtime/test_openvino.py checks the record).
    both = all(importlib.util.find_spec(m) is not None for m in ("onnxruntime", "openvino"))
    assert ("choice" in artifact) == both
    # What the manifest says of NVIDIA is what this machine has (a GPU box without TensorRT included).
    here = build_target()
    assert doc["nvidia"] == {"tensorrt": here.trt_version, "gpu": here.gpu.to_dict() if here.gpu else None}
    if here.can_build:
        assert doc["engine"] is not None and doc["engine"]["tensorrt_version"] == here.trt_version
    else:
        assert doc["engine"] is None and here.explanation.split(": ")[0] in " ".join(res.stdout.split())
    plan = doc["engine_plan"]
    assert plan["onnx_role"] == "qdq_onnx" and plan["profiles"] == [{"min": [1, 3, 32, 32], "opt": [16, 3, 32, 32], "max": [64, 3, 32, 32]}]
    cal = doc["calibration"]
    assert cal["provenance"]["images"] == 64 and len(cal["provenance"]["data_sha256"]) == 64 and cal["accuracy"]["evaluated"]
    assert (out / "labels.txt").read_text().split() == [str(i) for i in range(10)]
    if not here.can_build:
        assert f"--from-bundle {out}" in res.stdout


def test_fp16_bundle_has_an_fp16_onnx(trained, tmp_path):
    out = tmp_path / "b"
    res = invoke("build", "--no-bench", trained.checkpoint, "-o", out, "--precision", "fp16", "--json")
    assert res.exit_code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["calibration"] is None and "fp16_onnx" in data["files"]
    half = onnx.load(str(out / "model_fp16.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer)
    assert read_manifest(out).doc["engine_plan"]["onnx_role"] == "optimized_onnx"  # TensorRT 10 target: FP16 flag


def test_from_bundle_needs_tensorrt_and_leaves_the_bundle_as_it_was(int8_bundle):
    if build_target().can_build:
        pytest.skip("TensorRT and an NVIDIA GPU are here, so --from-bundle builds (test_real_engine_build_and_rebuild covers it)")
    out, _ = int8_bundle
    before = (out / "manifest.json").read_bytes()
    one_line_error(invoke("build", "--no-bench", "--from-bundle", out), "--from-bundle builds a TensorRT engine")
    assert (out / "manifest.json").read_bytes() == before


def test_bad_engine_options_fail_before_anything_is_written(trained, tmp_path):
    out = tmp_path / "b"
    one_line_error(invoke("build", "--no-bench", trained.checkpoint, "-o", out, "--min-batch", "8", "--opt-batch", "4"), "min <= opt <= max")
    one_line_error(
        invoke("build", "--no-bench", trained.checkpoint, "-o", out, "--int8-source", "cache", "--trt-version", "11.0.0"), "no calibration-cache path"
    )
    one_line_error(invoke("build", "--no-bench", trained.checkpoint, "-o", out, "--precision", "fp32", "--dla-core", "0"), "DLA runs FP16 and INT8")
    one_line_error(invoke("build", "--no-bench", trained.checkpoint, "--from-bundle", tmp_path), "it takes no MODEL")
    one_line_error(invoke("build", "--no-bench", "--retrain", "--from-bundle", tmp_path), "it takes no MODEL and no --retrain")
    one_line_error(invoke("build", "--no-bench", "--retrain", trained.checkpoint), "--retrain trains the embedded default")
    one_line_error(invoke("build", "--no-bench", "--from-bundle", tmp_path / "nowhere"), "no bundle directory")
    assert files_under(out) == set()


def test_cache_source_plan_for_jetson(trained, tmp_path):
    res = invoke("build", "--no-bench", trained.checkpoint, "-o", tmp_path, *FAST, "--int8-source", "cache", "--json")
    assert res.exit_code == 0, res.stderr
    plan = json.loads(res.stdout)["engine_plan"]
    assert plan["int8_source"] == "cache" and plan["cache_path"] == "calibration.cache" and plan["onnx_role"] == "optimized_onnx"


@pytest.mark.trt
@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_real_engine_build_and_rebuild(trained, tmp_path, precision):
    """On a machine with TensorRT and a GPU: build, then rebuild from the bundle, and run it."""
    import numpy as np

    from rescompile import runtime

    out = tmp_path / "b"
    res = invoke("build", "--no-bench", trained.checkpoint, "-o", out, "--precision", precision, *FAST)
    assert res.exit_code == 0, res.stderr
    m = read_manifest(out)
    assert m.engine is not None and m.engine["precision"] == precision and m.engine["report"]["residual_blocks"] == 9
    if precision == "int8":
        assert m.engine["report"]["fused_adds"] == 9
    assert invoke("build", "--no-bench", "--from-bundle", out).exit_code == 0
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with runtime.load(out, backend="tensorrt") as trt_runner, runtime.load(out, backend="onnxruntime") as ort_runner:
        # 4 random-normal inputs, INT8 engine vs the CPU artifact: 1 may order its logits differently.
        Tolerance(1, 4, "random inputs near a tie").check_agreement(trt_runner.infer(x).argmax(1), ort_runner.infer(x).argmax(1))


def test_from_bundle_path_never_imports_pytorch(int8_bundle):
    import subprocess
    import sys

    out, _ = int8_bundle
    code = (
        "import sys\n"
        "from rescompile.errors import MissingDependencyError\n"
        "from rescompile.pipeline import build_from_bundle\n"
        f"try:\n    build_from_bundle({str(out)!r})\nexcept MissingDependencyError:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_an_interrupted_build_leaves_the_old_bundle_complete(trained, tmp_path, monkeypatch):
    import rescompile.pipeline as pipeline

    out = tmp_path / "b"
    assert invoke("build", "--no-bench", trained.checkpoint, "-o", out, "--precision", "fp32").exit_code == 0
    before = (out / "manifest.json").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "calibrate_model", interrupted)
    res = invoke("build", "--no-bench", trained.checkpoint, "-o", out, *FAST)
    assert res.exit_code == 130 and "interrupted" in res.stderr
    # the manifest still describes the files beside it: nothing of the interrupted build is left
    assert (out / "manifest.json").read_bytes() == before
    m = read_manifest(out)
    assert set(verify(m)) == set(m.files) and m.precision == "fp32"
    assert not [p for p in out.iterdir() if p.name.endswith(".partial") or p.name.startswith(".staging-")]


def test_the_runtime_runs_the_bundle_it_built(int8_bundle):
    from rescompile import runtime
    from rescompile.data.datasets import load_dataset

    out, _ = int8_bundle
    test = load_dataset("digits").test
    from tests.cli.test_predict import cpu_runner

    backend, source = cpu_runner(out)  # the CPU engine the build measured faster
    with runtime.load(out) as runner:
        one = runner.runner_for(1)  # what classify runs
        assert one.backend == backend and str(one.source).endswith(source)
        hits = sum(runner.classify(test.image(i), top_k=1)[0].index == test.labels[i] for i in range(100))
    assert hits >= 95
