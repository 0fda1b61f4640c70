"""What the INT8 stage reads from outside: calibration images, labelled evaluation splits or an
existing calibration cache, loaded and checked before the pipeline writes anything."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rescompile.config import CalibConfig, DataConfig, sample_calibration_dir
from rescompile.data.datasets import load_dataset
from rescompile.data.images import ArrayImages, ImageSet, concat
from rescompile.errors import ConfigError, DataError
from rescompile.models.spec import ModelSpec
from rescompile.stages.calibrate.cache import CacheError, CalibrationCache, check_cache_for, read_cache
from rescompile.stages.calibrate.stage import CalibrationResult, calibrate, check_image_count

log = logging.getLogger(__name__)

_NAMED = ("digits", "cifar10", "cifar-10")


def calibration_images(spec: ModelSpec, data: DataConfig | None) -> tuple[ImageSet, str]:
    """Images to calibrate on: the train split of a named dataset, or all of a folder/array.

    With no data given and a digits model: the repository's calibration/digits sample folder
    (real train-split digits as PNG files), else the digits train split itself.
    """
    if data is None:
        if spec.dataset != "digits":
            raise ConfigError(
                "INT8 needs calibration data, and the model does not say which data it was trained on",
                "Pass --calib-data (an image folder, digits, cifar10 or .npy/.npz), or use --precision fp32",
            )
        sample = sample_calibration_dir()
        data = DataConfig(str(sample) if sample else "digits")
    splits = load_dataset(data, model_input=spec.input_shape)
    if data.dataset in _NAMED or (Path(data.dataset) / "train").is_dir():
        return splits.train, data.dataset
    return concat([splits.train, splits.val, splits.test]), data.dataset


def evaluation_images(spec: ModelSpec, data: DataConfig | None, calib: DataConfig | None) -> tuple[ImageSet | None, ImageSet | None]:
    """(held-out val, test) labelled images for accuracy; (None, None) when there are none."""
    if data is None:
        if spec.dataset == "digits":
            data = DataConfig("digits")
        elif calib is not None and calib.dataset in _NAMED:
            data = calib
        else:
            log.warning("no labelled evaluation data: INT8 accuracy is not measured (pass --eval-data)")
            return None, None
    splits = load_dataset(data, model_input=spec.input_shape)
    if splits.test.labels is None:
        log.warning("evaluation data %s has no labels: reporting agreement with FP32 only", data.dataset)
    if calib is not None and calib.dataset == data.dataset and data.dataset not in _NAMED:
        log.warning("evaluating on %s, which also provided the calibration images: accuracy may be optimistic", data.dataset)
    return splits.val, splits.test


@dataclass
class Int8Inputs:
    """Everything the INT8 stage reads from outside, loaded and checked before anything is written."""

    images: ImageSet | None  # calibration images (None when scales come from a cache)
    name: str  # where the images came from (provenance)
    val: ImageSet | None  # labelled held-out split (--method auto, sensitivity)
    test: ImageSet | None  # labelled split for the FP32-vs-INT8 accuracy check
    cache: CalibrationCache | None = None
    scales: dict[str, float] | None = None  # amax per tensor from an earlier scales.json
    notes: list[str] = field(default_factory=list)  # how each data source was read, one line each


def check_calibration_images(images: ImageSet, spec: ModelSpec, source: str) -> None:
    """A user's arrays are taken as already sized: one whose images are not the model's size is a
    mistake. A named dataset (digits, cifar10) is resized by the model's preprocessing, as in training."""
    if source in _NAMED:
        return
    if isinstance(images, ArrayImages) and spec.preprocessing.resize is None and images.array.shape[1:3] != (spec.input_size,) * 2:
        h, w = images.array.shape[1:3]
        raise DataError(
            f"{source} holds {h}x{w} images but the model takes {spec.input_size}x{spec.input_size}",
            "Resize the arrays to the model's input size, or pass an image folder (resized by the model's preprocessing)",
        )


def int8_inputs(
    spec: ModelSpec, calib: CalibConfig, calib_data: DataConfig | None, eval_data: DataConfig | None, from_cache: Path | None = None,
    from_scales: Path | None = None,
) -> Int8Inputs:
    """Load calibration and evaluation data (or the cache, or a scales.json) for the INT8 stage; raise on bad input."""
    from rescompile.stages.calibrate.scales import read_scales

    cache, scales = None, None
    images, name = None, ""
    if from_cache is not None and from_scales is not None:
        raise ConfigError("give --from-cache or --from-scales, not both", "Drop one of them")
    if from_scales is not None:
        scales = read_scales(from_scales)
    elif from_cache is not None:
        cache = read_cache(from_cache)
        try:  # the Q/DQ model does not depend on the tag, but the cache re-written here will carry ours
            check_cache_for(cache, trt_version=calib.trt_version, tensor_names=None)
        except CacheError as exc:
            log.warning("%s; the cache written here is tagged for TensorRT %s", exc, calib.trt_version)
    else:
        images, name = calibration_images(spec, calib_data)
        check_calibration_images(images, spec, name)
        check_image_count(len(images), calib)
    val, test = evaluation_images(spec, eval_data, calib_data)
    notes = [] if images is None else [f"calibration data {Path(name).name}: {images.describe()}"]
    if test is not None:
        notes.append(f"evaluation data: {test.describe()} (held-out split{', labelled' if test.labels is not None else ', unlabelled'})")
    return Int8Inputs(images, name, val, test, cache, scales, notes)


def calibrate_model(
    fp32: Path, spec: ModelSpec, out: Path, calib: CalibConfig, inputs: Int8Inputs, on_progress: Any = None,
) -> CalibrationResult:
    """The INT8 stage on an optimized FP32 ONNX file."""
    import onnx

    return calibrate(
        onnx.load(str(fp32)), spec, out, images=inputs.images, config=calib, eval_test=inputs.test, eval_val=inputs.val,
        from_cache=inputs.cache, from_scales=inputs.scales, data_name=inputs.name, on_progress=on_progress,
    )
