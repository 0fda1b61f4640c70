"""The TensorRT runner. Real TensorRT tests (marked trt) need TensorRT and an NVIDIA GPU and skip
elsewhere; the rest drive the runner through a stand-in for the TensorRT 10 Python API and
polygraphy.cuda that executes the "plan" (an ONNX model) with ONNX Runtime, so the runner's
wiring (shapes, addresses, profile bounds, copies, cleanup, compatibility check) is tested on
every machine."""

from __future__ import annotations

import itertools
import shutil
import sys
import types
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

L4 = GpuInfo("NVIDIA L4", "8.9")
PLAN_MAGIC = b"FAKEPLAN"
PROFILE = ((1, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32))


# -- a stand-in for tensorrt + polygraphy.cuda ------------------------------------------------

class FakeCuda:
    """Device memory as host bytearrays keyed by fake pointers."""

    def __init__(self):
        self.memory: dict[int, bytearray] = {}
        self.streams: set[int] = set()
        self.syncs = 0
        self._ids = itertools.count(0x1000, 0x1000)
        cuda = self

        class Stream:
            def __init__(self):
                self.ptr = next(cuda._ids)
                cuda.streams.add(self.ptr)

            def synchronize(self):
                cuda.syncs += 1

            def free(self):
                cuda.streams.discard(self.ptr)

        class DeviceArray:
            def __init__(self, shape=None, dtype=None):
                from polygraphy.datatype import DataType

                self.np_dtype = np.dtype(DataType.to_dtype(dtype, "numpy"))
                self.ptr, self.allocated, self.shape = 0, 0, ()
                self.resize(shape)

            @property
            def nbytes(self):
                return int(np.prod(self.shape)) * self.np_dtype.itemsize

            def resize(self, shape):
                self.shape = tuple(shape)
                if self.nbytes > self.allocated:
                    self.free()
                    self.ptr, self.allocated = next(cuda._ids), self.nbytes
                    cuda.memory[self.ptr] = bytearray(self.nbytes)
                    self.shape = tuple(shape)
                return self

            def free(self):
                cuda.memory.pop(self.ptr, None)
                self.ptr, self.allocated, self.shape = 0, 0, ()

            def copy_from(self, host, stream=None):
                assert host.dtype == self.np_dtype and host.flags.c_contiguous and host.nbytes <= self.nbytes
                cuda.memory[self.ptr][: host.nbytes] = host.tobytes()
                return self

            def copy_to(self, host, stream=None):
                assert host.nbytes >= self.nbytes
                host[...] = np.frombuffer(bytes(cuda.memory[self.ptr][: self.nbytes]), self.np_dtype).reshape(host.shape)
                return host

        self.module = types.ModuleType("polygraphy.cuda")
        self.module.Stream, self.module.DeviceArray = Stream, DeviceArray


def fake_tensorrt(version: str, cuda: FakeCuda) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.deserialized = []

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DataType:
        FLOAT, BF16 = "FLOAT", "BF16"

    def nptype(t):
        if t != DataType.FLOAT:
            raise TypeError(f"could not resolve {t} to a numpy type")
        return np.float32

    class Context:
        def __init__(self, engine):
            self.engine, self.shape, self.addresses = engine, None, {}

        def set_input_shape(self, name, shape):
            assert name == "input"
            low, _, high = PROFILE
            if not all(lo <= s <= hi for lo, s, hi in zip(low, shape, high)):
                return False
            self.shape = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return self.shape if name == "input" else (self.shape[0], 10)

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream):
            assert stream in cuda.streams
            if set(self.addresses) != {"input", "logits"} or self.shape is None:
                return False
            n = int(np.prod(self.shape)) * 4
            x = np.frombuffer(bytes(cuda.memory[self.addresses["input"]][:n]), np.float32).reshape(self.shape)
            y = self.engine.session.run(None, {"input": x})[0].astype(np.float32)
            cuda.memory[self.addresses["logits"]][: y.nbytes] = y.tobytes()
            return True

    class Engine:
        num_io_tensors = 2

        def __init__(self, onnx_bytes):
            so = ort.SessionOptions()
            so.log_severity_level = 3
            self.session = ort.InferenceSession(onnx_bytes, so, providers=["CPUExecutionProvider"])

        def get_tensor_name(self, i):
            return ("input", "logits")[i]

        def get_tensor_mode(self, name):
            return TensorIOMode.INPUT if name == "input" else TensorIOMode.OUTPUT

        def get_tensor_shape(self, name):
            return (-1, 3, 32, 32) if name == "input" else (-1, 10)

        def get_tensor_dtype(self, name):
            return DataType.FLOAT

        def get_tensor_profile_shape(self, name, index):
            assert name == "input" and index == 0
            return list(PROFILE)

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False
            trt.runtimes.append(self)

        def deserialize_cuda_engine(self, data):
            trt.deserialized.append(len(data))
            return Engine(data[len(PLAN_MAGIC):]) if data.startswith(PLAN_MAGIC) else None

    trt.runtimes = []
    trt.Logger, trt.TensorIOMode, trt.DataType, trt.nptype, trt.Runtime = Logger, TensorIOMode, DataType, nptype, Runtime
    return trt


