"""load() and the ONNX Runtime and PyTorch runners, on a real exported ResNet-20."""

from __future__ import annotations

import dataclasses
import logging
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from rescompile import nvidia, runtime
from rescompile.bundle import BundleError
from rescompile.config import ExportConfig
from rescompile.data.datasets import load_dataset
from rescompile.errors import ConfigError, ModelError
from rescompile.models.checkpoint import save_checkpoint
from rescompile.models.load import load_model
from rescompile.runtime import Prediction, RunnerError, RuntimeMismatchError
from rescompile.stages.export import onnx_from_torch
from tests.runtime.test_bundle import DIGIT_LABELS, write_manifest


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """ResNet-20 (random weights) with digit labels: its checkpoint and its ONNX export."""
    out = tmp_path_factory.mktemp("model")
    loaded = load_model("resnet20")
    spec = dataclasses.replace(loaded.spec, labels=DIGIT_LABELS, dataset="digits")
    ckpt = save_checkpoint(out / "resnet20.pt", loaded.module.state_dict(), spec)
    onnx_from_torch(loaded.module, spec, out / "model_fp32.onnx", ExportConfig(check=False))
    return dataclasses.replace(loaded, spec=spec), ckpt, out / "model_fp32.onnx"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture
def no_tensorrt(monkeypatch):
    monkeypatch.setattr(nvidia, "tensorrt_version", lambda: None)
    monkeypatch.setattr(nvidia, "find_gpu", lambda: None)


