"""The Q/DQ lint: rescompile's placement passes, each TensorRT rule is caught and named."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rescompile.stages.calibrate.lint import RULES, LintReport, lint_qdq
from rescompile.stages.optimize.graph import Graph
from rescompile.stages.optimize.residual import find_residual_blocks
from tests.stages.optimize.graphs import RNG, init, run


class _Builder:
    """A small ResNet quantized the rescompile way: own Q/DQ per quantized input, symmetric int8."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []

    def qdq(self, x: str, tag: str, scale: float = 0.05) -> str:
        self.inits += [init(f"{tag}.s", scale), numpy_helper.from_array(np.array(0, np.int8), f"{tag}.zp")]
        self.nodes += [
            helper.make_node("QuantizeLinear", [x, f"{tag}.s", f"{tag}.zp"], [f"{tag}.q"], name=f"{tag}.Q"),
            helper.make_node("DequantizeLinear", [f"{tag}.q", f"{tag}.s", f"{tag}.zp"], [f"{tag}.dq"], name=f"{tag}.DQ"),
        ]
        return f"{tag}.dq"

    def weight(self, prefix: str, shape: tuple[int, ...], axis: int = 0) -> str:
        w = RNG.standard_normal(shape).astype(np.float32)
        scale = np.abs(np.moveaxis(w, axis, 0).reshape(shape[axis], -1)).max(1) / 127
        bshape = [1] * len(shape)
        bshape[axis] = -1
        q = np.clip(np.round(w / scale.reshape(bshape)), -127, 127).astype(np.int8)
        self.inits += [
            numpy_helper.from_array(q, f"{prefix}.wq"),
            init(f"{prefix}.ws", scale),
            numpy_helper.from_array(np.zeros(shape[axis], np.int8), f"{prefix}.wzp"),
        ]
        inputs = [f"{prefix}.wq", f"{prefix}.ws", f"{prefix}.wzp"]
        self.nodes.append(helper.make_node("DequantizeLinear", inputs, [f"{prefix}.wdq"], name=f"{prefix}.wDQ", axis=axis))
        return f"{prefix}.wdq"

    def conv(self, prefix: str, x: str, cin: int, cout: int, k: int = 3, stride: int = 1) -> str:
        xq, w = self.qdq(x, f"{prefix}.in"), self.weight(prefix, (cout, cin, k, k))
        self.inits.append(init(f"{prefix}.b", RNG.standard_normal(cout) * 0.1))
        self.nodes.append(helper.make_node(
            "Conv", [xq, w, f"{prefix}.b"], [f"{prefix}.out"], name=prefix,
            kernel_shape=[k, k], pads=[k // 2] * 4, strides=[stride] * 2,
        ))
        return f"{prefix}.out"

    def relu(self, x: str) -> str:
        self.nodes.append(helper.make_node("Relu", [x], [f"{x}.relu"], name=f"{x}.Relu"))
        return f"{x}.relu"

    def block(self, prefix: str, x: str, cin: int, cout: int, stride: int = 1, skip_first: bool = False) -> str:
        y = self.conv(f"{prefix}.c2", self.relu(self.conv(f"{prefix}.c1", x, cin, cout, stride=stride)), cout, cout)
        skip = x if cin == cout and stride == 1 else self.conv(f"{prefix}.proj", x, cin, cout, k=1, stride=stride)
        skip = self.qdq(skip, f"{prefix}.skip")
        inputs = [skip, y] if skip_first else [y, skip]
        self.nodes.append(helper.make_node("Add", inputs, [f"{prefix}.sum"], name=f"{prefix}.add"))
        return self.relu(f"{prefix}.sum")


def resnet(trans_b: int = 1, classes: int = 5) -> onnx.ModelProto:
    """Stem, an identity block, a 1x1 projection block (skip first on the Add), GAP/Flatten/Gemm."""
    b = _Builder()
    x = b.relu(b.conv("stem", "input", 3, 4))
    x = b.block("b1", x, 4, 4)
    x = b.block("b2", x, 4, 8, stride=2, skip_first=True)
    b.nodes += [
        helper.make_node("GlobalAveragePool", [b.qdq(x, "gap.in")], ["pooled"], name="gap"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
    ]
    w = b.weight("fc", (classes, 8) if trans_b else (8, classes), axis=0 if trans_b else 1)
    b.inits.append(init("fc.b", np.zeros(classes)))
    b.nodes.append(helper.make_node("Gemm", [b.qdq("flat", "fc.in"), w, "fc.b"], ["logits"], name="fc", transB=trans_b))
    graph = helper.make_graph(
        b.nodes, "qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        b.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def node(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.name == name)


def set_init(model: onnx.ModelProto, name: str, value: np.ndarray) -> None:
    old = next(t for t in model.graph.initializer if t.name == name)
    old.CopyFrom(numpy_helper.from_array(value, name))


def found(report: LintReport) -> set[tuple[str, str]]:
    return {(v.rule, v.node) for v in report.violations}


# -- what must pass ----------------------------------------------------------------------
@pytest.mark.parametrize("trans_b", [1, 0])
def test_rescompile_placement_passes(trans_b):
    model = resnet(trans_b)
    assert run(model, RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)).shape == (2, 5)  # a valid model
    report = lint_qdq(model)
    assert report.passed, report.violations
    assert (report.checked_layers, report.residual_adds) == (7, 2)
    assert report.to_dict() == {"passed": True, "checked_layers": 7, "residual_adds": 2, "counts": {}, "violations": []}


def test_blocks_are_found_through_qdq():
    blocks = find_residual_blocks(Graph(resnet()))
    assert [(b.kind, b.skip, b.add) for b in blocks] == [("basic", "identity", "b1.sum"), ("basic", "projection", "b2.sum")]
    assert [(b.skip_input, b.branch_input) for b in blocks] == [("b1.skip.dq", "b1.c2.out"), ("b2.skip.dq", "b2.c2.out")]
    assert blocks[0].branch_convs == ["b1.c1", "b1.c2"] and blocks[1].skip_convs == ["b2.proj"]
    assert all(b.add_relu_fusable for b in blocks)


def test_qdq_on_a_float_constant_weight_passes():
    model = resnet()
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "b1.c1.wq"))
    model.graph.initializer.append(numpy_helper.from_array(w.astype(np.float32) * 0.01, "b1.c1.wf"))
    dq = node(model, "b1.c1.wDQ")
    q = helper.make_node("QuantizeLinear", ["b1.c1.wf", dq.input[1], dq.input[2]], ["b1.c1.wq2"], name="b1.c1.wQ", axis=0)
    model.graph.node.insert(list(model.graph.node).index(dq), q)
    dq.input[0] = "b1.c1.wq2"
    assert lint_qdq(model).passed
    node(model, "b1.c1.wQ").attribute[0].i = 1  # the Q on the constant is checked like the DQ
    assert found(lint_qdq(model)) == {("per-channel-weight", "b1.c1.wQ")}


