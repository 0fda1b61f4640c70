"""calibrate: optimized FP32 ONNX + real images -> scales -> Q/DQ ONNX, TensorRT cache, CPU INT8
model, scales.json and an accuracy report, all from one set of amax values."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from rescompile import __version__
from rescompile._io import atomic_path, write_json_atomic
from rescompile.config import CalibConfig, CalibMethod
from rescompile.data.images import ImageSet, iter_batches
from rescompile.errors import ConfigError, DataError
from rescompile.models.intake import graph_inputs
from rescompile.models.spec import ModelSpec
from rescompile.stages.calibrate.accuracy import Agreement, Evaluator, drop_points
from rescompile.stages.calibrate.cache import CalibrationCache, check_cache_for, write_cache
from rescompile.stages.calibrate.calibrators import compute_amax
from rescompile.stages.calibrate.safety import Verdict, safety_net, tensor_report
from rescompile.stages.calibrate.collect import TensorStats, activation_tensors, collect_statistics
from rescompile.stages.calibrate.lint import lint_qdq
from rescompile.stages.calibrate.pixels import pixel_input_model
from rescompile.stages.calibrate.qdq import has_vnni, qdq_for_cpu, qdq_for_openvino, qdq_for_tensorrt, quantizable_layers, required_tensors

log = logging.getLogger(__name__)

QDQ_ONNX = "model_int8_qdq.onnx"
CPU_ONNX = "model_int8_cpu.onnx"
CPU_PIXELS_ONNX = "model_int8_cpu_pixels.onnx"
OPENVINO_ONNX = "model_int8_openvino.onnx"
# The pixel-input artifact is kept when it agrees with FP32 as well as the float-input one does,
# give or take this much (its only difference is the padding border of the first conv), and never
# less than one of the images judged: a single borderline image may move with the CPU's kernels.
PIXELS_AGREEMENT_SLACK = 0.005
CACHE = "calibration.cache"
SCALES = "scales.json"
ACCURACY = "accuracy.json"

Progress = Callable[[str, int, int], None]


@dataclass
class CalibrationResult:
    qdq_path: Path
    cpu_path: Path
    cache_path: Path
    scales_path: Path
    accuracy_path: Path
    method: str
    percentile: float | None
    images: int
    amax: dict[str, float]
    accuracy: dict[str, Any]
    candidates: list[dict[str, Any]] = field(default_factory=list)  # --method auto
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    float_layers: list[str] = field(default_factory=list)
    lint: dict[str, Any] = field(default_factory=dict)
    cache_version: str = ""  # the TensorRT version calibration.cache is tagged for
    provenance: dict[str, Any] = field(default_factory=dict)  # as written to scales.json
    safety: dict[str, Any] = field(default_factory=dict)  # what the safety net judged and changed
    tensors: list[dict[str, Any]] = field(default_factory=list)  # per-tensor evidence (safety.tensor_report)
    pixels_path: Path | None = None  # the CPU artifact that takes uint8 pixels (None: not made, see accuracy)
    openvino_path: Path | None = None  # the same scales in the Q/DQ form OpenVINO runs fastest (None: not made, see accuracy)
    # An already-quantized source (prequant.py): its tool, placement findings and warnings; empty when calibrated here.
    prequantized: dict[str, Any] = field(default_factory=dict)


def input_range(model: onnx.ModelProto, spec: ModelSpec) -> dict[str, float]:
    """The network input is data, not an activation: it is never clipped. Its amax is at least the
    range the preprocessing implies for pixels 0..255 (max over channels of |(0 or 1) - mean| / std),
    and at least the largest |x| of the calibration data (compute_amax takes the larger).
    Entropy's KL search on an input histogram, a background spike plus a thin spread of strokes,
    settles just above the spike and clips every stroke (a normalised digits model fell from 98.5%
    to 65% top-1 that way)."""
    p = spec.preprocessing
    bound = max(max(abs(0.0 - m), abs(1.0 - m)) / s for m, s in zip(p.mean, p.std))
    return {i.name: float(bound) for i in graph_inputs(model)}


def _judged_on(judge: Evaluator, holdout: Evaluator | None, evaluate: Evaluator | None) -> str:
    what = "the held-out validation split" if judge is holdout else ("the test split" if judge is evaluate else "calibration images")
    return f"{what} ({judge.fp32.images} images{', labelled' if judge.labels is not None else ', agreement only'})"


def check_image_count(n: int, config: CalibConfig) -> None:
    if n < config.min_images:
        raise DataError(
            f"only {n} calibration image(s); at least {config.min_images} are needed",
            f"Add images (about {config.advised_images} are advised)",
        )


def sample(images: ImageSet, config: CalibConfig) -> ImageSet:
    """A deterministic subset of ``num_images``; warns below TensorRT's advised count."""
    n = len(images)
    check_image_count(n, config)
    take = min(n, config.num_images)
    if take < config.advised_images:
        log.warning("calibrating on %d images: TensorRT advises about %d for CNNs", take, config.advised_images)
    idx = np.sort(np.random.default_rng(config.seed).permutation(n)[:take])
    return images.subset(idx)


