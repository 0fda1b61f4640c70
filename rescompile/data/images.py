"""Image sets: labelled uint8 RGB images in memory or in files, and batching through a Preprocessing."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rescompile.data.preprocess import Preprocessing, pil_rgb_uint8
from rescompile.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


class ImageSet:
    """A sequence of uint8 RGB images (H, W, 3) with optional integer labels."""

    classes: tuple[str, ...]
    labels: np.ndarray | None

    def __len__(self) -> int:
        raise NotImplementedError

    def image(self, index: int) -> np.ndarray:
        raise NotImplementedError

    def subset(self, indices: Sequence[int] | np.ndarray) -> ImageSet:
        raise NotImplementedError

    @property
    def native_size(self) -> int | None:
        """Side of every image when all are the same square size, else None."""
        return None

    def images(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        return [self.image(int(i)) for i in indices]

    def batch(self, indices: Sequence[int] | np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
        """The model's input for these images: ``preprocessing`` applied (model-ready tensors: as they are)."""
        return preprocessing(self.images(indices))

    def describe(self) -> str:
        """What these images are and how they reach the model, in a few words."""
        return f"{len(self)} images, preprocessed by the model's spec"

    def require_labels(self, purpose: str) -> np.ndarray:
        if self.labels is None:
            raise DataError(
                f"{purpose} needs labelled images, but this data has no labels",
                "Use an image folder with one sub-folder per class, or an .npz with a 'labels' array",
            )
        return self.labels


@dataclass
class _InMemory(ImageSet):
    """One array holding every item, with optional labels: the part images and tensors share."""

    array: np.ndarray
    labels: np.ndarray | None
    classes: tuple[str, ...]

    def _check_labels(self, what: str) -> None:
        if self.labels is not None and len(self.labels) != len(self.array):
            raise DataError(f"{len(self.array)} {what} but {len(self.labels)} labels: the counts must match")

    def __len__(self) -> int:
        return len(self.array)

    def subset(self, indices: Sequence[int] | np.ndarray):
        idx = np.asarray(indices, dtype=np.int64)
        return type(self)(self.array[idx], None if self.labels is None else self.labels[idx], self.classes)


@dataclass
class ArrayImages(_InMemory):
    """Images held in one uint8 array of shape (N, H, W, 3)."""

    def __post_init__(self) -> None:
        if self.array.ndim != 4 or self.array.shape[3] != 3 or self.array.dtype != np.uint8:
            raise DataError(f"expected uint8 images of shape (N, H, W, 3), got {self.array.dtype} {self.array.shape}")
        self._check_labels("images")

    def image(self, index: int) -> np.ndarray:
        return self.array[index]

    @property
    def native_size(self) -> int | None:
        h, w = self.array.shape[1:3]
        return int(h) if h == w else None


@dataclass
class TensorSet(_InMemory):
    """Model-ready float32 tensors (N, *model input shape), fed exactly as they are: the form most
    people hand calibration data to TensorRT, Polygraphy and ONNX Runtime's quantizer in."""

    def __post_init__(self) -> None:
        if self.array.ndim != 4 or self.array.dtype != np.float32:
            raise DataError(f"expected float32 tensors of shape (N, C, H, W) or (N, H, W, C), got {self.array.dtype} {self.array.shape}")
        self._check_labels("tensors")

    def image(self, index: int) -> np.ndarray:
        raise DataError("these are model-ready tensors, not images", "Use them as model input (they are fed as they are)")

    def batch(self, indices: Sequence[int] | np.ndarray, preprocessing: Preprocessing) -> np.ndarray:
        return np.ascontiguousarray(self.array[np.asarray(indices, dtype=np.int64)])

    def describe(self) -> str:
        return f"{len(self)} model-ready tensors [{','.join(map(str, self.array.shape[1:]))}], fed as they are"


@dataclass
class FileImages(ImageSet):
    """Images decoded from files on demand (bounded memory for large folders)."""

    paths: list[Path]
    labels: np.ndarray | None
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def image(self, index: int) -> np.ndarray:
        from PIL import Image, UnidentifiedImageError

        path = self.paths[index]
        try:
            with Image.open(path) as img:
                return pil_rgb_uint8(img)
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            raise DataError(f"cannot read image {path} ({exc})", "Remove or replace the file") from exc

    def subset(self, indices: Sequence[int] | np.ndarray) -> FileImages:
        idx = [int(i) for i in indices]
        labels = None if self.labels is None else self.labels[np.asarray(idx, dtype=np.int64)]
        return FileImages([self.paths[i] for i in idx], labels, self.classes)


def iter_batches(
    images: ImageSet,
    preprocessing: Preprocessing,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    pixels: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
    """Yield (float32 model input, int64 labels or None) batches; memory is bounded by ``batch_size``.
    ``pixels``: the uint8 RGB pixels at the input size instead, not normalized (what a pixel-input
    artifact takes); model-ready tensors have none and raise DataError."""
    if batch_size < 1:
        raise DataError(f"batch size must be >= 1, got {batch_size}")
    order = np.arange(len(images))
    if shuffle:
        order = np.random.default_rng(seed).permutation(order)
    fast = (
        isinstance(images, ArrayImages)
        and images.native_size == preprocessing.input_size
        and preprocessing.resize is None
    )
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if pixels:
            x = images.array[idx] if fast else preprocessing.pixels(images.images(idx))
        else:
            x = preprocessing.normalize(images.array[idx]) if fast else images.batch(idx, preprocessing)
        y = None if images.labels is None else images.labels[idx]
        yield x, y


def stratified_split(
    labels: np.ndarray | None, n: int, fractions: Sequence[float], seed: int
) -> list[np.ndarray]:
    """Split range(n) into len(fractions)+1 deterministic index sets (last one takes the rest).

    With labels, each class is split in the same proportions, so small sets keep every class.
    """
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else [np.flatnonzero(labels == c) for c in np.unique(labels)]
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for group in groups:
        group = rng.permutation(group)
        start = 0
        for k, frac in enumerate(fractions):
            count = int(round(frac * len(group)))
            parts[k].append(group[start : start + count])
            start += count
        parts[-1].append(group[start:])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def concat(sets: Sequence[ImageSet]) -> ImageSet:
    """One ImageSet holding every image of ``sets`` (all of one kind, same classes)."""
    sets = [s for s in sets if len(s)]
    if not sets:
        raise DataError("no images", "Provide a non-empty dataset")
    labels = None if any(s.labels is None for s in sets) else np.concatenate([s.labels for s in sets])
    for kind in (ArrayImages, TensorSet):
        if all(isinstance(s, kind) for s in sets) and len({s.array.shape[1:] for s in sets}) == 1:
            return kind(np.concatenate([s.array for s in sets]), labels, sets[0].classes)
    if all(isinstance(s, FileImages) for s in sets):
        return FileImages([p for s in sets for p in s.paths], labels, sets[0].classes)
    raise DataError("cannot combine image sets of different kinds", "Use one dataset")
