"""The preprocessing spec that travels with a model into every artifact.

It needs only numpy and Pillow, so an edge app applies exactly the training-time
preprocessing without PyTorch. A mismatch between training, calibration and deployment
preprocessing is the most common cause of a real INT8 accuracy drop.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from rescompile.errors import DataError

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel statistics of the CIFAR-10 training set (widely quoted; recomputable in one line).
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class Preprocessing:
    """uint8 RGB image (H, W, 3) -> float32 (3, size, size) tensor (or (size, size, 3) for NHWC).

    Steps: optional resize of the shorter side to ``resize`` then a center crop to
    ``input_size`` (the torchvision ImageNet recipe), or a direct resize to ``input_size``
    when ``resize`` is None; channels reversed for a ``bgr`` model (Caffe-style); then
    x / 255, then (x - mean) / std per channel. ``mean`` and ``std`` are in 0-1 units and in
    the model's channel order; a model that takes raw 0-255 pixels has mean 0 and std 1/255.
    ``layout`` is how the model's input is declared: "nchw", or "nhwc" (Keras/tf2onnx models).
    """

    input_size: int = 32
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    resize: int | None = None
    interpolation: str = "bilinear"
    channel_order: str = "rgb"
    layout: str = "nchw"

    def __post_init__(self) -> None:
        if self.input_size < 1:
            raise DataError(f"input size must be positive, got {self.input_size}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise DataError("mean and std need 3 values (R, G, B)")
        if any(s <= 0 for s in self.std):
            raise DataError(f"std values must be positive, got {self.std}")
        if self.resize is not None and self.resize < self.input_size:
            raise DataError(f"resize ({self.resize}) must be >= input size ({self.input_size})")
        if self.channel_order not in ("rgb", "bgr"):
            raise DataError(f"channel order must be rgb or bgr, got {self.channel_order!r}")
        if self.layout not in ("nchw", "nhwc"):
            raise DataError(f"layout must be nchw or nhwc, got {self.layout!r}")
        if self.interpolation not in INTERPOLATIONS:
            raise DataError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """One image as the model takes it: (3, H, W), or (H, W, 3) for an NHWC model."""
        size = self.input_size
        return (size, size, 3) if self.layout == "nhwc" else (3, size, size)

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
                channel_order=str(d.get("channel_order", "rgb")),
                layout=str(d.get("layout", "nchw")),
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
        method = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}[self.interpolation]
        pil = Image.fromarray(image)
        if self.resize is None:
            return np.asarray(pil.resize((size, size), method))
        scale = self.resize / min(h, w)
        nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
        pil = pil.resize((nw, nh), method)
        top, left = (nh - size) // 2, (nw - size) // 2
        return np.asarray(pil.crop((left, top, left + size, top + size)))

    def normalize(self, batch_hwc: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W, 3) RGB at input size -> normalized float32 (N, 3, H, W), or (N, H, W, 3) for NHWC."""
        batch_hwc = np.asarray(batch_hwc)
        if self.channel_order == "bgr":
            batch_hwc = batch_hwc[..., ::-1]
        # Reorder the uint8 pixels (a quarter of the bytes), then one multiply-add into float32:
        # x * (1 / (255 std)) - mean / std, which is (x / 255 - mean) / std.
        nchw = self.layout != "nhwc"
        pixels = np.ascontiguousarray(batch_hwc.transpose(0, 3, 1, 2) if nchw else batch_hwc)
        mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
        shape = (1, 3, 1, 1) if nchw else (1, 1, 1, 3)
        out = np.empty(pixels.shape, np.float32)
        np.multiply(pixels, (1.0 / (255.0 * std)).astype(np.float32).reshape(shape), out=out)
        out -= (mean / std).astype(np.float32).reshape(shape)
        return out

    def pixels(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """One uint8 image ((H, W) or (H, W, 1|3|4)) or a batch/list -> uint8 RGB (N, size, size, 3):
        resized and cropped, not normalized (what a pixel-input artifact takes)."""
        if isinstance(images, np.ndarray) and (images.ndim == 2 or (images.ndim == 3 and images.shape[2] in (1, 3, 4))):
            images = [images]
        return np.stack([self._geometry(as_rgb_uint8(img)) for img in images])

    def __call__(self, images: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Preprocess one uint8 image ((H, W) or (H, W, 1|3|4)) or a batch/list -> float32 NCHW."""
        return self.normalize(self.pixels(images))


_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def pil_rgb_uint8(img: Any) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PIL image of any mode. 16-bit greyscale (Pillow's "I;16" modes, and
    "I" holding values above 255) is scaled to 8 bits: Pillow's own convert("RGB") clips it at 255,
    which turns a 16-bit image almost white."""
    mode = getattr(img, "mode", "")
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        wide = np.asarray(img).astype(np.int64)
        if mode in _SIXTEEN_BIT_MODES or (wide.size and wide.max() > 255):
            return as_rgb_uint8(np.clip((wide + 128) // 257, 0, 255).astype(np.uint8))
    return as_rgb_uint8(np.asarray(img.convert("RGB")))


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


@dataclass(frozen=True)
class PreprocessingOverride:
    """The preprocessing a user names for a model that does not carry its own (--mean, --std, ...).

    ``mean``/``std`` are per channel, in the model's channel order, in 0-1 units, or in 0-255 units
    when any value is above 1 (mmcv/Caffe style: the model then sees 0-255 pixels). ``scale`` is the
    pixel range the model takes before mean/std: 1 (0-1) or 255 (raw pixels, as MLPerf Tiny's models);
    with no mean/std it means mean 0 and std 1 in that range. None keeps the model's own (or the default).
    """

    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    scale: float | None = None
    input_size: int | None = None
    resize: int | None = None
    channel_order: str | None = None
    interpolation: str | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise DataError("--mean and --std go together", "Pass both (per channel), or neither")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if values is not None and len(values) not in (1, 3):
                raise DataError(f"--{name} takes 1 or 3 values (R,G,B), got {len(values)}", f"Pass e.g. --{name} 0.485,0.456,0.406")
        if self.scale is not None and self.scale <= 0:
            raise DataError(f"--scale must be positive, got {self.scale}", "Pass 1 (model takes 0-1) or 255 (raw pixels)")

    @property
    def empty(self) -> bool:
        return all(getattr(self, f) is None for f in ("mean", "std", "scale", "input_size", "resize", "channel_order", "interpolation"))

    def units(self) -> float:
        """The pixel range the model sees: ``scale`` if given, else 255 when mean/std are in 0-255 units."""
        if self.scale is not None:
            return float(self.scale)
        big = any(v > 1.0 for v in (*(self.mean or ()), *(self.std or ())))
        return 255.0 if big else 1.0

    def apply(self, base: Preprocessing) -> Preprocessing:
        """``base`` with what the user named put in (mean/std converted to 0-1 units)."""
        changes: dict[str, Any] = {}
        units = self.units()
        if self.mean is not None and self.std is not None:
            mean = self.mean * 3 if len(self.mean) == 1 else self.mean
            std = self.std * 3 if len(self.std) == 1 else self.std
            changes["mean"] = tuple(float(m) / units for m in mean)
            changes["std"] = tuple(float(s) / units for s in std)
        elif self.scale is not None:  # raw range, no normalisation: x = pixel / 255 * scale
            changes["mean"], changes["std"] = (0.0, 0.0, 0.0), (1.0 / units,) * 3
        for name in ("input_size", "resize", "channel_order", "interpolation"):
            if getattr(self, name) is not None:
                changes[name] = getattr(self, name)
        if "input_size" in changes and "resize" not in changes and base.resize is not None and base.resize < changes["input_size"]:
            changes["resize"] = None
        return replace(base, **changes)

    def describe(self, prep: Preprocessing) -> str:
        units = self.units()
        rng = "0-255 pixels" if units == 255 else ("0-1" if units == 1 else f"0-{units:g}")
        return (f"preprocessing: {prep.channel_order.upper()} in {rng}, mean {_fmt(prep.mean, units)}, std {_fmt(prep.std, units)}"
                f" ({rng} units), {prep.input_size}x{prep.input_size}" + (f" from a {prep.resize} resize + center crop" if prep.resize else ""))


def _fmt(values: tuple[float, ...], units: float) -> str:
    return "(" + ", ".join(f"{v * units:.4g}" for v in values) + ")"