def _batches(images: ImageSet, spec: ModelSpec, config: CalibConfig, digest: Any) -> Callable[[], Any]:
    state = {"first": True}

    def gen():
        hashing = state["first"]
        state["first"] = False
        for x, _ in iter_batches(images, spec.preprocessing, config.batch_size):
            if hashing:
                digest.update(x.tobytes())
            yield x

    return gen


def _pick_auto(
    fp32, config: CalibConfig, holdout: Evaluator | None, progress: Progress, amax_for: Callable[[str, float], dict[str, float]],
) -> tuple[str, float, list[dict]]:
    if holdout is None:
        raise ConfigError("--method auto needs labelled held-out images to compare calibrators", "Pass --eval-data, or pick a --method")
    rows = []
    for i, (method, pct) in enumerate(config.auto_candidates):
        progress("auto: comparing calibrators", i, len(config.auto_candidates))
        amax = amax_for(method, pct or config.percentile)
        score = holdout(qdq_for_tensorrt(fp32, amax))
        rows.append({"method": method, "percentile": pct or None, **score.to_dict(), "drop_points": drop_points(holdout.fp32, score)})
    progress("auto: comparing calibrators", len(rows), len(rows))
    best = max(rows, key=lambda r: (-1.0 if r["top1"] is None else r["top1"], r["top1_agreement"], r["cosine"]))
    return best["method"], best["percentile"] or config.percentile, rows


def layer_sensitivity(
    fp32: onnx.ModelProto, amax: dict[str, float], evaluate: Evaluator, progress: Progress | None = None
) -> list[dict[str, Any]]:
    """Quantize one Conv/Gemm at a time (all others float): the accuracy effect of each alone."""
    layers = quantizable_layers(fp32)
    rows = []
    for i, layer in enumerate(layers):
        if progress:
            progress("per-layer sensitivity", i, len(layers))
        score = evaluate(qdq_for_tensorrt(fp32, amax, float_layers=set(layers) - {layer}))
        rows.append({"layer": layer, "drop_points": drop_points(evaluate.fp32, score), **score.to_dict()})
    if progress:
        progress("per-layer sensitivity", len(layers), len(layers))
    rows.sort(key=lambda r: (-(r["drop_points"] or 0.0), r["cosine"]))
    return rows


def _keep_float_until(fp32, amax, ranking, evaluate: Evaluator, max_drop: float) -> tuple[list[str], Agreement]:
    """Leave the most sensitive layers in float, one at a time, until the drop is within max_drop."""
    floats: list[str] = []
    score = evaluate(qdq_for_tensorrt(fp32, amax))
    for row in ranking:
        if (drop_points(evaluate.fp32, score) or 0.0) <= max_drop:
            break
        floats.append(row["layer"])
        score = evaluate(qdq_for_tensorrt(fp32, amax, float_layers=floats))
    return floats, score


