"""The one interface every runner shares: load, infer, classify, close.

Only numpy (and Pillow, for images) here: an edge app that runs the ONNX Runtime or TensorRT
runner never imports PyTorch.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rescompile.data.preprocess import as_rgb_uint8, pil_rgb_uint8
from rescompile._io import loads_json
from rescompile.errors import ModelError, RescompileError
from rescompile.models.spec import ONNX_METADATA_KEY, ModelSpec

log = logging.getLogger(__name__)


class RunnerError(RescompileError):
    """A runner used wrongly: a batch of the wrong shape or type, a closed runner, no spec."""


def spec_from_text(text: str | None, path) -> ModelSpec | None:
    """The ModelSpec `rescompile export` stores in an ONNX file's metadata (``text``), or None."""
    if not text:
        log.info("%s carries no rescompile spec: infer() works, classify() needs a spec", path)
        return None
    try:
        return ModelSpec.from_dict(loads_json(text))
    except (ValueError, RecursionError, RescompileError) as exc:
        raise ModelError(f"{path} has a corrupt {ONNX_METADATA_KEY} metadata entry ({exc})", "Re-export it") from exc


def pixels_only(source) -> RunnerError:
    """The error for a float batch given to a file that takes uint8 pixels (a pixel-input artifact)."""
    return RunnerError(
        f"{source} takes uint8 pixels, not a float batch",
        "Use infer_pixels() on uint8 (N, H, W, 3) pixels or classify(); load the bundle for float input",
    )


@dataclass(frozen=True)
class Prediction:
    index: int
    label: str
    probability: float


