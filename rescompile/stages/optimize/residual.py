"""Recognise residual blocks and say whether TensorRT can fuse each one.

A residual block ends in an ``Add`` of two computed tensors that share an ancestor: the
branch (Conv[-ReLU]-Conv, or the bottleneck Conv-ReLU-Conv-ReLU-Conv) and the skip
(identity, or a 1x1 projection Conv). TensorRT fuses Conv+bias+ReLU, and the branch's last
Conv with the Add and the ReLU after it, when nothing sits in between.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import onnx

from rescompile.stages.optimize.graph import Graph, attr

# Ops a block's chains may pass through while walking back to the block input. Q/DQ nodes
# are included so that blocks are still found in quantized models.
_CHAIN_OPS = {"Conv", "Relu", "BatchNormalization", "Mul", "Add", "Identity", "Dropout", "Cast", "MaxPool", "AveragePool",
              "QuantizeLinear", "DequantizeLinear"}
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_MAX_DEPTH = 32  # a quantized bottleneck branch is about 20 nodes long


@dataclass
class ResidualBlock:
    name: str
    kind: str  # basic | bottleneck | other
    skip: str  # identity | projection | other
    branch_convs: list[str]
    skip_convs: list[str]
    conv_bn_fusable: bool  # no BatchNormalization left in the block
    conv_relu_fusable: bool  # every inner branch Conv feeds its ReLU directly
    add_relu_fusable: bool  # branch's last Conv feeds the Add directly, and the Add its ReLU
    blockers: list[str] = field(default_factory=list)
    add: str = ""  # the Add node's output tensor
    skip_input: str = ""  # the Add input that comes from the skip (identity or projection)
    branch_input: str = ""  # the Add input that comes from the branch

    @property
    def fusable(self) -> bool:
        return self.conv_bn_fusable and self.conv_relu_fusable and self.add_relu_fusable


@dataclass
class FusionReport:
    blocks: list[ResidualBlock]
    bn_before: int
    bn_after: int
    nodes_before: int
    nodes_after: int
    rewrites: dict[str, int] = field(default_factory=dict)
    intake: list[str] = field(default_factory=list)  # what ONNX intake normalised in the source, one line each

    @property
    def fusable_blocks(self) -> int:
        return sum(b.fusable for b in self.blocks)

    def to_dict(self) -> dict:
        d = asdict(self)
        for b, blk in zip(d["blocks"], self.blocks):
            b["fusable"] = blk.fusable
        d["totals"] = {"residual_blocks": len(self.blocks), "fusable_blocks": self.fusable_blocks}
        return d


def _walk_back(g: Graph, tensor: str, producers) -> list[tuple[str, onnx.NodeProto | None]]:
    """[(tensor, node that produced it)] from ``tensor`` back along data inputs."""
    path = []
    for _ in range(_MAX_DEPTH):
        node = producers.get(tensor)
        path.append((tensor, node))
        if node is None or node.op_type not in _CHAIN_OPS:
            break
        dynamic = [x for x in node.input[:1 if node.op_type in ("Conv", "BatchNormalization") else None] if x and not g.is_const(x)]
        if len(dynamic) != 1:
            break  # the previous block's residual Add, a graph input, ...
        tensor = dynamic[0]
    return path


def _split(g: Graph, add: onnx.NodeProto, producers):
    """(branch nodes, skip nodes, branch input, skip input) of a two-input Add; None if not a block.

    Nodes are ordered from the Add backwards.
    """
    a, b = add.input[0], add.input[1]
    if not a or not b or g.is_const(a) or g.is_const(b):
        return None
    pa, pb = _walk_back(g, a, producers), _walk_back(g, b, producers)
    tensors_a = [t for t, _ in pa]
    for j, (tb, _) in enumerate(pb):
        if tb in tensors_a:
            i = tensors_a.index(tb)
            side_a = [n for _, n in pa[:i]]
            side_b = [n for _, n in pb[:j]]
            convs = lambda side: sum(n.op_type == "Conv" for n in side)  # noqa: E731
            if convs(side_a) < 2 and convs(side_b) < 2:
                return None
            return (side_a, side_b, a, b) if convs(side_a) >= convs(side_b) else (side_b, side_a, b, a)
    return None


def _name(node: onnx.NodeProto, index: int) -> str:
    if node.name:
        # torch.onnx names nodes "/layer1/layer1.0/Add": the module path is the readable part.
        parts = [p for p in node.name.split("/") if p]
        return parts[-2] if len(parts) >= 2 else parts[0]
    return f"block{index}"


def find_residual_blocks(g: Graph) -> list[ResidualBlock]:
    producers, consumers = g.producers(), g.consumers()
    blocks = []
    for node in g.nodes:
        if node.op_type != "Add":
            continue
        split = _split(g, node, producers)
        if split is None:
            continue
        branch, skip, branch_input, skip_input = split
        branch_convs = [n for n in reversed(branch) if n.op_type == "Conv"]
        skip_convs = [n for n in reversed(skip) if n.op_type == "Conv"]
        kind = {2: "basic", 3: "bottleneck"}.get(len(branch_convs), "other")
        skip_core = [n for n in skip if n.op_type not in _QDQ]  # Q/DQ do not change what the skip is
        if not skip_core:
            skip_kind = "identity"
        elif len(skip_core) == 1 and skip_convs and tuple(attr(skip_convs[0], "kernel_shape") or ()) == (1, 1):
            skip_kind = "projection"
        else:
            skip_kind = "other"
        blockers = []
        block_nodes = branch + skip + [node]
        bns = [n for n in block_nodes if n.op_type == "BatchNormalization"]
        if bns:
            blockers.append(f"{len(bns)} BatchNormalization node(s) not folded")
        conv_relu = True
        for conv in branch_convs[:-1]:
            users = consumers[conv.output[0]]
            if len(users) != 1 or users[0].op_type != "Relu":
                conv_relu = False
                blockers.append(f"{conv.name or conv.output[0]} feeds {'/'.join(u.op_type for u in users)}, not a ReLU")
        last = producers.get(branch_input)
        add_ok = last is not None and last.op_type == "Conv" and len(consumers[last.output[0]]) == 1
        if not add_ok and last is not None:
            blockers.append(f"{last.op_type} sits between the branch's last Conv and the Add")
        users = consumers[node.output[0]]
        if len(users) != 1 or users[0].op_type != "Relu":
            add_ok = False
            blockers.append(f"the Add feeds {'/'.join(u.op_type for u in users) or 'the graph output'}, not one ReLU")
        blocks.append(
            ResidualBlock(
                _name(node, len(blocks)), kind, skip_kind,
                [c.name or c.output[0] for c in branch_convs], [c.name or c.output[0] for c in skip_convs],
                not bns, conv_relu, add_ok, blockers, node.output[0], skip_input, branch_input,
            )
        )
    return blocks


def count_ops(g: Graph, op: str) -> int:
    return sum(n.op_type == op for n in g.g.node)
