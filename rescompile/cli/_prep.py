"""The preprocessing a user names for a model from elsewhere (build, calibrate), and how --data arrays are read."""

from __future__ import annotations

from enum import Enum

import typer

from rescompile.data.preprocess import PreprocessingOverride


class ChannelOrder(str, Enum):
    rgb = "rgb"
    bgr = "bgr"


class DataFormat(str, Enum):
    auto = "auto"
    images = "images"
    tensors = "tensors"


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.replace(" ", "").split(",") if v)
    except ValueError:
        raise typer.BadParameter(f"expected numbers separated by commas, like 0.485,0.456,0.406; got {text!r}", param_hint=option) from None
    if len(values) not in (1, 3):
        raise typer.BadParameter(f"takes 1 or 3 values (R,G,B), got {len(values)}", param_hint=option)
    return values


def preprocessing_override(
    mean: str | None, std: str | None, scale: float | None, resize: int | None, center_crop: int | None,
    channel_order: ChannelOrder | None,
) -> PreprocessingOverride:
    size = center_crop
    if resize is not None and center_crop is None:
        raise typer.BadParameter("--resize needs --center-crop (the input size it crops to)", param_hint="--resize")
    if center_crop is not None and resize is None:
        resize = center_crop  # the centre square at the model's size
    return PreprocessingOverride(
        mean=_floats(mean, "--mean"), std=_floats(std, "--std"), scale=scale, input_size=size, resize=resize,
        channel_order=channel_order.value if channel_order else None,
    )