def make_bundle(root: Path, onnx_path: Path, *, engine: bool = True, version: int = 2, **extra) -> Path:
    """A bundle with an FP32 ONNX, a 'CPU artifact' (a copy: only which file runs matters here)
    and, when ``engine``, an engine entry whose file TensorRT would load."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(onnx_path, root / "model_fp32.onnx")
    shutil.copyfile(onnx_path, root / "model_int8_cpu.onnx")
    files = {"fp32_onnx": "model_fp32.onnx", "cpu_int8_onnx": "model_int8_cpu.onnx"}
    doc = {}
    if engine:
        (root / "model.engine").write_bytes(b"serialized plan")
        files["engine"] = "model.engine"
        doc["engine"] = {
            "path": "model.engine", "tensorrt_version": "10.3.0", "precision": "int8", "int8_source": "qdq",
            "strongly_typed": False, "gpu": {"name": "Orin", "compute_capability": "8.7", "sm": "sm_87", "jetson": True},
            "dla_core": None, "hardware_compatibility": None,
            "profiles": [{"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}], "build_seconds": 1.0,
        }
    if version >= 2:
        doc["cpu_artifact"] = {"path": "model_int8_cpu.onnx", "runtime": "onnxruntime", "precision": "int8"}
    doc.update(extra)
    write_manifest(root, files, version=version, **doc)
    return root


# -- load(): choosing the backend -----------------------------------------------------------

def test_load_onnx_file_reads_the_spec_from_metadata(model):
    loaded, _, onnx_path = model
    with runtime.load(onnx_path) as runner:
        assert runner.backend == "onnxruntime"
        assert runner.spec == loaded.spec and runner.spec.label(3) == "three"
        assert runner.input_name == "input" and runner.output_name == "logits"
        assert runner.input_shape == (3, 32, 32)
        assert runner.providers == ("CPUExecutionProvider",)
        out = runner.infer(np.zeros((2, 3, 32, 32), np.float32))
        assert out.shape == (2, 10) and out.dtype == np.float32


def test_onnx_without_metadata_has_no_spec(model, tmp_path):
    m = onnx.load(str(model[2]))
    del m.metadata_props[:]
    onnx.save(m, str(tmp_path / "bare.onnx"))
    with runtime.load(tmp_path / "bare.onnx") as runner:
        assert runner.spec is None
        assert runner.infer(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)
        with pytest.raises(RunnerError, match="carries no model spec"):
            runner.classify(np.zeros((32, 32, 3), np.uint8))


def test_bundle_without_tensorrt_runs_the_cpu_artifact(model, tmp_path, no_tensorrt, caplog):
    bundle = make_bundle(tmp_path / "b", model[2])
    with caplog.at_level(logging.INFO, logger="rescompile.runtime"):
        runner = runtime.load(bundle)
    with runner:
        assert runner.backend == "onnxruntime"
        assert Path(runner.source).name == "model_int8_cpu.onnx"
        assert runner.spec.labels == DIGIT_LABELS
    assert "runtime: onnxruntime on" in caplog.text and "TensorRT is not installed" in caplog.text
    assert "CPU artifact" in caplog.text


def test_bundle_with_tensorrt_but_no_gpu_runs_on_cpu(model, tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(nvidia, "tensorrt_version", lambda: "10.3.0")
    monkeypatch.setattr(nvidia, "find_gpu", lambda: None)
    with caplog.at_level(logging.INFO, logger="rescompile.runtime"):
        runner = runtime.load(make_bundle(tmp_path / "b", model[2]))
    assert runner.backend == "onnxruntime" and "no NVIDIA GPU" in caplog.text
    runner.close()


def test_bundle_without_engine_does_not_look_for_tensorrt(model, tmp_path, monkeypatch):
    def fail():
        raise AssertionError("TensorRT detection must not run for a bundle without an engine")

    monkeypatch.setattr(nvidia, "tensorrt_version", fail)
    monkeypatch.setattr(nvidia, "find_gpu", fail)
    with runtime.load(make_bundle(tmp_path / "b", model[2], engine=False)) as runner:
        assert Path(runner.source).name == "model_int8_cpu.onnx"


def test_bundle_spec_comes_from_the_manifest(model, tmp_path, no_tensorrt):
    spec = dataclasses.replace(model[0].spec, labels=tuple(f"class {i}" for i in range(10)))
    bundle = make_bundle(tmp_path / "b", model[2], spec=spec)
    with runtime.load(bundle / "manifest.json") as runner:  # the manifest path works too
        assert runner.spec.labels[0] == "class 0"


def test_format_1_bundle_falls_back_to_cpu_roles(model, tmp_path):
    bundle = make_bundle(tmp_path / "b", model[2], engine=False, version=1)
    with runtime.load(bundle) as runner:
        assert Path(runner.source).name == "model_int8_cpu.onnx"
    (bundle / "model_int8_cpu.onnx").unlink()
    write_manifest(bundle, {"fp32_onnx": "model_fp32.onnx"}, version=1)
    with runtime.load(bundle) as runner:
        assert Path(runner.source).name == "model_fp32.onnx"
    write_manifest(bundle, {}, version=1)
    with pytest.raises(BundleError, match="no ONNX model that ONNX Runtime can run"):
        runtime.load(bundle)


def test_tampered_cpu_artifact_is_refused(model, tmp_path, no_tensorrt):
    bundle = make_bundle(tmp_path / "b", model[2])
    data = bytearray((bundle / "model_int8_cpu.onnx").read_bytes())
    data[-1] ^= 0xFF
    (bundle / "model_int8_cpu.onnx").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model_int8_cpu.onnx .*sha256"):
        runtime.load(bundle)


def test_cpu_artifact_escaping_the_bundle_is_refused(model, tmp_path, no_tensorrt):
    bundle = make_bundle(tmp_path / "b", model[2])
    shutil.copyfile(model[2], tmp_path / "elsewhere.onnx")
    write_manifest(
        bundle, {"fp32_onnx": "model_fp32.onnx"},
        cpu_artifact={"path": "../elsewhere.onnx", "runtime": "onnxruntime", "precision": "fp32"},
    )
    with pytest.raises(BundleError, match="leaves the bundle directory"):
        runtime.load(bundle)


def test_forcing_tensorrt_here_gives_a_clear_error(model, tmp_path, no_tensorrt):
    bundle = make_bundle(tmp_path / "b", model[2])
    with pytest.raises(RuntimeMismatchError) as err:
        runtime.load(bundle, backend="tensorrt")
    msg = str(err.value)
    assert "TensorRT is needed to run this engine" in msg and "TensorRT 10.3.0 for sm_87 (Orin)" in msg
    assert f'rescompile.runtime.load("{bundle}", backend="onnxruntime")' in msg
    with pytest.raises(BundleError, match="has no TensorRT engine"):
        runtime.load(make_bundle(tmp_path / "c", model[2], engine=False), backend="tensorrt")


def test_backend_choices_that_cannot_work(model, tmp_path):
    bundle = make_bundle(tmp_path / "b", model[2])
    with pytest.raises(ConfigError, match="unknown backend 'tvm'"):
        runtime.load(bundle, backend="tvm")
    with pytest.raises(ConfigError, match="PyTorch runner cannot run"):
        runtime.load(bundle, backend="torch")
    with pytest.raises(ConfigError, match="is an ONNX model"):
        runtime.load(model[2], backend="torch")
    with pytest.raises(ConfigError, match="is a PyTorch model"):
        runtime.load(model[1], backend="onnxruntime")
    with pytest.raises(ModelError, match="no such bundle, model file or architecture name"):
        runtime.load(tmp_path / "not-there")
    with pytest.raises(ModelError, match="no such model file"):
        runtime.load(tmp_path / "not-there.onnx")


def test_onnxruntime_options(model, caplog):
    with caplog.at_level(logging.WARNING):
        runner = runtime.load(model[2], providers=["CUDAExecutionProvider"], threads=1)
    with runner:
        # no CUDA here: the request falls back to CPU, and says so
        assert runner.providers == ("CPUExecutionProvider",) and "CUDAExecutionProvider" in caplog.text
        assert runner._session.get_session_options().intra_op_num_threads == 1
    with pytest.raises(ConfigError, match="threads must be a positive integer"):
        runtime.load(model[2], threads=0)


def test_corrupt_onnx_file(tmp_path):
    (tmp_path / "broken.onnx").write_bytes(b"\x08\x07 not a model")
    with pytest.raises(ModelError, match="ONNX Runtime cannot load"):
        runtime.load(tmp_path / "broken.onnx")


# -- PyTorch ----------------------------------------------------------------------------------

def test_torch_runner_from_checkpoint_and_name(model):
    with runtime.load(model[1]) as runner:
        assert runner.backend == "torch" and runner.device == "cpu"
        assert runner.spec.labels == DIGIT_LABELS
        assert runner.infer(np.zeros((3, 3, 32, 32), np.float32)).shape == (3, 10)
    with runtime.load("resnet20", backend="torch") as runner:
        assert runner.backend == "torch" and runner.spec.arch == "resnet20"
    with pytest.raises(ConfigError, match="CUDA is not available"):
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
        runtime.load(model[1], device="cuda")


def test_onnxruntime_and_torch_agree(model, digits):
    loaded, ckpt, onnx_path = model
    rng = np.random.default_rng(0)
    real = loaded.spec.preprocessing(digits.test.images(range(8)))
    noise = rng.standard_normal((4, 3, 32, 32)).astype(np.float32)
    with runtime.load(onnx_path) as ort_runner, runtime.load(ckpt) as torch_runner:
        for batch in (real, noise):
            a, b = ort_runner.infer(batch), torch_runner.infer(batch)
            scale = max(1.0, float(np.abs(b).max()))
            assert np.abs(a - b).max() <= 1e-4 * scale
            assert (a.argmax(1) == b.argmax(1)).all()
        image = digits.test.image(0)
        assert ort_runner.classify(image, top_k=1)[0].index == torch_runner.classify(image, top_k=1)[0].index


# -- classify ---------------------------------------------------------------------------------

def test_classify_a_real_digit(model, digits, tmp_path):
    image = digits.test.image(0)
    with runtime.load(model[2]) as runner:
        preds = runner.classify(image, top_k=3)
        assert len(preds) == 3 and all(isinstance(p, Prediction) for p in preds)
        probs = [p.probability for p in preds]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(p.label == DIGIT_LABELS[p.index] for p in preds)
        # the same numbers as preprocessing + infer + softmax by hand
        logits = runner.infer(runner.spec.preprocessing(image))[0].astype(np.float64)
        manual = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
        assert preds[0].index == int(manual.argmax()) and preds[0].probability == pytest.approx(manual.max(), rel=1e-6)
        # every class when top_k exceeds them: a full distribution
        everything = runner.classify(image, top_k=50)
        assert len(everything) == 10 and sum(p.probability for p in everything) == pytest.approx(1.0, abs=1e-6)
        # a PIL image and a PNG path give the same answer as the array
        Image.fromarray(image).save(tmp_path / "digit.png")
        assert runner.classify(Image.fromarray(image), top_k=3) == preds
        assert runner.classify(tmp_path / "digit.png", top_k=3) == preds
        assert runner.classify(str(tmp_path / "digit.png"), top_k=3) == preds
        # other sizes and grayscale go through the spec's preprocessing
        big = np.asarray(Image.fromarray(image).resize((64, 64)))
        assert len(runner.classify(big[:, :, 0], top_k=2)) == 2


def test_classify_bad_arguments(model, tmp_path):
    with runtime.load(model[2]) as runner:
        with pytest.raises(RunnerError, match="top_k must be a positive integer"):
            runner.classify(np.zeros((32, 32, 3), np.uint8), top_k=0)
        with pytest.raises(RunnerError, match="cannot use this array"):
            runner.classify(np.zeros((32, 32, 3), np.float32))
        with pytest.raises(RunnerError, match="cannot read image"):
            runner.classify(tmp_path / "missing.png")
        with pytest.raises(RunnerError, match="takes an image array, a PIL image or a path"):
            runner.classify(42)


# -- bad inputs and the lifecycle -----------------------------------------------------------

@pytest.mark.parametrize("backend_source", ["onnx", "checkpoint"])
def test_bad_batches_are_refused_with_clear_errors(model, backend_source):
    source = model[2] if backend_source == "onnx" else model[1]
    with runtime.load(source) as runner:
        cases = [
            (np.zeros((3, 32, 32), np.float32), "Add the batch axis"),
            (np.zeros((1, 1, 32, 32), np.float32), "got 1 channels"),
            (np.zeros((1, 32, 32, 3), np.float32), "looks NHWC"),
            (np.zeros((1, 3, 28, 28), np.float32), "images of 28x28, the model takes N x 3x32x32"),
            (np.zeros((1, 3, 32, 32), np.uint8), "Use classify"),
            (np.zeros((1, 3, 32, 32), np.int64), "got int64"),
            (np.zeros((0, 3, 32, 32), np.float32), "empty batch"),
            ([[[[0.0]]]], "takes a numpy array"),
        ]
        for batch, words in cases:
            with pytest.raises(RunnerError, match=words):
                runner.infer(batch)
        x = np.random.default_rng(1).standard_normal((2, 3, 32, 32))
        np.testing.assert_allclose(runner.infer(x), runner.infer(x.astype(np.float32)), rtol=1e-5, atol=1e-5)
        nan = np.full((1, 3, 32, 32), np.nan, np.float32)
        assert np.isnan(runner.infer(nan)).all()  # NaN passes through, it is not an input error
        strided = np.zeros((2, 3, 64, 64), np.float32)[:, :, ::2, ::2]
        assert runner.infer(strided).shape == (2, 10)


def test_close_is_idempotent_and_final(model):
    runner = runtime.load(model[2])
    assert not runner.closed and "open" in repr(runner)
    runner.close()
    runner.close()
    assert runner.closed and "closed" in repr(runner)
    with pytest.raises(RunnerError, match="runner for .* is closed"):
        runner.infer(np.zeros((1, 3, 32, 32), np.float32))
    with runtime.load(model[1]) as torch_runner:
        pass
    assert torch_runner.closed
    with pytest.raises(RunnerError, match="closed"):
        torch_runner.classify(np.zeros((32, 32, 3), np.uint8))
