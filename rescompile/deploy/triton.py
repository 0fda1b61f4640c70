"""Triton Inference Server model repository for a bundle: ``deploy/triton/<model>/`` with its
``config.pbtxt``, ``labels.txt`` and ``1/model.plan`` (the TensorRT engine) or ``1/model.onnx``
(the CPU artifact, on ONNX Runtime).

The model file is a relative link to the bundle's own file, so nothing large is stored twice;
where links cannot be made it is a copy. Serve with
``tritonserver --model-repository <bundle>/deploy/triton``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import uuid
from pathlib import Path, PurePosixPath
from typing import Any

from rescompile._io import write_bytes_atomic, write_with
from rescompile.bundle import BundleError, resolve_inside

log = logging.getLogger(__name__)

DOCS = "https://github.com/triton-inference-server/server/blob/main/docs/user_guide/model_configuration.md"
CONFIG = "config.pbtxt"
LABELS = "labels.txt"
VERSION = "1"
MODEL_FILES = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}
# The first line of every config.pbtxt written here: a model folder that starts with it is ours to replace.
MARKER = "# Triton Inference Server model configuration written by rescompile"
DEFAULT_MAX_BATCH = 32  # the CPU model of a bundle whose manifest plans no engine profile
QUEUE_DELAY_US = 100
DATA_TYPES = {
    "float32": "TYPE_FP32", "float16": "TYPE_FP16", "uint8": "TYPE_UINT8", "int8": "TYPE_INT8",
    "int32": "TYPE_INT32", "int64": "TYPE_INT64", "bool": "TYPE_BOOL",
}


def model_name(name: str) -> str:
    """``name`` in the characters Triton model names are safe with: [A-Za-z0-9_-]."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", name).strip("_") or "model"


def write_triton(out: Path, doc: dict[str, Any], files: dict[str, Path], name: str | None = None) -> Path:
    """deploy/triton/<model>/ for the bundle in ``out`` (``doc``: its manifest, ``files``: its files by
    role; ``name``: the bundle's final directory name, when ``out`` is a staging folder); returns the
    config.pbtxt path."""
    out = Path(out)
    model = model_name(name or out.name)
    engine = doc.get("engine")
    if engine is not None:
        if not isinstance(engine, dict) or not engine.get("path"):
            raise BundleError(f"{out}: the manifest's engine names no file",
                              "Rebuild the bundle, or its engine with `rescompile build --from-bundle`")
        platform, source = "tensorrt_plan", _source(out, files, engine["path"], "engine", "engine.path")
    else:
        artifact = doc.get("cpu_artifact")
        if not isinstance(artifact, dict) or not artifact.get("path"):
            raise BundleError(f"{out}: the manifest names no engine and no CPU artifact to serve", "Rebuild the bundle with this rescompile")
        platform, source = "onnxruntime_onnx", _source(out, files, artifact["path"], None, "cpu_artifact.path")

    here = out / "deploy" / "triton" / model
    labels = _labels(out, doc)
    text = config_text(out, doc, model, platform, source, labels is not None)
    _link(source, here / VERSION / MODEL_FILES[platform])
    for other in MODEL_FILES.values():
        if other != MODEL_FILES[platform]:
            (here / VERSION / other).unlink(missing_ok=True)
    if labels is not None:
        write_bytes_atomic(here / LABELS, ("\n".join(labels) + "\n").encode())
    else:
        (here / LABELS).unlink(missing_ok=True)
    config = write_bytes_atomic(here / CONFIG, text.encode())
    _remove_stale_models(here)
    return config


