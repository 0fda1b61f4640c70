"""Q/DQ placement from one set of activation amax values.

TensorRT (explicit quantization, TensorRT 10 and 11): QuantizeLinear -> DequantizeLinear
pairs, symmetric int8 with zero point 0; activations per tensor, weights per output channel
(axis 0) stored as int8 initializers. Every Conv/Gemm input and weight is quantized; for a
residual Add only the skip input is, never the branch's last Conv output, so TensorRT fuses
Conv + bias + Add + ReLU into one INT8-in/INT8-out kernel (TensorRT developer guide,
"Q/DQ Layer-Placement Recommendations"). Pooling inputs reuse their tensor's scale.

CPU (ONNX Runtime): every activation quantized to uint8 (zero point 0 for non-negative
tensors, 128 otherwise; a MaxPool, Flatten or Reshape output shares its input's parameters, so
the integer path stays unbroken), int8 per-channel weights (7-bit when the CPU lacks VNNI, where
ONNX Runtime's u8s8 kernels saturate 16-bit intermediates), int32 biases, and ReLUs folded
into the uint8 zero-point clamp, so ONNX Runtime turns each pattern into QLinearConv/
QLinearAdd kernels.

OpenVINO (CPU plugin): the CPU form with two changes that measured faster there, side by side
(benchmarks/openvino_forms.py): signed tensors as int8 with zero point 0 (OpenVINO's low-precision
transformations turn a zero point into an extra subtraction) and biases left in float (OpenVINO
fuses them into the int8 convolution itself). This is NNCF's "performance" form. Weights are 7-bit
where the CPU lacks VNNI, as in the CPU artifact: OpenVINO's AVX2 u8s8 kernels saturate too (with
8-bit weights the digits default lost 7 of 360 test images on AVX2 kernels, none with 7-bit). All three models come from the same amax values.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
from onnx import helper

from rescompile.stages.optimize.graph import Graph, attr
from rescompile.stages.optimize.residual import find_residual_blocks

POOLS = ("MaxPool", "AveragePool", "GlobalAveragePool")
# Ops that move or select values without computing new ones. ONNX Runtime runs them on uint8
# only when the DequantizeLinear before and the QuantizeLinear after share scale and zero point
# (its QDQ "drop" rules); with different parameters it dequantizes, runs them in float, and a
# float MaxPool between QLinearConvs costs a layout flip on each side.
VALUE_PRESERVING = ("MaxPool", "Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity")


def _scalar(g: Graph, base: str, value, dtype) -> str:
    return g.add_initializer(base, np.asarray(value, dtype=dtype))


def _insert_qdq(g: Graph, node: onnx.NodeProto, index: int, scale: float, zp: int, zp_dtype, tag: str) -> None:
    """Feed ``node.input[index]`` through a fresh Q -> DQ pair."""
    src = node.input[index]
    s = _scalar(g, f"{src}_{tag}_scale", np.float32(scale), np.float32)
    z = _scalar(g, f"{src}_{tag}_zp", zp, zp_dtype)
    q, dq = g.fresh(f"{src}_{tag}_q"), g.fresh(f"{src}_{tag}_dq")
    pos = list(g.g.node).index(node)
    g.g.node.insert(pos, helper.make_node("DequantizeLinear", [q, s, z], [dq], name=dq))
    g.g.node.insert(pos, helper.make_node("QuantizeLinear", [src, s, z], [q], name=q))
    node.input[index] = dq


def _weight_axis(node: onnx.NodeProto) -> int:
    return 1 if node.op_type == "Gemm" and not attr(node, "transB", 0) else 0


def quantize_weights(w: np.ndarray, axis: int, qmax: int = 127) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8: (int8 weights, float32 scales of shape (channels,))."""
    moved = np.moveaxis(w, axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(1)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax, qmax).astype(np.int8)
    return q, scale


