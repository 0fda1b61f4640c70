"""Reading ONNX files as models: validation that it is an image classifier, and its spec."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

from rescompile._io import atomic_path, loads_json
from rescompile.data.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, PreprocessingOverride
from rescompile.errors import ModelError
from rescompile.models.intake import graph_inputs
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
        _raise_for_external_data(path, exc)
        raise ModelError(f"{path} is not a readable ONNX model ({exc.__class__.__name__})", "Re-export it") from exc
    except onnx.checker.ValidationError as exc:  # external data outside the model's folder, missing, or a link
        _raise_for_external_data(path, exc)
        raise ModelError(f"{path} refers to weight data it may not read ({str(exc).splitlines()[0][:160]})",
                         "Keep external weight files next to the model, or save the model with its weights inside") from exc
    if not model.graph.node:
        raise ModelError(f"{path} is not a readable ONNX model (it has no graph nodes)", "Re-export it")
    return model


def _tensors(graph):
    """Every tensor a graph holds: initializers and Constant values, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            for sub in ([attr.g] if attr.HasField("g") else []) + list(attr.graphs):
                yield from _tensors(sub)


def _raise_for_external_data(path: Path, exc: Exception) -> None:
    """After a failed load: if the model keeps its weights in files beside it and one of them is
    missing or short, say which (the loader's own message names neither)."""
    import onnx

    try:
        head = onnx.load(str(path), load_external_data=False)
    except Exception:  # the model file itself is unreadable: the caller says so
        return
    folder = Path(path).parent
    need: dict[str, int] = {}  # bytes each external file must hold
    for tensor in _tensors(head.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        if not location or not (folder / location).is_file():
            raise ModelError(f"{path} keeps its weights in {location or '(no file named)'}, which is not beside it in {folder}",
                             "Copy that file next to the model, or save the model with its weights inside") from exc
        try:
            end = int(info.get("offset", 0)) + int(info.get("length", 0))
        except ValueError:
            continue
        need[location] = max(need.get(location, 0), end)
    for location, end in need.items():
        size = (folder / location).stat().st_size
        if end > size:
            raise ModelError(f"{path}'s weight file {location} is {size} bytes, shorter than the {end} its weights need "
                             "(copied incompletely?)", "Copy the complete file again, or re-export the model") from exc


def refers_to_external_data(model) -> bool:
    """Whether the model keeps weights in files beside it (torch.onnx.export's dynamo exporter writes
    model.onnx.data by default; onnx.save(..., save_as_external_data=True) does the same)."""
    import onnx

    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in _tensors(model.graph))


def copy_self_contained(src: Path, dst: Path) -> Path:
    """Copy the ONNX file ``src`` to ``dst`` with its weights inside: a model whose weights live in
    external files is read with them and saved as one file, so the copy works wherever it goes."""
    import shutil

    import onnx

    head = onnx.load(str(src), load_external_data=False)
    with atomic_path(dst) as tmp:
        if refers_to_external_data(head):
            onnx.save(load_onnx(src), str(tmp))
        else:
            shutil.copyfile(src, tmp)
    return dst


def copy_as_float32(src: Path, dst: Path) -> Path:
    """copy_self_contained, except that a float16/bfloat16/float64 model is written as its float32
    conversion (what intake makes of it): every FP32 file of a bundle then runs in float32."""
    import onnx

    from rescompile.models.graph_input import float32_graph, holds_other_floats

    if not holds_other_floats(onnx.load(str(src), load_external_data=False).graph):
        return copy_self_contained(src, dst)
    model = load_onnx(src)
    float32_graph(model.graph)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
    return dst


def _dims(value_info) -> list[Any]:
    t = value_info.type.tensor_type
    if not t.HasField("shape"):
        return []
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]


def read_onnx(path: Path):
    """load_onnx, then intake (rescompile.models.intake): the canonical model and what changed."""
    from rescompile.models.intake import normalize_onnx

    return normalize_onnx(load_onnx(path), path)


