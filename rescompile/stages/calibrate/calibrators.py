"""Calibrators: an activation histogram -> amax (the clipping threshold; scale = amax / 127).

- max: the largest |x| seen (no clipping; sensitive to outliers).
- percentile: the p-th percentile of |x| (99.9 / 99.99 / 99.999).
- entropy: TensorRT's method (EntropyCalibration2): the threshold whose 128-level quantized
  distribution is closest in KL divergence to the observed one (Migacz, "8-bit Inference
  with TensorRT", GTC 2017), never below the 99.99th percentile (the guard below says why).
- mse: the threshold that minimises the expected squared error of quantize-dequantize.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from rescompile.errors import ConfigError
from rescompile.stages.calibrate.collect import MIN_AMAX, TensorStats

QUANT_LEVELS = 128  # |x| maps onto 0..127 in symmetric int8
PERCENTILES = (99.9, 99.99, 99.999)
_STRIDE = 8  # mse: candidate thresholds every 8 of 2048 bins, < 1/256 of amax apart


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


def kl_divergences(hist: np.ndarray, candidates: np.ndarray, levels: int = QUANT_LEVELS) -> np.ndarray:
    """KL(P || Q_i) for every candidate threshold bin ``i``, as TensorRT's EntropyCalibration2
    defines it (NVIDIA pytorch-quantization ``_compute_amax_entropy``): P is the histogram cut at
    ``i`` with everything beyond folded into bin i-1; Q merges those ``i`` bins into ``levels``
    groups and spreads each group's mass evenly over its non-empty bins (empty bins stay empty).
    A bin where P has mass and Q none gives +inf. Vectorised over candidates in chunks."""
    hist = np.asarray(hist, dtype=np.float64)
    n = len(hist)
    tail = np.concatenate([np.cumsum(hist[::-1])[::-1], [0.0]])  # tail[i] = mass in bins >= i
    j = np.arange(n)
    out = np.empty(len(candidates))
    for start in range(0, len(candidates), 256):
        cand = np.asarray(candidates[start:start + 256])
        inside = j[None, :] < cand[:, None]  # (C, n)
        group = (j[None, :] * levels) // cand[:, None]  # the reference's digitize over linspace(0, i, levels + 1)
        nonzero = inside & (hist[None, :] > 0)
        key = (np.arange(len(cand))[:, None] * levels + np.minimum(group, levels - 1))
        sums = np.bincount(key[nonzero], weights=np.broadcast_to(hist, nonzero.shape)[nonzero], minlength=len(cand) * levels)
        counts = np.bincount(key[nonzero], minlength=len(cand) * levels)
        q = np.where(nonzero, sums[key] / np.maximum(counts[key], 1), 0.0)
        p = np.where(inside, hist[None, :], 0.0)
        p[np.arange(len(cand)), cand - 1] += tail[cand]
        p_sum, q_sum = p.sum(1, keepdims=True), q.sum(1, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            pn, qn = p / np.where(p_sum > 0, p_sum, 1), q / np.where(q_sum > 0, q_sum, 1)
            terms = np.where(pn > 0, pn * np.log(pn / qn), 0.0)
        kl = terms.sum(1)
        kl[(p_sum[:, 0] == 0) | (q_sum[:, 0] == 0)] = np.inf
        out[start:start + len(cand)] = kl
    return out


def entropy_bin(hist: np.ndarray, start: int = QUANT_LEVELS, stride: int = 1) -> int:
    """The threshold bin TensorRT's EntropyCalibration2 picks: the last minimum of the KL
    divergence over i = start, start + stride, ..., len(hist) (bin 0 takes bin 1's count first)."""
    hist = np.asarray(hist, dtype=np.float64).copy()
    if len(hist) > 1:
        hist[0] = hist[1]
    candidates = np.arange(start, len(hist) + 1, stride)
    if len(candidates) == 0:
        return len(hist)
    kl = kl_divergences(hist, candidates)
    return int(candidates[len(kl) - 1 - int(np.argmin(kl[::-1]))])


# Where the reference fails. A constant background (digits, documents, product shots on white)
# reaches the first convolution as one value per channel: the stem's histogram is then a
# cluster of spikes (64 channels' background responses, one or two bins each) on a plateau of
# strokes, and the KL minimum settles just above the cluster. Measured on four models
# (benchmarks/calibrators.py, 2026-11-30): the stem's entropy threshold was 0.16-0.47 of its
# 99.99th percentile and clipped 0.1-20% of its values; on a resnet18 at 64x64 clipping 0.2% of
# one ReLU output cost 0.83 points (3 of 360 test images flipped); with the network input
# clipped too, a normalised-input digits ResNet fell from 98.5% to 65%. The spikes are often
# too many and too small to be recognised one by one (64 spikes of under 1% each), so the guard
# does not try: the threshold is never below the 99.99th percentile, i.e. entropy may clip
# outliers (the top 0.01%) but never the bulk. A floor at the 99.9th percentile was not enough
# (resnet18 64x64: 0.28 points lost). Deeper tensors are left to the KL search: there its
# threshold was 0.7-1.4x the 99.99th percentile on every model measured, above it on most, so
# the floor rarely binds outside the stem.
ENTROPY_FLOOR_PERCENTILE = 99.99


def amax_kl(s: TensorStats) -> float:
    """The plain EntropyCalibration2 threshold (what TensorRT's own calibrator would choose)."""
    hist = s.hist.astype(np.float64)
    if hist.sum() == 0:
        return s.amax
    # A ReLU output is ~50% exact zeros. Left in, that spike dominates the divergence and
    # drives the threshold far too low (every merged level smears it), so bin 0 takes its
    # neighbour's count, as NVIDIA's reference histogram calibrator does (inside entropy_bin).
    return max(entropy_bin(hist) * s.bin_width, MIN_AMAX)


def amax_entropy(s: TensorStats, **_: float) -> float:
    if s.hist.sum() == 0:
        return s.amax
    return max(amax_kl(s), amax_percentile(s, percentile=ENTROPY_FLOOR_PERCENTILE))


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


def compute_amax(
    stats: dict[str, TensorStats], method: str, percentile: float = 99.99, full_range: dict[str, float] | None = None,
) -> dict[str, float]:
    """amax per tensor by ``method``. Tensors in ``full_range`` (the network input) are never
    clipped: their amax is the largest |x| seen, or the given bound, whichever is larger."""
    fn = CALIBRATORS.get(method)
    if fn is None:
        raise ConfigError(f"unknown calibrator {method!r}", f"Choose one of: {', '.join(CALIBRATORS)}, auto")
    if method != "max" and any(s.hist is None for s in stats.values()):
        raise ConfigError(f"calibrator {method!r} needs histograms", "Collect statistics with histograms=True")
    full_range = full_range or {}
    return {
        name: float(max(s.amax, full_range[name]) if name in full_range else fn(s, percentile=percentile))
        for name, s in stats.items()
    }
