"""The main job: model source -> FP32 ONNX -> optimized ONNX -> a bundle directory with a manifest.

Each stage writes into the same output directory, and the manifest is written last so it
never points at a missing or partial file.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rescompile import __version__
from rescompile._io import atomic_path, sha256_file, write_json_atomic
from rescompile.config import (
    DEFAULT_ARCH, DEFAULT_DATASET, BuildConfig, CalibConfig, DataConfig, Precision, TrainConfig, rescompile_home,
    sample_calibration_dir,
)
from rescompile.data.datasets import load_dataset
from rescompile.data.images import ArrayImages, ImageSet, concat
from rescompile.errors import ConfigError, DataError
from rescompile.models.spec import ModelSpec
from rescompile.stages.calibrate.cache import CacheError, CalibrationCache, check_cache_for, read_cache
from rescompile.stages.calibrate.stage import CalibrationResult, calibrate, check_image_count
from rescompile.models.load import LoadedModel, load_model
from rescompile.stages.export import ExportResult, onnx_from_torch
from rescompile.stages.optimize import OptimizeResult, optimize_onnx
from rescompile.versions import library_versions, machine

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
FP32_ONNX = "model_fp32.onnx"
OPTIMIZED_ONNX = "model_opt.onnx"
FUSION_REPORT = "fusion_report.json"
# The embedded default's training recipe: reaches >= 97% test accuracy on digits in
# about two minutes on 2 CPU cores (benchmarks/train_digits.py measures it).
DEFAULT_TRAIN = TrainConfig(arch=DEFAULT_ARCH, data=DataConfig(DEFAULT_DATASET), epochs=30)


def default_model_path() -> Path:
    return rescompile_home() / "models" / f"{DEFAULT_ARCH}-{DEFAULT_DATASET}.pt"


def default_model(train_callback: Any = None) -> LoadedModel:
    """The embedded default model, trained on first use and cached under the rescompile home."""
    from rescompile.train import train

    path = default_model_path()
    if not path.exists():
        log.info("training the default model (%s on %s) once; cached at %s", DEFAULT_ARCH, DEFAULT_DATASET, path)
        run_dir = rescompile_home() / "runs" / "default"
        result = train(replace(DEFAULT_TRAIN, output_dir=run_dir), train_callback)
        with atomic_path(path) as tmp:
            shutil.copyfile(result.checkpoint, tmp)
    return load_model(path)


@dataclass
class BuildResult:
    output_dir: Path
    manifest: Path
    model: LoadedModel
    export: ExportResult | None
    optimize: OptimizeResult
    calibration: CalibrationResult | None = None
    files: dict[str, Path] = field(default_factory=dict)


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
    splits = load_dataset(data)
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
    splits = load_dataset(data)
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


def check_calibration_images(images: ImageSet, spec: ModelSpec, source: str) -> None:
    """Arrays are taken as already sized: one whose images are not the model's size is a mistake."""
    if isinstance(images, ArrayImages) and spec.preprocessing.resize is None and images.array.shape[1:3] != (spec.input_size,) * 2:
        h, w = images.array.shape[1:3]
        raise DataError(
            f"{source} holds {h}x{w} images but the model takes {spec.input_size}x{spec.input_size}",
            "Resize the arrays to the model's input size, or pass an image folder (resized by the model's preprocessing)",
        )


def int8_inputs(
    spec: ModelSpec, calib: CalibConfig, calib_data: DataConfig | None, eval_data: DataConfig | None, from_cache: Path | None = None,
) -> Int8Inputs:
    """Load calibration and evaluation data (or the cache) for the INT8 stage; raise on bad input."""
    cache = None
    images, name = None, ""
    if from_cache is not None:
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
    return Int8Inputs(images, name, val, test, cache)


def calibrate_model(
    fp32: Path, spec: ModelSpec, out: Path, calib: CalibConfig, inputs: Int8Inputs, on_progress: Any = None,
) -> CalibrationResult:
    """The INT8 stage on an optimized FP32 ONNX file."""
    import onnx

    return calibrate(
        onnx.load(str(fp32)), spec, out, images=inputs.images, config=calib, eval_test=inputs.test, eval_val=inputs.val,
        from_cache=inputs.cache, data_name=inputs.name, on_progress=on_progress,
    )


