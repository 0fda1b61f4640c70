"""Models that arrive already quantized: QuantizeLinear/DequantizeLinear (QDQ format) from QAT,
NVIDIA ModelOpt, ONNX Runtime's ``quantize_static``, NNCF, or a rescompile Q/DQ model fed back.

Calibrating such a model again would stack a second set of Q/DQ on the first, so ``build`` uses
its scales as they are: ``strip_qdq`` (strip.py) gives the float graph the bundle's FP32 copies
hold and the scales keyed by the float tensors they quantize, and every artifact is written from
those scales: the TensorRT Q/DQ model (the model as given when the lint finds nothing, else
re-placed by ``qdq_for_tensorrt`` with the given activation scales and int8 weights, bit for
bit), the calibration cache, scales.json and the uint8 CPU model (``qdq_for_cpu``).

TensorRT takes only symmetric int8 with zero point 0 (developer guide, "Explicit Quantization").
uint8 with zero point 128 is the same grid (exact). Any other zero point (ONNX Runtime's default
asymmetric activations, NNCF's unsigned post-ReLU tensors) has no int8 equivalent: its amax is the
range the given grid covers, which coarsens the step, and a warning says so.
"""

from __future__ import annotations

import logging
import zipfile
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from rescompile import __version__
from rescompile._io import write_json_atomic
from rescompile.config import CalibConfig, DataConfig
from rescompile.errors import ConfigError, ModelError
from rescompile.models.intake import refuse_qoperator
from rescompile.models.spec import ModelSpec
from rescompile.stages.calibrate.accuracy import Evaluator, drop_points
from rescompile.stages.calibrate.cache import write_cache
from rescompile.stages.calibrate.collect import activation_tensors
from rescompile.stages.calibrate.inputs import Int8Inputs, evaluation_images
from rescompile.stages.calibrate.lint import LintReport, lint_qdq
from rescompile.stages.calibrate.qdq import VALUE_PRESERVING, has_vnni, qdq_for_cpu, qdq_for_tensorrt
from rescompile.stages.calibrate.strip import ActivationScale, Stripped, WeightQuant, dequantize, strip_qdq
from rescompile.stages.calibrate.stage import ACCURACY, CACHE, CPU_ONNX, QDQ_ONNX, SCALES, CalibrationResult, save_model
from rescompile.stages.optimize.graph import Graph
from rescompile.stages.optimize.residual import find_residual_blocks

log = logging.getLogger(__name__)

METHOD = "prequantized"
# producer_name (lower case) -> the quantizer that writes it; exporters (pytorch, tf2onnx) name no quantizer.
TOOLS = (("onnx.quantize", "ONNX Runtime quantization"), ("modelopt", "NVIDIA ModelOpt"), ("nncf", "NNCF"),
         ("neural_compressor", "Intel Neural Compressor"), ("vai_q_onnx", "AMD Vitis AI quantizer"))


@dataclass(frozen=True)
class QuantizedSource:
    """What a Q/DQ file says about itself."""

    path: str
    quantize_nodes: int
    dequantize_nodes: int
    producer: str  # producer_name and version as the file records them
    tool: str | None  # the quantizer, where the producer_name names one

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def inspect_quantization(model: onnx.ModelProto, path: Path | str = "model") -> QuantizedSource | None:
    """The quantization ``model`` already holds; None for a float model. QOperator models are refused."""
    ops = Counter(n.op_type for n in model.graph.node)
    refuse_qoperator(model, path)
    q, dq = ops["QuantizeLinear"], ops["DequantizeLinear"]
    if not q and not dq:
        return None
    if not q:
        raise ModelError(f"{path} has {dq} DequantizeLinear node(s) but no QuantizeLinear: only its weights are quantized, "
                         "so it has no activation scales to use", "Give the FP32 model and calibrate it, or quantize activations too")
    producer = " ".join(x for x in (model.producer_name, model.producer_version) if x)
    tool = next((name for key, name in TOOLS if key in model.producer_name.lower()), None)
    return QuantizedSource(str(path), q, dq, producer, tool)