def _dequantized_weight(g: Graph, node: onnx.NodeProto, qmax: int = 127) -> np.ndarray:
    """Replace the node's float weight by int8 initializer -> DequantizeLinear; return scales."""
    w = g.const(node.input[1]).astype(np.float32)
    axis = _weight_axis(node)
    q, scale = quantize_weights(w, axis, qmax)
    qi = g.add_initializer(f"{node.input[1]}_int8", q)
    si = g.add_initializer(f"{node.input[1]}_scale", scale)
    zi = g.add_initializer(f"{node.input[1]}_zp", np.zeros_like(q, shape=scale.shape))
    out = g.fresh(f"{node.input[1]}_dq")
    g.g.node.insert(list(g.g.node).index(node), helper.make_node("DequantizeLinear", [qi, si, zi], [out], name=out, axis=axis))
    node.input[1] = out
    return scale


def copy_graph(model: onnx.ModelProto) -> Graph:
    """A Graph over a deep copy of ``model`` (the rewrites here never touch their input)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return Graph(out)


def quantizable_layers(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/Gemm nodes that Q/DQ placement quantizes (for sensitivity analysis)."""
    return [n.name or n.output[0] for n in model.graph.node if n.op_type in ("Conv", "Gemm")]


def required_tensors(model: onnx.ModelProto) -> list[str]:
    """Activations that need a scale: Conv/Gemm inputs and residual skip inputs."""
    g = Graph(model)
    names = [n.input[0] for n in g.nodes if n.op_type in ("Conv", "Gemm")]
    names += [b.skip_input for b in find_residual_blocks(g)]
    return list(dict.fromkeys(names))


def qdq_for_tensorrt(model: onnx.ModelProto, amax: dict[str, float], float_layers: Collection[str] = ()) -> onnx.ModelProto:
    """The Q/DQ model for TensorRT explicit quantization (see module docstring)."""
    g = copy_graph(model)
    blocks = find_residual_blocks(g)
    zp = np.int8
    for node in g.nodes:
        name = node.name or node.output[0]
        if node.op_type in ("Conv", "Gemm") and name not in float_layers:
            _insert_qdq(g, node, 0, amax[node.input[0]] / 127.0, 0, zp, "in")
            _dequantized_weight(g, node)
        elif node.op_type in POOLS and node.input[0] in amax:
            _insert_qdq(g, node, 0, amax[node.input[0]] / 127.0, 0, zp, "in")
    adds = {n.output[0]: n for n in g.nodes if n.op_type == "Add"}
    for block in blocks:
        add = adds[block.add]
        idx = list(add.input).index(block.skip_input)
        _insert_qdq(g, add, idx, amax[block.skip_input] / 127.0, 0, zp, "skip")
    g.cleanup()  # the float weights now unused
    return g.model


def _fold_relus(g: Graph, amax: dict[str, float]) -> set[str]:
    """Drop each ReLU that is its producer's only reader; return the tensors now known >= 0.

    uint8 quantization with zero point 0 clamps negatives, which is exactly ReLU.
    """
    consumers, producers = g.consumers(), g.producers()
    nonneg = set()
    for relu in g.nodes:
        if relu.op_type != "Relu":
            continue
        src = relu.input[0]
        prod = producers.get(src)
        if prod is None or prod.op_type not in ("Conv", "Add") or len(consumers[src]) != 1 or relu.output[0] not in amax:
            continue
        prod.output[0] = relu.output[0]
        g.remove(relu)
        nonneg.add(relu.output[0])
    return nonneg


