"""DeepStream ``Gst-nvinfer`` configuration for a bundle: the classifier as a primary inference
element, with the bundle's model, engine, labels, precision and preprocessing.

nvinfer computes ``y = net-scale-factor * (x - offsets[c])`` on 0-255 pixels in
``model-color-format`` order: one scale for every channel. A model normalised as
``(x / 255 - mean[c]) / std[c]`` is exact when its three std values are equal
(scale = 1 / (255 std), offsets = 255 mean); otherwise the nearest single scale is written and
what it costs is measured on the bundle's evaluation images (``measure_single_scale``). Where that
is more than ``BUDGET``, the configuration runs a pixel-input Q/DQ ONNX instead (the normalisation
folded in front of the model: scale 1, offsets 0), which is exact.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rescompile._io import write_bytes_atomic
from rescompile.data.preprocess import Preprocessing
from rescompile.bundle import BundleError

log = logging.getLogger(__name__)

DOCS = "https://docs.nvidia.com/metropolis/deepstream/dev-guide/text/DS_plugin_gst-nvinfer.html"
CONFIG = "config_infer_primary.txt"
LABELS = "labels.txt"
PIXELS_QDQ = "model_int8_qdq_pixels.onnx"
# The single scale may cost at most this share of the evaluation images' agreement with the exact
# preprocessing, and never less than one image, before the pixel-input model replaces it.
BUDGET = 0.005
NETWORK_MODE = {"fp32": 0, "int8": 1, "fp16": 2, "best": 1}


@dataclass(frozen=True)
class Scaling:
    """nvinfer's net-scale-factor and offsets for a model's preprocessing."""

    scale: float
    offsets: tuple[float, float, float]
    exact: bool  # one std for all channels: nvinfer reproduces the preprocessing

    @classmethod
    def of(cls, prep: Preprocessing) -> Scaling:
        std = np.asarray(prep.std, np.float64)
        scales = 1.0 / (255.0 * std)
        # The nearest single scale in relative terms: the geometric mean of the per-channel scales
        # (each channel is then off by the same factor, above or below).
        scale = float(np.exp(np.log(scales).mean()))
        offsets = tuple(float(255.0 * m) for m in prep.mean)
        return cls(scale, offsets, bool(np.allclose(std, std[0], rtol=1e-6)))

    def apply(self, pixels_nhwc: np.ndarray, prep: Preprocessing) -> np.ndarray:
        """What nvinfer feeds the model: uint8 RGB (N, H, W, 3) -> float32 in the model's layout."""
        x = np.asarray(pixels_nhwc, np.float32)
        if prep.channel_order == "bgr":
            x = x[..., ::-1]
        y = (x - np.asarray(self.offsets, np.float32)) * np.float32(self.scale)
        return np.ascontiguousarray(y if prep.layout == "nhwc" else y.transpose(0, 3, 1, 2))


def measure_single_scale(fp32_onnx: Path, images, prep: Preprocessing, batch_size: int = 64) -> dict[str, Any]:
    """Top-1 and agreement of the FP32 model fed nvinfer's single-scale preprocessing against the
    exact one, on ``images`` (labelled ImageSet); {"exact": True} when nothing is approximated."""
    scaling = Scaling.of(prep)
    if scaling.exact:
        return {"exact": True}
    from rescompile._ort import cpu_session
    from rescompile.data.images import iter_batches

    sess = cpu_session(str(fp32_onnx))
    name = sess.get_inputs()[0].name
    exact, approx, labels = [], [], []
    for pixels, y in iter_batches(images, prep, batch_size, pixels=True):
        exact.append(sess.run(None, {name: prep.normalize(pixels)})[0].argmax(1))
        approx.append(sess.run(None, {name: scaling.apply(pixels, prep)})[0].argmax(1))
        if y is not None:
            labels.append(y)
    e, a = np.concatenate(exact), np.concatenate(approx)
    row: dict[str, Any] = {"exact": False, "images": int(len(e)), "agreement": float((e == a).mean()),
                           "scale": scaling.scale, "per_channel_scales": [float(1 / (255 * s)) for s in prep.std]}
    if labels:
        y = np.concatenate(labels)
        row.update(top1_exact=float((e == y).mean()), top1_single_scale=float((a == y).mean()))
    budget = max(BUDGET, 1.0 / max(len(e), 1))
    row["budget"] = budget
    row["over_budget"] = bool(1.0 - row["agreement"] > budget + 1e-12)
    return row


