"""Engine compatibility, decided from the manifest before TensorRT sees the plan."""

from __future__ import annotations

import logging

import pytest

from rescompile.errors import RescompileError
from rescompile.nvidia import GpuInfo
from rescompile.runtime.compat import (
    RuntimeMismatchError, check_engine, parse_compute_capability, parse_version,
)

ORIN = GpuInfo("Orin", "8.7", jetson=True)
L4 = GpuInfo("NVIDIA L4", "8.9")
A100 = GpuInfo("NVIDIA A100-SXM4-40GB", "8.0")
T4 = GpuInfo("Tesla T4", "7.5")


def engine(version="10.3.0", gpu=ORIN, **extra) -> dict:
    return {
        "path": "model.engine", "tensorrt_version": version, "precision": "int8", "int8_source": "qdq",
        "strongly_typed": str(version).startswith("11"), "gpu": gpu.to_dict() if gpu else None, "dla_core": None,
        "hardware_compatibility": None, "profiles": [{"min": [1, 3, 32, 32], "opt": [8, 3, 32, 32], "max": [32, 3, 32, 32]}],
        **extra,
    }


def mismatch(info, trt, gpu, **kw) -> str:
    with pytest.raises(RuntimeMismatchError) as err:
        check_engine(info, trt, gpu, **kw)
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_parsers():
    assert parse_version("10.3.0") == (10, 3, 0)
    assert parse_version("10.3.0.30") == (10, 3, 0, 30)
    assert parse_version("11.0") == (11, 0, 0)
    assert parse_version("garbage") is None and parse_version(None) is None
    assert parse_compute_capability({"compute_capability": "8.7"}) == (8, 7)
    assert parse_compute_capability({"sm": "sm_120"}) == (12, 0)
    assert parse_compute_capability(L4) == (8, 9)
    assert parse_compute_capability({"name": "x"}) is None


def test_exact_match_passes():
    check_engine(engine(gpu=ORIN), "10.3.0", ORIN)
    check_engine(engine(version="10.3.0", gpu=L4), "10.3.0.26", L4)  # one side without a build number: 3 parts
    check_engine(engine(version="10.3.0.26", gpu=L4), "10.3.0.26", L4)


def test_another_build_of_the_same_release_is_refused_in_one_line():
    """The standard runtime checks the full version stamped in the plan, build number included."""
    msg = mismatch(engine(version="10.3.0.26", gpu=L4), "10.3.0.30", L4)
    assert "another build (10.3.0.26 against 10.3.0.30)" in msg
    check_engine(engine(version="10.3.0.26", gpu=L4, version_compatible=True), "10.3.0.30", L4)  # later build: runs


def test_version_mismatch_message_names_both_sides_and_the_fix():
    msg = mismatch(engine(gpu=ORIN), "10.8.0", L4, bundle_dir="/data/bundle")
    assert msg.startswith("engine built with TensorRT 10.3.0 for sm_87 (Orin); this machine has TensorRT 10.8.0 on sm_89 (NVIDIA L4)")
    assert "rebuild it here with `rescompile build --from-bundle /data/bundle`" in msg.lower()
    assert 'backend="onnxruntime"' in msg
    msg = mismatch(engine(gpu=L4), "10.3.1", L4)
    assert "same version" in msg and "--from-bundle DIR" in msg


def test_version_compatible_engines_run_on_later_versions_and_tensorrt_10_ones_on_11():
    check_engine(engine(gpu=L4, version_compatible=True), "10.8.0", L4)
    check_engine(engine(gpu=L4, version_compatible=True), "11.0.0", L4)  # TensorRT 11's support matrix
    assert "or a later one" in mismatch(engine(version="10.8.0", gpu=L4, version_compatible=True), "10.3.0", L4)
    assert "or a later one" in mismatch(engine(version="11.1.0", gpu=L4, version_compatible=True), "11.0.0", L4)
    assert "runs only on TensorRT 11.x" in mismatch(engine(version="11.0.0", gpu=L4, version_compatible=True), "10.13.0", L4)
    assert "same version" in mismatch(engine(gpu=L4), "11.0.0", L4)  # without the flag: the exact version


