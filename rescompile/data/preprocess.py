"""The preprocessing spec that travels with a model into every artifact.

It needs only numpy and Pillow, so an edge app applies exactly the training-time
preprocessing without PyTorch. A mismatch between training, calibration and deployment
preprocessing is the most common cause of a real INT8 accuracy drop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from rescompile.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel statistics of the CIFAR-10 training set (widely quoted; recomputable in one line).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Preprocessing:
    """uint8 RGB image (H, W, 3) -> float32 (3, size, size) tensor.

    Steps: optional resize of the shorter side to ``resize`` then a center crop to
    ``input_size`` (the torchvision ImageNet recipe), or a direct resize to ``input_size``
    when ``resize`` is None; then x / 255, then (x - mean) / std per channel.
    """

    input_size: int = 32
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resize: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.input_size < 1:
            raise DataError(f"input size must be positive, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise DataError("mean and std need 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise DataError(f"std values must be positive, got {self.std}")
        if self.resize is not None and self.resize < self.input_size:
            raise DataError(f"resize ({self.resize}) must be >= input size ({self.input_size})")

    @property
    def shape(self) -> tuple[int, int, int]:
        return (3, self.input_size, self.input_size)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        try:
            return cls(
                input_size=int(d["input_size"]),
                mean=tuple(float(v) for v in d["mean"]),
                std=tuple(float(v) for v in d["std"]),
                resize=None if d.get("resize") is None else int(d["resize"]),
                interpolation=str(d.get("interpolation", "bilinear")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"malformed preprocessing spec {d!r} ({exc})") from exc

    # -- applying it -----------------------------------------------------------------
    def _geometry(self, image: np.ndarray) -> np.ndarray:
        from PIL import Image

        h, w = image.shape[:2]
        size = self.input_size
        if (h, w) == (size, size) and self.resize is None:
            return image
        method = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[
            self.interpolation
        ]
        pil = Image.fromarray(image)
        if self.resize is None:
            return np.asarray(pil.resize((size, size), method))
        scale = self.resize / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        pil = pil.resize((nw, nh), method)
        top, left = (nh - size) // 2, (nw - size) // 2
        return np.asarray(pil.crop((left, top, left + size, top + size)))

    def normalize(self, batch_hwc: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) at input size -> normalized float32 (N, 3, H, W)."""
        x = batch_hwc.astype(np.float32) / 255.0
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        x = (x - mean) / std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def __call__(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Preprocess one uint8 image ((H, W) or (H, W, 1|3|4)) or a batch/list -> float32 NCHW."""
        if isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4))):
            images = [images]
        batch = np.stack([self._geometry(as_rgb_uint8(img)) for img in images])
        return self.normalize(batch)


def as_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Accept (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) uint8 and return (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise DataError(f"images must be uint8 pixels, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise DataError(f"expected an image of shape (H, W[, 1|3|4]), got {image.shape}")
    if image.shape[2] == 1:
        return np.repeat(image, 3, axis=2)
    return image[:, :, :3]
