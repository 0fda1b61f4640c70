"""remove_noops: nodes that compute nothing at inference but sit between fusable ops."""

from __future__ import annotations

import onnx

from rescompile.stages.optimize.graph import Graph, attr


def _same_shape(a, b) -> bool:
    return a is not None and b is not None and len(a) == len(b) and all(x is not None and x == y for x, y in zip(a, b))


def _is_noop(g: Graph, node: onnx.NodeProto) -> bool:
    op = node.op_type
    if op == "Identity":
        return True
    if op == "Dropout":
        # Inference-mode dropout (no training_mode input, or a constant false) with an unused mask.
        mask_used = len(node.output) > 1 and node.output[1] and node.output[1] in {x for n in g.g.node for x in n.input}
        training = node.input[2] if len(node.input) > 2 and node.input[2] else None
        return not mask_used and (training is None or (g.is_const(training) and not bool(g.const(training))))
    if op == "Cast":
        return g.elem_type(node.input[0]) == attr(node, "to")
    if op == "Reshape":
        return _same_shape(g.shape(node.input[0]), g.shape(node.output[0]))
    if op == "Flatten":
        shape = g.shape(node.input[0])
        return shape is not None and len(shape) == 2 and attr(node, "axis", 1) == 1
    return False


def _cancelling_transposes(g: Graph) -> int:
    count = 0
    producers, consumers = g.producers(), g.consumers()
    for second in g.nodes:
        if second.op_type != "Transpose":
            continue
        first = producers.get(second.input[0])
        if first is None or first.op_type != "Transpose" or len(consumers[first.output[0]]) != 1:
            continue
        p, q = attr(first, "perm"), attr(second, "perm")
        if p is None or q is None or len(p) != len(q):
            continue
        # out[i] = in[p[q[i]]]: the pair is the identity when p[q[i]] == i for every axis.
        if all(p[q[i]] == i for i in range(len(q))) and g.bypass(second, first.input[0]):
            g.cleanup()
            count += 1
            producers, consumers = g.producers(), g.consumers()
    return count


def remove_noops(g: Graph) -> int:
    """Identity, inference Dropout, same-type Cast, shape-preserving Reshape/Flatten, T·T⁻¹."""
    g.infer_shapes()
    count = 0
    for node in g.nodes:
        if _is_noop(g, node) and g.bypass(node, node.input[0]):
            count += 1
    count += _cancelling_transposes(g)
    if count:
        g.cleanup()
    return count
