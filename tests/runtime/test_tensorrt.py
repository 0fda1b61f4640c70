"""The TensorRT runner. Real TensorRT tests (marked trt) need TensorRT and an NVIDIA GPU and skip
elsewhere; the rest drive the runner through a stand-in for the TensorRT 10 Python API and
polygraphy.cuda that executes the "plan" (an ONNX model) with ONNX Runtime, so the runner's
wiring (shapes, addresses, profile bounds, copies, cleanup, compatibility check) is tested on
every machine."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from rescompile import nvidia, runtime
from rescompile.config import ExportConfig
from rescompile.errors import ConfigError, MissingDependencyError
from rescompile.models.load import load_model
from rescompile.nvidia import GpuInfo
from rescompile.runtime import RunnerError, RuntimeMismatchError
from rescompile.stages.export import onnx_from_torch
from tests.runtime.test_bundle import SPEC, write_manifest
from tests.trt_api.machine import MAGIC, Machine, install
from tests.trt_api.surface import VERSIONS
from tests.tolerance import Tolerance

L4 = GpuInfo("NVIDIA L4", "8.9")
PROFILE = ((1, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32))


def plan_bytes(onnx_path: Path, version: str, **header) -> bytes:
    """A plan the stand-in runtime of ``version`` deserializes (machine.py's format)."""
    head = {"version": version, "device": L4.name, "cc": L4.compute_capability, "version_compatible": False,
            "hardware": "NONE", "profile": [list(p) for p in PROFILE], "fp16": False, "int8": False, "tf32": False,
            "dla_core": None, "calibrated_from": None, "strongly_typed": False, **header}
    return MAGIC + json.dumps(head).encode() + b"\n" + onnx_path.read_bytes()


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    loaded = load_model("resnet20")
    out = tmp_path_factory.mktemp("trt") / "model_fp32.onnx"
    onnx_from_torch(loaded.module, SPEC, out, ExportConfig(check=False))
    return out


@pytest.fixture(params=list(VERSIONS))
def fake(request, monkeypatch):
    """The stand-in TensorRT of each recorded version on an NVIDIA L4; returns (machine, cuda)."""
    machine = Machine(request.param, gpu_name=L4.name, compute_capability=L4.compute_capability)
    install(monkeypatch, machine)
    return machine, sys.modules["polygraphy.cuda"]


def engine_bundle(root: Path, onnx_path: Path, version: str = "10.3.0", **engine_extra) -> Path:
    root.mkdir()
    (root / "model.engine").write_bytes(plan_bytes(onnx_path, version, version_compatible=bool(engine_extra.get("version_compatible"))))
    shutil.copyfile(onnx_path, root / "model_int8_cpu.onnx")
    engine = {
        "path": "model.engine", "tensorrt_version": version, "precision": "int8", "int8_source": "qdq",
        "strongly_typed": version.startswith("11"), "gpu": L4.to_dict(), "dla_core": None, "hardware_compatibility": None,
        "profiles": [{"min": list(PROFILE[0]), "opt": list(PROFILE[1]), "max": list(PROFILE[2])}], **engine_extra,
    }
    write_manifest(
        root, {"engine": "model.engine", "cpu_int8_onnx": "model_int8_cpu.onnx"}, engine=engine,
        cpu_artifact={"path": "model_int8_cpu.onnx", "runtime": "onnxruntime", "precision": "int8"},
    )
    return root


def ort_logits(onnx_path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


# -- the runner through the stand-in API ------------------------------------------------------

def test_bundle_with_engine_runs_on_tensorrt(fake, onnx_path, tmp_path):
    machine, cuda = fake
    bundle = engine_bundle(tmp_path / "b", onnx_path, machine.version)
    runner = runtime.load(bundle)
    assert runner.backend == "tensorrt" and runner.spec == SPEC
    assert runner.input_shape == (3, 32, 32) and runner.batch_range == (1, 16)
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(runner.infer(x), ort_logits(onnx_path, x), rtol=1e-5, atol=1e-5)
    syncs = cuda.SYNCS[0]
    np.testing.assert_allclose(runner.infer(x[:2]), ort_logits(onnx_path, x[:2]), rtol=1e-5, atol=1e-5)
    assert cuda.SYNCS[0] == syncs + 1  # the stream is synchronized before the host reads the output
    assert len(runner.classify(np.zeros((32, 32, 3), np.uint8), top_k=2)) == 2
    with pytest.raises(RunnerError, match="batches of 1 to 16 images"):
        runner.infer(np.zeros((17, 3, 32, 32), np.float32))
    with pytest.raises(RunnerError, match="got 1 channels"):
        runner.infer(np.zeros((1, 1, 32, 32), np.float32))
    assert cuda.MEMORY and cuda.STREAMS
    runner.close()
    runner.close()
    assert not cuda.MEMORY and not cuda.STREAMS, "close() frees device memory and the stream"
    with pytest.raises(RunnerError, match="closed"):
        runner.infer(x)


def test_forced_onnxruntime_ignores_the_engine(fake, onnx_path, tmp_path):
    with runtime.load(engine_bundle(tmp_path / "b", onnx_path, fake[0].version), backend="onnxruntime") as runner:
        assert runner.backend == "onnxruntime"
    assert fake[0].deserialized == []


def test_mismatch_is_raised_before_tensorrt_reads_the_plan(fake, onnx_path, tmp_path, monkeypatch):
    machine, _ = fake
    other = "11.0.0" if machine.version.startswith("10") else "10.3.0"
    bundle = engine_bundle(tmp_path / "b", onnx_path, other)
    with pytest.raises(RuntimeMismatchError, match=f"TensorRT {other} for sm_89 .* this machine has TensorRT {machine.version}"):
        runtime.load(bundle)
    with pytest.raises(RuntimeMismatchError, match="same version"):
        runtime.load(bundle / "model.engine")  # the manifest beside an engine file is used too
    monkeypatch.setattr(nvidia, "find_gpu", lambda: GpuInfo("Tesla T4", "7.5"))
    same = engine_bundle(tmp_path / "c", onnx_path, machine.version)
    with pytest.raises(RuntimeMismatchError, match="sm_75 .*compute capability"):
        runtime.load(same)
    assert machine.deserialized == []


def test_tampered_engine_is_refused_before_deserializing(fake, onnx_path, tmp_path):
    bundle = engine_bundle(tmp_path / "b", onnx_path, fake[0].version)
    with open(bundle / "model.engine", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(runtime.BundleError, match="model.engine .*bytes"):
        runtime.load(bundle)
    assert fake[0].deserialized == []


def test_version_compatible_engine_allows_host_code(fake, onnx_path, tmp_path):
    machine, _ = fake
    built = "10.3.0" if machine.version.startswith("10") else "11.1.0"
    with runtime.load(engine_bundle(tmp_path / "b", onnx_path, built, version_compatible=True)) as runner:
        assert runner.backend == "tensorrt"
    assert machine.runtimes[-1].engine_host_code_allowed is True


def test_engine_file_alone_and_beside_its_manifest(fake, onnx_path, tmp_path):
    bundle = engine_bundle(tmp_path / "b", onnx_path, fake[0].version)
    with runtime.load(bundle / "model.engine") as runner:
        assert runner.spec == SPEC
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copyfile(bundle / "model.engine", alone / "m.plan")
    with runtime.load(alone / "m.plan") as runner:
        assert runner.backend == "tensorrt" and runner.spec is None
        assert runner.infer(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)
        with pytest.raises(RunnerError, match="no model spec"):
            runner.classify(np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(ConfigError, match="is a TensorRT engine"):
        runtime.load(alone / "m.plan", backend="onnxruntime")


def test_a_plan_tensorrt_cannot_deserialize(fake, tmp_path):
    (tmp_path / "bad.engine").write_bytes(b"not a plan")
    with pytest.raises(RuntimeMismatchError, match="could not deserialize"):
        runtime.load(tmp_path / "bad.engine")


# -- without TensorRT -------------------------------------------------------------------------

def test_engine_file_without_tensorrt_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    (tmp_path / "m.engine").write_bytes(b"plan")
    with pytest.raises(MissingDependencyError, match=r"rescompile\[trt\]"):
        runtime.load(tmp_path / "m.engine")


def test_engine_file_beside_manifest_without_tensorrt(onnx_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    bundle = engine_bundle(tmp_path / "b", onnx_path)
    with pytest.raises(RuntimeMismatchError, match="TensorRT is needed to run this engine"):
        runtime.load(bundle / "model.engine")
    with runtime.load(bundle) as runner:  # automatic choice: the CPU artifact
        assert runner.backend == "onnxruntime"


# -- real TensorRT (skip without it) -----------------------------------------------------------

@pytest.fixture
def real_trt():
    trt = pytest.importorskip("tensorrt")
    if nvidia.find_gpu() is None:
        pytest.skip("needs an NVIDIA GPU")
    return trt


@pytest.mark.trt
@pytest.mark.gpu
def test_real_engine_matches_onnxruntime(real_trt, onnx_path, tmp_path):
    from polygraphy import util
    from polygraphy.backend.trt import CreateConfig, Profile, engine_bytes_from_network, network_from_onnx_path

    profile = Profile().add("input", min=PROFILE[0], opt=PROFILE[1], max=PROFILE[2])
    plan = engine_bytes_from_network(network_from_onnx_path(str(onnx_path)), config=CreateConfig(profiles=[profile]))()
    root = tmp_path / "b"
    root.mkdir()
    util.save_file(plan, str(root / "model.engine"))
    shutil.copyfile(onnx_path, root / "model_int8_cpu.onnx")
    gpu = nvidia.find_gpu()
    engine = {
        "path": "model.engine", "tensorrt_version": nvidia.tensorrt_version(), "precision": "fp32", "int8_source": "none",
        "strongly_typed": False, "gpu": gpu.to_dict(), "dla_core": None, "hardware_compatibility": None,
        "profiles": [{"min": list(PROFILE[0]), "opt": list(PROFILE[1]), "max": list(PROFILE[2])}],
    }
    write_manifest(root, {"engine": "model.engine", "cpu_int8_onnx": "model_int8_cpu.onnx"}, engine=engine,
                   cpu_artifact={"path": "model_int8_cpu.onnx", "runtime": "onnxruntime", "precision": "fp32"})
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    with runtime.load(root) as runner:
        assert runner.backend == "tensorrt" and runner.batch_range == (1, 16)
        got, ref = runner.infer(x), ort_logits(onnx_path, x)
        # Polygraphy's CreateConfig clears TF32 unless asked for it, so this is FP32; kernels still sum in
        # another order than ONNX Runtime: compare by direction and top-1
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos.min() > 0.999
        Tolerance(1, len(x), "random inputs whose top two logits nearly tie").check_agreement(got.argmax(1), ref.argmax(1))
        assert runner.infer(x[:1]).shape == (1, 10)
        with pytest.raises(RunnerError, match="batches of 1 to 16"):
            runner.infer(np.zeros((17, 3, 32, 32), np.float32))