def quantized_source(source: str | Path | None) -> QuantizedSource | None:
    """``inspect_quantization`` of the ONNX file ``source``; None when it is no ONNX file (a name, a checkpoint)."""
    path = Path(source) if source is not None else None
    if path is None or not path.is_file() or path.stat().st_size >= 2 << 30:
        return None
    with open(path, "rb") as fh:
        first = fh.read(1)
    if path.suffix.lower() != ".onnx" and (first != b"\x08" or zipfile.is_zipfile(path)):
        return None
    try:
        head = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001  not readable as ONNX: load_model says what it is
        return None
    return inspect_quantization(head, source)


def refuse_quantized(source: str | Path | None) -> None:
    """`calibrate` on an already-quantized model: refused, saying what to run instead."""
    found = quantized_source(source)
    if found is not None:
        raise ModelError(f"{source} is already quantized ({found.quantize_nodes} QuantizeLinear nodes): calibrating it "
                         "again would stack a second set of Q/DQ on its own",
                         f"Run `rescompile build {source}` to use its scales, or calibrate the FP32 model it came from")


def check_not_quantized(model: onnx.ModelProto) -> None:
    """The same refusal for the library's calibrate(), which gets the model itself."""
    q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    if q:
        raise ModelError(f"the model is already quantized ({q} QuantizeLinear nodes): calibrating it again would stack a second "
                         "set of Q/DQ", "Build it with rescompile.build (its scales are used), or calibrate the FP32 model")


@dataclass
class Prequantized:
    """An already-quantized source, read: as intake normalised it, stripped, and the FP32 model to judge it by."""

    source: QuantizedSource
    given: onnx.ModelProto
    stripped: Stripped
    reference: onnx.ModelProto | None = None
    reference_path: Path | None = None

    @property
    def notes(self) -> list[str]:
        by = f" by {self.source.tool}" if self.source.tool else ""
        return [f"the model is already quantized{by} ({self.source.quantize_nodes} QuantizeLinear nodes): the FP32 copies are its "
                "Q/DQ-stripped graph, and INT8 uses its own scales (no calibration)", *self.stripped.notes]


def prequantized_model(model: Any) -> Prequantized | None:
    """The pipeline's intake of an already-quantized ONNX source (a LoadedModel); None for float models."""
    if model.kind != "onnx" or model.onnx_path is None:
        return None
    found = quantized_source(model.onnx_path)
    if found is None:
        return None
    from rescompile.models.onnx_model import read_onnx

    given, _ = read_onnx(model.onnx_path)
    return Prequantized(found, given, strip_qdq(given, model.onnx_path))


def prequantized_inputs(
    pq: Prequantized, spec: ModelSpec, calib_data: DataConfig | None, eval_data: DataConfig | None, fp32_reference: Path | None,
) -> tuple[Int8Inputs, Prequantized]:
    """Evaluation images (and the --fp32-reference model), loaded and checked before anything is written."""
    from rescompile.models.onnx_model import check_classifier, read_onnx

    if calib_data is not None:
        log.warning("the model is already quantized: --calib-data is not used, its own scales are")
    val, test = evaluation_images(spec, eval_data, calib_data)
    if fp32_reference is not None:
        if test is None:
            raise ConfigError("--fp32-reference compares accuracy on labelled images, and there are none", "Pass --eval-data")
        if quantized_source(fp32_reference) is not None:
            raise ConfigError(f"--fp32-reference {fp32_reference} is itself quantized", "Pass the float model the quantized one came from")
        ref, _ = read_onnx(Path(fp32_reference))
        classes = check_classifier(ref, fp32_reference)[1]
        if len(classes) == 2 and isinstance(classes[1], int) and classes[1] != spec.num_classes:
            raise ConfigError(f"--fp32-reference {fp32_reference} has {classes[1]} classes, the quantized model {spec.num_classes}",
                              "Pass the float model the quantized one came from")
        pq = replace(pq, reference=ref, reference_path=Path(fp32_reference))
    notes = [] if test is None else [f"evaluation data: {test.describe()} (held-out split{', labelled' if test.labels is not None else ''})"]
    return Int8Inputs(None, "", val, test, notes=notes), pq


