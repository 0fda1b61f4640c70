"""ONNX intake: every ONNX file from elsewhere passes through here once, before any stage reads it.

Exporters differ in ways that do not change what a model computes: Caffe2 and early PyTorch list
weights as graph inputs (IR < 4), old files declare a batch of -1 and leave output shapes out,
opsets below 13 lack per-channel DequantizeLinear, Caffe2 writes residual adds as ``Sum``, Keras
(tf2onnx) models take NHWC and transpose inside, and heads come as Reshape -> MatMul -> Add.
``normalize_onnx`` rewrites those into one canonical form with ONNX's own tools (the version
converter, shape inference), says in one line each what it changed, and refuses, in one line,
what rescompile cannot take (several inputs or outputs, non-float input, no Conv). Half-precision
graphs (float16, bfloat16) become float32, and preprocessing written into the graph (Keras
Rescaling/Normalization) is found and reported (``rescompile.models.graph_input``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from rescompile.errors import ModelError
from rescompile.models.graph_input import (  # noqa: F401  (graph_inputs, input_layout: re-exported, used across stages)
    FLOAT_INPUTS, NCHW_FROM_NHWC, InputChain, float32_graph, graph_inputs, input_chain, input_layout,
)

log = logging.getLogger(__name__)

# Per-channel DequantizeLinear (axis) needs opset 13. TensorRT 10's ONNX parser (JetPack 6) reads
# opsets 9-20 (TensorRT 11: up to 25), and ONNX Runtime 1.17 up to 20: newer files are brought to 20.
MIN_OPSET = 13
MAX_OPSET = 20
MAX_IR = 9  # the IR version of opset 20 (ONNX 1.15); exporters write 10 with it, which ONNX Runtime 1.17 refuses


@dataclass
class IntakeReport:
    """What intake found and changed in one ONNX file."""

    opset_before: int
    opset_after: int
    layout: str = "nchw"  # of the graph input as declared: "nhwc" for Keras/tf2onnx models
    softmax_output: bool = False  # the output is already probabilities (a Softmax ends the graph)
    notes: list[str] = field(default_factory=list)
    input_dtype: str = "float32"  # of the source's input; every stage runs the float32 conversion of other float types
    input_preprocessing: dict[str, Any] | None = None  # what the graph computes from its input before its first conv

    def to_dict(self) -> dict[str, Any]:
        return {"opset_before": self.opset_before, "opset_after": self.opset_after, "layout": self.layout,
                "softmax_output": self.softmax_output, "input_dtype": self.input_dtype,
                "input_preprocessing": self.input_preprocessing, "notes": list(self.notes)}


def _refuse(path: Path | str, why: str) -> ModelError:
    return ModelError(
        f"{path} is not a ResNet-like image classifier: {why}",
        "rescompile takes CNN classifiers with one float image input (NCHW, or NHWC with a Transpose) and one logits output",
    )


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _drop_initializer_inputs(model: onnx.ModelProto) -> int:
    """IR < 4 files list every weight as a graph input too: those are constants, not inputs."""
    init = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in init]
    dropped = len(model.graph.input) - len(keep)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)  # IR 4 is where initializers stopped having to be inputs
    return dropped


def check_structure(model: onnx.ModelProto, path: Path | str) -> None:
    """A damaged or cut-off file often still parses: names that are not text, a node reading a
    tensor nothing produces, an output nothing computes. Say so here, in one line, instead of
    letting ONNX Runtime or a pass trip over it later."""
    g = model.graph
    damaged = "Copy the file again or re-export it: it is damaged or incomplete"
    names = [*(i.name for i in g.input), *(o.name for o in g.output), *(t.name for t in g.initializer)]
    names += [x for n in g.node for x in (*n.input, *n.output, n.op_type, n.name, n.domain)]
    if any(not isinstance(x, str) for x in names):
        raise ModelError(f"{path} holds names that are not valid text", damaged)
    defined = {i.name for i in g.input} | {t.name for t in g.initializer} | {o for n in g.node for o in n.output if o}
    for n in g.node:
        if not n.op_type:
            raise ModelError(f"{path} has a node without an operator type", damaged)
        missing = next((x for x in n.input if x and x not in defined), None)
        if missing is not None and not any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in n.attribute):
            raise ModelError(f"{path}: node {(n.name or n.op_type)[:80]!r} reads {missing[:80]!r}, which nothing in the graph produces", damaged)
    lost = next((o.name for o in g.output if o.name not in defined), None)
    if lost is not None:
        raise ModelError(f"{path}: graph output {lost[:80]!r} is computed by no node", damaged)
    for t in g.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            continue
        try:
            numpy_helper.to_array(t)
        except Exception as exc:  # noqa: BLE001  onnx raises ValueError/TypeError/... for a bad tensor
            raise ModelError(f"{path}: weight {t.name[:80]!r} cannot be read ({exc.__class__.__name__})", damaged) from exc


# ONNX Runtime's QOperator format: integer kernels instead of Q/DQ pairs, nothing to read scales from.
QOPERATOR_OPS = frozenset({
    "QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearLeakyRelu", "QLinearSigmoid", "QLinearSoftmax", "QLinearReduceMean",
})


def refuse_qoperator(model: onnx.ModelProto, path: Path | str) -> None:
    """A model quantized in QOperator format has no Conv (QLinearConv instead) and no Q/DQ pairs to
    read scales from: say that, not "no Conv nodes"."""
    ops: dict[str, int] = {}
    for n in model.graph.node:
        if n.op_type in QOPERATOR_OPS:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    if ops:
        raise ModelError(f"{path} is quantized in ONNX Runtime's QOperator format ({', '.join(f'{v} {k}' for k, v in sorted(ops.items()))}), "
                         "which rescompile cannot read scales from",
                         "Quantize it in QDQ format (quantize_static(..., quant_format=QuantFormat.QDQ)), or give the FP32 model")


def check_io(model: onnx.ModelProto, path: Path | str) -> str:
    """Refuse, in one line, a graph rescompile cannot take; return its input layout."""
    inputs, outputs = graph_inputs(model), list(model.graph.output)
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs[:4])
        raise _refuse(path, f"it has {len(inputs)} inputs ({names}{', ...' if len(inputs) > 4 else ''}); expected one image batch")
    if len(outputs) != 1:
        raise _refuse(path, f"it has {len(outputs)} outputs; expected one logits tensor")
    elem = inputs[0].type.tensor_type.elem_type
    if elem not in FLOAT_INPUTS:
        kind = TensorProto.DataType.Name(elem) if elem else "untyped"
        raise _refuse(path, f"its input {inputs[0].name!r} is {kind}, not float (models that take raw uint8 need a Cast first)")
    refuse_qoperator(model, path)
    if not any(n.op_type == "Conv" for n in model.graph.node):
        raise _refuse(path, "it has no Conv nodes")
    layout = input_layout(model)
    _check_image_input(model, layout, path)
    out_dims = outputs[0].type.tensor_type.shape.dim if outputs[0].type.tensor_type.HasField("shape") else []
    if out_dims and len(out_dims) != 2:
        raise _refuse(path, f"its output has rank {len(out_dims)} (expected N x classes)")
    return layout


def _dynamic_dims(model: onnx.ModelProto, path: Path | str) -> int:
    """``dim_value`` -1 or 0 (Caffe2, old converters) means "any": make it a named dynamic dim."""
    fixed = 0
    for vi in (*model.graph.input, *model.graph.output):
        t = vi.type.tensor_type
        if not t.HasField("shape"):
            continue
        for i, d in enumerate(t.shape.dim):
            if d.HasField("dim_value") and d.dim_value < -1:
                raise ModelError(f"{path}: {vi.name!r} declares dimension {i} as {d.dim_value}",
                                 "The file is damaged: a dimension is positive, or -1/0 for dynamic; re-export it")
            if d.HasField("dim_value") and d.dim_value <= 0:
                d.Clear()
                d.dim_param = "batch" if i == 0 else f"{vi.name}_dim{i}"
                fixed += 1
    return fixed


def _strip_legacy_batchnorm(model: onnx.ModelProto) -> int:
    """BatchNormalization from opsets 6-9 carries ``spatial``, ``is_test`` and ``consumed_inputs``.
    In an inference graph they change nothing (spatial=1 is the only form exporters wrote for
    conv nets); the version converter's adapters do not all accept them, so drop them first."""
    stripped = 0
    for n in model.graph.node:
        if n.op_type != "BatchNormalization":
            continue
        legacy = [a for a in n.attribute if a.name in ("spatial", "is_test", "consumed_inputs")]
        for a in legacy:
            if a.name == "spatial" and a.i == 0:
                raise ModelError(f"BatchNormalization {n.name or n.output[0]!r} has spatial=0 (per-activation statistics)",
                                 "Re-export the model with per-channel BatchNorm (spatial=1)")
            n.attribute.remove(a)
        stripped += bool(legacy)
        if len(n.output) > 1:  # running statistics outputs of training mode: nothing reads them at inference
            del n.output[1:]
    return stripped


