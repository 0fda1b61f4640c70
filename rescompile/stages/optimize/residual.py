"""Recognise residual blocks by their structure, and say what TensorRT can fuse in each one.

A residual block is an ``Add`` of two computed tensors that meet again at one tensor upstream,
the block input: one side (the branch) reaches it through convolutions, the other (the skip)
directly (identity) or through a projection (a 1x1 Conv, or average-pool + 1x1 Conv as in
ResNet-D). What sits inside the branch does not matter for finding it: squeeze-excitation
(GlobalAveragePool/ReduceMean -> 1x1 convs or Gemm -> Sigmoid -> Mul), other sigmoid gates,
BN-ReLU before the convs (pre-activation, ResNetV2: no ReLU after the Add), grouped convs
(ResNeXt), wide bottlenecks, Q/DQ pairs of an already quantized model. The block input is the
nearest tensor both sides come from; the branch and the skip are the nodes on the paths from it.

TensorRT fuses Conv+bias+ReLU, and the branch's last Conv with the Add (and the ReLU after it,
when there is one) when the Conv feeds the Add directly. A gate between them (SE's Mul) stops
that fusion: TensorRT then runs the gate's Mul, the Add and the ReLU as one pointwise kernel.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass, field

import onnx

from rescompile.stages.optimize.graph import Graph, attr

_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_PASS_THROUGH = _QDQ | {"Identity", "Dropout", "Cast"}  # they do not change what a skip is
_POOLS = {"GlobalAveragePool", "ReduceMean", "AveragePool", "GlobalMaxPool", "ReduceMax"}
_GATES = {"Sigmoid", "HardSigmoid"}
_WEIGHTED = {"Conv": 0, "Gemm": 0, "MatMul": 0, "BatchNormalization": 0, "QuantizeLinear": 0, "DequantizeLinear": 0}
_MAX_HOPS = 96  # a quantized bottleneck with squeeze-excitation is about 40 nodes from its input


@dataclass
class ResidualBlock:
    name: str
    kind: str  # basic | bottleneck | other (by the branch's main convs, SE convs not counted)
    skip: str  # identity | projection | pool-projection | other
    branch_convs: list[str]
    skip_convs: list[str]
    conv_bn_fusable: bool  # no BatchNormalization left in the block
    conv_relu_fusable: bool  # every inner branch Conv feeds its ReLU directly
    add_relu_fusable: bool  # the branch's last Conv feeds the Add directly (and the Add its ReLU, post-activation)
    blockers: list[str] = field(default_factory=list)
    add: str = ""  # the Add node's output tensor
    skip_input: str = ""  # the Add input that comes from the skip (identity or projection)
    branch_input: str = ""  # the Add input that comes from the branch
    holds: list[str] = field(default_factory=list)  # what the branch holds beyond convs and ReLUs, one phrase each
    preactivation: bool = False  # BN-ReLU before the convs, no ReLU after the Add (ResNetV2)
    groups: int = 1  # the largest group count among the branch's main convs (ResNeXt: > 1)
    gates: list[str] = field(default_factory=list)  # the gating Mul nodes' outputs (squeeze-excitation, attention)
    gate_nodes: list[str] = field(default_factory=list)  # every node output on the gates' side paths (pool .. sigmoid)

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


class _Index:
    """Producers, consumers and which tensors are computed from the graph input, built once."""

    def __init__(self, g: Graph) -> None:
        self.g = g
        self.producers = g.producers()
        self.consumers = g.consumers()
        self.order = {id(n): i for i, n in enumerate(g.g.node)}
        init = {t.name for t in g.g.initializer}
        live = {i.name for i in g.g.input if i.name not in init}
        for n in g.g.node:  # ONNX graphs are topologically sorted
            if any(x in live for x in n.input if x):
                live.update(o for o in n.output if o)
        self.live = live

    def data_inputs(self, node: onnx.NodeProto) -> list[str]:
        """The inputs that carry activations (weights, scales and shapes are constants or computed from them)."""
        first = _WEIGHTED.get(node.op_type)
        names = node.input[:1] if first is not None else node.input
        return [x for x in names if x and x in self.live]

    def ancestors(self, tensor: str) -> dict[str, int]:
        """Every activation ``tensor`` is computed from, with its distance in nodes, up to _MAX_HOPS."""
        dist = {tensor: 0}
        queue = deque([tensor])
        while queue:
            t = queue.popleft()
            node = self.producers.get(t)
            if node is None or dist[t] >= _MAX_HOPS:
                continue
            for x in self.data_inputs(node):
                if x not in dist:
                    dist[x] = dist[t] + 1
                    queue.append(x)
        return dist

    def between(self, start: str, end: str, upstream: dict[str, int]) -> list[onnx.NodeProto]:
        """Nodes on the paths from ``start`` to ``end`` (``upstream``: end's ancestors), in graph order."""
        reached, nodes = {start}, []
        candidates = sorted({id(self.producers[t]): self.producers[t] for t in upstream if t in self.producers}.values(),
                            key=lambda n: self.order[id(n)])
        for n in candidates:
            if any(x in reached for x in self.data_inputs(n)) and any(o in upstream for o in n.output):
                reached.update(n.output)
                nodes.append(n)
        return nodes


def _label(node: onnx.NodeProto) -> str:
    return node.name or node.output[0]


def _gates(ix: _Index, branch: list[onnx.NodeProto]) -> tuple[list[onnx.NodeProto], set[int]]:
    """The gating Mul nodes of a branch (one input through a Sigmoid) and the ids of every node on
    their side paths (the squeeze: pool, convs or Gemms, activations, the sigmoid, reshapes)."""
    inside = {id(n) for n in branch}
    gates, side = [], set()
    for mul in branch:
        if mul.op_type != "Mul" or len(ix.data_inputs(mul)) != 2:
            continue
        for x in mul.input:
            path, stack, seen = [], [x], set()
            while stack:  # back from the gate input, inside the branch, until the pool
                t = stack.pop()
                node = ix.producers.get(t)
                if node is None or id(node) not in inside or t in seen:
                    continue
                seen.add(t)
                path.append(node)
                if node.op_type not in _POOLS:
                    stack.extend(ix.data_inputs(node))
            if any(n.op_type in _GATES for n in path) and any(n.op_type in _POOLS for n in path):
                gates.append(mul)
                side.update(id(n) for n in path)
                break
    return gates, side


def _skip_kind(skip: list[onnx.NodeProto]) -> str:
    core = [n for n in skip if n.op_type not in _PASS_THROUGH]
    convs = [n for n in core if n.op_type == "Conv"]
    if not core:
        return "identity"
    if len(convs) == 1 and tuple(attr(convs[0], "kernel_shape") or ()) == (1, 1):
        rest = {n.op_type for n in core if n is not convs[0]}
        if not rest or rest <= {"BatchNormalization", "Mul", "Add"}:
            return "projection"
        if rest & {"AveragePool", "MaxPool"} and rest <= {"AveragePool", "MaxPool", "BatchNormalization", "Mul", "Add"}:
            return "pool-projection"  # ResNet-D: average-pool, then the 1x1 conv
    return "other"


def _block(ix: _Index, add: onnx.NodeProto, index: int) -> ResidualBlock | None:
    a, b = add.input[0], add.input[1]
    if not a or not b or a not in ix.live or b not in ix.live or a == b:
        return None
    up_a, up_b = ix.ancestors(a), ix.ancestors(b)
    common = up_a.keys() & up_b.keys()
    if not common:
        return None
    start = min(common, key=lambda t: (min(up_a[t], up_b[t]), max(up_a[t], up_b[t]), t))
    side_a, side_b = ix.between(start, a, up_a), ix.between(start, b, up_b)
    convs = lambda side: sum(n.op_type == "Conv" for n in side)  # noqa: E731
    if convs(side_a) < convs(side_b) or (convs(side_a) == convs(side_b) and len(side_a) < len(side_b)):
        side_a, side_b, a, b = side_b, side_a, b, a
    branch, skip, branch_input, skip_input = side_a, side_b, a, b
    gates, side = _gates(ix, branch)
    main = [n for n in branch if n.op_type == "Conv" and id(n) not in side]
    if len(main) < 2 or convs(skip) >= len(main):
        return None  # not a branch of convolutions beside a lighter skip (e.g. two equal towers)
    skip_convs = [n for n in skip if n.op_type == "Conv"]
    block_nodes = [*branch, *skip, add]
    users = ix.consumers.get(add.output[0], [])
    relu_after = len(users) == 1 and users[0].op_type == "Relu"
    before_first = [n for n in branch if ix.order[id(n)] < ix.order[id(main[0])] and id(n) not in side]
    # Pre-activation: the ReLU comes before the convs, either inside the branch (identity blocks) or
    # on the tensor both sides read (a projection block reads the pre-activated tensor, ResNetV2).
    entry = ix.producers.get(start)
    preactivation = not relu_after and (any(n.op_type == "Relu" for n in before_first) or (entry is not None and entry.op_type == "Relu"))
    groups = max(int(attr(c, "group", 1) or 1) for c in main)

    holds, blockers = [], []
    if gates:
        ops = sorted({n.op_type for n in branch if id(n) in side} - _QDQ)
        holds.append(f"squeeze-excitation gate ({' '.join(ops)} -> Mul)")
    if groups > 1:
        holds.append(f"grouped convolution ({groups} groups)")
    if preactivation:
        holds.append("pre-activation (BN-ReLU before the convs, no ReLU after the Add)")
    if any(n.op_type in _QDQ for n in block_nodes):
        holds.append("Q/DQ nodes")
    bns = [n for n in block_nodes if n.op_type == "BatchNormalization"]
    if bns:
        blockers.append(f"{len(bns)} BatchNormalization node(s) not folded")
    conv_relu = True
    for conv in main[:-1]:
        readers = ix.consumers.get(conv.output[0], [])
        if len(readers) != 1 or readers[0].op_type != "Relu":
            conv_relu = False
            blockers.append(f"{_label(conv)} feeds {'/'.join(u.op_type for u in readers)}, not a ReLU")
    last = ix.producers.get(branch_input)
    add_ok = last is not None and last.op_type == "Conv" and len(ix.consumers.get(last.output[0], [])) == 1
    if not add_ok and last is not None:
        if last in gates:
            blockers.append("the squeeze-excitation Mul sits between the branch's last Conv and the Add: TensorRT runs "
                            "Mul, Add and ReLU as one pointwise kernel instead of fusing the Add into the Conv")
        else:
            blockers.append(f"{last.op_type} sits between the branch's last Conv and the Add")
    if not relu_after and not preactivation:
        add_ok = False
        blockers.append(f"the Add feeds {'/'.join(u.op_type for u in users) or 'the graph output'}, not one ReLU")
    return ResidualBlock(
        _name(add, index), {2: "basic", 3: "bottleneck"}.get(len(main), "other"), _skip_kind(skip),
        [_label(c) for c in main], [_label(c) for c in skip_convs], not bns, conv_relu, add_ok, blockers,
        add.output[0], skip_input, branch_input, holds, preactivation, groups,
        [g.output[0] for g in gates], [n.output[0] for n in branch if id(n) in side],
    )


def _name(node: onnx.NodeProto, index: int) -> str:
    if node.name:
        # torch.onnx names nodes "/layer1/layer1.0/Add": the module path is the readable part.
        parts = [p for p in node.name.split("/") if p]
        return parts[-2] if len(parts) >= 2 else parts[0]
    return f"block{index}"


def find_residual_blocks(g: Graph) -> list[ResidualBlock]:
    ix = _Index(g)
    blocks = []
    for node in g.nodes:
        if node.op_type in ("Add", "Sum") and len(node.input) == 2:
            block = _block(ix, node, len(blocks))
            if block is not None:
                blocks.append(block)
    return blocks


def count_ops(g: Graph, op: str) -> int:
    return sum(n.op_type == op for n in g.g.node)