# -- each rule, alone and named ----------------------------------------------------------
def test_nonzero_zero_point():
    model = resnet()
    set_init(model, "b1.c1.in.zp", np.array(3, np.int8))
    assert found(lint_qdq(model)) == {("zero-point", "b1.c1.in.Q"), ("zero-point", "b1.c1.in.DQ")}


def test_missing_zero_point_means_uint8():
    model = resnet()
    for name in ("b1.c1.in.Q", "b1.c1.in.DQ"):
        del node(model, name).input[2]
    report = lint_qdq(model)
    assert found(report) == {("zero-point", "b1.c1.in.Q"), ("zero-point", "b1.c1.in.DQ")}
    assert "uint8" in report.violations[0].message


def test_uint8_activation():
    model = resnet()
    set_init(model, "b2.skip.zp", np.array(0, np.uint8))
    assert found(lint_qdq(model)) == {("int8", "b2.skip.Q"), ("int8", "b2.skip.DQ")}
    set_init(model, "b2.skip.zp", np.array(128, np.uint8))
    assert {r for r, _ in found(lint_qdq(model))} == {"int8", "zero-point"}


def test_per_channel_activation():
    model = resnet()
    set_init(model, "b1.c1.in.s", np.full(4, 0.05, np.float32))
    set_init(model, "b1.c1.in.zp", np.zeros(4, np.int8))
    for name in ("b1.c1.in.Q", "b1.c1.in.DQ"):
        node(model, name).attribute.append(helper.make_attribute("axis", 1))
    assert found(lint_qdq(model)) == {("per-tensor-activation", "b1.c1.in.Q"), ("per-tensor-activation", "b1.c1.in.DQ")}


