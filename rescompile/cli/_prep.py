"""Options shared by build and calibrate: the preprocessing a user names for a model from elsewhere,
and how --data arrays are read."""

from __future__ import annotations

from enum import Enum
from typing import Annotated

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


MeanOpt = Annotated[str | None, typer.Option(
    "--mean", help="Models without rescompile metadata: per-channel mean, in 0-1 units, or 0-255 units when any value is above 1 "
                   "(e.g. 0.485,0.456,0.406 or 123.675,116.28,103.53) [default: ImageNet's].")]
StdOpt = Annotated[str | None, typer.Option("--std", help="Per-channel std, in the same units as --mean (e.g. 0.229,0.224,0.225).")]
ScaleOpt = Annotated[float | None, typer.Option(
    "--scale", min=0.0, help="The pixel range the model takes: 1 (0-1) or 255 (raw 0-255 pixels, e.g. MLPerf Tiny); alone it means no mean/std.")]
ResizeOpt = Annotated[int | None, typer.Option("--resize", min=8, help="Resize the shorter side to this, then center-crop to the input size.")]
CropOpt = Annotated[int | None, typer.Option("--center-crop", min=8, help="Center crop of this size (the model's input size) after --resize.")]
OrderOpt = Annotated[ChannelOrder | None, typer.Option("--channel-order", case_sensitive=False, help="rgb | bgr (Caffe-style models).")]
FormatOpt = Annotated[DataFormat, typer.Option(
    "--data-format", case_sensitive=False,
    help=".npy/.npz data: images (uint8 or 0-1 floats, preprocessed) | tensors (float32 shaped like the model input, fed as they are) "
         "| auto (tensors when the floats have the model input's shape and leave [0, 1]).")]


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
