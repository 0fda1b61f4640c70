"""Peers: what a user gets from other tools in a few lines, measured beside the bundle.

`ort`: the bundle's optimized FP32 ONNX quantized by ONNX Runtime's own ``quantize_static``
(QDQ format, uint8 activations, int8 per-channel weights, 7-bit weights where the CPU lacks
VNNI as ONNX Runtime advises), calibrated on the same images as the bundle: the images the
bundle's scales.json names are loaded again and checked against its data sha256.

`nncf`: the same optimized FP32 ONNX quantized by NNCF's ``nncf.quantize`` with its default
settings (its ONNX backend, calibrated on the same images), saved as ONNX and run on OpenVINO,
the runtime NNCF quantizes for.

A peer whose package is not installed here steps aside with a note; it never fails the bench.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from collections.abc import Callable
from pathlib import Path

from rescompile._lazy import has_module
from rescompile.bench.backends import Backend, OpenVINOBackend, OrtBackend
from rescompile.bundle import Manifest
from rescompile.config import BenchConfig
from rescompile.errors import ConfigError, MissingDependencyError, RescompileError

log = logging.getLogger(__name__)

PEERS = ("ort", "nncf")
ORT_PEER = "ort-int8-qstatic"
NNCF_PEER = "ov-int8-nncf"
CPU_INT8 = ("ort-int8", "ort-int8-pixels", "ov-int8")  # the bundle's own CPU INT8 backends, which the peers are measured beside


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


def peer_backends(manifest: Manifest, cfg: BenchConfig, chosen: list[Backend], notes: list[str],
                  progress: Callable[[str, int, int], None]) -> list[Backend]:
    """The peers ``cfg.peers`` asks for, quantized from the bundle's optimized ONNX on its own
    calibration images, when a CPU INT8 backend of the bundle they are compared with is measured."""
    unknown = [p for p in cfg.peers if p not in PEERS]
    if unknown:
        raise ConfigError(f"unknown peer {unknown[0]!r}", f"Use --peers {','.join(PEERS)} (or a part of it) or --peers none")
    if not cfg.peers or not any(b.key in CPU_INT8 for b in chosen) or not manifest.has("optimized_onnx"):
        return []
    keys = {"ort": ORT_PEER, "nncf": NNCF_PEER}
    wanted = [p for p in PEERS if p in cfg.peers and (not cfg.backends or keys[p] in cfg.backends)]  # --backends is what runs
    if not wanted:
        return []
    images, note = calibration_set(manifest)
    if images is None:
        notes.extend(f"{_TITLES[p]} is not compared: {note}" for p in wanted)
        return []
    out_dir = Path(cfg.output_dir) if cfg.output_dir else manifest.dir / "bench"
    made = []
    for peer in wanted:
        progress(f"{peer} peer", 0, 1)
        backend = _MAKERS[peer](manifest, cfg, images, note, out_dir, notes)
        progress(f"{peer} peer", 1, 1)
        if backend is not None:
            backend.comparison = True
            made.append(backend)
    return made


def _ort_peer(manifest: Manifest, cfg: BenchConfig, images, note: str, out_dir: Path, notes: list[str]) -> Backend | None:
    from rescompile.stages.calibrate.qdq import has_vnni

    vnni = has_vnni()
    try:
        path = ort_quantize_static(manifest.file("optimized_onnx"), out_dir / "peer_ort_quantize_static.onnx", manifest.spec, images,
                                   reduce_range=not vnni)
    except MissingDependencyError as exc:  # onnxruntime.quantization pulls in more than the runtime does
        notes.append(f"ONNX Runtime quantize_static is not compared: its quantizer cannot be imported here ({exc.message})")
        return None
    peer = OrtBackend(ORT_PEER, "ONNX Runtime INT8 (quantize_static)", path, "int8", threads=cfg.threads,
                      providers=["CPUExecutionProvider"])
    peer.about = f"ONNX Runtime quantize_static (QDQ, U8S8, per channel, {'8' if vnni else '7'}-bit weights), {note}"
    return peer


def _nncf_peer(manifest: Manifest, cfg: BenchConfig, images, note: str, out_dir: Path, notes: list[str]) -> Backend | None:
    missing = [m for m in ("nncf", "openvino") if not has_module(m)]
    if missing:
        notes.append(f"NNCF + OpenVINO is not compared: {' and '.join(missing)} not installed here (pip install 'rescompile[nncf]')")
        return None
    import nncf

    path = nncf_quantize(manifest.file("optimized_onnx"), out_dir / "peer_nncf.onnx", manifest.spec, images)
    peer = OpenVINOBackend(NNCF_PEER, "OpenVINO INT8 (NNCF quantize)", path, "int8", threads=cfg.threads)
    peer.about = f"NNCF {nncf.__version__} quantize (default settings, ONNX backend) run on OpenVINO {_openvino_version()}, {note}"
    return peer


def nncf_quantize(src: Path, dst: Path, spec, images) -> Path:
    """NNCF's post-training quantization of ``src`` from ``images``, with NNCF's defaults, saved as ONNX."""
    import onnx

    from rescompile._io import atomic_path
    from rescompile._lazy import import_optional
    from rescompile.data.images import iter_batches

    nncf = import_optional("nncf")
    model = onnx.load(str(src))
    input_name = model.graph.input[0].name
    # One image per item: NNCF's statistics (and subset_size) count dataset items, and it warns that
    # batched items can skew them. Every calibration image is used, as for the bundle and the ort peer.
    items = [x[i:i + 1] for x, _ in iter_batches(images, spec.preprocessing, 32) for i in range(len(x))]
    nncf_log = logging.getLogger("nncf")
    level = nncf_log.level
    nncf_log.setLevel(logging.WARNING)  # NNCF logs its progress at INFO on its own handler (stdout)
    # NNCF draws rich progress bars on stdout, which would corrupt `rescompile bench --json`: keep them.
    bars = io.StringIO()
    try:
        with contextlib.redirect_stdout(bars):
            quantized = nncf.quantize(model, nncf.Dataset(items, lambda x: {input_name: x}), subset_size=len(items))
    finally:
        nncf_log.setLevel(level)
    log.debug("nncf.quantize: %s", bars.getvalue().strip())
    with atomic_path(dst) as tmp:
        onnx.save(quantized, str(tmp))
    return dst


def _openvino_version() -> str:
    import openvino

    return openvino.get_version().split("-")[0]


_TITLES = {"ort": "ONNX Runtime quantize_static", "nncf": "NNCF + OpenVINO"}
TITLES = {ORT_PEER: _TITLES["ort"], NNCF_PEER: _TITLES["nncf"]}  # backend key -> the tool, as the verdict names it
_MAKERS = {"ort": _ort_peer, "nncf": _nncf_peer}
