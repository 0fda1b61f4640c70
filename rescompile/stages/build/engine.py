"""What TensorRT made of the network: per-layer precision and residual fusion, from the engine
inspector's JSON (built with ProfilingVerbosity.DETAILED).

`engine_information` is one of the few direct TensorRT calls; `engine_report` is plain Python
over its JSON, so it is tested here with layer records in TensorRT's format. A fused layer is
named after the ONNX nodes it absorbed, joined by " + " (e.g. "conv2/Conv + Add + relu_1/Relu"):
a residual Add that shares a layer with a Conv is fused (TensorRT developer guide, "Layer Fusion").
TensorRT 10 writes a layer's tensor type as "Format/Datatype"; TensorRT 11 splits it into
"Datatype" and "Format".
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from rescompile._lazy import import_optional


def engine_information(engine_bytes: bytes, *, version_compatible: bool = False, dla_core: int | None = None) -> dict[str, Any]:
    """The engine inspector's JSON for a serialized engine (needs TensorRT and a GPU). A
    version-compatible plan carries its lean runtime and deserializes only with host code allowed;
    a DLA engine runs on the runtime's DLA core, which is set to the one it was built for."""
    trt = import_optional("tensorrt")
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    if version_compatible:
        runtime.engine_host_code_allowed = True
    if dla_core is not None:
        runtime.DLA_core = int(dla_core)
    engine = runtime.deserialize_cuda_engine(engine_bytes)
    if engine is None:
        raise RuntimeError("TensorRT could not deserialize the engine it just built")
    inspector = engine.create_engine_inspector()
    return json.loads(inspector.get_engine_information(trt.LayerInformationFormat.JSON))


# The type field of an Inputs/Outputs record, as each TensorRT writes it: 10.x "Format/Datatype"
# ("Row major linear FP32"), 11.x "Datatype" (NVIDIA's migration page also shows "DataType").
_TYPE_KEYS = ("Format/Datatype", "Datatype", "DataType", "Data Type", "Type")
# Whole words only: "INT8" must not match "UINT8", nor "FLOAT" match "BFLOAT16" or "FLOAT8".
_TYPE_WORDS = {"INT8": "int8", "FP16": "fp16", "HALF": "fp16", "FLOAT16": "fp16", "FP32": "fp32", "FLOAT": "fp32",
               "FLOAT32": "fp32", "UINT8": "other", "BF16": "other", "BFLOAT16": "other", "FP8": "other", "FLOAT8": "other",
               "INT4": "other", "FP4": "other", "INT32": "other", "INT64": "other", "BOOL": "other"}


def tensor_precision(record: dict[str, Any]) -> str:
    """'int8' | 'fp16' | 'fp32' | 'other' for one Inputs/Outputs entry of a layer, 'unknown' when the
    record holds no type TensorRT's schemas name (a layer whose type cannot be read is not 'not INT8')."""
    if not isinstance(record, dict):
        return "unknown"
    text = " ".join(str(record[k]) for k in _TYPE_KEYS if record.get(k))
    for word in re.findall(r"[A-Za-z]+\d*", text.upper()):
        if word in _TYPE_WORDS:
            return _TYPE_WORDS[word]
    return "unknown"


def layer_precision(layer: dict[str, Any]) -> str:
    """A layer's compute precision, read from its (first) input."""
    inputs = layer.get("Inputs") or []
    return tensor_precision(inputs[0]) if inputs else "unknown"


def _parts(name: str) -> set[str]:
    return {p.strip() for p in name.split(" + ")}


@dataclass
class BlockInEngine:
    name: str
    convs: int
    int8_convs: int
    add_fused: bool  # the Add runs inside a Conv layer
    add_layer: str | None


@dataclass
class EngineReport:
    layers: int
    by_precision: dict[str, int]
    blocks: list[BlockInEngine] = field(default_factory=list)

    @property
    def fused_adds(self) -> int:
        return sum(b.add_fused for b in self.blocks)

    @property
    def int8_convs(self) -> int:
        return sum(b.int8_convs for b in self.blocks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers, "by_precision": self.by_precision, "fused_adds": self.fused_adds,
            "residual_blocks": len(self.blocks), "blocks": [asdict(b) for b in self.blocks],
        }


def engine_report(info: dict[str, Any], blocks: list[dict[str, Any]], node_names: dict[str, str]) -> EngineReport:
    """Match the fusion report's residual ``blocks`` (conv node names, the Add's output tensor)
    to engine layers. ``node_names`` maps an ONNX tensor to the node that produces it."""
    layers = [layer for layer in info.get("Layers", []) if isinstance(layer, dict)]
    counts: dict[str, int] = {}
    owner: dict[str, dict[str, Any]] = {}
    for layer in layers:
        counts[layer_precision(layer)] = counts.get(layer_precision(layer), 0) + 1
        for part in _parts(str(layer.get("Name", ""))):
            owner.setdefault(part, layer)
    out = []
    for block in blocks:
        convs = list(block.get("branch_convs", [])) + list(block.get("skip_convs", []))
        conv_layers = [owner.get(c) for c in convs]
        int8 = sum(1 for layer in conv_layers if layer is not None and layer_precision(layer) == "int8")
        add_node = node_names.get(block.get("add", ""), block.get("add", ""))
        add_layer = owner.get(add_node)
        fused = add_layer is not None and any(c in _parts(str(add_layer.get("Name", ""))) for c in convs)
        out.append(BlockInEngine(block.get("name", "?"), len(convs), int8, fused, None if add_layer is None else add_layer.get("Name")))
    return EngineReport(len(layers), counts, out)