def write_fp32(pq: Prequantized, fp32_path: Path, optimized_path: Path, stage: Any = lambda _name: None):
    """The bundle's FP32 copies: the Q/DQ-stripped graph, then the optimize stage on it."""
    from rescompile.stages.optimize import optimize_onnx

    save_model(pq.stripped.model, fp32_path)
    stage("optimize")
    return optimize_onnx(fp32_path, optimized_path)


# -- the artifacts --------------------------------------------------------------------------------
def _shared_scales(fp32: onnx.ModelProto, amax: dict[str, float]) -> dict[str, str]:
    """Outputs of Flatten, Reshape, MaxPool, ... hold their input's values: the same scale fits (output -> input)."""
    shared: dict[str, str] = {}
    for n in fp32.graph.node:
        if n.op_type in VALUE_PRESERVING and n.input and n.input[0] in amax and n.output[0] not in amax:
            amax[n.output[0]] = amax[n.input[0]]
            shared[n.output[0]] = n.input[0]
    return shared


def placement_by_block(model: onnx.ModelProto, report: LintReport) -> list[dict[str, Any]]:
    """The lint's residual findings, one row per residual block of ``model``."""
    g = Graph(model)
    adds = {n.output[0]: n for n in g.g.node if n.op_type == "Add"}
    rows = []
    for block in find_residual_blocks(g):
        add = adds.get(block.add)
        node = (add.name or add.output[0]) if add is not None else block.add
        found = [{"rule": v.rule, "message": v.message} for v in report.violations if v.node == node and v.rule.startswith("residual")]
        rows.append({"block": block.name, "add": node, "suits_tensorrt": not found, "findings": found})
    return rows


def _replace_init(g: Graph, name: str, value: np.ndarray) -> None:
    t = next(t for t in g.g.initializer if t.name == name)
    t.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(value) if value.ndim else value, name))


def _use_given_weights(qdq: Graph, fp32: Graph, weights: dict[str, WeightQuant]) -> list[str]:
    """Put the given int8 weights and scales, bit for bit, where qdq_for_tensorrt quantized the float ones;
    returns the layers whose weights had to be quantized here instead."""
    float_weight = {n.output[0]: n.input[1] for n in fp32.g.node if n.op_type in ("Conv", "Gemm")}
    producers, requantized = qdq.producers(), []
    for node in qdq.g.node:
        dq = producers.get(node.input[1]) if node.op_type in ("Conv", "Gemm") else None
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        name = float_weight[node.output[0]]
        given, w = weights.get(name), fp32.const(name)
        if given is None or not given.tensorrt_ready or w is None or not np.array_equal(dequantize(given), w):
            requantized.append(node.name or node.output[0])
            continue
        _replace_init(qdq, dq.input[0], given.values)
        _replace_init(qdq, dq.input[1], given.scale.reshape(-1) if given.axis is not None else given.scale.reshape(()))
        _replace_init(qdq, dq.input[2], np.zeros(given.scale.size if given.axis is not None else (), np.int8))
        for a in [a for a in dq.attribute if a.name == "axis"]:
            dq.attribute.remove(a)
        if given.axis is not None:
            dq.attribute.append(helper.make_attribute("axis", given.axis))
    return requantized


def _replaced(fp32: onnx.ModelProto, amax: dict[str, float], float_layers: list[str], weights) -> tuple[onnx.ModelProto, list[str]]:
    """The TensorRT Q/DQ model re-placed: the given scales where TensorRT wants Q/DQ; a skip the given
    model leaves unquantized stays so (it had no scale to use)."""
    unscaled = {b.skip_input for b in find_residual_blocks(Graph(fp32)) if b.skip_input not in amax}
    g = Graph(qdq_for_tensorrt(fp32, {**amax, **dict.fromkeys(unscaled, 1.0)}, float_layers))
    producers = g.producers()
    for node in g.g.node:
        for i, x in enumerate(node.input):
            dq = producers.get(x)
            q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is not None and q.op_type == "QuantizeLinear" and q.input[0] in unscaled:
                node.input[i] = q.input[0]
    requantized = _use_given_weights(g, Graph(fp32), weights)
    g.cleanup()
    return g.model, requantized


