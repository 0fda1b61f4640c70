"""ONNX Runtime runner: the CPU path (FP32 or the INT8 CPU artifact), CUDA when asked for."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from rescompile._lazy import import_optional
from rescompile.errors import ConfigError, ModelError
from rescompile.models.spec import ONNX_METADATA_KEY, ModelSpec
from rescompile.runtime.base import Runner, RunnerError, pixels_only, spec_from_text

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
# A model file that still takes another float type than float32 (an ONNX file loaded as it is, e.g. a
# model.half() export) is fed that type: batches are float32 everywhere else.
FEED_DTYPES = {"tensor(float16)": np.float16, "tensor(double)": np.float64}


class OnnxRuntimeRunner(Runner):
    """ONNX Runtime on an ONNX model. ``pixels_path`` names the same model's pixel-input artifact
    (uint8 RGB pixels in, normalisation folded into its first conv): ``classify`` and
    ``infer_pixels`` then run it and ``path`` is opened only when ``infer`` is first called. A
    pixel-input artifact can also be ``path`` itself; ``infer`` (float input) is then refused.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | Path,
        *,
        spec: ModelSpec | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        pixels_path: str | Path | None = None,
    ) -> None:
        self._ort = ort = import_optional("onnxruntime")

        path = Path(path)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ConfigError(f"threads must be a positive integer, got {threads!r}", "Pass threads=1 or more, or None")
        self._threads = threads
        self._providers = choose_providers(providers, ort.get_available_providers())
        self._float_path: Path | None = path  # None: only a pixel-input model is known
        self._session = self._pixels = None
        if pixels_path is not None:
            if not path.is_file():
                raise ModelError(f"no ONNX file at {path}", "Pass the path of a .onnx model")
            self._pixels = self._open(Path(pixels_path))
            if not _takes_pixels(self._pixels):
                raise ModelError(f"{pixels_path} does not take uint8 pixels (N x H x W x 3)", "Pass the bundle's model_int8_cpu_pixels.onnx")
            lead = self._pixels
        else:
            if not path.is_file():
                raise ModelError(f"no ONNX file at {path}", "Pass the path of a .onnx model")
            lead = self._open(path)
            if _takes_pixels(lead):
                self._pixels, self._float_path = lead, None
            else:
                self._session = lead
        inputs, outputs = lead.get_inputs(), lead.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelError(
                f"{path} has {len(inputs)} inputs and {len(outputs)} outputs",
                "The runtime takes classifiers with one image input and a logits output",
            )
        dims = inputs[0].shape
        if len(dims) != 4:
            raise ModelError(f"{path} takes a rank-{len(dims)} input, not an NCHW batch", "Export the model with an N x C x H x W input")
        if spec is None:
            spec = spec_from_metadata(lead, path)
        self.providers = tuple(lead.get_providers())
        float_shape = None if self._session is None else tuple(d if isinstance(d, int) and d > 0 else None for d in dims[1:])
        super().__init__(spec=spec, source=path, input_name=inputs[0].name, output_name=outputs[0].name, input_shape=float_shape)
        self._pixels_name = self._pixels.get_inputs()[0].name if self._pixels is not None else None
        # The file classify() and infer_pixels() run, when it is a pixel-input artifact.
        self.pixels_source = None if self._pixels is None else str(pixels_path if pixels_path is not None else path)
        log.debug("ONNX Runtime session for %s on %s", path, ", ".join(self.providers))

    @property
    def takes_pixels(self) -> bool:
        """Whether classify/infer_pixels run a pixel-input artifact (no normalisation in numpy)."""
        return self._pixels is not None

    def _open(self, path: Path):
        ort = self._ort
        if not path.is_file():
            raise ModelError(f"no ONNX file at {path}", "Pass the path of a .onnx model")
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # errors only: ORT's warnings would go to stderr, bypassing logging
        if self._threads is not None:
            opts.intra_op_num_threads = self._threads
        try:
            return ort.InferenceSession(str(path), opts, providers=self._providers)
        except Exception as exc:  # ORT raises its own pybind exception types (InvalidProtobuf, Fail, ...)
            raise ModelError(
                f"ONNX Runtime cannot load {path} ({exc.__class__.__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''})",
                "Check that it is a complete ONNX model; re-export or rebuild it",
            ) from exc

    def _float_session(self):
        if self._session is None:
            if self._float_path is None:
                raise pixels_only(self.source)
            self._session = self._open(self._float_path)
            self.input_name = self._session.get_inputs()[0].name
        return self._session

    def _run(self, batch: np.ndarray) -> np.ndarray:
        session = self._float_session()
        batch = batch.astype(FEED_DTYPES.get(session.get_inputs()[0].type, np.float32), copy=False)
        try:
            return session.run([self.output_name], {self.input_name: batch})[0]
        except Exception as exc:  # shape errors inside the graph surface as ORT's own types
            raise RunnerError(
                f"ONNX Runtime failed on a batch of shape {batch.shape} ({exc.__class__.__name__}: {str(exc)[:160]})",
                "Check the batch against the model's input shape",
            ) from exc

    def _run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        if self._pixels is None:
            return super()._run_pixels(pixels)
        try:
            return self._pixels.run([self.output_name], {self._pixels_name: pixels})[0]
        except Exception as exc:
            raise RunnerError(
                f"ONNX Runtime failed on pixels of shape {pixels.shape} ({exc.__class__.__name__}: {str(exc)[:160]})",
                "Pass uint8 RGB pixels (N, H, W, 3) at the model's input size",
            ) from exc

    def _release(self) -> None:
        self._session = self._pixels = None


def _takes_pixels(session) -> bool:
    """A pixel-input artifact: one uint8 input of shape (N, H, W, 3)."""
    inputs = session.get_inputs()
    return len(inputs) == 1 and inputs[0].type == "tensor(uint8)" and len(inputs[0].shape) == 4 and inputs[0].shape[3] == 3


def choose_providers(requested: Sequence[str] | None, available: Sequence[str]) -> list[str]:
    """CPU by default; requested providers that this ONNX Runtime has, CPU always last as fallback."""
    if requested is None:
        return [CPU]
    if isinstance(requested, str):
        requested = [requested]
    chosen = []
    for name in requested:
        if name in available:
            if name not in chosen:
                chosen.append(name)
        else:
            log.warning("%s is not available in this onnxruntime (has: %s): falling back", name, ", ".join(available))
    if CPU not in chosen:
        chosen.append(CPU)
    return chosen


def spec_from_metadata(session, path: Path) -> ModelSpec | None:
    """The ModelSpec that `rescompile export` stores in the model metadata, or None."""
    meta = session.get_modelmeta().custom_metadata_map
    text = meta.get(ONNX_METADATA_KEY)
    return spec_from_text(text, path)
