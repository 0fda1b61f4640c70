"""The entropy search against a straight, loop-by-loop port of TensorRT's EntropyCalibration2 as
NVIDIA re-implements it (pytorch-quantization ``_compute_amax_entropy``): same threshold bin."""

from __future__ import annotations

from collections import Counter

import numpy as np
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
    from rescompile.stages.calibrate.calibrators import amax_entropy, clipped_share
    from rescompile.stages.calibrate.collect import HIST_BINS, TensorStats

    rng = np.random.default_rng(0)
    background = np.full(60_000, 0.45)
    strokes = rng.uniform(0.0, 3.0, 12_000)
    x = np.concatenate([background, strokes])
    hist, _ = np.histogram(x, bins=HIST_BINS, range=(0, 3.0))
    s = TensorStats("t", -0.45, 3.0, hist.astype(np.float64))
    plain = entropy_bin(s.hist) * s.bin_width
    assert clipped_share(s.hist, entropy_bin(s.hist)) > 0.01  # the KL minimum clips strokes away...
    assert amax_entropy(s) > plain and amax_entropy(s) >= 0.99 * 3.0 * 0.999  # ...rescompile keeps them
