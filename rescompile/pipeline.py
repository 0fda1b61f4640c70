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
from rescompile.config import DEFAULT_ARCH, DEFAULT_DATASET, BuildConfig, DataConfig, TrainConfig, rescompile_home
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
    files: dict[str, Path] = field(default_factory=dict)


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
) -> BuildResult:
    """Run the pipeline for ``config`` and write the bundle; returns what was written."""
    stage = on_stage or (lambda _name: None)
    stage("model")
    model = resolve_source(config, train_callback)
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

    stage("manifest")
    manifest = write_manifest(out, model, files, export_result, optimized)
    return BuildResult(out, manifest, model, export_result, optimized, files)


def write_manifest(
    out: Path, model: LoadedModel, files: dict[str, Path], export: ExportResult | None, optimized: OptimizeResult
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
        "files": {
            role: {"path": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size} for role, p in files.items()
        },
        "versions": library_versions(),
        "machine": machine(),
    }
    if doc["export"]:
        doc["export"]["path"] = Path(doc["export"]["path"]).name
    return write_json_atomic(out / MANIFEST, doc)
