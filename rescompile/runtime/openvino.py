"""OpenVINO runner: the bundle's CPU INT8 artifact (or any ONNX file) compiled by OpenVINO for the CPU.

OpenVINO reads ONNX directly (no conversion step to keep in sync) and caches what it compiles in
its CACHE_DIR, keyed by the model file, the device and the settings: the first load of a file
compiles it, later loads read the cached blob (``load_seconds`` shows which happened).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from rescompile._lazy import import_optional
from rescompile.config import openvino_cache_dir
from rescompile.errors import ConfigError, ModelError
from rescompile.models.spec import ONNX_METADATA_KEY, ModelSpec
from rescompile.runtime.base import Runner, RunnerError, pixels_only, spec_from_text

log = logging.getLogger(__name__)

DEVICE = "CPU"


def compile_onnx(path: Path, *, threads: int | None = None, cache_dir: str | Path | None | bool = None, device: str = DEVICE):
    """OpenVINO's compiled model of an ONNX file: latency hint, ``threads`` inference
    threads (None: OpenVINO's choice), compiled blobs cached in ``cache_dir`` (None: rescompile's
    OpenVINO cache; False: no cache, for a file that is about to move or go; a cache that cannot be
    created is skipped with a warning)."""
    ov = import_optional("openvino")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}", "Pass threads=1 or more, or None")
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"no ONNX file at {path}", "Pass the path of a .onnx model")
    # LATENCY: one stream, all threads on one request (OpenVINO's "Performance Hints" page); what
    # an app classifying one frame at a time wants, and what the ONNX Runtime runner does.
    props: dict[str, object] = {"PERFORMANCE_HINT": "LATENCY"}
    if threads is not None:
        props["INFERENCE_NUM_THREADS"] = threads
    if cache_dir is not False:
        cache = Path(cache_dir) if cache_dir is not None and cache_dir is not True else openvino_cache_dir()
        try:
            cache.mkdir(parents=True, exist_ok=True)
            props["CACHE_DIR"] = str(cache)
        except OSError as exc:
            log.warning("OpenVINO model cache %s cannot be created (%s): every load compiles again", cache, exc)
    try:
        # A path (not a read model): with CACHE_DIR set, a cache hit skips reading the ONNX file too.
        return ov.Core().compile_model(str(path), device, props)
    except Exception as exc:  # OpenVINO raises RuntimeError/its own types for parse and compile errors
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ModelError(
            f"OpenVINO cannot compile {path} for {device} ({exc.__class__.__name__}: {first})",
            "Check that it is a complete ONNX model, or run it with backend=\"onnxruntime\"",
        ) from exc


class OpenVINORunner(Runner):
    """OpenVINO on an ONNX model, on the CPU. ``pixels_path`` names the same model's pixel-input
    artifact (uint8 RGB pixels in): ``classify`` and ``infer_pixels`` run it, as with ONNX Runtime;
    ``path`` itself is compiled only when ``infer`` is first called. ``path`` may be a pixel-input
    artifact itself; ``infer`` (float input) is then refused."""

    backend = "openvino"

    def __init__(
        self,
        path: str | Path,
        *,
        spec: ModelSpec | None = None,
        threads: int | None = None,
        pixels_path: str | Path | None = None,
        cache_dir: str | Path | None | bool = None,
    ) -> None:
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"no ONNX file at {path}", "Pass the path of a .onnx model")
        self._threads, self._cache_dir = threads, cache_dir
        self._float_path: Path | None = path
        self._model = self._pixels = None
        self.load_seconds = 0.0  # compile (or cache read) time of every model compiled so far
        lead_path = Path(pixels_path) if pixels_path is not None else path
        lead = self._compile(lead_path)
        if pixels_path is not None:
            if not model_takes_pixels(lead):
                raise ModelError(f"{pixels_path} does not take uint8 pixels (N x H x W x 3)", "Pass the bundle's model_int8_cpu_pixels.onnx")
            self._pixels = lead
        elif model_takes_pixels(lead):
            self._pixels, self._float_path = lead, None
        else:
            self._model = lead
        if len(lead.inputs) != 1 or not lead.outputs:
            raise ModelError(f"{lead_path} has {len(lead.inputs)} inputs and {len(lead.outputs)} outputs",
                             "The runtime takes classifiers with one image input and a logits output")
        dims = lead.input(0).get_partial_shape()
        if dims.rank.is_dynamic or dims.rank.get_length() != 4:
            raise ModelError(f"{lead_path} does not take a rank-4 image batch", "Export the model with an N x C x H x W input")
        if spec is None:
            spec = spec_from_onnx_file(lead_path)
        float_shape = None
        if self._model is not None:
            float_shape = tuple(d.get_length() if d.is_static else None for d in list(dims)[1:])
        super().__init__(spec=spec, source=path, input_name=lead.input(0).get_any_name(),
                         output_name=lead.output(0).get_any_name(), input_shape=float_shape)
        self.pixels_source = None if self._pixels is None else str(lead_path)
        self._requests: dict[int, object] = {}

    @property
    def takes_pixels(self) -> bool:
        """Whether classify/infer_pixels run a pixel-input artifact (no normalisation in numpy)."""
        return self._pixels is not None

    def _compile(self, path: Path):
        start = time.perf_counter()
        compiled = compile_onnx(path, threads=self._threads, cache_dir=self._cache_dir)
        seconds = time.perf_counter() - start
        self.load_seconds += seconds
        log.debug("OpenVINO compiled %s in %.3f s", path, seconds)
        return compiled

    def _request(self, compiled):
        request = self._requests.get(id(compiled))
        if request is None:
            request = self._requests[id(compiled)] = compiled.create_infer_request()
        return request

    def _float_model(self):
        if self._model is None:
            if self._float_path is None:
                raise pixels_only(self.source)
            self._model = self._compile(self._float_path)
        return self._model

    def _infer(self, compiled, x: np.ndarray, what: str) -> np.ndarray:
        request = self._request(compiled)
        try:
            request.infer({0: x}, share_inputs=True)  # x is C-contiguous (check_batch/check_pixels): no copy
        except Exception as exc:  # shape errors inside the graph surface as OpenVINO's RuntimeError
            raise RunnerError(
                f"OpenVINO failed on {what} of shape {x.shape} ({exc.__class__.__name__}: {str(exc).strip()[:160]})",
                "Check the batch against the model's input shape",
            ) from exc
        return np.array(request.get_output_tensor(0).data, copy=True)  # the request reuses its output buffer

    def _run(self, batch: np.ndarray) -> np.ndarray:
        return self._infer(self._float_model(), batch, "a batch")

    def _run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        if self._pixels is None:
            return super()._run_pixels(pixels)
        return self._infer(self._pixels, pixels, "pixels")

    def _release(self) -> None:
        self._requests.clear()
        self._model = self._pixels = None


def model_takes_pixels(compiled) -> bool:
    """A pixel-input artifact: one uint8 input of shape (N, H, W, 3)."""
    if len(compiled.inputs) != 1:
        return False
    port = compiled.input(0)
    shape = port.get_partial_shape()
    return (port.get_element_type().get_type_name() == "u8" and shape.rank.is_static and shape.rank.get_length() == 4
            and shape[3].is_static and shape[3].get_length() == 3)


def spec_from_onnx_file(path: Path) -> ModelSpec | None:
    """The ModelSpec that `rescompile export` stores in the ONNX metadata, or None (read with onnx,
    which is a base dependency: OpenVINO does not carry ONNX metadata_props through)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001  protobuf's DecodeError and friends
        raise ModelError(f"{path} is not a readable ONNX file ({exc.__class__.__name__})", "Re-export it") from exc
    text = next((p.value for p in model.metadata_props if p.key == ONNX_METADATA_KEY), None)
    return spec_from_text(text, path)
