"""Check a Q/DQ ONNX model against TensorRT's explicit-quantization rules, naming every violation.

TensorRT builds INT8 kernels only where QuantizeLinear/DequantizeLinear nodes say so, and
builds fast ones only when they sit where its developer guide's "Q/DQ layer-placement
recommendations" put them (section "Explicit Quantization"): symmetric int8 with zero point 0,
activations per tensor, weights per output channel, every Conv/Gemm input and weight
quantized, and for a residual Add a Q/DQ on the skip input but none between the branch's last
Conv and the Add, so that Conv+bias+Add+ReLU fuse into one INT8-in/INT8-out kernel. A model
that breaks these still builds, but falls back to slower kernels (often slower than FP16) or
is rejected, so the lint names each offending node. It only reads the model.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection
from dataclasses import asdict, dataclass

import numpy as np
import onnx
from onnx import TensorProto

from rescompile.stages.optimize.graph import Graph, attr
from rescompile.stages.optimize.residual import find_residual_blocks

QDQ = ("QuantizeLinear", "DequantizeLinear")
LAYERS = ("Conv", "Gemm")
RULES = (
    "zero-point", "int8", "per-tensor-activation", "per-channel-weight",
    "unquantized-input", "unquantized-weight", "residual-skip", "residual-branch",
)


@dataclass(frozen=True)
class LintViolation:
    rule: str  # one of RULES
    node: str  # the offending node's name (its first output when it has no name)
    message: str  # one line: what is wrong and what TensorRT needs


@dataclass
class LintReport:
    violations: list[LintViolation]
    checked_layers: int  # Conv/Gemm nodes expected to be quantized (float_layers excluded)
    residual_adds: int  # residual Adds whose Q/DQ placement was checked

    @property
    def passed(self) -> bool:
        return not self.violations

    def counts(self) -> dict[str, int]:
        return dict(Counter(v.rule for v in self.violations))

    def to_dict(self) -> dict:
        return {
            "passed": self.passed,
            "checked_layers": self.checked_layers,
            "residual_adds": self.residual_adds,
            "counts": self.counts(),
            "violations": [asdict(v) for v in self.violations],
        }


def _name(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _weight_axis(layer: onnx.NodeProto) -> int:
    # Gemm computes A @ B, so without transB the output channels of B are on axis 1.
    return 1 if layer.op_type == "Gemm" and not attr(layer, "transB", 0) else 0


def _roles(layers, producers, consts) -> tuple[dict[str, tuple[int, int | None, int]], set[str]]:
    """({Q/DQ output: (axis, output channels, weight rank)} for weight quantizers, {Q/DQ outputs} for bias ones)."""
    weights, biases = {}, set()
    for layer in layers:
        for index in (1, 2):
            if len(layer.input) <= index or (dq := producers.get(layer.input[index])) is None or dq.op_type != QDQ[1]:
                continue
            chain, w = [dq], consts.get(dq.input[0])
            q = producers.get(dq.input[0])
            if w is None and q is not None and q.op_type == QDQ[0]:  # Q -> DQ on a float constant
                chain.append(q)
                w = consts.get(q.input[0])
            if index == 2:
                biases.update(n.output[0] for n in chain)
                continue
            axis = _weight_axis(layer)
            channels = int(w.shape[axis]) if w is not None and w.ndim > axis else None
            weights.update((n.output[0], (axis, channels, w.ndim if w is not None else 0)) for n in chain)
    return weights, biases


def lint_qdq(model: onnx.ModelProto, float_layers: Collection[str] = ()) -> LintReport:
    """Every violation of TensorRT's Q/DQ rules in ``model``; ``float_layers`` (Conv/Gemm node
    names) were left in floating point on purpose, so their missing Q/DQ is not reported."""
    g = Graph(model)
    producers, consts = g.producers(), g.constant_values()
    violations: list[LintViolation] = []

    def report(rule: str, node: str, message: str) -> None:
        violations.append(LintViolation(rule, node, " ".join(message.split())))

    def from_dq(tensor: str) -> bool:
        node = producers.get(tensor)
        return node is not None and node.op_type == "DequantizeLinear"

    layers = [n for n in g.g.node if n.op_type in LAYERS]
    weights, biases = _roles(layers, producers, consts)

    for node in g.g.node:
        if node.op_type not in QDQ:
            continue
        name, out = f"{node.op_type} {_name(node)!r}", node.output[0]
        zp_name = node.input[2] if len(node.input) > 2 else ""
        zp = consts.get(zp_name)
        if not zp_name:
            # Absent, ONNX takes a uint8 zero point of 0; only an explicit int8 type is int8.
            declared = attr(node, "output_dtype") if node.op_type == QDQ[0] else g.elem_type(node.input[0])
            if declared != TensorProto.INT8:
                report("zero-point", _name(node), f"{name} has no zero point, so ONNX quantizes to uint8; "
                       "TensorRT needs an explicit int8 zero point of 0")
        elif zp is None:
            report("zero-point", _name(node), f"{name}: zero point {zp_name!r} is not a constant; "
                   "TensorRT needs a constant int8 zero point of 0")
        else:
            if zp.dtype != np.int8:
                hint = " (keep Conv/Gemm biases in float: TensorRT fuses them into the INT8 kernel)" if out in biases else ""
                report("int8", _name(node), f"{name} has a {zp.dtype} zero point, so it is not int8; TensorRT's "
                       f"explicit quantization takes int8 Q/DQ{hint}")
            if np.any(zp != 0):
                report("zero-point", _name(node), f"{name} has zero point {zp.ravel()[0]} (asymmetric); "
                       "TensorRT supports only symmetric quantization, zero point 0")
        if out in biases:
            continue
        scale = consts.get(node.input[1])
        if out in weights:
            # Per-output-channel weight scales keep INT8 accuracy; TensorRT requires them on the
            # output-channel axis (axis 0 of a Conv weight, the output axis of a Gemm weight).
            axis, channels, rank = weights[out]
            want = f"a 1-D scale of {channels if channels is not None else 'one value per output channel'} on axis {axis}"
            got_axis = attr(node, "axis", 1)  # ONNX's default axis is 1
            got_axis += rank if got_axis < 0 else 0
            if scale is None:
                report("per-channel-weight", _name(node), f"{name}: weight scale is not a constant; TensorRT needs {want}")
            elif scale.size == 1 and channels != 1:
                report("per-channel-weight", _name(node), f"{name} quantizes a weight per tensor; TensorRT needs "
                       f"per-output-channel weights: {want}")
            elif scale.ndim != 1 or (channels is not None and scale.shape[0] != channels):
                report("per-channel-weight", _name(node), f"{name}: weight scale has shape {list(scale.shape)}; "
                       f"TensorRT needs {want}")
            elif scale.size > 1 and got_axis != axis:
                report("per-channel-weight", _name(node), f"{name} quantizes the weight along axis {got_axis}; "
                       f"the output channels are on axis {axis}, TensorRT needs {want}")
        elif scale is None or scale.size != 1:
            what = "is not a constant" if scale is None else f"has shape {list(scale.shape)}"
            report("per-tensor-activation", _name(node), f"{name}: activation scale {what}; "
                   "TensorRT needs one constant float scale per activation tensor (per-tensor)")

    checked = 0
    for layer in layers:
        name = _name(layer)
        if name in float_layers:
            continue
        checked += 1
        # TensorRT runs a Conv/Gemm in INT8 only when both its data and weight inputs are
        # dequantized; otherwise it silently keeps the layer in floating point.
        if not from_dq(layer.input[0]):
            report("unquantized-input", name, f"{layer.op_type} {name!r}: input {layer.input[0]!r} does not come from a "
                   "DequantizeLinear; TensorRT needs a Q/DQ pair there to run the layer in INT8 (or list it in float_layers)")
        if len(layer.input) > 1 and not from_dq(layer.input[1]):
            report("unquantized-weight", name, f"{layer.op_type} {name!r}: weight {layer.input[1]!r} does not come from a "
                   "DequantizeLinear; TensorRT needs an int8 per-channel weight there (or list the layer in float_layers)")

    blocks = find_residual_blocks(g)
    adds = {n.output[0]: n for n in g.g.node if n.op_type == "Add"}
    for block in blocks:
        name = _name(adds[block.add])
        if not from_dq(block.skip_input):
            report("residual-skip", name, f"Add {name!r}: skip input {block.skip_input!r} is not quantized; TensorRT "
                   "needs a Q/DQ on the skip input to fuse the branch's last Conv, the Add and the ReLU in INT8")
        between, tensor = [], block.branch_input
        while (node := producers.get(tensor)) is not None and node.op_type in QDQ:
            between.append(_name(node))
            tensor = node.input[0]
        if between:
            report("residual-branch", name, f"Add {name!r}: Q/DQ {' <- '.join(between)} sits between the branch's last Conv "
                   "and the Add; TensorRT needs the Conv to feed the Add directly to fuse Conv+bias+Add+ReLU in INT8")
    return LintReport(violations, checked, len(blocks))
