"""Small ONNX graphs built with onnx.helper, and running them with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from rescompile.stages.optimize import run_reference

RNG = np.random.default_rng(0)


def init(name: str, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array, np.float32), name)


def conv_params(prefix: str, cin: int, cout: int, k: int = 3, bias: bool = True):
    inits = [init(f"{prefix}.w", RNG.standard_normal((cout, cin, k, k)) * (2.0 / (cin * k * k)) ** 0.5)]
    if bias:
        inits.append(init(f"{prefix}.b", RNG.standard_normal(cout) * 0.1))
    return inits


def bn_params(prefix: str, c: int):
    return [
        init(f"{prefix}.gamma", RNG.uniform(0.5, 1.5, c)),
        init(f"{prefix}.beta", RNG.standard_normal(c) * 0.2),
        init(f"{prefix}.mean", RNG.standard_normal(c) * 0.3),
        init(f"{prefix}.var", RNG.uniform(0.5, 2.0, c)),
    ]


def bn_node(prefix: str, x: str, y: str) -> onnx.NodeProto:
    return helper.make_node(
        "BatchNormalization", [x, f"{prefix}.gamma", f"{prefix}.beta", f"{prefix}.mean", f"{prefix}.var"], [y], epsilon=1e-5
    )


def conv_node(prefix: str, x: str, y: str, pad: int = 1, bias: bool = True) -> onnx.NodeProto:
    inputs = [x, f"{prefix}.w"] + ([f"{prefix}.b"] if bias else [])
    return helper.make_node("Conv", inputs, [y], pads=[pad] * 4, name=prefix)


def classifier(nodes, inits, channels: int, classes: int = 5, size: int = 8, last: str = "feat") -> onnx.ModelProto:
    """Wrap ``nodes`` (reading 'input', ending in ``last`` with ``channels`` maps) in a head."""
    head = [
        helper.make_node("GlobalAveragePool", [last], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], transB=1),
    ]
    inits = list(inits) + [init("fc.w", RNG.standard_normal((classes, channels)) * 0.3), init("fc.b", np.zeros(classes))]
    graph = helper.make_graph(
        list(nodes) + head,
        "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return run_reference(model, x)


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def assert_equivalent(before: onnx.ModelProto, after: onnx.ModelProto, size: int = 8, atol: float = 1e-4) -> float:
    x = RNG.standard_normal((3, 3, size, size)).astype(np.float32)
    ref, got = run(before, x), run(after, x)
    diff = float(np.abs(ref - got).max())
    assert diff <= atol * max(1.0, float(np.abs(ref).max())), (diff, float(np.abs(ref).max()))
    return diff
