"""The input side of an ONNX graph from elsewhere: which tensor is the input, its float type, its
layout, and what the graph computes from it before its first conv.

Keras 3 (its own ONNX export or tf2onnx) keeps the NHWC input and writes its preprocessing layers
into the graph: ``Rescaling`` as Mul (and Add), ``Normalization`` as Sub and Div, sometimes a Cast,
then the Transpose to NCHW in front of the first Conv (tf2onnx's optimizer may push that Transpose
up to the input, with the constants then shaped [1, C, 1, 1]). ``input_chain`` follows the input
through such elementwise ops with constant operands and reads off the layout and the per-channel
``y = scale * x + shift`` they compute, so that rescompile neither misreads the layout nor
normalises a second time. ``float32_graph`` turns a half-precision graph (``model.half()``, bfloat16)
into float32, which every stage and ONNX Runtime's CPU kernels run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, numpy_helper

NCHW_FROM_NHWC = [0, 3, 1, 2]
# Graph input types rescompile takes; the non-float32 ones are converted to float32 on intake.
FLOAT_INPUTS = {TensorProto.FLOAT: "float32", TensorProto.FLOAT16: "float16", TensorProto.BFLOAT16: "bfloat16",
                TensorProto.DOUBLE: "float64"}
_TO_FLOAT32 = {TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE}
_PASS_THROUGH = ("Identity", "Cast")
_AFFINE = ("Mul", "Add", "Sub", "Div")
# y = scale * x + shift with |scale| at most this takes raw 0-255 pixels: Keras Rescaling(1/255) is
# 0.0039, Rescaling(1/127.5, offset=-1) 0.0078, Normalization adapted on 0-255 images about 1/60.
# A graph that normalises 0-1 input divides by a std of 0.2-0.3 (scale 3-5), or leaves it (scale 1).
RAW_PIXELS_MAX_SCALE = 0.125


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs: those without an initializer (IR < 4 files list weights too)."""
    init = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init]


def _constants(g: onnx.GraphProto) -> dict[str, Any]:
    """Initializer and Constant-node tensors by name, undecoded (decoded only when an op reads one)."""
    found: dict[str, Any] = {t.name: t for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.type == AttributeProto.TENSOR:
                    found[n.output[0]] = a.t
                elif a.name in ("value_float", "value_floats"):
                    found[n.output[0]] = np.asarray(a.f if a.name == "value_float" else list(a.floats), np.float64)
    return found


def _channel_vector(value: Any) -> tuple[str, np.ndarray] | None:
    """("scalar" | "last" | "axis1", values) for a constant that is the same over everything but one
    channel axis: a scalar, [C] / [1, 1, 1, C] (NHWC's last axis) or [C, 1, 1] / [1, C, 1, 1] (NCHW's)."""
    try:
        arr = np.asarray(numpy_helper.to_array(value) if isinstance(value, TensorProto) else value)
    except Exception:  # noqa: BLE001  a Constant whose bytes do not decode: not a preprocessing constant
        return None
    if arr.dtype.kind not in "fiu" and arr.dtype.name != "bfloat16":
        return None
    arr = arr.astype(np.float64)
    if arr.size == 1:
        return "scalar", arr.reshape(1)
    if arr.ndim <= 4 and all(d == 1 for d in arr.shape[:-1]):
        return "last", arr.reshape(-1)
    if arr.ndim in (3, 4) and arr.shape[-2:] == (1, 1) and (arr.ndim == 3 or arr.shape[0] == 1):
        return "axis1", arr.reshape(-1)
    return None


@dataclass(frozen=True)
class InputChain:
    """What the graph does to its input before anything else reads it.

    ``layout`` is "nhwc" when the input reaches a Transpose(0, 3, 1, 2) (Keras/tf2onnx), else "nchw".
    ``ops`` are the elementwise ops passed on the way; ``scale``/``shift`` (per channel, or one value)
    the ``y = scale * x + shift`` they compute, None when it is not a per-channel affine map."""

    layout: str
    ops: tuple[str, ...] = ()
    scale: tuple[float, ...] | None = None
    shift: tuple[float, ...] | None = None

    @property
    def normalises(self) -> bool:
        """Whether the graph changes its input's values itself (more than a Cast or an Identity)."""
        if self.scale is None or self.shift is None:
            return False
        return not (np.allclose(self.scale, 1.0, rtol=0, atol=1e-7) and np.allclose(self.shift, 0.0, rtol=0, atol=1e-7))

    @property
    def takes_raw_pixels(self) -> bool:
        """A normalising graph whose scale is that of 0-255 pixels (see RAW_PIXELS_MAX_SCALE), not of 0-1."""
        return self.normalises and max(abs(v) for v in self.scale) <= RAW_PIXELS_MAX_SCALE

    def describe(self) -> str:
        """One line: what the graph computes from its input, e.g. "scales its input by 1/255"."""
        parts = []
        if not np.allclose(self.scale, 1.0, rtol=0, atol=1e-7):
            parts.append(f"scales its input by {_values(self.scale, reciprocal=True)}")
        if not np.allclose(self.shift, 0.0, rtol=0, atol=1e-7):
            negative = all(v <= 0 for v in self.shift)
            parts.append(f"{'subtracts' if negative else 'adds'} {_values(tuple(-v for v in self.shift) if negative else self.shift)}")
        return " and ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"ops": list(self.ops), "scale": list(self.scale or ()), "shift": list(self.shift or ()),
                "takes": "0-255 pixels" if self.takes_raw_pixels else "0-1 pixels"}


