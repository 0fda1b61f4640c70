"""The safety net after calibration, and the per-tensor evidence behind the scales.

A calibrator can be wrong for a model it was not tuned on (a spiky input histogram, an odd
normalisation). Agreement with FP32 needs no labels, so the INT8 model is always judged: when the
chosen calibrator's top-1 drop is over ``fallback_max_drop`` points or its agreement under
``fallback_min_agreement``, the other calibrators are tried on the same statistics (no second pass
over the data) and the best kept; only when all fail are the most sensitive layers left in float,
and when even that fails calibration stops with the table instead of writing a bad model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from rescompile.config import CalibConfig
from rescompile.errors import RescompileError
from rescompile.stages.calibrate.accuracy import Agreement, Evaluator, drop_points
from rescompile.stages.calibrate.collect import TensorStats
from rescompile.stages.calibrate.qdq import qdq_for_tensorrt, quantizable_layers

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
REPORT_METHODS = (("entropy", 0.0), ("percentile", 99.99), ("mse", 0.0), ("max", 0.0))


class CalibrationFailedError(RescompileError):
    """No calibrator, nor leaving layers in float, keeps INT8 close enough to FP32."""

    def __init__(self, message: str, hint: str, rows: list[dict[str, Any]]) -> None:
        super().__init__(message, hint)
        self.rows = rows


def label(method: str, percentile: float | None) -> str:
    return f"{method} {percentile:g}" if method == "percentile" and percentile else method


@dataclass
class Verdict:
    method: str
    percentile: float | None
    amax: dict[str, float]
    float_layers: list[str] = field(default_factory=list)
    note: str | None = None  # one line when the safety net changed anything
    rows: list[dict[str, Any]] = field(default_factory=list)  # every candidate it judged


def bars(images: int, config: CalibConfig) -> tuple[float, float]:
    """(largest drop in points, smallest agreement) that hold on ``images`` judged images. Neither is
    finer than one image: on 50 images a 1-point bar would be half an image, and one borderline image
    that flips on another CPU's kernels would send the safety net after other calibrators."""
    one = 1.0 / max(images, 1)
    return max(config.fallback_max_drop, 100.0 * one), min(config.fallback_min_agreement, 1.0 - one)


def holds(score: Agreement, fp32: Agreement, config: CalibConfig) -> bool:
    drop = drop_points(fp32, score)
    max_drop, min_agreement = bars(score.images, config)
    # drop_points is rounded to 4 decimals; a rate k/n against a bar of k/n may differ in its last bit.
    return (drop is None or drop <= max_drop + 1e-4) and score.top1_agreement >= min_agreement - 1e-9


def _row(name: str, score: Agreement, fp32: Agreement, config: CalibConfig) -> dict[str, Any]:
    return {"calibrator": name, **score.to_dict(), "drop_points": drop_points(fp32, score), "holds": holds(score, fp32, config)}


def _describe(row: dict[str, Any]) -> str:
    drop = "" if row["drop_points"] is None else f", drop {row['drop_points']:+.2f} pts"
    return f"{row['calibrator']}: agreement {row['top1_agreement']:.1%}{drop}"


AmaxFor = Callable[[str, float], dict[str, float]]  # (method, percentile) -> amax per tensor, computed once


