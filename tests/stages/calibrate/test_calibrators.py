"""Calibrators on known distributions, and the streaming statistics pass."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from rescompile.errors import ConfigError, DataError
from rescompile.stages.calibrate.calibrators import CALIBRATORS, compute_amax
from rescompile.stages.calibrate.collect import HIST_BINS, TensorStats, activation_tensors, collect_statistics


def stats_of(values: np.ndarray, name: str = "t") -> TensorStats:
    s = TensorStats(name, float(values.min()), float(values.max()))
    idx = np.minimum((np.abs(values) * (HIST_BINS / s.amax)).astype(np.int64), HIST_BINS - 1)
    s.hist = np.bincount(idx, minlength=HIST_BINS)
    return s


RNG = np.random.default_rng(0)
GAUSS_WITH_OUTLIER = np.concatenate([RNG.standard_normal(200_000), [40.0]])


def test_max_is_the_largest_magnitude():
    s = stats_of(np.array([-3.5, 0.2, 2.0]))
    assert compute_amax({"t": s}, "max")["t"] == 3.5


@pytest.mark.parametrize("p", [99.0, 99.9, 99.99])
def test_percentile_of_uniform_magnitudes(p):
    values = RNG.uniform(-1, 1, 400_000)
    amax = compute_amax({"t": stats_of(values)}, "percentile", p)["t"]
    expected = np.percentile(np.abs(values), p)
    assert abs(amax - expected) <= 2 * (1.0 / HIST_BINS)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_outlier_is_clipped_but_the_bulk_is_kept(method):
    amax = compute_amax({"t": stats_of(GAUSS_WITH_OUTLIER)}, method, 99.99)["t"]
    # Max would be 40: a clipping calibrator keeps the Gaussian's bulk (|x| < 3 is 99.7%).
    assert 2.5 < amax < 10.0, amax


def test_mse_threshold_has_lower_error_than_max():
    values = GAUSS_WITH_OUTLIER

    def err(amax):
        scale = amax / 127
        return np.mean((np.clip(np.round(values / scale), -127, 127) * scale - values) ** 2)

    s = stats_of(values)
    amax = compute_amax({"t": s}, "mse")["t"]
    assert amax < 0.75 * s.amax  # one outlier's squared error weighs a lot, but not everything
    assert err(amax) < 0.5 * err(s.amax)


def test_entropy_ignores_the_relu_zero_spike():
    """Half the values of a ReLU output are exactly 0: that spike must not drag the threshold down."""
    positive = np.abs(RNG.standard_normal(100_000))
    with_zeros = np.concatenate([positive, np.zeros(100_000)])
    a = compute_amax({"t": stats_of(positive)}, "entropy")["t"]
    b = compute_amax({"t": stats_of(with_zeros)}, "entropy")["t"]
    assert b == pytest.approx(a, rel=0.02)
    assert b > 0.6 * positive.max()  # a half-normal needs most of its range


def test_all_zero_tensor_gets_a_positive_threshold():
    s = stats_of(np.zeros(100))
    for method in CALIBRATORS:
        assert compute_amax({"t": s}, method)["t"] > 0


def test_unknown_method_and_bad_percentile():
    s = stats_of(np.ones(10))
    with pytest.raises(ConfigError, match="unknown calibrator"):
        compute_amax({"t": s}, "kl")
    with pytest.raises(ConfigError, match="percentile"):
        compute_amax({"t": s}, "percentile", 0.0)


def test_histogram_methods_need_histograms():
    with pytest.raises(ConfigError, match="histograms"):
        compute_amax({"t": TensorStats("t", -1.0, 1.0)}, "entropy")


# -- streaming statistics ---------------------------------------------------------------------


def tiny_model() -> onnx.ModelProto:
    w = onnx.numpy_helper.from_array(np.full((2, 3, 1, 1), 0.5, np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"), helper.make_node("Relu", ["c"], ["out"], name="relu")],
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 2, 4, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what ONNX Runtime 1.23 (the last for Python 3.10) reads; onnx 1.23 writes 14
    return model


def test_statistics_match_numpy_and_stream_in_two_passes():
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal((5, 3, 4, 4)).astype(np.float32) for _ in range(3)]
    calls = []

    def source():
        calls.append(1)
        return iter(batches)

    model = tiny_model()
    assert activation_tensors(model) == ["input", "c", "out"]
    stats = collect_statistics(model, source)
    assert len(calls) == 2  # min/max pass, histogram pass: nothing stored between them
    x = np.concatenate(batches)
    conv = 0.5 * x.sum(1, keepdims=True).repeat(2, 1)
    for name, ref in [("input", x), ("c", conv), ("out", np.maximum(conv, 0))]:
        s = stats[name]
        assert s.min == pytest.approx(ref.min(), abs=1e-5) and s.max == pytest.approx(ref.max(), abs=1e-5)
        assert s.hist.sum() == ref.size
    assert stats["out"].hist[0] >= (conv <= 0).sum()  # the ReLU zeros land in bin 0


def test_max_only_is_one_pass():
    calls = []

    def source():
        calls.append(1)
        return iter([np.ones((2, 3, 4, 4), np.float32)])

    stats = collect_statistics(tiny_model(), source, histograms=False)
    assert len(calls) == 1 and stats["c"].hist is None and stats["c"].max == pytest.approx(1.5)


def test_nan_and_empty_batches_are_refused():
    bad = np.ones((2, 3, 4, 4), np.float32)
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        collect_statistics(tiny_model(), lambda: iter([bad]))
    with pytest.raises(DataError, match="no calibration images"):
        collect_statistics(tiny_model(), lambda: iter([]))