def _values(values: tuple[float, ...], reciprocal: bool = False) -> str:
    def one(v: float) -> str:
        if reciprocal and v and 1 < abs(1 / v) and abs(round(2 / v) / 2 - 1 / v) < 1e-3 * abs(1 / v):
            return f"1/{round(2 / v) / 2:g}"  # 1/255, 1/127.5: how Keras Rescaling is written
        return f"{v:.4g}"

    if np.allclose(values, values[0], rtol=1e-6, atol=0):
        return one(values[0])
    return "(" + ", ".join(one(v) for v in values) + ")"


def _perm(node: onnx.NodeProto) -> list[int] | None:
    return next((list(a.ints) for a in node.attribute if a.name == "perm"), None)


def input_chain(model: onnx.ModelProto) -> InputChain:
    """Follow the input through elementwise ops whose other operand is a per-channel or scalar
    constant (Mul, Add, Sub, Div; Cast to a float type, Identity) and at most one Transpose to NCHW,
    up to the first other op (the first Conv, a Pad, ...)."""
    g = model.graph
    consts = _constants(g)
    users: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for i in dict.fromkeys(n.input):
            users.setdefault(i, []).append(n)
    name = graph_inputs(model)[0].name
    scale, shift = np.ones(1), np.zeros(1)
    ops: list[str] = []
    kinds: list[tuple[str, bool]] = []  # (constant's channel axis, seen after the Transpose)
    transposed, affine, seen = False, True, set()
    while name not in seen:  # a damaged graph may loop back on itself
        seen.add(name)
        uses = users.get(name, [])
        if not transposed and uses and all(n.op_type == "Transpose" and _perm(n) == NCHW_FROM_NHWC for n in uses):
            transposed = True
            if len(uses) > 1:
                break
            ops.append("Transpose")
            name = uses[0].output[0]
            continue
        if len(uses) != 1 or not uses[0].output:
            break
        node = uses[0]
        if node.op_type in _PASS_THROUGH:
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            if node.op_type == "Cast" and to not in (TensorProto.FLOAT, *_TO_FLOAT32):
                break
        elif node.op_type in _AFFINE and len(node.input) == 2 and node.input[0] != node.input[1]:
            first = node.input[0] == name
            other = node.input[1] if first else node.input[0]
            vector = _channel_vector(consts[other]) if other in consts else None
            if vector is None or (node.op_type == "Div" and (not first or not np.all(vector[1]))):
                break
            kind, v = vector
            kinds.append((kind, transposed))
            try:
                scale, shift = _compose(node.op_type, first, scale, shift, v)
            except ValueError:  # constants of different channel counts: not one per-channel map
                affine = False
        else:
            break
        ops.append(node.op_type)
        name = node.output[0]
    layout = "nhwc" if transposed else "nchw"
    # A per-channel constant must sit on the channel axis where it is applied: the last one before an
    # NHWC input's Transpose, the second one after it (and everywhere in an NCHW graph).
    affine = affine and all(k == "scalar" or k == ("last" if layout == "nhwc" and not after else "axis1") for k, after in kinds)
    if not affine or scale.size not in (1, 3) or shift.size not in (1, 3):
        return InputChain(layout, tuple(ops))
    return InputChain(layout, tuple(ops), tuple(float(v) for v in np.broadcast_to(scale, 3)),
                      tuple(float(v) for v in np.broadcast_to(shift, 3)))