@pytest.fixture(scope="module")
def onnx_path(tmp_path_factory) -> Path:
    loaded = load_model("resnet20")
    out = tmp_path_factory.mktemp("trt") / "model_fp32.onnx"
    onnx_from_torch(loaded.module, SPEC, out, ExportConfig(check=False))
    return out


@pytest.fixture
def fake(monkeypatch):
    """Install the stand-in TensorRT (10.3.0) and an NVIDIA L4; returns (trt, cuda)."""
    cuda = FakeCuda()
    trt = fake_tensorrt("10.3.0", cuda)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "polygraphy.cuda", cuda.module)
    monkeypatch.setattr(nvidia, "find_gpu", lambda: L4)
    return trt, cuda


def engine_bundle(root: Path, onnx_path: Path, **engine_extra) -> Path:
    root.mkdir()
    (root / "model.engine").write_bytes(PLAN_MAGIC + onnx_path.read_bytes())
    shutil.copyfile(onnx_path, root / "model_int8_cpu.onnx")
    engine = {
        "path": "model.engine", "tensorrt_version": "10.3.0", "precision": "int8", "int8_source": "qdq",
        "strongly_typed": True, "gpu": L4.to_dict(), "dla_core": None, "hardware_compatibility": None,
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
    trt, cuda = fake
    bundle = engine_bundle(tmp_path / "b", onnx_path)
    runner = runtime.load(bundle)
    assert runner.backend == "tensorrt" and runner.spec == SPEC
    assert runner.input_shape == (3, 32, 32) and runner.batch_range == (1, 16)
    x = np.random.default_rng(0).standard_normal((5, 3, 32, 32)).astype(np.float32)
    np.testing.assert_allclose(runner.infer(x), ort_logits(onnx_path, x), rtol=1e-5, atol=1e-5)
    syncs = cuda.syncs
    np.testing.assert_allclose(runner.infer(x[:2]), ort_logits(onnx_path, x[:2]), rtol=1e-5, atol=1e-5)
    assert cuda.syncs == syncs + 1  # the stream is synchronized before the host reads the output
    assert len(runner.classify(np.zeros((32, 32, 3), np.uint8), top_k=2)) == 2
    with pytest.raises(RunnerError, match="batches of 1 to 16 images"):
        runner.infer(np.zeros((17, 3, 32, 32), np.float32))
    with pytest.raises(RunnerError, match="got 1 channels"):
        runner.infer(np.zeros((1, 1, 32, 32), np.float32))
    assert cuda.memory and cuda.streams
    runner.close()
    runner.close()
    assert not cuda.memory and not cuda.streams, "close() frees device memory and the stream"
    with pytest.raises(RunnerError, match="closed"):
        runner.infer(x)


def test_forced_onnxruntime_ignores_the_engine(fake, onnx_path, tmp_path):
    with runtime.load(engine_bundle(tmp_path / "b", onnx_path), backend="onnxruntime") as runner:
        assert runner.backend == "onnxruntime"
    assert fake[0].deserialized == []


def test_mismatch_is_raised_before_tensorrt_reads_the_plan(fake, onnx_path, tmp_path, monkeypatch):
    trt, _ = fake
    trt.__version__ = "10.8.0"
    bundle = engine_bundle(tmp_path / "b", onnx_path)
    with pytest.raises(RuntimeMismatchError, match="TensorRT 10.3.0 for sm_89 .* this machine has TensorRT 10.8.0"):
        runtime.load(bundle)
    with pytest.raises(RuntimeMismatchError, match="same version"):
        runtime.load(bundle / "model.engine")  # the manifest beside an engine file is used too
    monkeypatch.setattr(nvidia, "find_gpu", lambda: GpuInfo("Tesla T4", "7.5"))
    trt.__version__ = "10.3.0"
    with pytest.raises(RuntimeMismatchError, match="sm_75 .*compute capability"):
        runtime.load(bundle)
    assert trt.deserialized == []


def test_tampered_engine_is_refused_before_deserializing(fake, onnx_path, tmp_path):
    bundle = engine_bundle(tmp_path / "b", onnx_path)
    with open(bundle / "model.engine", "ab") as fh:
        fh.write(b"x")
    with pytest.raises(runtime.BundleError, match="model.engine .*bytes"):
        runtime.load(bundle)
    assert fake[0].deserialized == []


def test_version_compatible_engine_allows_host_code(fake, onnx_path, tmp_path):
    trt, _ = fake
    trt.__version__ = "10.8.0"
    with runtime.load(engine_bundle(tmp_path / "b", onnx_path, version_compatible=True)) as runner:
        assert runner.backend == "tensorrt"
    assert trt.runtimes[-1].engine_host_code_allowed is True


def test_engine_file_alone_and_beside_its_manifest(fake, onnx_path, tmp_path):
    bundle = engine_bundle(tmp_path / "b", onnx_path)
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
        # TF32 is on by default for FP32 engines on Ampere+: compare by direction and top-1
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        assert cos.min() > 0.999 and (got.argmax(1) == ref.argmax(1)).all()
        assert runner.infer(x[:1]).shape == (1, 10)
        with pytest.raises(RunnerError, match="batches of 1 to 16"):
            runner.infer(np.zeros((17, 3, 32, 32), np.float32))