def _convert_opset(model: onnx.ModelProto, path: Path | str) -> onnx.ModelProto:
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:  # the converter raises RuntimeError, ValueError, IndexError...
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else exc.__class__.__name__
        raise ModelError(
            f"{path} uses opset {default_opset(model)}, and ONNX's version converter could not bring it to opset {MIN_OPSET} ({first})",
            f"Re-export the model with opset >= {MIN_OPSET} (torch.onnx.export(..., opset_version=17))",
        ) from exc
    converted.ir_version = max(converted.ir_version, 7)  # opset 13 needs IR >= 7
    return converted


def _lower_opset(model: onnx.ModelProto, path: Path | str) -> onnx.ModelProto | None:
    """The model at MAX_OPSET (a ResNet's ops mean the same there), or None when ONNX's converter cannot."""
    from onnx import version_converter

    try:
        lowered = version_converter.convert_version(model, MAX_OPSET)
        onnx.checker.check_model(lowered)
    except Exception as exc:  # the converter raises RuntimeError, ValueError, IndexError...
        log.warning("%s uses opset %d and ONNX's version converter could not bring it to %d (%s): kept as it is; "
                    "TensorRT 10 (JetPack 6) reads opsets up to %d", path, default_opset(model), MAX_OPSET,
                    exc.__class__.__name__, MAX_OPSET)
        return None
    return lowered