def _compose(op: str, first: bool, scale: np.ndarray, shift: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """y = scale * x + shift followed by ``op`` with constant ``v`` (``first``: x is the op's first input)."""
    scale, shift = np.broadcast_arrays(scale, shift, v)[:2]
    if op == "Mul":
        return scale * v, shift * v
    if op == "Add":
        return scale, shift + v
    if op == "Sub":
        return (scale, shift - v) if first else (-scale, v - shift)
    return scale / v, shift / v  # Div by a non-zero constant (a constant divided by x is not affine)


def input_layout(model: onnx.ModelProto) -> str:
    """"nhwc" when the input reaches a Transpose to NCHW through elementwise preprocessing (Keras/tf2onnx), else "nchw"."""
    return input_chain(model).layout


def _tensor_to_float32(t: TensorProto) -> None:
    converted = numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name)
    converted.doc_string = t.doc_string
    t.CopyFrom(converted)


def holds_other_floats(g: onnx.GraphProto) -> bool:
    """Whether ``g`` has a float16/bfloat16/float64 tensor, declared type or Cast target (what float32_graph
    rewrites); reads only types, so weights kept in external files need not be loaded."""
    if any(t.data_type in _TO_FLOAT32 for t in g.initializer):
        return True
    if any(vi.type.tensor_type.elem_type in _TO_FLOAT32 for vi in (*g.input, *g.output, *g.value_info)):
        return True
    for n in g.node:
        for a in n.attribute:
            if (a.type == AttributeProto.TENSOR and a.t.data_type in _TO_FLOAT32) or any(t.data_type in _TO_FLOAT32 for t in a.tensors):
                return True
            if a.type == AttributeProto.INT and a.name in ("to", "dtype") and a.i in _TO_FLOAT32:
                return True
            if any(holds_other_floats(sub) for sub in ([a.g] if a.type == AttributeProto.GRAPH else list(a.graphs))):
                return True
    return False


def float32_graph(g: onnx.GraphProto) -> int:
    """Rewrite every float16/bfloat16/float64 tensor, declared type and Cast target of ``g`` (subgraphs
    included) as float32, in place; return how many weights and constants were converted."""
    converted = 0
    for t in g.initializer:
        if t.data_type in _TO_FLOAT32:
            _tensor_to_float32(t)
            converted += 1
    for vi in (*g.input, *g.output, *g.value_info):
        if vi.type.tensor_type.elem_type in _TO_FLOAT32:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT
    for n in g.node:
        for a in n.attribute:
            if a.type == AttributeProto.TENSOR and a.t.data_type in _TO_FLOAT32:
                _tensor_to_float32(a.t)
                converted += 1
            elif a.type == AttributeProto.TENSORS:
                for t in a.tensors:
                    if t.data_type in _TO_FLOAT32:
                        _tensor_to_float32(t)
                        converted += 1
            elif a.type == AttributeProto.INT and a.name in ("to", "dtype") and a.i in _TO_FLOAT32:
                a.i = TensorProto.FLOAT  # Cast(to=float16), EyeLike/RandomNormal(dtype=...)
            elif a.type == AttributeProto.GRAPH:
                converted += float32_graph(a.g)
            elif a.type == AttributeProto.GRAPHS:
                converted += sum(float32_graph(sub) for sub in a.graphs)
    return converted