def safety_net(
    fp32: onnx.ModelProto, verdict: Verdict, judge: Evaluator, config: CalibConfig, amax_for: AmaxFor | None, progress: Progress,
    stats: dict[str, TensorStats] | None = None,
) -> Verdict:
    """Judge ``verdict`` on ``judge``'s images; fall back as the module docstring says. ``amax_for``
    gives other calibrators' scales from the same statistics (None: none can be tried); ``stats``
    name the tensor the failing scales clip most."""
    chosen = label(verdict.method, verdict.percentile)
    first = _row(chosen, judge(qdq_for_tensorrt(fp32, verdict.amax)), judge.fp32, config)
    if first["holds"]:
        return verdict
    culprit = _most_clipped(stats or {}, verdict.amax)
    if culprit:
        first["most_clipped"] = culprit
        first["calibrator"] += f" (clips {culprit['clipped']:.1%} of {culprit['tensor']!r})"
    rows, best = [first], (first, verdict.method, verdict.percentile, verdict.amax)
    if amax_for is not None:
        others = [(m, p) for m, p in config.auto_candidates if label(m, p or None) != chosen]
        for i, (method, pct) in enumerate(others):
            progress("safety net: other calibrators", i, len(others))
            amax = amax_for(method, pct or config.percentile)
            row = _row(label(method, pct or None), judge(qdq_for_tensorrt(fp32, amax)), judge.fp32, config)
            rows.append(row)
            if _rank(row) > _rank(best[0]):
                best = (row, method, pct or None, amax)
        progress("safety net: other calibrators", len(others), len(others))
    row, method, pct, amax = best
    if row["holds"]:
        note = f"{_describe(first)} -> {_describe(row)}, kept {row['calibrator']}"
        return Verdict(method, pct if method == "percentile" else None, amax, [], note, rows)
    floats, score = _float_until_it_holds(fp32, amax, judge, config, progress)
    last = _row(f"{row['calibrator']} + {len(floats)} float layer(s)", score, judge.fp32, config)
    rows.append(last)
    if last["holds"]:
        note = f"{_describe(first)}; best calibrator {_describe(row)}; {len(floats)} layer(s) left in float -> {_describe(last)}"
        return Verdict(method, pct if method == "percentile" else None, amax, floats, note, rows)
    limits = bars(last["images"], config)
    raise CalibrationFailedError(
        f"INT8 does not hold for this model: the best was {_describe(row)}, and {len(floats)} layer(s) in float gave "
        f"{_describe(last)} (limits on {last['images']} images: drop <= {limits[0]:g} pts, agreement >= {limits[1]:.1%})",
        "Check that the calibration data is preprocessed as the model expects (--mean/--std, --data-format), "
        "build FP16 or FP32 instead, or pass --no-fallback to keep the INT8 model anyway",
        rows,
    )


def _most_clipped(stats: dict[str, TensorStats], amax: dict[str, float]) -> dict[str, Any] | None:
    shares = [(clipped_fraction(s, amax[t]), t) for t, s in stats.items() if t in amax]
    if not shares:
        return None
    share, tensor = max(shares)
    return {"tensor": tensor, "clipped": share} if share > 0 else None


def _rank(row: dict[str, Any]) -> tuple:
    top1 = -1.0 if row["top1"] is None else row["top1"]
    return (row["holds"], top1, row["top1_agreement"], row["cosine"])


def _float_until_it_holds(
    fp32: onnx.ModelProto, amax: dict[str, float], judge: Evaluator, config: CalibConfig, progress: Progress,
) -> tuple[list[str], Agreement]:
    """Leave the layers whose quantization alone costs the most agreement in float, one by one."""
    layers = quantizable_layers(fp32)
    alone = []
    for i, layer in enumerate(layers):
        progress("safety net: per-layer sensitivity", i, len(layers))
        s = judge(qdq_for_tensorrt(fp32, amax, float_layers=set(layers) - {layer}))
        alone.append((s.top1_agreement, s.cosine, layer))
    progress("safety net: per-layer sensitivity", len(layers), len(layers))
    floats: list[str] = []
    score = judge(qdq_for_tensorrt(fp32, amax))
    for _agreement, _cos, layer in sorted(alone):
        if holds(score, judge.fp32, config) or len(floats) >= len(layers) // 2:
            break
        floats.append(layer)
        score = judge(qdq_for_tensorrt(fp32, amax, float_layers=floats))
    return floats, score


def clipped_fraction(s: TensorStats, amax: float) -> float:
    """The share of a tensor's values whose |x| is beyond ``amax`` (0 without a histogram)."""
    if s.hist is None or s.hist.sum() == 0:
        return 0.0
    first = int(np.ceil(amax / s.bin_width - 1e-9))
    return float(s.hist[first:].sum() / s.hist.sum())


def tensor_report(
    stats: dict[str, TensorStats], amax: dict[str, float], full_range: dict[str, float], amax_for: AmaxFor | None,
) -> list[dict[str, Any]]:
    """Per activation tensor: min, max, the amax kept, the share clipped, and each calibrator's amax."""
    side = {} if amax_for is None else {label(m, p or None): amax_for(m, p or 99.99) for m, p in REPORT_METHODS}
    rows = []
    for t, s in stats.items():
        if t not in amax:
            continue
        rows.append({
            "tensor": t, "min": s.min, "max": s.max, "amax": amax[t], "clipped": clipped_fraction(s, amax[t]),
            "network_input": t in full_range, "calibrators": {} if t in full_range else {k: v[t] for k, v in side.items() if t in v},
        })
    return rows


def worst_clipped(rows: list[dict[str, Any]], n: int = 5) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: -r["clipped"])[:n]