def config_text(out: Path, doc: dict[str, Any], model: str, platform: str, source: Path, labelled: bool) -> str:
    """config.pbtxt: a comment header saying what is served and how, then the ModelConfig fields."""
    inp, output = _tensor(out, doc, "input"), _tensor(out, doc, "output")
    profile = _profile(out, doc)
    if profile is not None:
        max_batch = _batch(out, profile, "max")
        preferred = sorted({b for b in (_batch(out, profile, "opt"), max_batch) if 1 <= b <= max_batch})
    else:
        max_batch = DEFAULT_MAX_BATCH
        preferred = [max_batch]
    in_dims = _dims(inp["shape"], profile)
    out_dims = _dims(output["shape"], None)
    layout = str(inp.get("layout") or ((doc.get("spec") or {}).get("preprocessing") or {}).get("layout") or "nchw").lower()

    lines = [*_header(doc, model, platform, source, inp, output), "", f"name: {_quote(model)}", f"platform: {_quote(platform)}",
             f"max_batch_size: {max_batch}", "input ["]
    lines += _block([f"name: {_quote(inp['name'])}", f"data_type: {_data_type(out, inp, 'input')}",
                     *([f"format: FORMAT_{'NHWC' if layout == 'nhwc' else 'NCHW'}"] if len(in_dims) == 3 else []),
                     f"dims: [ {', '.join(map(str, in_dims))} ]"])
    lines += ["]", "output ["]
    lines += _block([f"name: {_quote(output['name'])}", f"data_type: {_data_type(out, output, 'output')}",
                     f"dims: [ {', '.join(map(str, out_dims))} ]", *([f"label_filename: {_quote(LABELS)}"] if labelled else [])])
    lines += ["]", "instance_group ["]
    lines += _block(["count: 1", f"kind: {'KIND_GPU' if platform == 'tensorrt_plan' else 'KIND_CPU'}"])
    lines += ["]", "dynamic_batching {", f"  preferred_batch_size: [ {', '.join(map(str, preferred))} ]",
              f"  max_queue_delay_microseconds: {QUEUE_DELAY_US}", "}"]
    return "\n".join(lines) + "\n"


def _header(doc: dict[str, Any], model: str, platform: str, source: Path, inp: dict[str, Any], output: dict[str, Any]) -> list[str]:
    spec = doc.get("spec") or {}
    prep = spec.get("preprocessing") or {}
    labels = spec.get("labels") or []
    classes = spec.get("num_classes") or len(labels) or "?"
    model_file = f"{VERSION}/{MODEL_FILES[platform]}"
    if platform == "tensorrt_plan":
        engine = doc["engine"]
        version = engine.get("tensorrt_version") or "?"
        what = f"{engine.get('precision') or doc.get('precision') or ''} TensorRT engine on the GPU"
        caveat = (f"The engine runs only under the TensorRT it was built with ({version}), on a GPU like the one it was built on:"
                  " use the Triton release that ships that TensorRT, or rebuild it there with `rescompile build --from-bundle <bundle>`.")
    else:
        artifact = doc["cpu_artifact"]
        what = f"{artifact.get('precision') or ''} ONNX model on the CPU by ONNX Runtime"
        caveat = None
    lines = [
        MARKER,
        f"Model {model!r}: a {spec.get('arch') or 'image'} classifier with {classes} classes, served as the {what}",
        f"({model_file} is the bundle's {source.name}, linked where the file system allows). Generated from the",
        "bundle's manifest.json; rebuilding the bundle rewrites this folder.",
        "Serve: tritonserver --model-repository <bundle>/deploy/triton",
        "Copy the whole bundle, or this folder alone with `cp -rL` (which copies the linked file itself).",
    ]
    if prep.get("mean") and prep.get("std"):
        size = prep.get("input_size")
        layout, order = str(inp.get("layout") or "nchw").upper(), str(prep.get("channel_order") or "rgb").upper()
        lines.append(f"Clients send {inp.get('dtype') or 'float32'} {layout} {order}{f' {size}x{size}' if size else ''} images normalised as"
                     f" (pixels / 255 - mean) / std, mean {list(prep['mean'])}, std {list(prep['std'])}; {output['name']!r} holds"
                     " one logit per class, in labels.txt order.")
    if caveat:
        lines.append(caveat)
    lines.append(f"Fields: {DOCS}")
    return [lines[0], *("# " + " ".join(str(line).split()) for line in lines[1:])]


def _block(fields: list[str]) -> list[str]:
    return ["  {", *(f"    {f}" for f in fields), "  }"]


def _quote(value: str) -> str:
    """A protobuf text-format string literal."""
    escaped = []
    for ch in str(value):
        if ch in '"\\':
            escaped.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            escaped.append(f"\\{ord(ch):03o}")
        else:
            escaped.append(ch)
    return '"' + "".join(escaped) + '"'


def _tensor(out: Path, doc: dict[str, Any], key: str) -> dict[str, Any]:
    tensor = doc.get(key)
    if not isinstance(tensor, dict) or not isinstance(tensor.get("name"), str) or not tensor["name"]:
        raise BundleError(f"{out}: the manifest names no {key} tensor", "Rebuild the bundle with this rescompile")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or len(shape) < 2:
        raise BundleError(f"{out}: the manifest's {key} shape {shape!r} is not [batch, ...]", "Rebuild the bundle with this rescompile")
    return tensor