def prepare_fp32(model: LoadedModel, out: Path) -> Path:
    """Write the optimized FP32 ONNX of a loaded model into ``out`` (what calibrate needs)."""
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / FP32_ONNX
    if model.kind == "onnx":
        if model.onnx_path.resolve() != fp32.resolve():
            with atomic_path(fp32) as tmp:
                shutil.copyfile(model.onnx_path, tmp)
    else:
        onnx_from_torch(model.module, model.spec, fp32)
    return optimize_onnx(fp32, out / OPTIMIZED_ONNX).path


def default_output_dir(model: LoadedModel) -> Path:
    return rescompile_home() / "builds" / model.name


def resolve_source(config: BuildConfig, train_callback: Any = None) -> LoadedModel:
    if config.source is None:
        return default_model(train_callback)
    return load_model(config.source, arch=config.arch, num_classes=config.num_classes, input_size=config.input_size)


def build(
    config: BuildConfig = BuildConfig(),
    *,
    train_callback: Any = None,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> BuildResult:
    """Run the pipeline for ``config`` and write the bundle; returns what was written."""
    stage = on_stage or (lambda _name: None)
    stage("model")
    model = resolve_source(config, train_callback)
    inputs = None
    if config.precision == Precision.int8:  # bad data fails here, before the bundle is touched
        inputs = int8_inputs(model.spec, config.calib, config.calib_data, config.eval_data)
    out = Path(config.output_dir) if config.output_dir else default_output_dir(model)
    out.mkdir(parents=True, exist_ok=True)
    # A stale manifest would describe files this build is about to replace.
    (out / MANIFEST).unlink(missing_ok=True)

    stage("export")
    fp32 = out / FP32_ONNX
    export_result = None
    if model.kind == "onnx":
        with atomic_path(fp32) as tmp:
            shutil.copyfile(model.onnx_path, tmp)
    else:
        export_result = onnx_from_torch(model.module, model.spec, fp32, config.export)

    stage("optimize")
    optimized = optimize_onnx(fp32, out / OPTIMIZED_ONNX)
    report = write_json_atomic(out / FUSION_REPORT, optimized.report.to_dict())
    files = {"fp32_onnx": fp32, "optimized_onnx": optimized.path, "fusion_report": report}

    calibration = None
    if inputs is not None:
        stage("calibrate")
        calibration = calibrate_model(optimized.path, model.spec, out, config.calib, inputs, on_progress=on_progress)
        files.update({
            "qdq_onnx": calibration.qdq_path, "cpu_int8_onnx": calibration.cpu_path, "calibration_cache": calibration.cache_path,
            "scales": calibration.scales_path, "accuracy": calibration.accuracy_path,
        })

    stage("manifest")
    manifest = write_manifest(out, model, files, export_result, optimized, calibration, config)
    return BuildResult(out, manifest, model, export_result, optimized, calibration, files)


def write_manifest(
    out: Path, model: LoadedModel, files: dict[str, Path], export: ExportResult | None, optimized: OptimizeResult,
    calibration: CalibrationResult | None, config: BuildConfig,
) -> Path:
    doc = {
        "format": "rescompile.bundle",
        "format_version": MANIFEST_FORMAT_VERSION,
        "rescompile_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": model.source, "kind": model.kind, "metrics": model.metrics or {}},
        "spec": model.spec.to_dict(),
        "export": export.to_dict() if export else None,
        "optimize": {
            "rewrites": optimized.report.rewrites,
            "residual_blocks": len(optimized.report.blocks),
            "fusable_blocks": optimized.report.fusable_blocks,
            "batchnorm_before_after": [optimized.report.bn_before, optimized.report.bn_after],
            "nodes_before_after": [optimized.report.nodes_before, optimized.report.nodes_after],
            "max_abs_diff": optimized.check.max_abs_diff if optimized.check else None,
        },
        "precision": config.precision.value,
        "calibration": None if calibration is None else {
            "method": calibration.method, "percentile": calibration.percentile, "images": calibration.images,
            "trt_cache_version": config.calib.trt_version, "float_layers": calibration.float_layers,
            "accuracy": calibration.accuracy, "lint_passed": calibration.lint.get("passed"),
        },
        "files": {
            role: {"path": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size} for role, p in files.items()
        },
        "versions": library_versions(),
        "machine": machine(),
    }
    if doc["export"]:
        doc["export"]["path"] = Path(doc["export"]["path"]).name
    return write_json_atomic(out / MANIFEST, doc)