def _lower_ir(model: onnx.ModelProto) -> bool:
    """Set the IR version to MAX_IR when the model is still valid there (no IR 10 types or features)."""
    before = model.ir_version
    model.ir_version = MAX_IR
    try:
        onnx.checker.check_model(model)
    except Exception:  # it uses something newer: keep its own
        model.ir_version = before
        return False
    return True


def _sum_to_add(model: onnx.ModelProto) -> int:
    """``Sum`` of two tensors is ``Add`` (Caffe2's residual add); of one, an Identity."""
    rewritten = 0
    for n in model.graph.node:
        if n.op_type == "Sum" and n.domain in ("", "ai.onnx") and len(n.input) in (1, 2):
            n.op_type = "Add" if len(n.input) == 2 else "Identity"
            rewritten += 1
    return rewritten


def _const(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    return None


def _matmul_add_to_gemm(model: onnx.ModelProto) -> int:
    """A 2-D MatMul by a constant [K, N] followed by Add of a constant bias [N] is a Gemm: the op
    TensorRT and rescompile's INT8 placement treat as the classifier layer."""
    from onnx import helper

    g = model.graph
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    ranks = {vi.name: len(vi.type.tensor_type.shape.dim) for vi in (*g.value_info, *g.input, *g.output)
             if vi.type.tensor_type.HasField("shape")}
    graph_outputs = {o.name for o in g.output}
    rewritten = 0
    for mm in list(g.node):
        if mm.op_type != "MatMul" or ranks.get(mm.input[0]) != 2:
            continue
        w = _const(model, mm.input[1])
        users = consumers.get(mm.output[0], [])
        if w is None or w.ndim != 2 or len(users) != 1 or users[0].op_type != "Add" or mm.output[0] in graph_outputs:
            continue
        add = users[0]
        other = add.input[1] if add.input[0] == mm.output[0] else add.input[0]
        b = _const(model, other)
        if b is None or b.size != w.shape[1] or b.ndim > 2 or (b.ndim == 2 and b.shape[0] != 1):
            continue
        bias_name = f"{other}__gemm_bias"
        g.initializer.append(numpy_helper.from_array(b.reshape(-1).astype(w.dtype), bias_name))
        gemm = helper.make_node("Gemm", [mm.input[0], mm.input[1], bias_name], [add.output[0]], name=(mm.name or add.name or "head") + "_gemm")
        index = list(g.node).index(mm)
        g.node.remove(mm)
        g.node.remove(add)
        g.node.insert(index, gemm)
        rewritten += 1
    return rewritten


def _check_image_input(model: onnx.ModelProto, layout: str, path: Path | str) -> None:
    dims = graph_inputs(model)[0].type.tensor_type.shape.dim
    if len(dims) != 4:
        raise _refuse(path, f"its input has rank {len(dims)} (expected a batch of images, N x C x H x W or N x H x W x C)")
    channels = dims[3] if layout == "nhwc" else dims[1]
    if channels.HasField("dim_value") and channels.dim_value not in (1, 3):
        where = "last" if layout == "nhwc" else "second"
        raise _refuse(path, f"its input has {channels.dim_value} channels in the {where} axis (expected 1 or 3)")


def ends_in_softmax(model: onnx.ModelProto) -> bool:
    out = model.graph.output[0].name
    return any(n.op_type == "Softmax" and out in n.output for n in model.graph.node)


def _fill_output_shape(model: onnx.ModelProto) -> onnx.ModelProto:
    """Outputs declared without a shape get the one shape inference finds."""
    out = model.graph.output[0]
    if out.type.tensor_type.HasField("shape") and len(out.type.tensor_type.shape.dim):
        return model
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # inference is a convenience here, never a reason to refuse
        return model
    found = next((vi for vi in (*inferred.graph.value_info, *inferred.graph.output)
                  if vi.name == out.name and vi.type.tensor_type.HasField("shape") and len(vi.type.tensor_type.shape.dim)), None)
    if found is not None:
        out.type.CopyFrom(found.type)
    return model


def _to_float32(model: onnx.ModelProto, report: IntakeReport, path: Path | str) -> None:
    """float16 (``model.half()``), bfloat16 and float64 graphs become float32: calibration, evaluation and
    every FP32 file of the bundle run in float32, and ONNX Runtime's CPU kernels have no bfloat16 Conv."""
    report.input_dtype = FLOAT_INPUTS[graph_inputs(model)[0].type.tensor_type.elem_type]
    try:
        converted = float32_graph(model.graph)
    except Exception as exc:  # noqa: BLE001  onnx raises ValueError/TypeError/... for a tensor whose bytes do not decode
        raise ModelError(f"{path}: a float16/bfloat16/float64 weight cannot be read ({exc.__class__.__name__})",
                         "Copy the file again or re-export it: it is damaged or incomplete") from exc
    if report.input_dtype != "float32":
        report.notes.append(
            f"input and {converted} weight(s) in {report.input_dtype} converted to float32: every stage runs the float32 model"
            + (" (ONNX Runtime's CPU kernels have no bfloat16 Conv)" if report.input_dtype == "bfloat16" else "")
        )
    elif converted:
        report.notes.append(f"{converted} half-precision weight(s) and their Casts converted to float32")


def _note_input_chain(chain: InputChain, report: IntakeReport) -> None:
    """Say what the graph does to its input before its first conv: a Transpose from NHWC, preprocessing."""
    before = [op for op in chain.ops if op != "Transpose"]
    if report.layout == "nhwc":
        after = f", after {', '.join(before)}" if before and chain.ops.index("Transpose") > 0 else ""
        report.notes.append(f"input is NHWC (a Transpose to NCHW follows it{after}): data is fed in NHWC")
    if chain.normalises:
        report.input_preprocessing = chain.to_dict()
        takes = "raw 0-255 pixels" if chain.takes_raw_pixels else "0-1 pixels"
        report.notes.append(
            f"the graph {chain.describe()} before its first conv ({', '.join(before)}: Keras Rescaling/Normalization "
            f"or tf2onnx preprocessing): it takes {takes}, so images are fed as such by default, with no mean/std on top"
        )


def normalize_onnx(model: onnx.ModelProto, path: Path | str = "model") -> tuple[onnx.ModelProto, IntakeReport]:
    """A copy of ``model`` in rescompile's canonical form, and what was changed to get there."""
    check_structure(model, path)
    work = onnx.ModelProto()
    work.CopyFrom(model)
    opset = default_opset(work)
    report = IntakeReport(opset, opset)
    ir = work.ir_version
    dropped = _drop_initializer_inputs(work)
    if dropped:
        report.notes.append(f"{dropped} weight(s) listed as graph inputs (IR {ir} style) are constants")
    report.layout = check_io(work, path)
    _to_float32(work, report, path)
    report.softmax_output = ends_in_softmax(work)
    fixed = _dynamic_dims(work, path)
    if fixed:
        report.notes.append(f"{fixed} dimension(s) declared as -1 or 0 are dynamic")
    if opset < MIN_OPSET:
        stripped = _strip_legacy_batchnorm(work)
        work = _convert_opset(work, path)
        report.opset_after = default_opset(work)
        report.notes.append(
            f"opset {opset} converted to {report.opset_after} (per-channel Q/DQ needs {MIN_OPSET})"
            + (f"; legacy attributes dropped from {stripped} BatchNormalization node(s)" if stripped else "")
        )
    elif opset > MAX_OPSET:
        lowered = _lower_opset(work, path)
        if lowered is not None:
            work = lowered
            report.opset_after = MAX_OPSET
            report.notes.append(f"opset {opset} converted to {MAX_OPSET} (TensorRT 10 reads opsets up to {MAX_OPSET})")
    if default_opset(work) <= MAX_OPSET and work.ir_version > MAX_IR:
        if _lower_ir(work):
            report.notes.append(f"IR version {ir} set to {MAX_IR} (what opset {default_opset(work)} needs; ONNX Runtime 1.17 reads up to {MAX_IR})")
    sums = _sum_to_add(work)
    if sums:
        report.notes.append(f"{sums} Sum node(s) rewritten as Add (residual adds)")
    had_shape = work.graph.output[0].type.tensor_type.HasField("shape")
    work = _fill_output_shape(work)
    if not had_shape and work.graph.output[0].type.tensor_type.HasField("shape"):
        report.notes.append("output shape taken from shape inference")
    try:
        work = onnx.shape_inference.infer_shapes(work)
    except Exception as exc:  # a graph shape inference cannot follow is still runnable: go on without
        log.info("%s: shape inference failed (%s); continuing without inferred shapes", path, exc.__class__.__name__)
    gemms = _matmul_add_to_gemm(work)
    if gemms:
        report.notes.append(f"{gemms} MatMul + Add head(s) rewritten as Gemm")
    _note_input_chain(input_chain(work), report)
    if report.softmax_output:
        report.notes.append("the output is a Softmax (probabilities): kept as it is")
    for note in report.notes:
        log.info("%s: %s", path, note)
    return work, report