def _data_type(out: Path, tensor: dict[str, Any], key: str) -> str:
    dtype = str(tensor.get("dtype") or "float32")
    if dtype not in DATA_TYPES:
        raise BundleError(f"{out}: the manifest's {key} dtype {dtype!r} has no Triton data type", "Rebuild the bundle with this rescompile")
    return DATA_TYPES[dtype]


def _profile(out: Path, doc: dict[str, Any]) -> dict[str, Any] | None:
    """The first optimization profile: the engine's own, else the one the manifest plans."""
    for key in ("engine", "engine_plan"):
        section = doc.get(key)
        profiles = section.get("profiles") if isinstance(section, dict) else None
        if profiles:
            if not isinstance(profiles, list) or not isinstance(profiles[0], dict):
                raise BundleError(f"{out}: the manifest's {key}.profiles is not a list of {{min, opt, max}}", "Rebuild the bundle")
            return profiles[0]
    if doc.get("engine") is not None:
        raise BundleError(f"{out}: the manifest's engine has no optimization profile",
                          "Rebuild the bundle, or its engine with `rescompile build --from-bundle`")
    return None


def _batch(out: Path, profile: dict[str, Any], which: str) -> int:
    shape = profile.get(which)
    if not isinstance(shape, list) or not shape or not isinstance(shape[0], int) or isinstance(shape[0], bool) or shape[0] < 1:
        raise BundleError(f"{out}: the engine profile's {which} shape {shape!r} has no batch size", "Rebuild the bundle")
    return shape[0]


def _dims(shape: list[Any], profile: dict[str, Any] | None) -> list[int]:
    """The shape without its batch dimension; -1 where it is not fixed (by the manifest or the profile)."""
    dims = [d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else -1 for d in shape[1:]]
    if profile is not None:
        lo, hi = profile.get("min"), profile.get("max")
        if isinstance(lo, list) and isinstance(hi, list) and len(lo) == len(hi) == len(shape):
            dims = [d if lo[i + 1] == hi[i + 1] else -1 for i, d in enumerate(dims)]
    return dims


def _labels(out: Path, doc: dict[str, Any]) -> list[str] | None:
    labels = (doc.get("spec") or {}).get("labels")
    if not labels:
        return None
    if not isinstance(labels, list):
        raise BundleError(f"{out}: the manifest's spec.labels is not a list", "Rebuild the bundle")
    classes = (doc.get("output") or {}).get("shape") or []
    if len(classes) == 2 and isinstance(classes[1], int) and classes[1] != len(labels):
        raise BundleError(f"{out}: the manifest has {len(labels)} labels for {classes[1]} output classes", "Rebuild the bundle")
    return [str(label).replace("\r", " ").replace("\n", " ") for label in labels]


def _source(out: Path, files: dict[str, Path], relative: Any, role: str | None, what: str) -> Path:
    """The bundle file the manifest names at ``relative``: ``files[role]``, else the file of that name."""
    if not isinstance(relative, str) or not relative:
        raise BundleError(f"{out}: the manifest's {what} {relative!r} is not a file name", "Rebuild the bundle")
    name = PurePosixPath(relative.replace("\\", "/")).name
    candidates = [Path(files[role])] if role and files.get(role) else []
    candidates += [Path(p) for p in files.values() if p is not None and Path(p).name == name]
    for path in candidates:
        if path.is_file():
            return path
    return resolve_inside(out, relative, what)


def _link(source: Path, target: Path) -> None:
    """``target`` as a relative link to ``source``, or a copy where links fail; replaced atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.partial")
    try:
        os.symlink(os.path.relpath(source, target.parent), tmp)
    except (OSError, ValueError) as exc:  # no links here (Windows without the privilege, some mounts), other drive
        log.debug("copying %s to %s: %s", source, target, exc)
        write_with(target, lambda path: shutil.copyfile(source, path))
        return
    try:
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _remove_stale_models(here: Path) -> None:
    """Model folders this module wrote under an earlier bundle name: Triton would serve them too."""
    for sibling in here.parent.iterdir():
        if sibling == here or not sibling.is_dir() or sibling.is_symlink():
            continue
        try:
            with open(sibling / CONFIG, encoding="utf-8", errors="replace") as fh:
                ours = fh.readline().rstrip("\n") == MARKER
        except OSError:
            continue
        if ours:
            shutil.rmtree(sibling, ignore_errors=True)