def save_model(model: onnx.ModelProto, path: Path) -> Path:
    """``model`` written to ``path`` through a temporary file (never half-written)."""
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return path


def calibrate(
    fp32: onnx.ModelProto,
    spec: ModelSpec,
    out_dir: Path,
    *,
    images: ImageSet | None = None,
    config: CalibConfig = CalibConfig(),
    eval_test: ImageSet | None = None,
    eval_val: ImageSet | None = None,
    from_cache: CalibrationCache | None = None,
    from_scales: dict[str, float] | None = None,
    data_name: str = "",
    on_progress: Progress | None = None,
) -> CalibrationResult:
    """Calibrate the optimized FP32 model ``fp32`` and write every INT8 artifact into ``out_dir``.

    ``on_progress(task, done, total)`` is told how far each long step has got.
    """
    from rescompile.stages.calibrate.prequant import check_not_quantized  # (lazy: prequant imports this module)

    check_not_quantized(fp32)  # an already-quantized model keeps its own scales: never a second set of Q/DQ
    progress = on_progress or (lambda _task, _done, _total: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    tensors = activation_tensors(fp32)
    provenance: dict[str, Any] = {"rescompile_version": __version__, "preprocessing": spec.preprocessing.to_dict()}
    candidates: list[dict] = []
    stats: dict[str, TensorStats] = {}
    # The held-out split is read by --method auto, the sensitivity analysis and the safety net (which
    # then judges on it rather than on the test split it reports): its FP32 logits are not computed otherwise.
    uses_holdout = config.method == CalibMethod.auto or config.sensitivity or config.max_accuracy_drop is not None or config.fallback
    holdout = Evaluator(fp32, eval_val, spec.preprocessing) if uses_holdout and eval_val is not None and len(eval_val) else None
    if from_cache is not None or from_scales is not None:
        if from_cache is not None:
            for warning in check_cache_for(from_cache, trt_version=None, tensor_names=tensors):
                log.warning(warning)
            amax = {t: from_cache.amax(t) for t in tensors if t in from_cache.scales}
            method, pct, what = f"cache:{from_cache.algorithm}", None, "cache"
            provenance.update({"source": "calibration cache", "cache_version": from_cache.version})
        else:
            known = set(tensors)
            unknown = [t for t in from_scales if t not in known]
            if unknown:
                raise DataError(
                    f"{len(unknown)} tensor(s) in the scales file are not in the model, e.g. {unknown[0]!r}",
                    "The scales belong to another model or another export of it: calibrate again",
                )
            amax = {t: from_scales[t] for t in tensors if t in from_scales}
            method, pct, what = "scales.json", None, "scales file"
            provenance.update({"source": "scales.json"})
        missing = [t for t in required_tensors(fp32) if t not in amax]
        if missing:
            raise DataError(
                f"the {what} has no scale for {len(missing)} tensor(s) the INT8 model needs, e.g. {missing[0]!r}",
                f"Use a {what} written for this model",
            )
    else:
        if images is None:
            raise ConfigError("INT8 needs calibration data", "Pass --data (an image folder, digits, cifar10 or a .npy/.npz file)")
        chosen = sample(images, config)
        digest = hashlib.sha256()
        method = config.method.value if isinstance(config.method, CalibMethod) else str(config.method)
        passes = 1 if method == "max" else 2
        seen = [0]

        def tick(_pass: int, n: int) -> None:
            seen[0] += n
            progress("statistics", seen[0], passes * len(chosen))

        stats = collect_statistics(fp32, _batches(chosen, spec, config, digest), tensors, histograms=method != "max", on_batch=tick)
        full_range = input_range(fp32, spec)
        computed: dict[tuple[str, float], dict[str, float]] = {}

        def amax_for(m: str, p: float) -> dict[str, float]:  # each calibrator's scales, computed once
            key = (m, float(p) if m == "percentile" else 0.0)
            if key not in computed:
                computed[key] = compute_amax(stats, m, p, full_range=full_range)
            return computed[key]

        histograms = method != "max"
        pct = config.percentile
        if method == "auto":
            method, pct, candidates = _pick_auto(fp32, config, holdout, progress, amax_for)
        amax = amax_for(method, pct)
        pct = pct if method == "percentile" else None

    evaluate = Evaluator(fp32, eval_test, spec.preprocessing) if eval_test is not None and len(eval_test) else None
    ranking: list[dict] = []
    float_layers: list[str] = []
    safety: dict[str, Any] = {"checked": False}
    if stats and config.fallback:
        judge = holdout or evaluate or Evaluator(fp32, chosen.subset(np.arange(min(256, len(chosen)))), spec.preprocessing)
        verdict = safety_net(fp32, Verdict(method, pct, amax), judge, config,
                             amax_for if histograms and not candidates else None, progress, stats)
        method, pct, amax, float_layers = verdict.method, verdict.percentile, verdict.amax, verdict.float_layers
        safety = {"checked": True, "judged_on": _judged_on(judge, holdout, evaluate), "changed": verdict.note is not None,
                  "note": verdict.note, "candidates": verdict.rows}
    if stats:
        provenance.update({"source": data_name, "images": len(chosen), "data_sha256": digest.hexdigest(), "method": method, "percentile": pct})
    report = tensor_report(stats, amax, full_range, amax_for if histograms else None) if stats else []
    if config.sensitivity or config.max_accuracy_drop is not None:
        judge = holdout or evaluate
        if judge is None:
            raise ConfigError("sensitivity analysis needs labelled evaluation images", "Pass --eval-data")
        ranking = layer_sensitivity(fp32, amax, judge, progress)
    if config.max_accuracy_drop is not None:
        float_layers, _ = _keep_float_until(fp32, amax, ranking, evaluate or holdout, config.max_accuracy_drop)

    qdq = qdq_for_tensorrt(fp32, amax, float_layers)
    reduce_range = (not has_vnni()) if config.reduce_range is None else config.reduce_range
    tmin = {t: s.min for t, s in stats.items()} if stats else {}
    cpu = qdq_for_cpu(fp32, amax, tmin, reduce_range=reduce_range, float_layers=float_layers)
    lint = lint_qdq(qdq, float_layers=float_layers)

    pixels = pixel_input_model(cpu, fp32, spec.preprocessing, reduce_range=reduce_range)
    openvino: onnx.ModelProto | None = qdq_for_openvino(fp32, amax, tmin, float_layers, reduce_range=reduce_range)
    accuracy: dict[str, Any] = {"evaluated": evaluate is not None}
    if evaluate is not None:
        progress("accuracy check", 0, 4)
        trt_ref = evaluate(qdq, reference=True)
        progress("accuracy check", 1, 4)
        cpu_score = evaluate(cpu, reference=False)
        progress("accuracy check", 2, 4)
        pix_score = evaluate.pixels(pixels.model) if pixels.model is not None else None
        progress("accuracy check", 3, 4)
        openvino, accuracy["int8_openvino"] = _check_openvino(openvino, evaluate, cpu_score)
        progress("accuracy check", 4, 4)
        accuracy.update({
            "images": evaluate.fp32.images,
            "fp32": evaluate.fp32.to_dict(),
            "int8_tensorrt_reference": {**trt_ref.to_dict(), "drop_points": drop_points(evaluate.fp32, trt_ref)},
            "int8_cpu_onnxruntime": {**cpu_score.to_dict(), "drop_points": drop_points(evaluate.fp32, cpu_score)},
            "note": "TensorRT Q/DQ model under reference Q/DQ semantics (ONNX Runtime, optimizations off); "
            "CPU artifact as deployed (ONNX Runtime, optimizations on)",
        })
        if pix_score is not None:
            accuracy["int8_cpu_pixels_onnxruntime"] = {**pix_score.to_dict(), "drop_points": drop_points(evaluate.fp32, pix_score)}
            slack = max(PIXELS_AGREEMENT_SLACK, 1.0 / max(pix_score.images, 1))
            if pix_score.top1_agreement < cpu_score.top1_agreement - slack - 1e-9:
                pixels = replace(pixels, model=None, reason=f"it agrees with FP32 on {pix_score.top1_agreement:.2%} of the images, "
                                 f"the float-input CPU artifact on {cpu_score.top1_agreement:.2%}")
        elif pixels.model is not None:  # what was checked cannot check it: not written unchecked
            pixels = replace(pixels, model=None, reason="the evaluation data are model-ready tensors, not images, so it could not be checked")
    if pixels.model is None:
        log.info("no pixel-input CPU artifact: %s", pixels.reason)
    accuracy["cpu_pixels"] = {"written": pixels.model is not None, "reason": pixels.reason or None,
                              "zero_point": pixels.zero_point, "border_offset": pixels.border_offset}
    algorithm = config.cache_algorithm or ("MinMaxCalibration" if method == "max" else "EntropyCalibration2")
    cache_path = write_cache(out_dir / CACHE, {t: a / 127.0 for t, a in amax.items()}, version=config.trt_version, algorithm=algorithm)
    scales_doc = {
        "format": "rescompile.scales",
        "format_version": 1,
        "provenance": provenance,
        "cpu_reduce_range": reduce_range,
        "float_layers": float_layers,
        "tensors": {
            t: {"amax": a, "scale": a / 127.0, **({"min": stats[t].min, "max": stats[t].max} if t in stats else {})}
            for t, a in amax.items()
        },
    }
    result = CalibrationResult(
        save_model(qdq, out_dir / QDQ_ONNX), save_model(cpu, out_dir / CPU_ONNX), cache_path,
        write_json_atomic(out_dir / SCALES, scales_doc), out_dir / ACCURACY,
        method, pct, int(provenance.get("images", 0)), amax, accuracy, candidates, ranking, float_layers, lint.to_dict(),
        config.trt_version, provenance, safety, report,
        pixels_path=save_model(pixels.model, out_dir / CPU_PIXELS_ONNX) if pixels.model is not None else None,
        openvino_path=save_model(openvino, out_dir / OPENVINO_ONNX) if openvino is not None else None,
    )
    write_json_atomic(result.accuracy_path, {"method": method, "percentile": pct, "accuracy": accuracy, "auto_candidates": candidates,
                                             "sensitivity": ranking, "float_layers": float_layers, "lint": result.lint,
                                             "safety_net": safety, "tensors": report})
    return result


def _check_openvino(model: onnx.ModelProto, evaluate: Evaluator, cpu_score: Agreement) -> tuple[onnx.ModelProto | None, dict[str, Any]]:
    """The OpenVINO form judged as deployed (on OpenVINO; on ONNX Runtime when OpenVINO is not
    installed, which runs the same Q/DQ arithmetic), and kept only when it agrees with FP32 as well
    as the CPU artifact does, within one image."""
    score, runtime = evaluate.openvino(model), "openvino"
    if score is None:
        score, runtime = evaluate(model, reference=False), "onnxruntime (OpenVINO not installed at build)"
    row: dict[str, Any] = {**score.to_dict(), "drop_points": drop_points(evaluate.fp32, score), "runtime": runtime, "written": True}
    slack = 1.0 / max(score.images, 1)
    if score.top1_agreement < cpu_score.top1_agreement - slack - 1e-9:
        row.update(written=False, reason=f"it agrees with FP32 on {score.top1_agreement:.2%} of the images, "
                   f"the CPU artifact on {cpu_score.top1_agreement:.2%}")
        log.warning("no OpenVINO INT8 model: %s", row["reason"])
        return None, row
    return model, row

