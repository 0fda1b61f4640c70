"""Engine plans for TensorRT 10 and 11, and the Polygraphy chain built from them without TensorRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from rescompile.config import EngineConfig, HardwareCompat, Int8Source, Precision
from rescompile.errors import ConfigError, MissingDependencyError
from rescompile.stages.build.loaders import build_engine_bytes, loader_chain
from rescompile.stages.build.plan import plan_engine

FILES = {r: Path(f"/bundle/{r}.x") for r in ("optimized_onnx", "qdq_onnx", "fp16_onnx", "calibration_cache")}
CHW = (3, 32, 32)


def plan(precision, version, **cfg):
    return plan_engine(precision, version, FILES, "input", CHW, EngineConfig(**cfg))


@pytest.mark.parametrize(
    "precision, version, role, typed, fp16, int8, source",
    [
        (Precision.fp32, "10.3.0", "optimized_onnx", False, False, False, "none"),
        (Precision.fp16, "10.3.0", "optimized_onnx", False, True, False, "none"),
        (Precision.int8, "10.3.0", "qdq_onnx", False, True, True, "qdq"),
        (Precision.best, "10.3.0", "qdq_onnx", False, True, True, "qdq"),
        (Precision.fp32, "11.0.0", "optimized_onnx", True, False, False, "none"),
        (Precision.fp16, "11.0.0", "fp16_onnx", True, False, False, "none"),
        (Precision.int8, "11.0.0", "qdq_onnx", True, False, False, "qdq"),
    ],
)
def test_plans_for_both_tensorrt_worlds(precision, version, role, typed, fp16, int8, source):
    p = plan(precision, version)
    assert (p.onnx_role, p.strongly_typed, p.fp16, p.int8, p.int8_source) == (role, typed, fp16, int8, source)
    assert p.onnx_path == FILES[role] and p.reason.startswith(f"TensorRT {version}:")
    assert p.profile == {"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}


def test_cache_path_on_tensorrt_10_and_not_on_11():
    p = plan(Precision.int8, "10.3.0", int8_source=Int8Source.cache)
    assert p.onnx_role == "optimized_onnx" and p.cache_path == FILES["calibration_cache"] and p.int8 and p.fp16
    assert "calibration cache" in p.reason
    with pytest.raises(ConfigError, match="no calibration-cache path"):
        plan(Precision.int8, "11.1.0", int8_source=Int8Source.cache)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"min_batch": 4, "opt_batch": 2}, "min <= opt <= max"),
        ({"opt_batch": 64, "max_batch": 32}, "min <= opt <= max"),
        ({"dla_core": 0}, "DLA runs FP16 and INT8 only"),
        ({"optimization_level": 9}, "0-5"),
    ],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        plan(Precision.fp32, "10.3.0", **kwargs)


def test_old_tensorrt_and_missing_files():
    with pytest.raises(ConfigError, match="TensorRT 8.6.1 is not supported"):
        plan(Precision.fp32, "8.6.1")
    with pytest.raises(ConfigError, match="no Q/DQ ONNX"):
        plan_engine(Precision.int8, "10.3.0", {"optimized_onnx": Path("m.onnx")}, "input", CHW)


def test_chain_carries_every_option_to_the_builder(tmp_path):
    timing = tmp_path / "timing.cache"
    timing.write_bytes(b"x")
    p = plan(Precision.int8, "10.3.0", min_batch=2, opt_batch=4, max_batch=16, optimization_level=5, workspace_mib=256,
             timing_cache=timing)
    chain = loader_chain(p)
    assert chain.network.path == str(FILES["qdq_onnx"]) and chain.network.strongly_typed is False
    cc = chain.create_config
    assert (cc.fp16, cc.int8, cc.tf32, cc.builder_optimization_level) == (True, True, False, 5)
    shapes = cc.profiles[0]["input"]
    assert (tuple(shapes.min), tuple(shapes.opt), tuple(shapes.max)) == ((2, 3, 32, 32), (4, 3, 32, 32), (16, 3, 32, 32))
    assert cc.timing_cache_path == str(timing) and chain.engine_bytes.timing_cache_path == str(timing)
    typed = loader_chain(plan(Precision.int8, "11.0.0"))
    assert typed.network.strongly_typed is True and typed.create_config.int8 is False


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    from rescompile.models.load import load_model
    from rescompile.pipeline import prepare_fp32

    return prepare_fp32(load_model("resnet20"), tmp_path_factory.mktemp("onnx"))


def configured(monkeypatch, version, plan, device=None, **chain_kw):
    """Run Polygraphy's CreateConfig and our settings as a build would, on a stand-in TensorRT:
    (builder, network) from the chain's own network loader, then the config loader."""
    from rescompile.stages.build.loaders import cache_calibrator
    from tests.trt_api.machine import Machine, install

    install(monkeypatch, Machine(version, **(device or {})))
    chain = loader_chain(plan, **chain_kw)
    if chain.calibration is not None:
        import tensorrt

        chain.create_config.calibrator = cache_calibrator(tensorrt, *chain.calibration)
    builder, network, _parser = chain.network()[:3]
    return chain.config(builder, network)


