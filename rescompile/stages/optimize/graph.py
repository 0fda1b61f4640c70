"""A thin editing layer over onnx's own protobuf graph, for the optimization passes.

Passes rewire edges through these helpers and let ``cleanup`` drop whatever became dead.
Producer/consumer maps are rebuilt on demand, so a pass can edit freely between queries.
"""

from __future__ import annotations

import itertools
from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper


class Graph:
    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.g = model.graph
        self._counter = itertools.count()

    # -- queries -----------------------------------------------------------------------
    @property
    def nodes(self) -> list[onnx.NodeProto]:
        return list(self.g.node)

    def producers(self) -> dict[str, onnx.NodeProto]:
        return {out: n for n in self.g.node for out in n.output if out}

    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        uses: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.g.node:
            for name in n.input:
                if name:
                    uses[name].append(n)
        return uses

    def graph_outputs(self) -> set[str]:
        return {o.name for o in self.g.output}

    def graph_inputs(self) -> set[str]:
        return {i.name for i in self.g.input}

    def initializers(self) -> dict[str, onnx.TensorProto]:
        return {t.name: t for t in self.g.initializer}

    def const(self, name: str) -> np.ndarray | None:
        """The value of a tensor that is an initializer or a Constant node's output, else None."""
        for t in self.g.initializer:
            if t.name == name:
                return numpy_helper.to_array(t)
        for n in self.g.node:
            if n.op_type == "Constant" and n.output[0] == name:
                for a in n.attribute:
                    if a.name == "value":
                        return numpy_helper.to_array(a.t)
        return None

    def constant_values(self) -> dict[str, np.ndarray]:
        """Every initializer's and Constant node's value, by tensor name, read once."""
        values = {t.name: numpy_helper.to_array(t) for t in self.g.initializer}
        for n in self.g.node:
            if n.op_type == "Constant" and attr(n, "value") is not None:
                values[n.output[0]] = numpy_helper.to_array(attr(n, "value"))
        return values

    def is_const(self, name: str) -> bool:
        return self.const(name) is not None

    def depends_on_input(self, name: str) -> bool:
        """True when ``name`` is computed (directly or not) from a graph input."""
        inputs, producers = self.graph_inputs() - set(self.initializers()), self.producers()
        seen, stack = set(), [name]
        while stack:
            t = stack.pop()
            if t in inputs:
                return True
            if t in seen:
                continue
            seen.add(t)
            node = producers.get(t)
            if node is not None:
                stack.extend(x for x in node.input if x)
        return False

    def value_type(self, name: str) -> onnx.TypeProto | None:
        for vi in itertools.chain(self.g.value_info, self.g.input, self.g.output):
            if vi.name == name:
                return vi.type
        return None

    def shape(self, name: str) -> list[int | str | None] | None:
        t = self.value_type(name)
        if t is None or not t.tensor_type.HasField("shape"):
            return None
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.tensor_type.shape.dim]

    def elem_type(self, name: str) -> int | None:
        t = self.value_type(name)
        if t is not None and t.tensor_type.elem_type:
            return t.tensor_type.elem_type
        init = self.initializers().get(name)
        return init.data_type if init is not None else None

    # -- edits -------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        taken = {x for n in self.g.node for x in itertools.chain(n.input, n.output)} | set(self.initializers())
        while True:
            name = f"{base}_rc{next(self._counter)}"
            if name not in taken:
                return name

    def add_initializer(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        array = np.asarray(array)  # (ascontiguousarray would turn a 0-d scalar into shape (1,))
        self.g.initializer.append(numpy_helper.from_array(array if array.flags.c_contiguous else array.copy(order="C"), name))
        return name

    def replace_uses(self, old: str, new: str) -> None:
        """Every node that read ``old`` reads ``new`` instead (graph outputs untouched)."""
        for n in self.g.node:
            for i, name in enumerate(n.input):
                if name == old:
                    n.input[i] = new

    def bypass(self, node: onnx.NodeProto, keep: str) -> bool:
        """Remove a pass-through ``node`` whose output equals its input tensor ``keep``.

        When the node's output is a graph output, the producer of ``keep`` is renamed to
        write that output instead (so graph I/O names never change). Returns False when
        neither is possible (``keep`` is itself a graph input or constant and the output is
        a graph output).
        """
        out = node.output[0]
        if out in self.graph_outputs():
            producer = self.producers().get(keep)
            if producer is None or keep in self.graph_outputs():
                return False
            for i, name in enumerate(producer.output):
                if name == keep:
                    producer.output[i] = out
            self.replace_uses(keep, out)
        else:
            self.replace_uses(out, keep)
        self.g.node.remove(node)
        return True

    def remove(self, node: onnx.NodeProto) -> None:
        self.g.node.remove(node)

    def cleanup(self) -> None:
        """Drop nodes whose outputs nobody reads, and initializers nobody uses."""
        while True:
            used = self.graph_outputs() | {x for n in self.g.node for x in n.input}
            dead = [n for n in self.g.node if not any(o in used for o in n.output if o)]
            if not dead:
                break
            for n in dead:
                self.g.node.remove(n)
        used = {x for n in self.g.node for x in n.input} | self.graph_outputs()
        for t in [t for t in self.g.initializer if t.name not in used]:
            self.g.initializer.remove(t)
        live = used | {o for n in self.g.node for o in n.output}
        for vi in [v for v in self.g.value_info if v.name not in live]:
            self.g.value_info.remove(vi)

    def infer_shapes(self) -> None:
        inferred = onnx.shape_inference.infer_shapes(self.model)
        del self.g.value_info[:]
        self.g.value_info.extend(inferred.graph.value_info)


def attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def conv_has_padding(node: onnx.NodeProto) -> bool:
    auto = attr(node, "auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return True
    return any(p != 0 for p in (attr(node, "pads") or []))


def channel_vector(value: np.ndarray, channels: int) -> np.ndarray | None:
    """A constant that broadcasts per channel over NCHW ([C,1,1], [1,C,1,1], [1], scalar) as (C,)."""
    v = np.asarray(value)
    if v.size == 1:
        return np.full(channels, float(v.reshape(())), dtype=np.float32)
    squeezed = v.reshape(-1)
    if squeezed.size != channels:
        return None
    if v.ndim == 3 and v.shape == (channels, 1, 1):
        return squeezed.astype(np.float32)
    if v.ndim == 4 and v.shape == (1, channels, 1, 1):
        return squeezed.astype(np.float32)
    return None
