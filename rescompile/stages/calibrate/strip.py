"""strip_qdq: a QDQ-format model -> its float graph, its activation scales and its weight quantization.

DequantizeLinear(weights) folds back to float weights (the integers kept beside them, to be written
again bit for bit); each activation Q/DQ pair is dropped and its scale kept under the float tensor
it quantizes. A QuantizeLinear whose zero point is its type's minimum clamps at 0, which is a ReLU:
ONNX Runtime's quantizer drops the ReLU it folds that way (and its Conv then writes the ReLU's
tensor name), so a ReLU is put back there and the float graph computes what the quantized one does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rescompile.errors import ModelError
from rescompile.stages.calibrate.qdq import VALUE_PRESERVING, copy_graph
from rescompile.stages.optimize.graph import Graph, attr

INTEGERS = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767), "uint16": (0, 65535), "int32": (-(2**31), 2**31 - 1)}
NONNEGATIVE_THROUGH = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", *VALUE_PRESERVING)
EXPORT_QDQ = "Export it in QDQ format (QuantizeLinear/DequantizeLinear pairs), or give the FP32 model"


@dataclass(frozen=True)
class ActivationScale:
    """One activation's quantization as given: scale (float32), zero point, integer type."""

    scale: float
    zero_point: int
    dtype: str
    per_channel: bool = False

    @property
    def exact(self) -> bool:
        """TensorRT's int8 with zero point 0 has the very same grid (same step, same range)."""
        return not self.per_channel and (self.dtype, self.zero_point) in (("int8", 0), ("uint8", 128))

    @property
    def nonnegative(self) -> bool:
        return self.zero_point == INTEGERS[self.dtype][0]

    @property
    def amax(self) -> float:
        """TensorRT's amax: scale * 127 where exact, else the largest magnitude the given grid reaches."""
        if self.exact:
            return float(self.scale) * 127.0  # exact in float64, so amax / 127 gives the scale back bit for bit
        lo, hi = INTEGERS[self.dtype]
        return float(self.scale) * max(self.zero_point - lo, hi - self.zero_point)

    def describe(self) -> str:
        return f"{self.dtype}, zero point {self.zero_point}" + (", per channel" if self.per_channel else "")


@dataclass(frozen=True)
class WeightQuant:
    """A weight's quantization as given; the stripped graph holds ``dequantize`` of it."""

    values: np.ndarray
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None  # None: per tensor

    @property
    def tensorrt_ready(self) -> bool:
        return self.values.dtype == np.int8 and not np.any(self.zero_point)


@dataclass
class Stripped:
    model: onnx.ModelProto  # the float graph
    activations: dict[str, ActivationScale]  # by the float tensor each quantizes
    weights: dict[str, WeightQuant]  # by the float weight's name in ``model``
    relus: int = 0  # ReLUs put back where a zero point clamped at 0
    notes: list[str] = field(default_factory=list)


def _params(node: onnx.NodeProto, consts: dict[str, np.ndarray], rank: int, path) -> tuple[np.ndarray, np.ndarray, int | None]:
    """(float32 scale, zero point, axis or None) of a Q or DQ node; one-line refusals for what TensorRT has no use for."""
    name = f"{node.op_type} {(node.name or node.output[0])[:80]!r}"
    scale = consts.get(node.input[1])
    zp_name = node.input[2] if len(node.input) > 2 else ""
    zp = consts.get(zp_name) if zp_name else None
    if scale is None or (zp_name and zp is None):
        raise ModelError(f"{path}: {name} takes its scale or zero point from a computed tensor", EXPORT_QDQ + " with constant scales")
    if zp is None:  # absent: ONNX's default is uint8 zero point 0 (int8 where output_dtype says so)
        zp = np.zeros(scale.shape, np.int8 if attr(node, "output_dtype") == TensorProto.INT8 else np.uint8)
    if zp.dtype.name not in INTEGERS or attr(node, "block_size"):
        raise ModelError(f"{path}: {name} quantizes to {zp.dtype.name}{' in blocks' if attr(node, 'block_size') else ''}, "
                         "which TensorRT's INT8 path cannot take", "Quantize to int8 (or uint8), per tensor or per channel")
    axis = None
    if scale.size > 1:
        axis = int(attr(node, "axis", 1))
        axis += rank if axis < 0 else 0
    return scale.astype(np.float32), zp, axis


def _along(v: np.ndarray, axis: int | None, rank: int) -> np.ndarray:
    if axis is None:
        return v.reshape(())
    shape = [1] * rank
    shape[axis] = -1
    return v.reshape(shape)


def dequantize(w: WeightQuant) -> np.ndarray:
    """What ONNX's DequantizeLinear computes (in float32, as ONNX Runtime does)."""
    r = w.values.ndim
    return ((w.values.astype(np.int64) - _along(w.zero_point.astype(np.int64), w.axis, r)).astype(np.float32)
            * _along(w.scale, w.axis, r)).astype(np.float32)


def _fold_weight(g: Graph, dq: onnx.NodeProto, q: onnx.NodeProto | None, consts, path) -> WeightQuant:
    """DequantizeLinear of a constant (or of Q(constant)) -> one float initializer named as the DQ's output."""
    if q is None:
        values = consts[dq.input[0]]
    else:  # Q/DQ on float weights (PyTorch QAT and ModelOpt exports): the integers are Q's
        w = consts[q.input[0]].astype(np.float32)
        s, z, axis = _params(q, consts, w.ndim, path)
        lo, hi = INTEGERS[z.dtype.name]
        values = np.clip(np.rint(w / _along(s, axis, w.ndim)) + _along(z.astype(np.float32), axis, w.ndim), lo, hi).astype(z.dtype)
    scale, zp, axis = _params(dq, consts, values.ndim, path)
    quant = WeightQuant(values, scale, zp, axis)
    g.remove(dq)
    g.g.initializer.append(numpy_helper.from_array(dequantize(quant), dq.output[0]))
    return quant


