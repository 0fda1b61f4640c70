"""The build, the runtime and the benchmark against each TensorRT version's stand-in (10.3 for
JetPack 6, the newest 10.x, the newest 11.x), through Polygraphy 0.53's real loaders.

Each stand-in has exactly the bindings of its tag (surface.py) and the simulated machine checks
what TensorRT checks (machine.py), so these tests fail where the code would fail on a Jetson or
a GPU box: a member a version lacks, a calibrator without a calibration profile, a cache tag
TensorRT would ignore, a DLA profile with a range, another GPU's timing cache."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from rescompile import runtime
from rescompile.config import BuildConfig, CalibConfig, EngineConfig, HardwareCompat, Int8Source, Precision
from rescompile.errors import ConfigError, EngineBuildError
from rescompile.runtime import RuntimeMismatchError
from tests.trt_api.machine import Machine, install
from tests.trt_api.surface import VERSIONS
from tests.tolerance import Tolerance

JETPACK6, NEWEST_10, NEWEST_11 = VERSIONS
ORIN = {"gpu_name": "NVIDIA Jetson AGX Orin", "compute_capability": "8.7", "jetson": True, "dla_cores": 2}
L4 = {"gpu_name": "NVIDIA L4", "compute_capability": "8.9"}
T4 = {"gpu_name": "Tesla T4", "compute_capability": "7.5"}


@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory) -> Path:
    """A bundle made where there is no TensorRT (this machine): Q/DQ ONNX, cache, CPU artifact."""
    from rescompile.pipeline import build

    out = tmp_path_factory.mktemp("cpu") / "bundle"
    build(BuildConfig(output_dir=out, precision=Precision.int8, calib=CalibConfig(num_images=128), bench=False))
    return out


@pytest.fixture
def bundle(cpu_bundle, tmp_path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(cpu_bundle, dst)
    return dst


def on(monkeypatch, version: str, **device) -> Machine:
    machine = Machine(version, **(device or L4))
    install(monkeypatch, machine)
    return machine


def digits(bundle: Path) -> tuple[np.ndarray, np.ndarray]:
    from rescompile.bundle import read_manifest
    from rescompile.config import DataConfig
    from rescompile.data.datasets import load_dataset

    test = load_dataset(DataConfig("digits")).test
    spec = read_manifest(bundle).spec
    return spec.preprocessing(test.images(range(len(test)))).astype(np.float32), np.asarray(test.labels)


def rebuild(bundle: Path, precision=Precision.int8, **cfg):
    from rescompile.pipeline import build_from_bundle

    return build_from_bundle(bundle, EngineConfig(**cfg), precision)


# -- every version: build from the bundle, run it, benchmark it ----------------------------------

@pytest.mark.parametrize("version", list(VERSIONS))
@pytest.mark.parametrize("precision", [Precision.fp32, Precision.fp16, Precision.int8])
def test_engine_from_bundle_runs_on_every_version(version, precision, bundle, monkeypatch):
    machine = on(monkeypatch, version)
    result = rebuild(bundle, precision)
    header = machine.builds[-1]
    typed = version.startswith("11")
    assert header["strongly_typed"] is typed and header["tf32"] is False
    assert header["fp16"] is (not typed and precision != Precision.fp32) and header["int8"] is (not typed and precision == Precision.int8)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["engine"]["tensorrt_version"] == version and manifest["engine_plan"]["strongly_typed"] is typed
    x, y = digits(bundle)
    with runtime.load(bundle) as runner:
        assert runner.backend == "tensorrt"
        top1 = np.concatenate([runner.infer(x[i:i + 32]) for i in range(0, len(x), 32)]).argmax(1)
    with runtime.load(bundle, backend="onnxruntime") as cpu:
        ref = cpu.infer(x[:32]).argmax(1)
    assert (top1 == y).mean() > 0.95  # floor: the bundle's model is ~98% on digits; chance is 10%
    Tolerance(3, 32, "the simulated engine against the CPU artifact").check_agreement(top1[:32], ref)
    assert result.engine.report is not None  # the inspector's layers reached the report


@pytest.mark.parametrize("version", list(VERSIONS))
def test_bench_runs_the_engine_on_every_version(version, bundle, monkeypatch):
    from rescompile._io import sha256_file
    from rescompile.bench import run_bench
    from rescompile.config import BenchConfig

    on(monkeypatch, version)
    rebuild(bundle)
    timing = sha256_file(bundle / "timing.cache")
    report = run_bench(BenchConfig(bundle=bundle, batch_sizes=(1,), warmup_s=0.0, min_runs=2, max_runs=3, max_s=0.2,
                                   rounds=1, max_eval_images=64))
    assert report.get("trt-int8", 1) is not None and report.get("trt-fp16", 1) is not None  # FP16 built on the spot
    assert report.accuracy_of("trt-int8") is not None
    assert sha256_file(bundle / "timing.cache") == timing  # the scratch build used a copy


# -- 1: hardware compatibility -------------------------------------------------------------------

def test_same_cc_is_refused_before_building_on_tensorrt_10_3(bundle, monkeypatch):
    machine = on(monkeypatch, JETPACK6)
    with pytest.raises(ConfigError, match="same-cc needs TensorRT 10.9"):
        rebuild(bundle, hardware_compatibility=HardwareCompat.same_cc)
    assert machine.builds == []


@pytest.mark.parametrize("version", [NEWEST_10, NEWEST_11])
def test_same_cc_builds_where_it_exists_and_the_runtime_reads_it(version, bundle, monkeypatch):
    machine = on(monkeypatch, version)
    rebuild(bundle, hardware_compatibility=HardwareCompat.same_cc)
    assert machine.builds[-1]["hardware"] == "SAME_COMPUTE_CAPABILITY"
    monkeypatch.setattr("rescompile.nvidia.find_gpu", lambda: __import__("rescompile.nvidia").nvidia.GpuInfo("NVIDIA GeForce RTX 4090", "8.9"))
    with runtime.load(bundle) as runner:  # another GPU model of the same compute capability
        assert runner.backend == "tensorrt"


def test_hardware_compatibility_is_refused_on_a_jetson_and_ampere_plus_on_turing(bundle, monkeypatch):
    on(monkeypatch, JETPACK6, **ORIN)
    with pytest.raises(ConfigError, match="not supported on JetPack"):
        rebuild(bundle, hardware_compatibility=HardwareCompat.ampere_plus)
    on(monkeypatch, NEWEST_10, **T4)
    with pytest.raises(ConfigError, match="ampere\\+ needs an Ampere or later GPU"):
        rebuild(bundle, hardware_compatibility=HardwareCompat.ampere_plus)


# -- 3, 4: version compatibility -------------------------------------------------------------------

def test_version_compatible_engine_reports_its_layers_and_runs_on_later_versions(bundle, monkeypatch, tmp_path):
    machine = on(monkeypatch, JETPACK6)
    result = rebuild(bundle, version_compatible=True)
    assert machine.builds[-1]["version_compatible"] and result.engine.report is not None and result.engine.layers_path
    for later in (NEWEST_10, NEWEST_11):
        on(monkeypatch, later)
        with runtime.load(bundle) as runner:
            assert runner.infer(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 10)
    alone = tmp_path / "alone.engine"
    shutil.copyfile(bundle / "model.engine", alone)
    with pytest.raises(RuntimeMismatchError, match="allow_host_code=True"):
        runtime.load(alone)
    with runtime.load(alone, allow_host_code=True) as runner:
        assert runner.backend == "tensorrt"


# -- 5, 6, 7: implicit INT8 from the cache, DLA ----------------------------------------------------

@pytest.mark.parametrize("version", [JETPACK6, NEWEST_10])
def test_cache_path_sets_the_calibration_profile(version, bundle, monkeypatch):
    """TensorRT 10 refuses to calibrate a dynamic-shape network without a calibration profile."""
    machine = on(monkeypatch, version)
    rebuild(bundle, int8_source=Int8Source.cache)
    code = "".join(f"{int(p):02d}" for p in version.split("."))
    assert machine.builds[-1]["calibrated_from"] == f"TRT-{int(code)}-EntropyCalibration2"


def test_cache_path_is_refused_on_tensorrt_11(bundle, monkeypatch):
    on(monkeypatch, NEWEST_11)
    with pytest.raises(ConfigError, match="no calibration-cache path"):
        rebuild(bundle, int8_source=Int8Source.cache)


@pytest.mark.parametrize("algorithm", ["LegacyCalibration", "MinMaxCalibration", "EntropyCalibration"])
def test_every_cache_algorithm_replays(algorithm, bundle, monkeypatch):
    from rescompile.bundle import read_manifest
    from rescompile.stages.calibrate.cache import CalibrationCache, read_cache

    cache = read_cache(bundle / "calibration.cache")
    (bundle / "calibration.cache").write_bytes(CalibrationCache(cache.version_code, algorithm, dict(cache.scales)).to_text().encode())
    _rehash(bundle, read_manifest)
    machine = on(monkeypatch, JETPACK6)
    rebuild(bundle, int8_source=Int8Source.cache)
    assert machine.builds[-1]["calibrated_from"] == f"TRT-100300-{algorithm}"


def test_dla_gets_a_static_profile_and_an_entropy2_cache(bundle, monkeypatch):
    from rescompile.bundle import read_manifest
    from rescompile.stages.calibrate.cache import CalibrationCache, read_cache

    cache = read_cache(bundle / "calibration.cache")
    (bundle / "calibration.cache").write_bytes(CalibrationCache(cache.version_code, "MinMaxCalibration", dict(cache.scales)).to_text().encode())
    _rehash(bundle, read_manifest)
    machine = on(monkeypatch, JETPACK6, **ORIN)
    result = rebuild(bundle, dla_core=1, gpu_fallback=False, int8_source=Int8Source.cache, opt_batch=4)
    header = machine.builds[-1]
    assert header["dla_core"] == 1 and header["profile"] == [[4, 3, 32, 32]] * 3
    assert header["calibrated_from"] == "TRT-100300-EntropyCalibration2"
    assert any("exactly 4" in n for n in result.plan.notes)
    # INT8 on DLA is built from the cache by default: DLA runs no Q/DQ network (with GPU fallback
    # its INT8 layers would run on the GPU under a manifest saying DLA), and asking for Q/DQ is refused.
    plan = rebuild(bundle, dla_core=0, opt_batch=1).plan
    assert plan.int8_source == "cache" and plan.onnx_role == "optimized_onnx" and machine.builds[-1]["dla_core"] == 0
    with pytest.raises(ConfigError, match="does not run Q/DQ"):
        rebuild(bundle, dla_core=0, opt_batch=1, int8_source=Int8Source.qdq)


def test_the_simulated_dla_refuses_a_qdq_network_and_a_missing_core(bundle, monkeypatch):
    """The stand-in is as strict as DLA: a Q/DQ network forced onto it fails without GPU fallback,
    and with fallback runs on the GPU; a core the module lacks is ignored (the engine is not on DLA)."""
    import dataclasses

    from rescompile.bundle import read_manifest
    from rescompile.stages.build import engine_from_onnx

    machine = on(monkeypatch, JETPACK6, **ORIN)
    plan = rebuild(bundle, dla_core=1, opt_batch=1).plan
    qdq = dataclasses.replace(plan, onnx_role="qdq_onnx", onnx_path=read_manifest(bundle).file("qdq_onnx"),
                              int8_source="qdq", cache_path=None)
    with pytest.raises(EngineBuildError):
        engine_from_onnx(dataclasses.replace(qdq, gpu_fallback=False), bundle / "x")
    engine_from_onnx(qdq, bundle / "y")
    assert machine.builds[-1]["dla_core"] is None  # fell back to the GPU
    machine.dla_cores = 1
    engine_from_onnx(plan, bundle / "z")
    assert machine.builds[-1]["dla_core"] is None  # core 1 on a one-core module: ignored


def test_a_module_without_the_dla_core_is_refused_in_one_line(bundle, monkeypatch):
    for cores, core, match in ((0, 0, "has no DLA cores"), (2, 2, "numbered 0-1")):
        machine = on(monkeypatch, JETPACK6, **{**ORIN, "dla_cores": cores})
        with pytest.raises(ConfigError, match=match):
            rebuild(bundle, dla_core=core, opt_batch=1)
        assert machine.builds == []


def test_the_runtime_runs_a_dla_engine_on_its_own_core(bundle, monkeypatch):
    machine = on(monkeypatch, JETPACK6, **ORIN)
    rebuild(bundle, dla_core=1, opt_batch=1)
    with runtime.load(bundle) as runner:
        assert runner.backend == "tensorrt"
    assert machine.dla_runs[-1] == 1  # Runtime.DLA_core set before deserializing; the default would be 0


def test_tensorrt_11_4_1_runs_dla_with_a_strongly_typed_fp16_network(bundle, monkeypatch):
    machine = on(monkeypatch, "11.4.1", **ORIN)
    result = rebuild(bundle, Precision.fp16, dla_core=0, opt_batch=1)
    header = machine.builds[-1]
    assert header["dla_core"] == 0 and header["strongly_typed"] and not header["fp16"]  # no FP16 flag in 11
    assert result.plan.onnx_role == "fp16_onnx"
    with pytest.raises(ConfigError, match="FP16 networks only"):
        rebuild(bundle, Precision.int8, dla_core=0, opt_batch=1)


def test_tensorrt_11_plans_dla_in_fp16_only():
    from rescompile.nvidia import GpuInfo
    from rescompile.stages.build.plan import plan_engine

    orin = GpuInfo("Jetson AGX Orin", "8.7", jetson=True)
    files = {role: Path(role) for role in ("optimized_onnx", "qdq_onnx", "fp16_onnx", "calibration_cache")}
    with pytest.raises(ConfigError, match="FP16 networks only"):
        plan_engine(Precision.int8, "11.4.1", files, "input", (3, 32, 32), EngineConfig(dla_core=0), gpu=orin)
    plan = plan_engine(Precision.fp16, "11.4.1", files, "input", (3, 32, 32), EngineConfig(dla_core=0), gpu=orin)
    assert plan.onnx_role == "fp16_onnx" and plan.strongly_typed and plan.dla_core == 0


@pytest.mark.parametrize("version, device, match", [
    (NEWEST_11, ORIN, "does not support DLA"),
    (NEWEST_10, ORIN, "does not support DLA"),
    (JETPACK6, L4, "has no DLA cores"),
])
def test_dla_is_refused_where_tensorrt_has_none(version, device, match, bundle, monkeypatch):
    machine = on(monkeypatch, version, **device)
    with pytest.raises(ConfigError, match=match):
        rebuild(bundle, dla_core=0)
    assert machine.builds == []


# -- 10: timing cache from another machine ---------------------------------------------------------

def test_a_timing_cache_from_another_gpu_is_not_loaded(bundle, monkeypatch, caplog):
    on(monkeypatch, NEWEST_10, **L4)
    rebuild(bundle)
    assert json.loads((bundle / "timing.cache.json").read_text())["gpu"] == "NVIDIA L4"
    machine = on(monkeypatch, NEWEST_10, **T4)
    with caplog.at_level(logging.WARNING):
        rebuild(bundle)
    assert "made by TensorRT 10.16.0 on NVIDIA L4" in caplog.text and "not loaded" in caplog.text
    assert not any("different device" in text for _, text in machine.log)  # TensorRT never saw it
    record = json.loads((bundle / "timing.cache").read_text())
    assert record["device"] == "Tesla T4" and "merged_from" not in record
    assert json.loads((bundle / "timing.cache.json").read_text())["gpu"] == "Tesla T4"


# -- 8, 11: parse failures and TensorRT's warnings reach the user --------------------------------

def test_a_parse_failure_is_one_line(tmp_path, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    from rescompile.stages.build.loaders import build_engine_bytes, loader_chain
    from rescompile.stages.build.plan import plan_engine

    w = helper.make_tensor("w", TensorProto.INT8, [2, 1, 1, 1], [1, 2])
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "s"], ["wf"], axis=0, name="dq"),
         helper.make_node("Conv", ["x", "wf"], ["y"], name="conv")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2, 4, 4])],
        [w, helper.make_tensor("s", TensorProto.FLOAT, [2], [0.1, 0.2])],
    )
    path = tmp_path / "old.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)]), str(path))
    on(monkeypatch, JETPACK6)
    plan = plan_engine(Precision.fp32, JETPACK6, {"optimized_onnx": path}, "x", (1, 4, 4))
    with pytest.raises(EngineBuildError) as err:
        build_engine_bytes(loader_chain(plan))
    assert "\n" not in str(err.value) and "could not build the engine from old.onnx" in str(err.value)


def test_tensorrt_warnings_are_not_hidden(bundle, monkeypatch, capsys):
    """A cache without a tensor's scale: TensorRT warns, and the user sees it (Polygraphy's
    logger at ERROR would swallow it)."""
    from rescompile.bundle import read_manifest
    from rescompile.stages.calibrate.cache import CalibrationCache, read_cache

    cache = read_cache(bundle / "calibration.cache")
    scales = dict(cache.scales)
    dropped = sorted(scales)[-1]
    scales.pop(dropped)
    (bundle / "calibration.cache").write_bytes(CalibrationCache(cache.version_code, cache.algorithm, scales).to_text().encode())
    _rehash(bundle, read_manifest)
    machine = on(monkeypatch, JETPACK6)
    rebuild(bundle, int8_source=Int8Source.cache)
    warning = f"Missing scale and zero-point for tensor {dropped}"
    assert any(warning in text for _, text in machine.log)
    out = capsys.readouterr()
    assert warning in out.out + out.err


def _rehash(bundle: Path, read_manifest) -> None:
    from rescompile._io import sha256_file

    doc = json.loads((bundle / "manifest.json").read_text())
    for entry in doc["files"].values():
        p = bundle / entry["path"]
        entry["sha256"], entry["bytes"] = sha256_file(p), p.stat().st_size
    (bundle / "manifest.json").write_text(json.dumps(doc))
    read_manifest(bundle)


def test_from_bundle_rewrites_the_deployment_configs_for_the_engine(bundle, monkeypatch):
    """After the engine is built on the target, Triton serves it (tensorrt_plan, its profile) and
    DeepStream loads it instead of building its own."""
    from rescompile.deploy.deepstream import parse_config
    from tests.deploy.test_triton import parse

    on(monkeypatch, "10.3.0")
    assert "onnxruntime_onnx" in next((bundle / "deploy" / "triton").glob("*/config.pbtxt")).read_text()  # before: the CPU artifact
    rebuild(bundle)
    doc = json.loads((bundle / "manifest.json").read_text())
    triton = bundle / doc["deploy"]["triton_config"]
    cfg = parse(triton)
    profile = doc["engine_plan"]["profiles"][0]
    assert cfg.platform == "tensorrt_plan" and cfg.max_batch_size == profile["max"][0]
    assert list(cfg.dynamic_batching.preferred_batch_size) == sorted({profile["opt"][0], profile["max"][0]})
    assert (triton.parent / "1" / "model.plan").read_bytes() == (bundle / doc["engine"]["path"]).read_bytes()
    here = bundle / "deploy" / "deepstream"
    ds = parse_config((here / "config_infer_primary.txt").read_text())
    assert (here / ds["model-engine-file"]).resolve() == (bundle / doc["engine"]["path"]).resolve()