@pytest.mark.parametrize("spelling", ["same-cc", "same_compute_capability"])
def test_same_compute_capability_engines(spelling):
    """What build writes ("same-cc") is what the runtime reads: any GPU model of that compute capability."""
    info = engine(version="10.9.0", gpu=GpuInfo("NVIDIA GeForce RTX 4090", "8.9"), hardware_compatibility=spelling)
    check_engine(info, "10.9.0", L4)
    assert "sm_89 GPUs only" in mismatch(info, "10.9.0", A100)
    assert "not supported on JetPack" in mismatch(engine(version="10.9.0", gpu=ORIN, hardware_compatibility=spelling), "10.9.0", ORIN)


def test_the_manifest_the_build_writes_is_read_by_the_runtime():
    from rescompile.config import HardwareCompat
    from rescompile.runtime.compat import HARDWARE_LEVELS

    assert {h.value for h in HardwareCompat} <= set(HARDWARE_LEVELS)


def test_compute_capability_mismatch():
    msg = mismatch(engine(gpu=L4), "10.3.0", A100)
    assert "for sm_89 (NVIDIA L4); this machine has TensorRT 10.3.0 on sm_80 (NVIDIA A100-SXM4-40GB)" in msg
    assert "compute capability" in msg


def test_ampere_plus_runs_on_sm80_and_later_only():
    info = engine(gpu=L4, hardware_compatibility="ampere+")
    check_engine(info, "10.3.0", A100)
    check_engine(info, "10.3.0", GpuInfo("NVIDIA H100", "9.0"))
    msg = mismatch(info, "10.3.0", T4)
    assert "sm_75 (Tesla T4)" in msg and "Ampere and later" in msg and "sm_80" in msg


def test_ampere_plus_still_needs_the_same_tensorrt():
    assert "same version" in mismatch(engine(gpu=L4, hardware_compatibility="ampere+"), "10.4.0", A100)


def test_unknown_hardware_level_and_platform_and_dla():
    assert "unknown" in mismatch(engine(gpu=L4, hardware_compatibility="hopper+"), "10.3.0", L4)
    assert "not portable across platforms" in mismatch(engine(gpu=ORIN), "10.3.0", GpuInfo("Orin", "8.7"))
    assert "DLA core 0" in mismatch(engine(gpu=GpuInfo("L4", "8.9"), dla_core=0), "10.3.0", GpuInfo("L4", "8.9"))
    check_engine(engine(gpu=ORIN, dla_core=0), "10.3.0", ORIN)


def test_no_tensorrt_says_tensorrt_is_needed_and_how_to_run_on_cpu():
    msg = mismatch(engine(gpu=ORIN), None, None, bundle_dir="b")
    assert "TensorRT is needed to run this engine" in msg and "not installed" in msg
    assert 'rescompile.runtime.load("b", backend="onnxruntime")' in msg


def test_no_gpu():
    msg = mismatch(engine(gpu=L4), "10.3.0", None)
    assert "no NVIDIA GPU" in msg and "onnxruntime" in msg


def test_same_sm_other_model_warns_but_passes(caplog):
    with caplog.at_level(logging.WARNING, logger="rescompile.runtime.compat"):
        check_engine(engine(gpu=GpuInfo("NVIDIA GeForce RTX 4090", "8.9")), "10.3.0", L4)
    assert "RTX 4090" in caplog.text and "NVIDIA L4" in caplog.text


def test_unknown_build_facts_defer_to_tensorrt(caplog):
    with caplog.at_level(logging.WARNING, logger="rescompile.runtime.compat"):
        check_engine({"path": "m.engine"}, "10.3.0", L4)
    assert "does not say which TensorRT" in caplog.text


def test_runtime_mismatch_error_is_a_rescompile_error():
    assert issubclass(RuntimeMismatchError, RescompileError)