def _activation(q: onnx.NodeProto, dq: onnx.NodeProto, consts, path) -> ActivationScale:
    s, z, _ = _params(q, consts, 4, path)
    s2, z2, _ = _params(dq, consts, 4, path)
    if not (np.array_equal(s, s2) and np.array_equal(z, z2) and z.dtype == z2.dtype):
        raise ModelError(f"{path}: QuantizeLinear {q.name or q.output[0]!r} and its DequantizeLinear use different scales or zero "
                         "points, which is no single quantization", EXPORT_QDQ + " whose pairs share their parameters")
    if z.size > 1 and np.any(z != z.ravel()[0]):
        raise ModelError(f"{path}: activation {q.input[0]!r} has per-channel zero points", "Quantize activations per tensor")
    return ActivationScale(float(s.max()), int(z.ravel()[0]), z.dtype.name, s.size > 1)


def _nonnegative(g: Graph, tensor: str) -> bool:
    producers = g.producers()
    for _ in range(64):
        node = producers.get(tensor)
        if node is None:
            return False
        if node.op_type == "Relu":
            return True
        if node.op_type not in NONNEGATIVE_THROUGH:
            return False
        tensor = node.input[0]
    return False


def _restore_relus(g: Graph, clamps: dict[str, str], acts: dict[str, ActivationScale]) -> int:
    """Put a ReLU where a Q/DQ clamped at 0 and nothing else makes the tensor non-negative."""
    restored = 0
    for t, clamped in clamps.items():
        if _nonnegative(g, t):
            g.replace_uses(clamped, t)
            continue
        producer = g.producers().get(t)
        at = list(g.g.node).index(producer) + 1 if producer is not None else 0
        if producer is not None and not g.consumers().get(t) and t not in g.graph_outputs():
            # Read only through the Q/DQ (ONNX Runtime's Conv then writes the ReLU's tensor name): the
            # ReLU writes ``t`` again, so the scale keeps the name it has in the original FP32 model.
            pre = g.fresh(f"{t}_before_relu")
            producer.output[list(producer.output).index(t)] = pre
            relu = helper.make_node("Relu", [pre], [t], name=g.fresh(f"{t}_relu"))
            g.replace_uses(clamped, t)
        else:
            relu = helper.make_node("Relu", [t], [clamped], name=g.fresh(f"{t}_relu"))
            acts[clamped] = acts.pop(t)
        g.g.node.insert(at, relu)
        restored += 1
    return restored


def strip_qdq(model: onnx.ModelProto, path: Path | str = "model") -> Stripped:
    """The float graph of a Q/DQ model, its activation scales and its weight quantization."""
    g = copy_graph(model)
    consts, producers, outputs = g.constant_values(), g.producers(), g.graph_outputs()
    acts: dict[str, ActivationScale] = {}
    weights: dict[str, WeightQuant] = {}
    clamps: dict[str, str] = {}  # tensor -> the name its clamped readers read until the ReLU exists
    notes: list[str] = []
    for dq in [n for n in g.nodes if n.op_type == "DequantizeLinear"]:
        src, q = dq.input[0], producers.get(dq.input[0])
        if src in consts or (q is not None and q.op_type == "QuantizeLinear" and q.input[0] in consts):
            weights[dq.output[0]] = _fold_weight(g, dq, None if src in consts else q, consts, path)
            continue
        if q is None or q.op_type != "QuantizeLinear":
            raise ModelError(f"{path}: DequantizeLinear {dq.name or dq.output[0]!r} reads {src!r}, neither a QuantizeLinear "
                             "output nor a constant", EXPORT_QDQ)
        t, act = q.input[0], _activation(q, dq, consts, path)
        if acts.setdefault(t, act) != act:
            notes.append(f"tensor {t!r} is quantized twice with different parameters: the first ({acts[t].describe()}) is used")
        if dq.output[0] in outputs:
            acts[dq.output[0]] = acts.pop(t)
            g.bypass(dq, t)
            continue
        keep = clamps.setdefault(t, g.fresh(f"{t}_clamped")) if act.nonnegative and acts[t] == act else t
        g.replace_uses(dq.output[0], keep)
        g.remove(dq)
    read = {x for n in g.g.node for x in n.input} | outputs
    for q in [n for n in g.nodes if n.op_type == "QuantizeLinear" and n.output[0] not in read]:
        g.remove(q)  # (not cleanup yet: the clamped readers read names the ReLUs below will write)
    relus = _restore_relus(g, clamps, acts)
    if relus:
        notes.append(f"{relus} ReLU(s) restored where a zero point at the type's minimum clamped at 0 (the quantizer had folded them)")
    g.cleanup()  # the integer weights and the constants of the Q/DQ, now unread
    left = next((n for n in g.nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")), None)
    if left is not None:
        raise ModelError(f"{path}: {left.op_type} {left.name or left.output[0]!r} is not part of a Q/DQ pair", EXPORT_QDQ)
    return Stripped(g.model, acts, weights, relus, notes)