def qdq_for_cpu(
    model: onnx.ModelProto,
    amax: dict[str, float],
    tensor_min: dict[str, float],
    *,
    reduce_range: bool,
    float_layers: Collection[str] = (),
    symmetric: bool = False,
    int_bias: bool = True,
) -> onnx.ModelProto:
    """The uint8-activation Q/DQ model ONNX Runtime runs fast on x86 (see module docstring).
    ``symmetric``: signed tensors as int8 with zero point 0 instead of uint8 around 128;
    ``int_bias``: Conv/Gemm biases as int32 DequantizeLinear (else left float)."""
    g = copy_graph(model)
    amax = dict(amax)
    nonneg = _fold_relus(g, amax) | {t for t, m in tensor_min.items() if m >= 0}
    outputs = g.graph_outputs()
    for node in g.nodes:  # in graph order, so chains of them share one scale
        src, dst = node.input[0] if node.input else "", node.output[0]
        if node.op_type in VALUE_PRESERVING and src in amax and dst in amax:
            amax[dst] = amax[src]
            (nonneg.add if src in nonneg else nonneg.discard)(dst)

    def params(t: str) -> tuple[float, int]:
        return (amax[t] / 255.0, 0) if t in nonneg else (amax[t] / 127.0, 0 if symmetric else 128)

    weight_scales = {}
    for node in g.nodes:
        name = node.name or node.output[0]
        if node.op_type in ("Conv", "Gemm") and name not in float_layers:
            weight_scales[name] = _dequantized_weight(g, node, 63 if reduce_range else 127)
    # One Q/DQ per activation tensor, shared by all its readers (ONNX Runtime's QDQ format).
    consumers = g.consumers()
    for t in list(amax):
        readers = [n for n in consumers.get(t, []) if not (n.op_type in ("Conv", "Gemm") and (n.name or n.output[0]) in float_layers)]
        if t in outputs or not readers:
            continue
        scale, zp = params(t)
        s = _scalar(g, f"{t}_scale", np.float32(scale), np.float32)
        z = _scalar(g, f"{t}_zp", zp, np.int8 if symmetric and t not in nonneg else np.uint8)
        q, dq = g.fresh(f"{t}_q"), g.fresh(f"{t}_dq")
        g.g.node.extend([helper.make_node("QuantizeLinear", [t, s, z], [q], name=q), helper.make_node("DequantizeLinear", [q, s, z], [dq], name=dq)])
        for n in readers:
            for i, name in enumerate(n.input):
                if name == t:
                    n.input[i] = dq
    if int_bias:
        _quantize_biases(g, weight_scales, {t: params(t)[0] for t in amax if t not in outputs})
    g.cleanup()  # the float weights (and biases) now unused
    _toposort(g)
    return g.model


def qdq_for_openvino(
    model: onnx.ModelProto, amax: dict[str, float], tensor_min: dict[str, float], float_layers: Collection[str] = (),
    *, reduce_range: bool = False,
) -> onnx.ModelProto:
    """The Q/DQ model OpenVINO's CPU plugin runs fastest (see module docstring)."""
    return qdq_for_cpu(model, amax, tensor_min, reduce_range=reduce_range, float_layers=float_layers, symmetric=True, int_bias=False)


def _quantize_biases(g: Graph, weight_scales: dict[str, np.ndarray], act_scale: dict[str, float]) -> None:
    """Conv/Gemm biases as int32 with scale = input scale * weight scale (what QLinearConv and
    QGemm take: without it ONNX Runtime leaves the classifier's Gemm in float)."""
    producers = g.producers()
    for node in g.nodes:
        name = node.name or node.output[0]
        if node.op_type not in ("Conv", "Gemm") or name not in weight_scales or len(node.input) < 3 or not node.input[2]:
            continue
        dq = producers.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear":
            continue
        src = producers[dq.input[0]].input[0]
        scale = (act_scale[src] * weight_scales[name]).astype(np.float32)
        b = g.const(node.input[2]).astype(np.float64)
        qb = np.round(b / scale).astype(np.int32)
        bi = g.add_initializer(f"{node.input[2]}_int32", qb)
        bs = g.add_initializer(f"{node.input[2]}_scale", scale)
        bz = g.add_initializer(f"{node.input[2]}_zp", np.zeros_like(qb))
        out = g.fresh(f"{node.input[2]}_dq")
        g.g.node.insert(list(g.g.node).index(node), helper.make_node("DequantizeLinear", [bi, bs, bz], [out], name=out, axis=0))
        node.input[2] = out
    g.cleanup()


def _toposort(g: Graph) -> None:
    """Nodes in dependency order (Q/DQ pairs were appended at the end)."""
    known = {i.name for i in g.g.input} | {t.name for t in g.g.initializer} | {""}
    pending, ordered = list(g.g.node), []
    while pending:
        ready = [n for n in pending if all(i in known for i in n.input)]
        if not ready:
            raise RuntimeError("graph has a cycle")  # cannot happen for a DAG we rewired
        for n in ready:
            ordered.append(n)
            known.update(n.output)
        pending = [n for n in pending if n not in ready]
    del g.g.node[:]
    g.g.node.extend(ordered)


def has_vnni() -> bool:
    """x86 VNNI (AVX512-VNNI or AVX-VNNI) lets ONNX Runtime use full 8-bit weights without overflow."""
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags

