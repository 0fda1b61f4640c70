"""The pixel-input CPU artifact: uint8 RGB pixels in (N x H x W x 3, at the model's input size), the
model's normalisation folded into its first convolution.

An edge app holds uint8 pixels. The float CPU artifact makes it normalise them in numpy (a float
pass over the image) only for ONNX Runtime to quantize them back to uint8 and transpose them to
NHWC (two more passes). Here the pixels are the first conv's quantized input as they are:

    x_c = (p_c / 255 - mean_c) / std_c          (the model's preprocessing, channel c)
    conv(x) = sum W[o,c,k] x_c = sum W'[o,c,k] (p_c - Z) + sum W'[o,c,k] (Z - 255 mean_c)

with W'[o,c,k] = W[o,c,k] / (255 std_c) quantized per output channel like every other weight,
input scale 1 and zero point Z, and the per-channel offset (255 mean_c - Z) folded into the
bias. Inside the image this is exact. The conv's zero padding is where it is not: padding holds
the input zero point, so the border taps see pixel value Z where the float model sees the channel
mean (255 mean_c). ``border_offset`` is that gap in pixel units (0 for a model whose channels share
one mean on the 0-255 grid, e.g. raw pixels; about 10 for ImageNet's means): build() measures the
artifact against FP32 on real images like every other artifact.

ONNX Runtime keeps the whole network in uint8 NHWC: the input needs neither a Quantize nor a
Transpose (the NHWC->NCHW Transpose written here cancels against its own layout change).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from rescompile.data.preprocess import Preprocessing
from rescompile.stages.calibrate.qdq import copy_graph, quantize_weights
from rescompile.stages.optimize.graph import Graph

PIXELS_INPUT = "pixels"
# ONNX metadata key: the artifact takes uint8 pixels (the runtime checks it before feeding raw images).
PIXELS_METADATA_KEY = "rescompile.input"


@dataclass(frozen=True)
class PixelFold:
    model: onnx.ModelProto | None
    zero_point: int = 0
    border_offset: float = 0.0  # max |255 mean_c - Z| over channels, in pixel units
    reason: str = ""  # why there is no pixel-input model, when model is None


def _input_conv(g: Graph, layout: str) -> tuple[onnx.NodeProto | None, list[str], str]:
    """(the Conv the graph input goes straight into, the ops passed on the way, or why there is none).

    Straight means one reader at each step, through Q/DQ nodes and, for an NHWC model, one
    Transpose to NCHW: the only ops that move the input without computing from it.
    """
    if len(g.g.input) != 1:
        return None, [], "the model has more than one input"
    consumers = g.consumers()
    src, passed = g.g.input[0].name, []
    while True:
        readers = consumers.get(src, [])
        if len(readers) != 1:
            return None, passed, "the model input does not go straight into one convolution"
        node = readers[0]
        if node.op_type == "Conv":
            break
        if node.op_type == "Transpose" and ("Transpose" in passed or layout != "nhwc" or list(node.attribute[0].ints) != [0, 3, 1, 2]):
            return None, passed, "the input reaches the first conv through a Transpose that is not NHWC -> NCHW"
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear", "Transpose"):
            return None, passed, "the model input does not go straight into one convolution"
        passed.append(node.op_type)
        src = node.output[0]
    if (layout == "nhwc") != ("Transpose" in passed):
        return None, passed, f"the input layout ({layout}) does not match the graph"
    return node, passed, ""


def pixel_input_model(cpu: onnx.ModelProto, fp32: onnx.ModelProto, prep: Preprocessing, *, reduce_range: bool) -> PixelFold:
    """The CPU Q/DQ model ``cpu`` rewritten to take uint8 pixels (see module docstring).

    ``fp32`` is the optimized float model ``cpu`` was made from: the first conv's weights are
    folded from its float values, not from their int8 rounding.
    """
    g = copy_graph(cpu)
    conv, passed, why = _input_conv(g, prep.layout)
    if conv is None:
        return PixelFold(None, reason=why)
    x = g.g.input[0]
    if x.type.tensor_type.elem_type != TensorProto.FLOAT:
        return PixelFold(None, reason="the model input is not float")
    if passed[:2] != ["QuantizeLinear", "DequantizeLinear"]:
        return PixelFold(None, reason="the model input is not quantized")
    producers = g.producers()
    wdq = producers.get(conv.input[1])
    if wdq is None or wdq.op_type != "DequantizeLinear":
        return PixelFold(None, reason="the first convolution is not quantized")
    fg = Graph(fp32)
    fconv, _, _ = _input_conv(fg, prep.layout)
    w = fg.const(fconv.input[1]) if fconv is not None else None
    qw_old = g.const(wdq.input[0])
    if w is None or qw_old is None or w.shape != qw_old.shape:
        return PixelFold(None, reason="the first convolution's float weights are not in the float model")
    b = fg.const(fconv.input[2]) if len(fconv.input) > 2 and fconv.input[2] else None
    if w.ndim != 4 or w.shape[1] != 3:
        return PixelFold(None, reason="the first convolution does not take 3 channels")
    if int(next((a.i for a in conv.attribute if a.name == "group"), 1)) != 1:
        return PixelFold(None, reason="the first convolution is grouped")

    mean = np.asarray(prep.mean, np.float64) * 255.0
    std = np.asarray(prep.std, np.float64) * 255.0
    if prep.channel_order == "bgr":  # the model's channel c reads pixel channel 2 - c
        w, mean, std = w[:, ::-1], mean[::-1], std[::-1]  # mean and std are given in the model's channel order
    w = w.astype(np.float64)
    # Z: the integer closest to the middle of the channel means, so the border gap is smallest.
    zp = int(np.clip(np.round((mean.max() + mean.min()) / 2.0), 0, 255))
    w_pix = (w / std.reshape(1, 3, 1, 1)).astype(np.float32)
    bias = (np.zeros(w.shape[0]) if b is None else b.astype(np.float64)) + (w_pix.astype(np.float64) * (zp - mean).reshape(1, 3, 1, 1)).sum((1, 2, 3))
    qw, sw = quantize_weights(w_pix, 0, 63 if reduce_range else 127)
    qb = np.round(bias / sw.astype(np.float64)).astype(np.int64)
    if np.abs(qb).max(initial=0) >= 2**31:
        return PixelFold(None, reason="the folded bias does not fit int32")

    # The pixels: uint8 N x H x W x 3, scale 1, zero point Z, read straight by the conv.
    dims = x.type.tensor_type.shape.dim
    n_dim = dims[0].dim_param or (dims[0].dim_value if dims[0].dim_value > 0 else "batch")
    size = prep.input_size
    taken = {t for n in g.g.node for t in (*n.input, *n.output)} | set(g.initializers())
    name = PIXELS_INPUT if PIXELS_INPUT not in taken else g.fresh(PIXELS_INPUT)
    one = g.add_initializer("pixels_scale", np.asarray(1.0, np.float32))
    z = g.add_initializer("pixels_zp", np.asarray(zp, np.uint8))
    pix_dq, nchw, nchw_q, nchw_dq = (g.fresh(f"pixels_{s}") for s in ("dq", "nchw", "nchw_q", "nchw_dq"))
    new_nodes = [
        helper.make_node("DequantizeLinear", [name, one, z], [pix_dq], name=pix_dq),
        helper.make_node("Transpose", [pix_dq], [nchw], name=nchw, perm=[0, 3, 1, 2]),
        helper.make_node("QuantizeLinear", [nchw, one, z], [nchw_q], name=nchw_q),
        helper.make_node("DequantizeLinear", [nchw_q, one, z], [nchw_dq], name=nchw_dq),
    ]
    w_name = g.add_initializer(f"{conv.name}_pixels_w", qw)
    ws = g.add_initializer(f"{conv.name}_pixels_w_scale", sw)
    wz = g.add_initializer(f"{conv.name}_pixels_w_zp", np.zeros(sw.shape, np.int8))
    b_name = g.add_initializer(f"{conv.name}_pixels_b", qb.astype(np.int32))
    bs = g.add_initializer(f"{conv.name}_pixels_b_scale", sw.astype(np.float32))
    bz = g.add_initializer(f"{conv.name}_pixels_b_zp", np.zeros(sw.shape, np.int32))
    w_dq, b_dq = g.fresh(f"{conv.name}_pixels_w_dq"), g.fresh(f"{conv.name}_pixels_b_dq")
    new_nodes += [
        helper.make_node("DequantizeLinear", [w_name, ws, wz], [w_dq], name=w_dq, axis=0),
        helper.make_node("DequantizeLinear", [b_name, bs, bz], [b_dq], name=b_dq, axis=0),
    ]
    conv.input[0] = nchw_dq
    conv.input[1] = w_dq
    if len(conv.input) > 2:
        conv.input[2] = b_dq
    else:
        conv.input.append(b_dq)
    pos = list(g.g.node).index(conv)
    for i, n in enumerate(new_nodes):
        g.g.node.insert(pos + i, n)
    del g.g.input[:]
    g.g.input.append(helper.make_tensor_value_info(name, TensorProto.UINT8, [n_dim, size, size, 3]))
    g.cleanup()
    meta = {p.key: p.value for p in g.model.metadata_props}
    meta[PIXELS_METADATA_KEY] = "uint8-rgb-nhwc"
    del g.model.metadata_props[:]
    for k, v in meta.items():
        g.model.metadata_props.add(key=k, value=v)
    return PixelFold(g.model, zp, float(np.abs(mean - zp).max()))
