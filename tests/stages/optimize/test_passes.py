"""Each graph pass on small hand-built graphs, with before/after equivalence in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from rescompile.errors import ModelError
from rescompile.stages.optimize import PASSES, optimize_model
from rescompile.stages.optimize.graph import Graph
from tests.stages.optimize.graphs import (
    assert_equivalent, bn_node, bn_params, classifier, conv_node, conv_params, init, ops,
)


def optimize(model):
    after, report = optimize_model(model)
    return after, report


@pytest.mark.parametrize("bias", [True, False])
def test_fold_batchnorm_after_conv(bias):
    model = classifier(
        [conv_node("c1", "input", "a", bias=bias), bn_node("bn1", "a", "b"), helper.make_node("Relu", ["b"], ["feat"])],
        conv_params("c1", 3, 6, bias=bias) + bn_params("bn1", 6),
        channels=6,
    )
    after, report = optimize(model)
    assert report.rewrites["fold_batchnorm"] == 1 and "BatchNormalization" not in ops(after)
    assert ops(after)[:2] == ["Conv", "Relu"]
    assert_equivalent(model, after)


@pytest.mark.parametrize("as_constant_nodes", [False, True])
def test_fold_mul_add_batchnorm(as_constant_nodes):
    rng = np.random.default_rng(1)
    scale, shift = rng.uniform(0.5, 2, (1, 6, 1, 1)), rng.standard_normal((6, 1, 1))
    nodes = [conv_node("c1", "input", "a"), helper.make_node("Mul", ["a", "s"], ["m"]), helper.make_node("Add", ["t", "m"], ["b"]),
             helper.make_node("Relu", ["b"], ["feat"])]
    inits = conv_params("c1", 3, 6)
    if as_constant_nodes:  # what tf2onnx emits
        nodes = [
            helper.make_node("Constant", [], ["s"], value=numpy_helper.from_array(scale.astype(np.float32))),
            helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(shift.astype(np.float32))),
        ] + nodes
    else:
        inits += [init("s", scale), init("t", shift)]
    model = classifier(nodes, inits, channels=6)
    after, report = optimize(model)
    assert report.rewrites["fold_affine_into_conv"] == 2
    assert [o for o in ops(after) if o in ("Mul", "Add")] == []
    assert_equivalent(model, after)


def test_mul_with_spatial_constant_is_not_folded():
    model = classifier(
        [conv_node("c1", "input", "a"), helper.make_node("Mul", ["a", "s"], ["feat"])],
        conv_params("c1", 3, 4) + [init("s", np.random.default_rng(2).standard_normal((1, 4, 8, 8)))],
        channels=4,
    )
    after, report = optimize(model)
    assert report.rewrites["fold_affine_into_conv"] == 0 and "Mul" in ops(after)
    assert_equivalent(model, after)


def keras_order(pad: int):
    """Conv -> ReLU -> BN -> Conv (BN after the activation, as in many Keras tutorials)."""
    return classifier(
        [
            conv_node("c1", "input", "a", pad=1),
            helper.make_node("Relu", ["a"], ["r"]),
            bn_node("bn1", "r", "b"),
            conv_node("c2", "b", "c", pad=pad),
            helper.make_node("Relu", ["c"], ["feat"]),
        ],
        conv_params("c1", 3, 6) + bn_params("bn1", 6) + conv_params("c2", 6, 5),
        channels=5,
    )


def test_keras_bn_before_unpadded_conv_folds_forward():
    model = keras_order(pad=0)
    after, report = optimize(model)
    assert report.rewrites["fold_batchnorm_forward"] == 1
    assert ops(after)[:4] == ["Conv", "Relu", "Conv", "Relu"]
    assert_equivalent(model, after)


def test_keras_bn_before_padded_conv_becomes_exact_affine():
    model = keras_order(pad=1)
    after, report = optimize(model)
    # Folding forward through a zero-padded conv would change the border: keep it exact.
    assert report.rewrites["fold_batchnorm_forward"] == 0 and report.rewrites["batchnorm_to_affine"] == 1
    assert "BatchNormalization" not in ops(after) and report.bn_after == 0
    assert_equivalent(model, after)


def test_remove_noops():
    shape = helper.make_tensor("shape", TensorProto.INT64, [4], [0, 6, 8, 8])  # Reshape to the same shape
    nodes = [
        conv_node("c1", "input", "a"),
        helper.make_node("Identity", ["a"], ["i"]),
        helper.make_node("Dropout", ["i"], ["d"]),
        helper.make_node("Cast", ["d"], ["k"], to=TensorProto.FLOAT),
        helper.make_node("Reshape", ["k", "shape"], ["rs"]),
        helper.make_node("Transpose", ["rs"], ["t1"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 3, 1, 2]),
        helper.make_node("Relu", ["t2"], ["feat"]),
    ]
    model = classifier(nodes, conv_params("c1", 3, 6) + [shape], channels=6)
    after, report = optimize(model)
    assert report.rewrites["remove_noops"] == 5  # the Transpose pair counts once
    assert ops(after)[:2] == ["Conv", "Relu"]
    for op in ("Identity", "Dropout", "Cast", "Reshape", "Transpose"):
        assert op not in ops(after), op
    assert_equivalent(model, after)


def test_transposes_that_do_not_cancel_are_kept():
    nodes = [
        conv_node("c1", "input", "a"),
        helper.make_node("Transpose", ["a"], ["t1"], perm=[0, 1, 3, 2]),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["t2"], ["feat"], perm=[0, 2, 1, 3]),
    ]
    model = classifier(nodes, conv_params("c1", 3, 6), channels=6)
    after, _ = optimize(model)
    assert_equivalent(model, after)
    # the middle pair cancels; the first (a real H/W swap) must stay
    assert ops(after).count("Transpose") == 1


def test_flatten_of_2d_is_removed_and_graph_output_identity_keeps_its_name():
    model = classifier([conv_node("c1", "input", "feat")], conv_params("c1", 3, 4), channels=4)
    g = model.graph
    g.node.append(helper.make_node("Flatten", ["logits"], ["flat2"], axis=1))
    g.node.append(helper.make_node("Identity", ["flat2"], ["out"]))
    g.output[0].name = "out"
    after, report = optimize(model)
    assert report.rewrites["remove_noops"] == 2
    assert [o.name for o in after.graph.output] == ["out"] and ops(after)[-1] == "Gemm"
    assert_equivalent(model, after)


def test_training_mode_batchnorm_uses_running_statistics():
    model = classifier(
        [conv_node("c1", "input", "a"), bn_node("bn1", "a", "feat")], conv_params("c1", 3, 4) + bn_params("bn1", 4), channels=4
    )
    reference = onnx.ModelProto()
    reference.CopyFrom(model)
    bn = model.graph.node[1]
    bn.attribute.append(helper.make_attribute("training_mode", 1))
    bn.output.extend(["rm", "rv"])
    after, report = optimize(model)
    assert report.rewrites["batchnorm_inference_mode"] == 1 and report.bn_after == 0
    assert_equivalent(reference, after)


def test_passes_are_idempotent_on_every_small_graph():
    for model in (keras_order(0), keras_order(1)):
        once, _ = optimize(model)
        _, second = optimize(once)
        assert sum(second.rewrites.values()) == 0


def test_dynamic_weights_are_refused():
    nodes = [
        helper.make_node("ReduceMax", ["input"], ["mx"], keepdims=0),
        helper.make_node("Mul", ["c1.w", "mx"], ["w_dyn"]),
        helper.make_node("Conv", ["input", "w_dyn"], ["feat"], pads=[1, 1, 1, 1], name="c1"),
    ]
    model = classifier(nodes, conv_params("c1", 3, 4, bias=False), channels=4)
    with pytest.raises(ModelError, match="takes its weights from 'w_dyn', which is computed at run time"):
        optimize(model)


def test_every_pass_returns_a_count():
    model = keras_order(1)
    g = Graph(model)
    for name, fn in PASSES.items():
        assert isinstance(fn(g), int), name
