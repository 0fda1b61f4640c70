"""Peers: what a user gets from other tools in a few lines, measured beside the bundle.

`ort`: the bundle's optimized FP32 ONNX quantized by ONNX Runtime's own ``quantize_static``
(QDQ format, uint8 activations, int8 per-channel weights, 7-bit weights where the CPU lacks
VNNI as ONNX Runtime advises), calibrated on the same images as the bundle: the images the
bundle's scales.json names are loaded again and checked against its data sha256.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from rescompile.bundle import Manifest
from rescompile.errors import RescompileError

log = logging.getLogger(__name__)

PEERS = ("ort",)
ORT_PEER = "ort-int8-qstatic"


def _scales_provenance(manifest: Manifest) -> dict:
    import json

    if not manifest.has("scales"):
        return {}
    try:
        return dict(json.loads(manifest.file("scales").read_text()).get("provenance") or {})
    except (OSError, ValueError):
        return {}


def calibration_set(manifest: Manifest):
    """(the bundle's calibration images, a note): the same images when they can be loaded here
    (the note says whether their sha256 matched), else (None, why not)."""
    from rescompile.config import CalibConfig, DataConfig
    from rescompile.data.images import iter_batches
    from rescompile.stages.calibrate.inputs import calibration_images
    from rescompile.stages.calibrate.stage import sample

    prov = _scales_provenance(manifest)
    source, count = prov.get("source"), prov.get("images")
    if not source or not count:
        return None, "the bundle does not record which images calibrated it"
    spec = manifest.spec
    try:
        images, _name = calibration_images(spec, DataConfig(str(source)))
        chosen = sample(images, CalibConfig(num_images=int(count), min_images=1, advised_images=1))
    except RescompileError as exc:
        return None, f"its calibration data ({source}) cannot be loaded here: {exc}"
    digest = hashlib.sha256()
    for x, _ in iter_batches(chosen, spec.preprocessing, 32):
        digest.update(x.tobytes())
    same = digest.hexdigest() == prov.get("data_sha256")
    return chosen, f"calibrated on {len(chosen)} images of {source}" + ("" if same else " (not byte-identical to the bundle's: check the data)")


def ort_quantize_static(src: Path, dst: Path, spec, images, *, reduce_range: bool) -> Path:
    """ONNX Runtime's static quantization of ``src`` from ``images`` (QDQ, U8S8, per channel)."""
    import onnx

    from rescompile._io import atomic_path
    from rescompile._lazy import import_optional
    from rescompile.data.images import iter_batches

    quant = import_optional("onnxruntime.quantization")
    input_name = next(i.name for i in onnx.load(str(src), load_external_data=False).graph.input)

    class Reader(quant.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(x for x, _ in iter_batches(images, spec.preprocessing, 16))

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {input_name: x}

    dst.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    advice = _DropAdvice()
    root.addFilter(advice)  # quantize_static advises pre-processing on the root logger, twice per call
    try:
        with atomic_path(dst) as tmp:
            quant.quantize_static(
                str(src), str(tmp), Reader(), quant_format=quant.QuantFormat.QDQ, per_channel=True, reduce_range=reduce_range,
                activation_type=quant.QuantType.QUInt8, weight_type=quant.QuantType.QInt8,
            )
    finally:
        root.removeFilter(advice)
    return dst


class _DropAdvice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()
