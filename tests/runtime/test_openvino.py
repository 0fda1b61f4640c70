"""The OpenVINO runner on a real bundle: same predictions as ONNX Runtime on the same file, the
model cache, and the one-line error when openvino is missing."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from rescompile import runtime
from rescompile.data.datasets import load_dataset
from rescompile.errors import MissingDependencyError
from tests.bench.test_bench import bundle  # noqa: F401  the bench tests' bundle fixture (a trained ResNet-20, INT8)
from tests.tolerance import Tolerance

# Both runtimes run the same uint8 Q/DQ CPU artifact, but each with its own int8 kernels (their
# own requantization rounding and accumulation order): a borderline image of a briefly trained
# model may flip; a runner that fed the wrong file, layout or normalisation differs on dozens.
SAME_FILE = Tolerance(2, 360, "two runtimes' int8 kernels on the same Q/DQ file; a wrong feed differs on dozens")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A fresh RESCOMPILE_HOME, so OpenVINO's cache starts empty."""
    monkeypatch.setenv("RESCOMPILE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits").test


def test_openvino_runs_the_cpu_artifact_with_the_predictions_of_onnx_runtime(bundle, digits, home):
    pytest.importorskip("openvino")
    pytest.importorskip("onnxruntime")
    with runtime.load(bundle, backend="openvino") as ov, runtime.load(bundle, backend="onnxruntime") as ort:
        assert ov.backend == "openvino" and ov.source == str(bundle / "model_int8_cpu.onnx")
        assert ov.takes_pixels and ov.pixels_source == str(bundle / "model_int8_cpu_pixels.onnx")  # as ONNX Runtime picks
        x = digits.batch(np.arange(len(digits)), ov.spec.preprocessing)
        got, ref = ov.infer(x), ort.infer(x)
        assert got.shape == ref.shape == (len(digits), 10) and got.dtype == np.float32
        SAME_FILE.check_agreement(got.argmax(1), ref.argmax(1), "openvino vs onnxruntime, float input")
        pixels = ov.spec.preprocessing.pixels(digits.images(np.arange(len(digits))))
        SAME_FILE.check_agreement(ov.infer_pixels(pixels).argmax(1), ort.infer_pixels(pixels).argmax(1), "pixel input")
        assert ov.infer(x[:1]).shape == (1, 10) and ov.infer(x[:7]).shape == (7, 10)  # any batch size, after the big one
        (top,) = ov.classify(digits.images(np.arange(1))[0], top_k=1)
        assert top.label == ov.spec.label(int(ref[0].argmax()))
    assert ov.closed
    with pytest.raises(runtime.RunnerError, match="closed"):
        ov.infer(x[:1])


def test_pixels_false_runs_the_float_artifact_only(bundle, home):
    pytest.importorskip("openvino")
    with runtime.load(bundle, backend="openvino", pixels=False, threads=1) as ov:
        assert not ov.takes_pixels and ov.input_shape == (3, 32, 32)


def test_a_second_load_reads_openvino_s_cache(bundle, home):
    pytest.importorskip("openvino")
    cache = home / "cache" / "openvino"
    first = runtime.load(bundle, backend="openvino", pixels=False)
    first.close()
    blobs = sorted(p.name for p in cache.iterdir())
    assert len(blobs) == 1  # the compiled CPU artifact
    second = runtime.load(bundle, backend="openvino", pixels=False)
    second.close()
    assert sorted(p.name for p in cache.iterdir()) == blobs  # a hit: nothing compiled or written again
    assert 0 < second.load_seconds and 0 < first.load_seconds


def test_an_onnx_file_runs_on_openvino_when_asked(bundle, digits, home):
    pytest.importorskip("openvino")
    with runtime.load(bundle / "model_opt.onnx", backend="openvino") as ov:
        assert ov.spec is not None and not ov.takes_pixels  # the spec is read from the ONNX metadata
        assert ov.infer(digits.batch(np.arange(4), ov.spec.preprocessing)).shape == (4, 10)


@pytest.mark.parametrize("target", ["bundle", "onnx"])
def test_missing_openvino_is_one_line_naming_the_extra(bundle, monkeypatch, target):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    path = bundle if target == "bundle" else bundle / "model_int8_cpu.onnx"
    with pytest.raises(MissingDependencyError) as err:
        runtime.load(path, backend="openvino")
    text = str(err.value)
    assert "\n" not in text and "pip install 'rescompile[openvino]'" in text and "openvino" in text.split(":")[0].lower()


def test_openvino_is_an_explicit_backend_only(bundle, monkeypatch):
    """auto still picks ONNX Runtime on a CPU-only machine: OpenVINO is not chosen without measurements."""
    pytest.importorskip("onnxruntime")
    from rescompile import nvidia

    monkeypatch.setattr(nvidia, "tensorrt_version", lambda: None)
    assert "openvino" in runtime.BACKENDS
    with runtime.load(bundle) as r:
        assert r.backend == "onnxruntime"