def check_classifier(model, path: Path | str) -> tuple[list[Any], list[Any]]:
    """Raise unless the graph looks like a ResNet-style image classifier; return (in, out) dims."""
    from rescompile.models.intake import check_io

    check_io(model, path)
    return _dims(graph_inputs(model)[0]), _dims(model.graph.output[0])


def spec_from_onnx(
    model, path: Path, *, input_size: int | None = None, num_classes: int | None = None, override: PreprocessingOverride | None = None,
    data_size: int | None = None, report: Any = None,
) -> ModelSpec:
    """The ModelSpec stored in the metadata by ``rescompile export``, else one inferred from the
    graph and the preprocessing the user named (``override``; when none, what the graph's own
    preprocessing takes, else ImageNet's with a warning). ``data_size`` is the image size the
    calibration data hold, used when the model's height and width are dynamic and no size was given.
    What was decided from the graph or the data alone is added to ``report.notes`` (an IntakeReport)."""
    from rescompile.models.intake import ends_in_softmax, input_chain

    in_dims, out_dims = check_classifier(model, path)
    override = override if override is not None and not override.empty else None
    meta = {p.key: p.value for p in model.metadata_props}
    if ONNX_METADATA_KEY in meta:
        try:
            spec = ModelSpec.from_dict(loads_json(meta[ONNX_METADATA_KEY]))
        except (ValueError, RecursionError) as exc:  # bad JSON, 4300+ digit numbers, deep nesting
            raise ModelError(f"{path} has a corrupt {ONNX_METADATA_KEY} metadata entry", "Re-export it") from exc
        if override is None:
            return spec
        log.warning("%s carries its own preprocessing; using the one given on the command line instead", path)
        return replace(spec, preprocessing=override.apply(spec.preprocessing))
    notes = report.notes if report is not None else []
    chain = input_chain(model)
    layout = chain.layout
    h, w = (in_dims[1], in_dims[2]) if layout == "nhwc" else (in_dims[2], in_dims[3])
    static = h if isinstance(h, int) and h > 0 and h == w else None
    wanted = (override.input_size if override else None) or input_size
    if static and wanted and wanted != static:
        raise ModelError(f"{path} takes {static}x{static} images, not {wanted}x{wanted}", "Drop --input-size, or pass the model's own size")
    size = static or wanted
    if size is None and data_size:
        size = data_size
        notes.append(f"input size {size}x{size} taken from the calibration data (the model's height and width are dynamic)")
        log.info("%s: %s", path, notes[-1])
    if size is None:
        size = 224
        log.warning("%s has a dynamic input size and no rescompile metadata: assuming 224x224 (pass --input-size)", path)
    classes = out_dims[1] if len(out_dims) == 2 and isinstance(out_dims[1], int) and out_dims[1] > 0 else num_classes
    if classes is None:
        raise ModelError(f"{path} has a dynamic number of classes", "Pass --num-classes")
    base = Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, resize=round(size * 256 / 224) if size >= 96 else None, layout=layout)
    if override is None and chain.normalises:
        # The graph normalises itself (Keras Rescaling/Normalization): feed it the pixels it expects,
        # raw 0-255 (mean 0, std 1/255 in Preprocessing's 0-1 units) or 0-1, and no mean/std on top.
        raw = chain.takes_raw_pixels
        prep = replace(base, mean=(0.0, 0.0, 0.0), std=(1 / 255,) * 3 if raw else (1.0,) * 3)
        notes.append(f"preprocessing: the graph normalises its input itself, so images are fed as {'raw 0-255' if raw else '0-1'} "
                     "RGB pixels, not with ImageNet mean/std (pass --mean/--std or --scale to change it)")
        log.info("%s: %s", path, notes[-1])
    elif override is None:
        log.warning("%s carries no preprocessing: assuming ImageNet mean/std on RGB 0-1 pixels (if it was trained otherwise, "
                    "pass --mean/--std, --scale 255 or --channel-order bgr)", path)
        prep = base
    else:
        prep = replace(override.apply(base), input_size=size, layout=layout)
        log.info("%s: %s", path, override.describe(prep))
    return ModelSpec("onnx", int(classes), prep, (), {"output": "probabilities"} if ends_in_softmax(model) else {}, None)