class Runner:
    """Base class. Subclasses set ``backend`` and implement ``_run`` and ``_release``.

    ``input_shape`` is (C, H, W), or (H, W, C) for an NHWC model, with None for dimensions the
    model leaves dynamic; it comes from the model file and falls back to the spec, and every batch
    is checked against it.
    """

    backend: str = "?"

    def __init__(
        self,
        *,
        spec: ModelSpec | None,
        source: str | Path,
        input_name: str,
        output_name: str,
        input_shape: tuple[int | None, int | None, int | None] | None = None,
    ) -> None:
        self.spec = spec
        self.source = str(source)
        self.input_name = input_name
        self.output_name = output_name
        model_chw = tuple(input_shape) if input_shape is not None else (None, None, None)
        spec_chw = spec.input_shape if spec is not None else (None, None, None)
        # The model's own static dims win; the spec fills in what the model leaves dynamic.
        self.input_shape = tuple(m if m is not None else s for m, s in zip(model_chw, spec_chw))
        self.layout = spec.preprocessing.layout if spec is not None else _guess_layout(self.input_shape)
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the model (and device memory). Safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._release()

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<{type(self).__name__} {self.backend} {self.source!r} ({state})>"

    def runner_for(self, n: int) -> Runner:
        """The runner a call with ``n`` images runs on: this one (a runner split by batch size names
        one of its two; ``classify`` runs ``runner_for(1)``)."""
        return self

    # -- inference ----------------------------------------------------------------------
    def infer(self, batch: np.ndarray) -> np.ndarray:
        """float32 batch in the model's layout (NCHW, or NHWC) -> float32 logits (N, classes). NaN inputs pass through."""
        if self._closed:
            raise RunnerError(f"{self.backend} runner for {self.source} is closed", "Load the model again")
        batch = self.check_batch(batch)
        return np.asarray(self._run(batch), dtype=np.float32)

    def check_batch(self, batch: Any) -> np.ndarray:
        """The batch as a C-contiguous float32 array, or a RunnerError saying what is wrong."""
        if not isinstance(batch, np.ndarray):
            raise RunnerError(
                f"infer() takes a numpy array, got {type(batch).__name__}",
                "Pass np.asarray(batch, dtype=np.float32) of shape (N, C, H, W)",
            )
        if not (np.issubdtype(batch.dtype, np.floating) or batch.dtype.name == "bfloat16"):  # ml_dtypes' bfloat16 is no np.floating
            hint = "Use classify() for raw images, or apply runner.spec.preprocessing first" if batch.dtype == np.uint8 else \
                "Convert it with batch.astype(np.float32)"
            raise RunnerError(f"infer() takes a float32 batch, got {batch.dtype}", hint)
        expected = "x".join("?" if d is None else str(d) for d in self.input_shape)
        layout = self.layout.upper()
        if batch.ndim != 4:
            hint = "Add the batch axis: batch[None]" if batch.ndim == 3 else f"Pass an (N, {expected.replace('x', ', ')}) array"
            raise RunnerError(f"infer() takes an N x {expected} ({layout}) batch, got shape {batch.shape}", hint)
        if batch.shape[0] == 0:
            raise RunnerError("infer() got an empty batch (N = 0)", "Pass at least one image")
        nhwc = self.layout == "nhwc"
        c, h, w = (self.input_shape[2], *self.input_shape[:2]) if nhwc else self.input_shape
        got_c, got_h, got_w = (batch.shape[3], *batch.shape[1:3]) if nhwc else batch.shape[1:]
        if c is not None and got_c != c:
            other = batch.shape[1] if nhwc else batch.shape[3]
            hint = (f"The batch looks {'NCHW' if nhwc else 'NHWC'} and the model takes {layout}: use batch.transpose"
                    f"{(0, 2, 3, 1) if nhwc else (0, 3, 1, 2)}") if other == c else f"The model takes {c} channels"
            raise RunnerError(f"infer() got {got_c} channels in shape {batch.shape}, the model takes N x {expected} ({layout})", hint)
        if (h is not None and got_h != h) or (w is not None and got_w != w):
            raise RunnerError(
                f"infer() got images of {got_h}x{got_w}, the model takes N x {expected} ({layout})",
                "Resize with the model's preprocessing (runner.spec.preprocessing), or use classify()",
            )
        return np.ascontiguousarray(batch, dtype=np.float32)

    def infer_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 RGB pixels (N, H, W, 3) at the model's input size -> float32 logits (N, classes).

        The model's normalisation is applied here, or, for a runner on a pixel-input artifact,
        is folded into the model (nothing is converted to float in numpy)."""
        if self._closed:
            raise RunnerError(f"{self.backend} runner for {self.source} is closed", "Load the model again")
        return np.asarray(self._run_pixels(self.check_pixels(pixels)), dtype=np.float32)

    def check_pixels(self, pixels: Any) -> np.ndarray:
        """The pixels as a C-contiguous uint8 (N, H, W, 3) array, or a RunnerError saying what is wrong."""
        if self.spec is None:
            raise RunnerError(
                f"{self.source} carries no model spec, so its preprocessing is unknown",
                "Use infer() on a preprocessed batch, or load a bundle or an ONNX file exported by rescompile",
            )
        size = self.spec.preprocessing.input_size
        if not isinstance(pixels, np.ndarray) or pixels.dtype != np.uint8:
            got = type(pixels).__name__ if not isinstance(pixels, np.ndarray) else str(pixels.dtype)
            raise RunnerError(f"infer_pixels() takes a uint8 array, got {got}", "Pass uint8 RGB pixels (N, H, W, 3); infer() takes float")
        if pixels.ndim != 4 or pixels.shape[3] != 3 or pixels.shape[1:3] != (size, size) or pixels.shape[0] == 0:
            raise RunnerError(
                f"infer_pixels() takes N x {size} x {size} x 3 RGB pixels, got shape {pixels.shape}",
                "Resize and crop with runner.spec.preprocessing.pixels(images), or use classify()",
            )
        return np.ascontiguousarray(pixels)

    def classify(self, image: Any, top_k: int = 5) -> list[Prediction]:
        """Top-``top_k`` predictions for one image (HxWx3 uint8 array, PIL image or file path),
        preprocessed exactly as the model's spec says; probabilities are a softmax of the logits."""
        if self.spec is None:
            raise RunnerError(
                f"{self.source} carries no model spec, so its preprocessing and labels are unknown",
                "Use infer() on a preprocessed batch, or load a bundle or an ONNX file exported by rescompile",
            )
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise RunnerError(f"top_k must be a positive integer, got {top_k!r}", "Pass top_k=1 or more")
        logits = self.infer_pixels(self.spec.preprocessing.pixels(read_image(image)))[0].astype(np.float64)
        if self.spec.options.get("output") == "probabilities":  # the model ends in its own Softmax
            probs = np.clip(logits, 0.0, None) / max(float(np.clip(logits, 0.0, None).sum()), 1e-12)
        else:
            probs = softmax(logits)
        k = min(top_k, probs.shape[0])
        order = np.argsort(-probs, kind="stable")[:k]
        return [Prediction(int(i), self.spec.label(int(i)), float(probs[i])) for i in order]

    # -- for subclasses -----------------------------------------------------------------
    def _run(self, batch: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _run_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self._run(self.check_batch(self.spec.preprocessing.normalize(pixels)))

    def _release(self) -> None:
        raise NotImplementedError


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - np.max(logits)
    exp = np.exp(shifted)
    return exp / exp.sum()


def read_image(image: Any) -> np.ndarray:
    """An HxWx3 uint8 array from an array, a PIL image or an image file path."""
    if isinstance(image, (str, os.PathLike)):
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(image) as img:
                return pil_rgb_uint8(img)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise RunnerError(f"cannot read image {image} ({exc.__class__.__name__})", "Pass a PNG/JPEG file or an array") from exc
    if isinstance(image, np.ndarray):
        try:
            return as_rgb_uint8(image)
        except RescompileError as exc:
            raise RunnerError(f"classify() cannot use this array: {exc.message}", "Pass one HxWx3 uint8 RGB image") from exc
    if hasattr(image, "convert") and hasattr(image, "size"):  # a PIL image, without importing PIL to check
        return pil_rgb_uint8(image)
    raise RunnerError(
        f"classify() takes an image array, a PIL image or a path, got {type(image).__name__}",
        "Pass one HxWx3 uint8 RGB image",
    )


def _guess_layout(shape: tuple[int | None, ...]) -> str:
    """A model without a spec: NHWC when only the last axis looks like 1 or 3 channels."""
    if len(shape) == 3 and shape[0] not in (1, 3) and shape[2] in (1, 3):
        return "nhwc"
    return "nchw"
