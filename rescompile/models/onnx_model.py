"""Reading ONNX files as models: validation that it is an image classifier, and its spec."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from rescompile._io import loads_json
from rescompile.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from rescompile.errors import ModelError
from rescompile.models.spec import ONNX_METADATA_KEY, ModelSpec

log = logging.getLogger(__name__)


def load_onnx(path: Path):
    """onnx.load with a one-line error for files that are not (complete) ONNX models."""
    import onnx
    from google.protobuf.message import DecodeError

    size = Path(path).stat().st_size if Path(path).is_file() else 0
    if size >= 2 << 30:  # protobuf's hard limit: such a file cannot be a valid single-file model
        raise ModelError(f"{path} is {size} bytes, over the 2 GiB limit of a single ONNX file", "Save large models with external data")
    try:
        model = onnx.load(str(path))
    except (DecodeError, RuntimeWarning, ValueError, OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path} is not a readable ONNX model ({exc.__class__.__name__})", "Re-export it") from exc
    except onnx.checker.ValidationError as exc:  # external data outside the model's folder, missing, or a link
        raise ModelError(f"{path} refers to weight data it may not read ({str(exc).splitlines()[0][:160]})",
                         "Keep external weight files next to the model, or save the model with its weights inside") from exc
    if not model.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model (it has no graph nodes)", "Re-export it")
    return model


def _dims(value_info) -> list[Any]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def graph_inputs(model) -> list:
    init = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in init]


def check_classifier(model, path: Path | str) -> tuple[list[Any], list[Any]]:
    """Raise unless the graph looks like a ResNet-style image classifier; return (in, out) dims."""
    inputs, outputs = graph_inputs(model), list(model.graph.output)
    why = None
    if len(inputs) != 1:
        why = f"it has {len(inputs)} inputs (expected one image batch)"
    elif len(outputs) != 1:
        why = f"it has {len(outputs)} outputs (expected one logits tensor)"
    else:
        in_dims, out_dims = _dims(inputs[0]), _dims(outputs[0])
        if len(in_dims) != 4:
            why = f"its input has rank {len(in_dims)} (expected N x C x H x W)"
        elif isinstance(in_dims[1], int) and in_dims[1] not in (1, 3):
            why = f"its input has {in_dims[1]} channels (expected 1 or 3, NCHW layout)"
        elif out_dims and len(out_dims) != 2:
            why = f"its output has rank {len(out_dims)} (expected N x classes)"
        elif not any(n.op_type == "Conv" for n in model.graph.node):
            why = "it has no Conv nodes"
    if why:
        raise ModelError(
            f"{path} is not a ResNet-like image classifier: {why}",
            "rescompile takes CNN classifiers with one NCHW image input and one logits output",
        )
    return in_dims, out_dims


def spec_from_onnx(model, path: Path, *, input_size: int | None = None, num_classes: int | None = None) -> ModelSpec:
    """The ModelSpec stored in the metadata by ``rescompile export``, else one inferred from shapes."""
    in_dims, out_dims = check_classifier(model, path)
    meta = {p.key: p.value for p in model.metadata_props}
    if ONNX_METADATA_KEY in meta:
        try:
            return ModelSpec.from_dict(loads_json(meta[ONNX_METADATA_KEY]))
        except (ValueError, RecursionError) as exc:  # bad JSON, 4300+ digit numbers, deep nesting
            raise ModelError(f"{path} has a corrupt {ONNX_METADATA_KEY} metadata entry", "Re-export it") from exc
    h, w = in_dims[2], in_dims[3]
    static = h if isinstance(h, int) and h == w else None
    size = static or input_size
    if size is None:
        size = 224
        log.warning("%s has a dynamic input size and no rescompile metadata: assuming 224x224", path)
    classes = out_dims[1] if len(out_dims) == 2 and isinstance(out_dims[1], int) else num_classes
    if classes is None:
        raise ModelError(f"{path} has a dynamic number of classes", "Pass --num-classes")
    log.warning(
        "%s carries no preprocessing metadata: assuming ImageNet mean/std; pass a model exported "
        "by rescompile to keep training-time preprocessing",
        path,
    )
    prep = Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, resize=round(size * 256 / 224) if size >= 96 else None)
    return ModelSpec("onnx", int(classes), prep, (), {}, None)