def _kind(a: ActivationScale) -> str:
    if a.per_channel:
        return f"{a.dtype} per channel"
    return f"{a.dtype} with zero point {a.zero_point} (unsigned range)" if a.nonnegative else f"{a.dtype} asymmetric"


def _inexact_line(inexact: dict[str, ActivationScale]) -> str:
    kinds = Counter(_kind(a) for a in inexact.values())
    what = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    return (f"{len(inexact)} activation scale(s) are not symmetric int8 ({what}); TensorRT supports only symmetric int8 with zero "
            "point 0, so their amax is the range the given grid covers (a coarser step than given): quantize activations as "
            "symmetric int8 (ONNX Runtime: extra_options={'ActivationSymmetric': True}) to keep them exact")


def _placement_line(rows: list[dict[str, Any]], replaced: bool) -> str | None:
    bad = [r for r in rows if not r["suits_tensorrt"]]
    if not bad:
        return None
    rules = Counter(f["rule"] for r in bad for f in r["findings"])
    what = {"residual-branch": "Q/DQ between the branch's last Conv and the Add", "residual-skip": "no Q/DQ on the skip input"}
    detail = "; ".join(f"{what.get(k, k)} in {n}" for k, n in rules.items())
    fix = "the TensorRT Q/DQ model is re-placed with the same scales" if replaced else "kept as given"
    return f"the given Q/DQ placement does not suit TensorRT in {len(bad)} of {len(rows)} residual block(s) ({detail}): {fix}"


def _accuracy(pq, fp32, qdq, cpu, spec, eval_test, progress) -> dict[str, Any]:
    if eval_test is None or not len(eval_test):
        return {"evaluated": False}
    reference = pq.reference if pq.reference is not None else fp32
    progress("accuracy check", 0, 3)
    evaluate = Evaluator(reference, eval_test, spec.preprocessing)
    given = evaluate(pq.given, reference=True)
    progress("accuracy check", 1, 3)
    trt = given if qdq is pq.given else evaluate(qdq, reference=True)
    progress("accuracy check", 2, 3)
    cpu_score = evaluate(cpu, reference=False)
    progress("accuracy check", 3, 3)
    row = lambda s: {**s.to_dict(), "drop_points": drop_points(evaluate.fp32, s)}  # noqa: E731
    if pq.reference is not None:
        source = f"--fp32-reference {pq.reference_path.name}: the drops include the original quantization's loss"
    else:
        source = ("the model's own Q/DQ-stripped graph (no --fp32-reference): this measures nothing about the original "
                  "quantization's loss, only what the artifacts here add to it; pass --fp32-reference MODEL.onnx to measure it")
    return {"evaluated": True, "images": evaluate.fp32.images, "fp32": evaluate.fp32.to_dict(), "fp32_reference": source,
            "int8_given_reference": row(given), "int8_tensorrt_reference": row(trt), "int8_cpu_onnxruntime": row(cpu_score),
            "note": "the given Q/DQ model and the TensorRT Q/DQ model under reference Q/DQ semantics (ONNX Runtime, optimizations "
                    "off); CPU artifact as deployed (ONNX Runtime, optimizations on)"}