@pytest.mark.parametrize("defect", ["per-tensor", "axis", "length", "gemm-axis"])
def test_weight_not_per_output_channel(defect):
    model = resnet(trans_b=0 if defect == "gemm-axis" else 1)
    target = "fc.wDQ" if defect == "gemm-axis" else "b1.c2.wDQ"
    if defect == "per-tensor":
        set_init(model, "b1.c2.ws", np.array(0.01, np.float32))
        set_init(model, "b1.c2.wzp", np.array(0, np.int8))
    elif defect == "axis":
        node(model, target).attribute[0].i = 1  # Conv weight [out, in, kh, kw] with in == out: valid ONNX, wrong axis
    elif defect == "length":
        set_init(model, "b1.c2.ws", np.full(2, 0.01, np.float32))
        set_init(model, "b1.c2.wzp", np.zeros(2, np.int8))
    else:
        node(model, target).attribute[0].i = 0  # transB=0: the output channels are on axis 1
    report = lint_qdq(model)
    assert found(report) == {("per-channel-weight", target)}
    assert target in report.violations[0].message and "axis" in report.violations[0].message


def test_unquantized_input_and_weight_and_float_layers():
    model = resnet()
    conv = node(model, "b1.c2")
    conv.input[0] = node(model, "b1.c2.in.Q").input[0]  # bypass the Q/DQ
    assert found(lint_qdq(model)) == {("unquantized-input", "b1.c2")}
    model.graph.initializer.append(init("fc.wf", RNG.standard_normal((5, 8))))
    node(model, "fc").input[1] = "fc.wf"
    model.graph.node.remove(node(model, "fc.wDQ"))
    report = lint_qdq(model)
    assert found(report) == {("unquantized-input", "b1.c2"), ("unquantized-weight", "fc")}
    assert "DequantizeLinear" in report.violations[1].message
    report = lint_qdq(model, float_layers=["b1.c2", "fc"])
    assert report.passed and report.checked_layers == 5


def test_unquantized_residual_skip():
    model = resnet()
    add = node(model, "b2.add")
    add.input[0] = node(model, "b2.skip.Q").input[0]
    assert found(lint_qdq(model)) == {("residual-skip", "b2.add")}


def test_qdq_between_branch_conv_and_add():
    model = resnet()
    extra = _Builder()
    extra.qdq("b1.c2.out", "b1.branch")
    add = node(model, "b1.add")
    at = list(model.graph.node).index(add)
    for n in reversed(extra.nodes):
        model.graph.node.insert(at, n)
    model.graph.initializer.extend(extra.inits)
    add.input[0] = "b1.branch.dq"
    report = lint_qdq(model)
    assert found(report) == {("residual-branch", "b1.add")}
    assert "b1.branch.DQ" in report.violations[0].message and report.residual_adds == 2
    assert set(report.counts()) <= set(RULES)


# -- a model from ONNX Runtime's default static quantization fails -------------------------
@pytest.fixture(scope="module")
def resnet20_onnx(tmp_path_factory):
    pytest.importorskip("torch")
    from rescompile.models.load import load_model
    from rescompile.stages.export import onnx_from_torch

    path = tmp_path_factory.mktemp("lint") / "resnet20.onnx"
    m = load_model("resnet20")
    onnx_from_torch(m.module, m.spec, path)
    return path


def _ort_quantized(src, dst, **options) -> onnx.ModelProto:
    quantization = pytest.importorskip("onnxruntime.quantization")

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"input": rng.standard_normal((1, 3, 32, 32)).astype(np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantization.quantize_static(str(src), str(dst), Reader(), quant_format=quantization.QuantFormat.QDQ, **options)
    return onnx.load(str(dst))


def test_onnxruntime_default_qdq_fails(resnet20_onnx, tmp_path):
    model = _ort_quantized(resnet20_onnx, tmp_path / "q.onnx")
    blocks = find_residual_blocks(Graph(model))
    assert len(blocks) == 9  # seen through ORT's Q/DQ, so the residual rules really ran
    report = lint_qdq(model)
    assert not report.passed and report.residual_adds == 9 and report.checked_layers == 22
    rules = report.counts()
    # ORT puts Q/DQ on both Add inputs, asymmetric activations, int32 biases, per-tensor weights.
    assert {"zero-point", "int8", "residual-branch", "per-channel-weight"} <= set(rules)
    adds = {n.name for n in model.graph.node if n.output[0] in {b.add for b in blocks}}
    assert len(adds) == 9 and {v.node for v in report.violations if v.rule == "residual-branch"} == adds


def test_onnxruntime_uint8_activations_fail_int8(resnet20_onnx, tmp_path):
    quantization = pytest.importorskip("onnxruntime.quantization")
    model = _ort_quantized(resnet20_onnx, tmp_path / "q.onnx", activation_type=quantization.QuantType.QUInt8)
    report = lint_qdq(model)
    assert ("int8", "input_QuantizeLinear") in found(report)
    assert "residual-branch" in report.counts()