def test_settings_applied_after_polygraphy_created_the_config(monkeypatch, small_onnx):
    files = {**FILES, "optimized_onnx": small_onnx, "qdq_onnx": small_onnx}
    p = plan_engine(Precision.int8, "10.3.0", files, "input", CHW,
                    EngineConfig(workspace_mib=64, dla_core=1, int8_source=Int8Source.cache, opt_batch=2))
    config = configured(monkeypatch, "10.3.0", p, {"jetson": True, "compute_capability": "8.7", "dla_cores": 2},
                        cache_text=b"TRT-100300-MinMaxCalibration\ninput: 3c010a14\n", algorithm="MinMaxCalibration")
    import tensorrt as trt

    assert config.profiling_verbosity == trt.ProfilingVerbosity.DETAILED
    assert config.get_memory_pool_limit(trt.MemoryPoolType.WORKSPACE) == 64 << 20
    assert config.DLA_core == 1 and config.default_device_type == trt.DeviceType.DLA  # ours, after Polygraphy's DLA_core = 0
    assert config.get_flag(trt.BuilderFlag.GPU_FALLBACK) and config.get_flag(trt.BuilderFlag.INT8)
    assert not config.get_flag(trt.BuilderFlag.TF32)
    cal = config.int8_calibrator
    assert type(cal).__mro__[1].__name__ == "IInt8MinMaxCalibrator"
    assert cal.read_calibration_cache().startswith(b"TRT-100300-MinMaxCalibration") and cal.get_batch(["input"]) is None
    assert config.get_calibration_profile() is not None  # set by Polygraphy because the calibrator reached CreateConfig
    assert [p.get_shape("input") for p in config._sti["profiles"]] == [[(2, 3, 32, 32)] * 3]


@pytest.mark.parametrize("version, has_same_cc", [("10.3.0", False), ("10.16.0", True), ("11.1.0", True)])
def test_hardware_level_exists_where_the_plan_allows_it(monkeypatch, small_onnx, version, has_same_cc):
    files = {**FILES, "optimized_onnx": small_onnx}
    cfg = EngineConfig(hardware_compatibility=HardwareCompat.same_cc)
    if not has_same_cc:
        with pytest.raises(ConfigError, match="same-cc needs TensorRT 10.9"):
            plan_engine(Precision.fp32, version, files, "input", CHW, cfg)
        # what the plan prevents: TensorRT 10.3's bindings have no such level
        from tests.trt_api.machine import Machine, tensorrt_for

        assert not hasattr(tensorrt_for(Machine(version)).HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY")
        return
    config = configured(monkeypatch, version, plan_engine(Precision.fp32, version, files, "input", CHW, cfg))
    import tensorrt as trt

    assert config.hardware_compatibility_level == trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY


def test_stand_in_objects_are_as_strict_as_pybind(monkeypatch):
    from tests.trt_api.machine import Machine, tensorrt_for

    trt = tensorrt_for(Machine("10.3.0"))
    config = trt.Builder(trt.Logger(trt.Logger.WARNING)).create_builder_config()
    with pytest.raises(AttributeError):
        config.hardware_compat_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS  # a typo TensorRT rejects
    with pytest.raises(AttributeError):
        config.num_optimization_profiles = 2  # read-only
    eleven = tensorrt_for(Machine("11.1.0"))
    for gone in ("IInt8EntropyCalibrator2", "CalibrationAlgoType"):
        assert not hasattr(eleven, gone)
    assert not hasattr(eleven.BuilderFlag, "INT8") and not hasattr(eleven.BuilderFlag, "FP16")
    assert not hasattr(eleven.IBuilderConfig, "set_calibration_profile")


def test_building_without_tensorrt_is_a_clear_error(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # absent, also on a machine that has it
    chain = loader_chain(plan(Precision.fp32, "10.3.0"))
    with pytest.raises(MissingDependencyError, match="TensorRT is not installed"):
        build_engine_bytes(chain)


def test_fp16_copy_keeps_float32_io_and_tracks_fp32(tmp_path):
    import onnxruntime as ort

    from rescompile.models.load import load_model
    from rescompile.pipeline import prepare_fp32
    from rescompile.stages.build.fp16 import fp16_from_fp32

    path = prepare_fp32(load_model("resnet20"), tmp_path)
    fp32 = onnx.load(str(path))
    half = fp16_from_fp32(fp32)
    onnx.checker.check_model(half)
    assert all(t.data_type == onnx.TensorProto.FLOAT16 for t in half.graph.initializer if t.data_type != onnx.TensorProto.INT64)
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    a = ort.InferenceSession(fp32.SerializeToString()).run(None, {"input": x})[0]
    b = ort.InferenceSession(half.SerializeToString()).run(None, {"input": x})[0]
    assert b.dtype == np.float32 and np.abs(a - b).max() <= 2e-2 * max(1.0, np.abs(a).max())
