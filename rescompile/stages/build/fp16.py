"""An FP16 copy of the optimized FP32 ONNX, for TensorRT 11's strongly typed FP16 engines.

TensorRT 11 builds the types the network declares, so FP16 needs an FP16 network. Weights and
constants become float16; the model keeps float32 input and output (a Cast after the input and
before the output), so applications feed and read the same arrays as with FP32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP16_MAX = float(np.finfo(np.float16).max)


def _to_fp16(t: onnx.TensorProto) -> onnx.TensorProto:
    a = numpy_helper.to_array(t)
    if np.abs(a).max(initial=0.0) > FP16_MAX:
        raise ValueError(f"{t.name} holds values beyond float16's range")
    return numpy_helper.from_array(a.astype(np.float16), t.name)


def fp16_from_fp32(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return an FP16 copy of ``model`` (float32 I/O kept through Casts)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for i, t in enumerate(g.initializer):
        if t.data_type == TensorProto.FLOAT:
            g.initializer[i].CopyFrom(_to_fp16(t))
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Constant" and a.name == "value" and a.t.data_type == TensorProto.FLOAT:
                a.t.CopyFrom(_to_fp16(a.t))
        if node.op_type == "Cast":
            for a in node.attribute:
                if a.name == "to" and a.i == TensorProto.FLOAT:
                    a.i = TensorProto.FLOAT16
    inits = {t.name for t in g.initializer}
    casts_in = []
    for inp in g.input:
        if inp.name in inits or inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{inp.name}_fp16"
        for node in g.node:
            for k, name in enumerate(node.input):
                if name == inp.name:
                    node.input[k] = half
        casts_in.append(helper.make_node("Cast", [inp.name], [half], name=f"{inp.name}_to_fp16", to=TensorProto.FLOAT16))
    casts_out = []
    for outp in g.output:
        if outp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        half = f"{outp.name}_fp16"
        for node in g.node:
            for k, name in enumerate(node.output):
                if name == outp.name:
                    node.output[k] = half
            for k, name in enumerate(node.input):
                if name == outp.name:
                    node.input[k] = half
        casts_out.append(helper.make_node("Cast", [half], [outp.name], name=f"{outp.name}_to_fp32", to=TensorProto.FLOAT))
    nodes = casts_in + list(g.node) + casts_out
    del g.node[:]
    g.node.extend(nodes)
    del g.value_info[:]
    return out