def pixel_input_qdq(model, prep: Preprocessing):
    """``model`` (an ONNX ModelProto taking normalised input) behind its own normalisation: it
    takes 0-255 pixels as float32 in the model's layout and channel order, which nvinfer feeds
    with net-scale-factor 1 and offsets 0. Exact, padding border included (the normalisation runs
    before the first convolution pads)."""
    import onnx
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inp = g.input[0]
    normalised = inp.name + "_normalised"
    shape = (1, 1, 1, 3) if prep.layout == "nhwc" else (1, 3, 1, 1)
    std, mean = np.asarray(prep.std, np.float64), np.asarray(prep.mean, np.float64)
    for node in g.node:
        node.input[:] = [normalised if i == inp.name else i for i in node.input]
    g.initializer.extend([
        numpy_helper.from_array((255.0 * mean).astype(np.float32).reshape(shape), inp.name + "_offsets"),
        numpy_helper.from_array((1.0 / (255.0 * std)).astype(np.float32).reshape(shape), inp.name + "_scales"),
    ])
    centred = inp.name + "_centred"
    head = [helper.make_node("Sub", [inp.name, inp.name + "_offsets"], [centred], name=centred),
            helper.make_node("Mul", [centred, inp.name + "_scales"], [normalised], name=normalised)]
    nodes = head + list(g.node)
    del g.node[:]
    g.node.extend(nodes)
    return out


def _rel(path: Path, start: Path) -> str:
    return os.path.relpath(path, start)


def config_text(out: Path, doc: dict[str, Any], files: dict[str, Path], pixels_onnx: Path | None, name: str | None = None) -> str:
    """The [property] group of config_infer_primary.txt, with a header saying where it comes from."""
    here = out / "deploy" / "deepstream"
    spec_doc, inp, output = doc.get("spec") or {}, doc.get("input") or {}, doc.get("output") or {}
    if not inp.get("name") or not output.get("name"):
        raise BundleError(f"{out}: the manifest names no input or output tensor", "Rebuild the bundle with this rescompile")
    prep = Preprocessing.from_dict(spec_doc.get("preprocessing") or {})
    precision = doc.get("precision") or "fp32"
    plan = doc.get("engine_plan") or {}
    engine = doc.get("engine")
    scaling = Scaling.of(prep)
    implicit = plan.get("int8_source") == "cache"
    if pixels_onnx is not None:
        onnx_file, scale, offsets, how = pixels_onnx, 1.0, (0.0, 0.0, 0.0), "pixel-input Q/DQ ONNX: the normalisation is in the model"
    else:
        role = "optimized_onnx" if implicit or precision in ("fp32", "fp16") or "qdq_onnx" not in files else "qdq_onnx"
        onnx_file, scale, offsets = files[role], scaling.scale, scaling.offsets
        how = "exact (one std for every channel)" if scaling.exact else (
            "the nearest single scale: the model's std differs per channel; see accuracy.json deepstream_preprocessing")
    size = prep.input_size
    profiles = plan.get("profiles") or []
    max_batch = int(profiles[0]["max"][0]) if profiles else 1
    opt_batch = int(profiles[0]["opt"][0]) if profiles else 1
    if max_batch < opt_batch:
        raise BundleError(f"{out}: the engine profile's max batch {max_batch} is below its opt batch {opt_batch}", "Rebuild the bundle")
    mode = NETWORK_MODE.get(precision, 0)
    lines = [
        "# DeepStream Gst-nvinfer configuration (DeepStream 7.x on JetPack 6, 8.x), written by rescompile",
        f"# from {name or out.name}/manifest.json. Keys and values: {DOCS}",
        f"# Preprocessing: y = net-scale-factor * (pixel - offsets[c]), {how}.",
        "# nvinfer stretches the whole frame to infer-dims (no center crop) and takes the class with the",
        "# highest output above classifier-threshold (0: the model outputs logits, not probabilities,",
        "# so a frame whose highest logit is negative gets no label; raise it to drop unsure frames).",
        "[property]",
        "gpu-id=0",
        f"onnx-file={_rel(onnx_file, here)}",
    ]
    if engine is not None and files.get("engine") is not None and pixels_onnx is None:
        lines.append(f"model-engine-file={_rel(files['engine'], here)}")
    else:  # the engine nvinfer builds from onnx-file on first run, and reuses after (its own naming)
        kind = {0: "fp32", 1: "int8", 2: "fp16"}[mode]
        lines.append(f"model-engine-file={_rel(onnx_file, here)}_b{opt_batch}_gpu0_{kind}.engine")
    if mode == 1 and "calibration_cache" in files:
        # nvinfer turns INT8 on only when this file exists; a Q/DQ model takes its scales from the
        # graph and TensorRT ignores the cache, implicit INT8 (DLA, TensorRT 10) reads it.
        lines.append(f"int8-calib-file={_rel(files['calibration_cache'], here)}")
    lines += [
        f"labelfile-path={LABELS}",
        f"batch-size={opt_batch}",
        f"network-mode={mode}",
        f"net-scale-factor={scale:.10g}",
        f"offsets={';'.join(f'{o:.6g}' for o in offsets)}",
        f"model-color-format={0 if prep.channel_order == 'rgb' else 1}",
        f"infer-dims=3;{size};{size}",
        f"network-input-order={1 if prep.layout == 'nhwc' else 0}",
        "network-type=1",
        "process-mode=1",
        "gie-unique-id=1",
        f"output-blob-names={output['name']}",
        "classifier-threshold=0",
        "maintain-aspect-ratio=0",
    ]
    if plan.get("dla_core") is not None:
        lines += ["enable-dla=1", f"use-dla-core={int(plan['dla_core'])}"]
    return "\n".join(lines) + "\n"


