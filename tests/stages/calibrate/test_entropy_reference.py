"""The entropy search against a straight, loop-by-loop port of TensorRT's EntropyCalibration2 as
NVIDIA re-implements it (pytorch-quantization ``_compute_amax_entropy``): same threshold bin."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rescompile.stages.calibrate.calibrators import entropy_bin


def reference_entropy_bin(hist: np.ndarray, num_levels: int = 128, start: int = 128, stride: int = 1) -> int:
    """Written from the published algorithm, one bin at a time, for clarity rather than speed."""
    bins = np.asarray(hist, dtype=np.float64).copy()
    bins[0] = bins[1]
    total = bins.sum()
    divergences, arguments = [], []
    for i in range(start, len(bins) + 1, stride):
        space = np.linspace(0, i, num=num_levels + 1)
        digitized = np.digitize(range(i), space) - 1
        digitized[bins[:i] == 0] = -1
        merged = np.zeros(num_levels)
        for idx, d in enumerate(digitized):
            if d != -1:
                merged[d] += bins[idx]
        for key, count in Counter(digitized).items():
            if key != -1:
                merged[key] /= count
        expanded = np.array([merged[d] if d != -1 else 0.0 for d in digitized])
        reference = bins[:i].copy()
        reference[-1] += bins[i:].sum()
        assert round(reference.sum()) == round(total)
        p = reference / reference.sum()
        q = expanded / expanded.sum() if expanded.sum() else expanded
        with np.errstate(divide="ignore", invalid="ignore"):
            kl = np.sum(np.where(p > 0, p * np.log(p / q), 0.0))
        divergences.append(kl)
        arguments.append(i)
    divergences = np.array(divergences)
    last = len(divergences) - 1 - int(np.argmin(divergences[::-1]))
    return arguments[last]


histograms = st.builds(
    lambda n, seed, kind, spikes: _make(n, seed, kind, spikes),
    st.integers(140, 400), st.integers(0, 2**31 - 1), st.sampled_from(["relu", "gauss", "uniform", "sparse", "laplace"]),
    st.integers(0, 3),
)


def _make(n: int, seed: int, kind: str, spikes: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    samples = {
        "relu": np.abs(rng.standard_normal(20_000)) * (rng.random(20_000) > 0.5),
        "gauss": np.abs(rng.standard_normal(20_000)),
        "uniform": rng.random(20_000),
        "sparse": np.abs(rng.standard_normal(300)),
        "laplace": np.abs(rng.laplace(size=20_000)),
    }[kind]
    hist, _ = np.histogram(samples, bins=n, range=(0, samples.max() + 1e-9))
    for _ in range(spikes):  # a constant background: one bin with a large share
        hist[rng.integers(1, n)] += int(rng.integers(1_000, 50_000))
    return hist.astype(np.float64)


@settings(max_examples=60, deadline=None)
@given(histograms)
def test_entropy_search_matches_the_reference_port(hist):
    ours, ref = entropy_bin(hist), reference_entropy_bin(hist)
    assert abs(ours - ref) <= 1, (ours, ref)


def test_the_reference_clips_a_spiky_input_that_rescompile_does_not():
    """The documented failure: a background spike plus a thin spread of strokes."""
    from rescompile.stages.calibrate.calibrators import amax_entropy
    from rescompile.stages.calibrate.safety import clipped_fraction
    from rescompile.stages.calibrate.collect import HIST_BINS, TensorStats

    rng = np.random.default_rng(0)
    background = np.full(60_000, 0.45)
    strokes = rng.uniform(0.0, 3.0, 12_000)
    x = np.concatenate([background, strokes])
    hist, _ = np.histogram(x, bins=HIST_BINS, range=(0, 3.0))
    s = TensorStats("t", -0.45, 3.0, hist.astype(np.float64))
    plain = entropy_bin(s.hist) * s.bin_width
    assert clipped_fraction(s, plain) > 0.01  # the KL minimum clips strokes away...
    assert amax_entropy(s) > plain and amax_entropy(s) >= 0.99 * 3.0 * 0.999  # ...rescompile keeps them


# |x| histograms recorded by the statistics pass (2,048 bins over [0, max|x|], 512 digit images):
# the stem and a deeper ReLU of a torchvision resnet18 trained on digits at 64x64, and the stem
# ReLU of a ResNet fed raw 0-255 pixels (benchmarks/calibrators.py builds both models).
RECORDED = Path(__file__).parent / "data" / "histograms.npz"


def recorded(key: str):
    from rescompile.stages.calibrate.collect import TensorStats

    with np.load(RECORDED) as f:
        lo, hi = f[key + "__range"]
        return TensorStats(key, float(lo), float(hi), f[key + "__hist"])


@pytest.mark.parametrize("key", ["r18_64_conv1_Conv_output_0", "r18_64_relu_Relu_output_0", "raw255_stem_stem.2_Relu_output_0"])
def test_a_stem_behind_a_constant_background_is_not_clipped(key):
    """Each channel's background response is its own spike (on the resnet18 each is under 5% of the
    mass, too small to tell from the strokes one by one), and together they pull the KL minimum
    below the strokes. On the resnet18 that clipping cost 0.83 points; the calibrator keeps
    everything below the 99.99th percentile."""
    from rescompile.stages.calibrate.calibrators import amax_entropy, amax_kl, amax_percentile
    from rescompile.stages.calibrate.safety import clipped_fraction

    s = recorded(key)
    if key.startswith("r18"):
        assert (s.hist[1:] / s.hist[1:].sum()).max() < 0.05
    assert clipped_fraction(s, amax_kl(s)) > 0.001  # the reference clips...
    p = amax_percentile(s, percentile=99.99)
    assert amax_kl(s) < 0.5 * p
    assert amax_entropy(s) == p  # ...rescompile's entropy does not


def test_the_floor_leaves_deeper_activations_to_the_kl_search():
    """Past the stem the KL threshold already keeps the bulk, and it is kept as it is."""
    from rescompile.stages.calibrate.calibrators import amax_entropy, amax_kl, amax_percentile

    s = recorded("r18_64_layer2_layer2.0_relu_Relu_output_0")
    assert amax_kl(s) > amax_percentile(s, percentile=99.99)
    assert amax_entropy(s) == amax_kl(s)