def calibrate_prequantized(
    pq: Prequantized, fp32_path: Path, spec: ModelSpec, out_dir: Path, config: CalibConfig = CalibConfig(),
    eval_test: Any = None, on_progress: Any = None,
) -> CalibrationResult:
    """Every INT8 artifact of an already-quantized model from its own scales (nothing is calibrated)."""
    progress = on_progress or (lambda _task, _done, _total: None)
    fp32 = onnx.load(str(fp32_path))
    known = set(activation_tensors(fp32))
    given = {t: a for t, a in pq.stripped.activations.items() if t in known}
    warnings = [f"{len(lost)} scale(s) belong to tensors the optimized FP32 graph no longer has, e.g. {lost[0]!r}: not used"
                for lost in [sorted(set(pq.stripped.activations) - known)] if lost]
    inexact = {t: a for t, a in given.items() if not a.exact}
    if inexact:
        warnings.append(_inexact_line(inexact))
    amax = {t: a.amax for t, a in given.items()}
    shared = _shared_scales(fp32, amax)
    float_layers = [n.name or n.output[0] for n in fp32.graph.node if n.op_type in ("Conv", "Gemm") and n.input[0] not in amax]
    if float_layers:
        warnings.append(f"{len(float_layers)} Conv/Gemm layer(s) have no scale on their input in the given model, so they stay in "
                        f"floating point, as there: {', '.join(float_layers[:3])}{', ...' if len(float_layers) > 3 else ''}")
    given_lint = lint_qdq(pq.given)
    placement = placement_by_block(pq.given, given_lint)
    requantized: list[str] = []
    if given_lint.passed:
        qdq, how = pq.given, "as given: its Q/DQ placement and types already suit TensorRT"
    else:
        qdq, requantized = _replaced(fp32, amax, float_layers, pq.stripped.weights)
        how = (f"re-placed with the given scales and int8 weights ({len(given_lint.violations)} lint finding(s) in the given model: "
               f"{', '.join(f'{k} {n}' for k, n in given_lint.counts().items())})")
    line = _placement_line(placement, qdq is not pq.given)
    warnings += [line] if line else []
    if requantized:
        warnings.append(f"{len(requantized)} layer(s) had no int8 zero-point-0 weights to keep (float, uint8 or asymmetric in the "
                        f"given model): quantized per channel here, e.g. {requantized[0]}")
    for w in warnings:
        log.warning("%s", w)
    lint = lint_qdq(qdq, float_layers=float_layers)
    reduce_range = (not has_vnni()) if config.reduce_range is None else config.reduce_range
    tmin = {t: 0.0 for t, a in given.items() if a.nonnegative}
    cpu = qdq_for_cpu(fp32, amax, tmin, reduce_range=reduce_range, float_layers=float_layers)
    accuracy = _accuracy(pq, fp32, qdq, cpu, spec, eval_test, progress)

    provenance = {"rescompile_version": __version__, "preprocessing": spec.preprocessing.to_dict(), "source": METHOD,
                  "method": METHOD, "model": pq.source.path, "producer": pq.source.producer, "tool": pq.source.tool,
                  "quantize_nodes": pq.source.quantize_nodes, "dequantize_nodes": pq.source.dequantize_nodes}
    info = {"tool": pq.source.tool, "producer": pq.source.producer, "qdq_model": how, "kept_as_given": qdq is pq.given,
            "placement": placement, "given_lint": given_lint.to_dict(), "warnings": warnings, "relus_restored": pq.stripped.relus,
            "inexact_scales": sorted(inexact), "requantized_weights": requantized, "notes": pq.stripped.notes}
    cache_path = write_cache(out_dir / CACHE, {t: a / 127.0 for t, a in amax.items()}, version=config.trt_version,
                             algorithm=config.cache_algorithm or "EntropyCalibration2")
    scales_doc = {
        "format": "rescompile.scales", "format_version": 1, "provenance": provenance, "cpu_reduce_range": reduce_range,
        "float_layers": float_layers,
        "tensors": {t: {"amax": a, "scale": a / 127.0,
                        **({"given": {"scale": given[t].scale, "zero_point": given[t].zero_point, "dtype": given[t].dtype,
                                      "exact": given[t].exact}} if t in given else {"shared_from": shared.get(t)})}
                    for t, a in amax.items()},
        "weights": {w: {"axis": q.axis, "dtype": q.values.dtype.name, "scale": q.scale.reshape(-1).tolist()}
                    for w, q in pq.stripped.weights.items() if q.values.dtype.name != "int32"},
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    result = CalibrationResult(
        save_model(qdq, out_dir / QDQ_ONNX), save_model(cpu, out_dir / CPU_ONNX), cache_path, write_json_atomic(out_dir / SCALES, scales_doc),
        out_dir / ACCURACY, METHOD, None, 0, amax, accuracy, float_layers=float_layers, lint=lint.to_dict(),
        cache_version=config.trt_version, provenance=provenance, safety={"checked": False}, prequantized=info,
    )
    write_json_atomic(result.accuracy_path, {"method": METHOD, "percentile": None, "accuracy": accuracy, "auto_candidates": [],
                                             "sensitivity": [], "float_layers": float_layers, "lint": result.lint,
                                             "prequantized": info, "safety_net": result.safety, "tensors": []})
    return result
