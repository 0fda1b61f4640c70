"""Passes that fold BatchNormalization (and BN written as Mul/Add) into convolutions.

Folding BN into the preceding Conv is exact: y = gamma * (Wx + b - mean) / sqrt(var + eps)
+ beta = (s * W) x + (s * (b - mean) + beta) with s = gamma / sqrt(var + eps) per output
channel. TensorRT then fuses Conv + bias + ReLU into one kernel, and INT8 calibration sees
the folded weights it will actually quantize.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from rescompile.stages.optimize.graph import Graph, attr, channel_vector, conv_has_padding


def batchnorm_inference_mode(g: Graph) -> int:
    """BN exported in training mode (``training_mode=1``: batch statistics) ==> inference BN.

    A deployed classifier runs BN on its running statistics, as ``model.eval()`` does;
    batch statistics would make each image's result depend on the rest of its batch.
    """
    count = 0
    used = {x for n in g.g.node for x in n.input} | g.graph_outputs()
    for bn in g.nodes:
        if bn.op_type != "BatchNormalization" or not attr(bn, "training_mode", 0):
            continue
        if any(o in used for o in bn.output[1:] if o):
            continue  # someone reads the updated running statistics: leave it alone
        del bn.output[1:]
        for a in list(bn.attribute):
            if a.name == "training_mode":
                bn.attribute.remove(a)
        count += 1
    return count


def _bn_affine(g: Graph, bn: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    """(scale, shift) per channel of an inference-mode BN with constant parameters."""
    if len([o for o in bn.output if o]) > 1 or attr(bn, "training_mode", 0):
        return None  # training-mode BN (batchnorm_inference_mode converts the safe ones)
    params = [g.const(name) for name in bn.input[1:5]]
    if any(p is None for p in params):
        return None
    gamma, beta, mean, var = (np.asarray(p, np.float64) for p in params)
    scale = gamma / np.sqrt(var + attr(bn, "epsilon", 1e-5))
    return scale, beta - mean * scale


def _conv_params(g: Graph, conv: onnx.NodeProto) -> tuple[np.ndarray, np.ndarray] | None:
    w = g.const(conv.input[1])
    if w is None:
        return None
    b = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(w.shape[0], w.dtype)
    return (None if b is None else (np.asarray(w, np.float64), np.asarray(b, np.float64)))


def _set_conv_params(g: Graph, conv: onnx.NodeProto, w: np.ndarray, b: np.ndarray) -> None:
    """New initializers (the old ones may be shared by other nodes; cleanup drops unused)."""
    conv.input[1] = g.add_initializer(conv.input[1] or "W", w.astype(np.float32))
    bias = g.add_initializer((conv.input[1] + "_bias"), b.astype(np.float32))
    if len(conv.input) > 2:
        conv.input[2] = bias
    else:
        conv.input.append(bias)


def _sole_consumer_conv(g: Graph, tensor: str) -> onnx.NodeProto | None:
    """The Conv that produces ``tensor`` when nothing else reads it."""
    if tensor in g.graph_outputs():
        return None
    producer = g.producers().get(tensor)
    if producer is None or producer.op_type != "Conv" or len(g.consumers()[tensor]) != 1:
        return None
    return producer


def _absorb(g: Graph, conv: onnx.NodeProto, node: onnx.NodeProto, scale: np.ndarray, shift: np.ndarray) -> bool:
    """Fold y = scale * conv(x) + shift (per output channel) into ``conv``; drop ``node``."""
    params = _conv_params(g, conv)
    if params is None:
        return False
    w, b = params
    if scale.shape[0] != w.shape[0]:
        return False
    _set_conv_params(g, conv, w * scale.reshape(-1, *([1] * (w.ndim - 1))), b * scale + shift)
    conv.output[0] = node.output[0]
    g.remove(node)
    return True


def fold_batchnorm(g: Graph) -> int:
    """Conv -> BatchNormalization  ==>  Conv with folded weights and bias."""
    count = 0
    for bn in g.nodes:
        if bn.op_type != "BatchNormalization":
            continue
        conv = _sole_consumer_conv(g, bn.input[0])
        affine = _bn_affine(g, bn)
        if conv is not None and affine is not None and _absorb(g, conv, bn, *affine):
            count += 1
    if count:
        g.cleanup()
    return count


def fold_affine_into_conv(g: Graph) -> int:
    """Conv -> Mul(const per channel) and Conv -> Add(const per channel) (BN as exported by
    tf2onnx and others)  ==>  Conv with folded weights and bias."""
    count = 0
    changed = True
    while changed:
        changed = False
        for node in g.nodes:
            if node.op_type not in ("Mul", "Add") or len(node.input) != 2:
                continue
            for data, const in ((node.input[0], node.input[1]), (node.input[1], node.input[0])):
                value = g.const(const)
                conv = _sole_consumer_conv(g, data) if value is not None else None
                if conv is None:
                    continue
                w = g.const(conv.input[1])
                vec = channel_vector(value, w.shape[0]) if w is not None else None
                if vec is None:
                    continue
                ones, zeros = np.ones_like(vec, np.float64), np.zeros_like(vec, np.float64)
                scale, shift = (vec.astype(np.float64), zeros) if node.op_type == "Mul" else (ones, vec.astype(np.float64))
                if _absorb(g, conv, node, scale, shift):
                    count += 1
                    changed = True
                    break
            if changed:
                break
    if count:
        g.cleanup()
    return count


def fold_batchnorm_forward(g: Graph) -> int:
    """BN (after ReLU, Keras order) -> Conv without padding  ==>  Conv with folded weights.

    conv(s*x + t) = conv_{W*s}(x) + sum(W*t): exact only when the conv pads nothing, since
    a zero-padded border of s*x + t is not s*(zero-padded x) + t. Padded convs are left for
    batchnorm_to_affine.
    """
    count = 0
    for bn in g.nodes:
        if bn.op_type != "BatchNormalization" or bn.output[0] in g.graph_outputs():
            continue
        users = g.consumers()[bn.output[0]]
        if len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != bn.output[0]:
            continue
        conv = users[0]
        affine, params = _bn_affine(g, bn), _conv_params(g, conv)
        if affine is None or params is None or conv_has_padding(conv) or attr(conv, "group", 1) != 1:
            continue
        s, t = affine
        w, b = params
        if w.shape[1] != s.shape[0]:
            continue
        new_b = b + np.einsum("oihw,i->o", w, t) if w.ndim == 4 else b + (w.reshape(w.shape[0], w.shape[1], -1).sum(2) @ t)
        _set_conv_params(g, conv, w * s.reshape(1, -1, *([1] * (w.ndim - 2))), new_b)
        conv.input[0] = bn.input[0]
        g.remove(bn)
        count += 1
    if count:
        g.cleanup()
    return count


def batchnorm_to_affine(g: Graph) -> int:
    """Any BN left (not after a Conv, not before an unpadded Conv)  ==>  Mul + Add per channel.

    Exact, and TensorRT runs the pair as one scale layer; no BatchNormalization node remains.
    """
    count = 0
    for bn in g.nodes:
        if bn.op_type != "BatchNormalization":
            continue
        affine = _bn_affine(g, bn)
        if affine is None:
            continue
        s, t = affine
        shape = (1, -1, 1, 1)
        s_name = g.add_initializer(bn.name or "bn_scale", s.astype(np.float32).reshape(shape))
        t_name = g.add_initializer(bn.name or "bn_shift", t.astype(np.float32).reshape(shape))
        mid = g.fresh(bn.output[0] + "_scaled")
        idx = list(g.g.node).index(bn)
        g.remove(bn)
        g.g.node.insert(idx, helper.make_node("Add", [mid, t_name], [bn.output[0]], name=(bn.name or "bn") + "_shift"))
        g.g.node.insert(idx, helper.make_node("Mul", [bn.input[0], s_name], [mid], name=(bn.name or "bn") + "_scale"))
        count += 1
    if count:
        g.cleanup()
    return count
