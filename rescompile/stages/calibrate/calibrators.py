"""Calibrators: an activation histogram -> amax (the clipping threshold; scale = amax / 127).

- max: the largest |x| seen (no clipping; sensitive to outliers).
- percentile: the p-th percentile of |x| (99.9 / 99.99 / 99.999).
- entropy: TensorRT's method (EntropyCalibration2): the threshold whose 128-level quantized
  distribution is closest in KL divergence to the observed one (Migacz, "8-bit Inference
  with TensorRT", GTC 2017).
- mse: the threshold that minimises the expected squared error of quantize-dequantize.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rescompile.errors import ConfigError
from rescompile.stages.calibrate.collect import MIN_AMAX, TensorStats

QUANT_LEVELS = 128  # |x| maps onto 0..127 in symmetric int8
PERCENTILES = (99.9, 99.99, 99.999)
_STRIDE = 8  # candidate thresholds every 8 of 2048 bins: 241 candidates, < 1/256 of amax apart


def amax_max(s: TensorStats, **_: float) -> float:
    return s.amax


def amax_percentile(s: TensorStats, percentile: float = 99.99, **_: float) -> float:
    if not 0 < percentile <= 100:
        raise ConfigError(f"percentile must be in (0, 100], got {percentile}")
    total = s.hist.sum()
    if total == 0:
        return s.amax
    idx = int(np.searchsorted(np.cumsum(s.hist), percentile / 100.0 * total))
    return max((min(idx, len(s.hist) - 1) + 1) * s.bin_width, MIN_AMAX)


def _kl(hist: np.ndarray, i: int) -> float:
    ref = hist[:i].copy()
    ref[-1] += hist[i:].sum()  # outliers are clipped into the last bin
    group = (np.arange(i) * QUANT_LEVELS) // i
    nonzero = (hist[:i] != 0).astype(np.float64)
    sums = np.bincount(group, weights=hist[:i], minlength=QUANT_LEVELS)
    counts = np.bincount(group, weights=nonzero, minlength=QUANT_LEVELS)
    q = np.where(nonzero > 0, sums[group] / np.maximum(counts[group], 1), 0.0)
    p_sum, q_sum = ref.sum(), q.sum()
    if p_sum == 0 or q_sum == 0:
        return np.inf
    p, q = ref / p_sum, q / q_sum
    mask = p > 0
    return float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))


def amax_entropy(s: TensorStats, **_: float) -> float:
    hist = s.hist.astype(np.float64)
    if hist.sum() == 0:
        return s.amax
    # A ReLU output is ~50% exact zeros. Left in, that spike dominates the divergence and
    # drives the threshold far too low (every merged level smears it), so bin 0 takes its
    # neighbour's count, as NVIDIA's reference histogram calibrator does.
    if len(hist) > 1:
        hist[0] = hist[1]
    candidates = range(QUANT_LEVELS, len(hist) + 1, _STRIDE)
    best = min(candidates, key=lambda i: _kl(hist, i))
    return max(best * s.bin_width, MIN_AMAX)


def amax_mse(s: TensorStats, **_: float) -> float:
    hist = s.hist.astype(np.float64)
    if hist.sum() == 0:
        return s.amax
    centers = (np.arange(len(hist)) + 0.5) * s.bin_width
    keep = hist > 0
    x, w = centers[keep], hist[keep]
    cands = np.arange(_STRIDE, len(hist) + 1, _STRIDE) * s.bin_width
    scale = cands[:, None] / (QUANT_LEVELS - 1)
    deq = np.clip(np.round(x[None, :] / scale), 0, QUANT_LEVELS - 1) * scale
    err = ((deq - x[None, :]) ** 2 * w[None, :]).sum(1)
    return max(float(cands[int(np.argmin(err))]), MIN_AMAX)


CALIBRATORS: dict[str, Callable[..., float]] = {
    "max": amax_max,
    "percentile": amax_percentile,
    "entropy": amax_entropy,
    "mse": amax_mse,
}


def compute_amax(stats: dict[str, TensorStats], method: str, percentile: float = 99.99) -> dict[str, float]:
    fn = CALIBRATORS.get(method)
    if fn is None:
        raise ConfigError(f"unknown calibrator {method!r}", f"Choose one of: {', '.join(CALIBRATORS)}, auto")
    if method != "max" and any(s.hist is None for s in stats.values()):
        raise ConfigError(f"calibrator {method!r} needs histograms", "Collect statistics with histograms=True")
    return {name: float(fn(s, percentile=percentile)) for name, s in stats.items()}