def write_deepstream(out: Path, doc: dict[str, Any], files: dict[str, Path], approximation: dict[str, Any] | None = None,
                     name: str | None = None) -> dict[str, Path]:
    """deploy/deepstream/{config_infer_primary.txt, labels.txt} (and the pixel-input Q/DQ ONNX when
    the single scale costs more than the budget); returns what was written, by role."""
    here = out / "deploy" / "deepstream"
    here.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    pixels_onnx = None
    if approximation and approximation.get("over_budget") and "qdq_onnx" in files:
        import onnx

        from rescompile.stages.calibrate.stage import save_model

        prep = Preprocessing.from_dict((doc.get("spec") or {}).get("preprocessing") or {})
        pixels_onnx = save_model(pixel_input_qdq(onnx.load(str(files["qdq_onnx"])), prep), here / PIXELS_QDQ)
        written["deepstream_pixels_onnx"] = pixels_onnx
    labels = (doc.get("spec") or {}).get("labels") or [str(i) for i in range(int((doc.get("spec") or {}).get("num_classes", 0)))]
    # A classifier's label file: one line per output layer, its labels separated by ';'.
    # (a ';' inside a label would split it: written as ',').
    written["deepstream_labels"] = write_bytes_atomic(here / LABELS, (";".join(str(s).replace(";", ",") for s in labels) + "\n").encode())
    written["deepstream_config"] = write_bytes_atomic(here / CONFIG, config_text(out, doc, files, pixels_onnx, name).encode())
    return written


def parse_config(text: str) -> dict[str, str]:
    """The [property] keys of an nvinfer configuration (GKeyFile syntax: '#' comments, key=value)."""
    import configparser

    parser = configparser.ConfigParser(comment_prefixes=("#",), interpolation=None)
    parser.optionxform = str  # keys are case-sensitive
    parser.read_string(text)
    return dict(parser["property"])


def record_single_scale(fp32_onnx: Path, images, prep: Preprocessing, accuracy_path: Path) -> dict[str, Any]:
    """Measure DeepStream's single-scale approximation on ``images``, add it to accuracy.json as
    ``deepstream_preprocessing`` and warn in one line when it approximates anything."""
    import json

    from rescompile._io import write_json_atomic
    from rescompile.errors import DataError

    try:
        row = measure_single_scale(fp32_onnx, images, prep)
    except DataError:  # model-ready tensors: no pixels to feed nvinfer's way
        row = {"exact": Scaling.of(prep).exact, "measured": False, "reason": "the evaluation data are tensors, not images"}
    doc = json.loads(accuracy_path.read_text()) if accuracy_path.is_file() else {}
    doc["deepstream_preprocessing"] = row
    write_json_atomic(accuracy_path, doc)
    if not row.get("exact") and "agreement" in row:
        top1 = (f", top-1 {row['top1_single_scale']:.2%} vs {row['top1_exact']:.2%}" if "top1_exact" in row else "")
        then = (f"the DeepStream config runs deploy/deepstream/{PIXELS_QDQ} instead (normalisation folded in, scale 1, offsets 0)"
                if row["over_budget"] else "within the budget, so the DeepStream config keeps the Q/DQ ONNX")
        log.warning("DeepStream takes one net-scale-factor, this model's std differs per channel: the nearest single scale agrees "
                    "with the exact preprocessing on %.2f%% of %d images%s; %s", 100 * row["agreement"], row["images"], top1, then)
    return row
