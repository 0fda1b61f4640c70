"""The main job: model source -> FP32 ONNX -> optimized ONNX -> a bundle directory with a manifest.

Each stage writes into the same output directory, and the manifest is written last so it
never points at a missing or partial file.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rescompile import __version__
from rescompile._lazy import import_optional
from rescompile.bundle import MANIFEST
from rescompile._io import (
    atomic_path, output_lock, remove_if_empty, remove_stale_staging, sha256_file, staged_dir, write_bytes_atomic, write_json_atomic,
)
from rescompile.config import (
    DEFAULT_ARCH, DEFAULT_DATASET, INPUT_NAME, OUTPUT_NAME, BenchConfig, BuildConfig, CalibConfig, DataConfig, EngineConfig, ExportConfig, Precision,
    TrainConfig,
    rescompile_home,
)
from rescompile.models.spec import ModelSpec
from rescompile.stages.build import (
    ENGINE, ENGINE_LAYERS, TIMING_CACHE, EnginePlan, EngineResult, Target, build_target, engine_from_onnx, node_names_by_output,
    plan_engine, read_blocks,
)
from rescompile.stages.calibrate.inputs import (  # noqa: F401  (re-exported: the pipeline's API)
    Int8Inputs, calibrate_model, calibration_images, check_calibration_images, evaluation_images, int8_inputs,
)
from rescompile.stages.calibrate.stage import ACCURACY, CACHE, CPU_ONNX, QDQ_ONNX, SCALES, CalibrationResult
from rescompile.models.load import LoadedModel, load_model
from rescompile.models.onnx_model import copy_as_float32  # float16/bfloat16 sources are bundled as float32
from rescompile.stages.export import ExportResult, onnx_from_torch
from rescompile.stages.optimize import OptimizeResult, optimize_onnx
from rescompile.versions import library_versions, machine
from rescompile.stages.build.cpu import measure_cpu_engines
from rescompile.deploy import write_deploy

log = logging.getLogger(__name__)

MANIFEST_FORMAT_VERSION = 2  # what rescompile.bundle reads
FP32_ONNX = "model_fp32.onnx"
OPTIMIZED_ONNX = "model_opt.onnx"
FP16_ONNX = "model_fp16.onnx"
LABELS = "labels.txt"
CHECKPOINT = "model.pt"
TORCHSCRIPT = "model.ts"
BENCH_DIR = "bench"
FUSION_REPORT = "fusion_report.json"
# Every file a build may write: a new build removes the ones it does not write again.
BUNDLE_FILES = (
    FP32_ONNX, OPTIMIZED_ONNX, FP16_ONNX, FUSION_REPORT, LABELS, CHECKPOINT, TORCHSCRIPT,
    QDQ_ONNX, CPU_ONNX, CACHE, SCALES, ACCURACY, ENGINE, ENGINE_LAYERS,
)
# The embedded default's training recipe: reaches >= 97% test accuracy on digits in
# about two minutes on 2 CPU cores (benchmarks/train_digits.py measures it).
DEFAULT_TRAIN = TrainConfig(arch=DEFAULT_ARCH, data=DataConfig(DEFAULT_DATASET), epochs=30)


def default_model_path() -> Path:
    """Where `--retrain` keeps the default model it trained (the embedded one is never overwritten)."""
    return rescompile_home() / "models" / f"{DEFAULT_ARCH}-{DEFAULT_DATASET}.pt"


def default_model(train_callback: Any = None, *, retrain: bool = False) -> LoadedModel:
    """The embedded default model (shipped in the package, sha256-checked), or with ``retrain``
    one trained from scratch with the same recipe and cached under the rescompile home."""
    if not retrain:
        from rescompile.models.default import embedded_default

        return load_model(embedded_default().path)
    from rescompile.train import train

    path = default_model_path()
    log.info("training the default model (%s on %s) from scratch; kept at %s", DEFAULT_ARCH, DEFAULT_DATASET, path)
    result = train(replace(DEFAULT_TRAIN, output_dir=rescompile_home() / "runs" / "default"), train_callback)
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
    engine: EngineResult | None = None
    plan: EnginePlan | None = None
    target: Target | None = None
    bench: Any = None  # rescompile.bench.BenchReport of the closing benchmark
    notes: list[str] = field(default_factory=list)  # how the model and the data were read, one line each


def export_and_optimize(
    model: LoadedModel, out: Path, export: ExportConfig = ExportConfig(), stage: Callable[[str], None] = lambda _name: None,
) -> tuple[ExportResult | None, OptimizeResult]:
    """Write the FP32 ONNX (exported, or copied when the source is ONNX) and the optimized ONNX into ``out``."""
    stage("export")
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / FP32_ONNX
    export_result = None
    if model.kind == "onnx":
        if model.onnx_path.resolve() != fp32.resolve():
            copy_as_float32(model.onnx_path, fp32)
    else:
        export_result = onnx_from_torch(model.module, model.spec, fp32, export)
    stage("optimize")
    return export_result, optimize_onnx(fp32, out / OPTIMIZED_ONNX)


def prepare_fp32(model: LoadedModel, out: Path) -> Path:
    """Write the optimized FP32 ONNX of a loaded model into ``out`` (what calibrate needs)."""
    return export_and_optimize(model, out)[1].path


def default_output_dir(model: LoadedModel) -> Path:
    return rescompile_home() / "builds" / model.name


def resolve_source(config: BuildConfig, train_callback: Any = None) -> LoadedModel:
    if config.source is None:
        return default_model(train_callback, retrain=config.retrain)
    from rescompile.data.arrays import array_image_size  # calibration arrays fix a dynamic ONNX input size

    return load_model(
        config.source, arch=config.arch, num_classes=config.num_classes, input_size=config.input_size,
        trust_checkpoint=config.trust_checkpoint, preprocessing=config.preprocessing,
        data_size=array_image_size(config.calib_data.dataset) if config.calib_data else None,
    )


def build(
    config: BuildConfig = BuildConfig(),
    *,
    train_callback: Any = None,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> BuildResult:
    """Run the pipeline for ``config`` and write the bundle; returns what was written.

    Everything is written into a staging folder inside the output directory and moved in at
    the end, manifest last, under a lock: an interrupted build leaves the directory as it was,
    and a second build into it fails fast instead of interleaving files.
    """
    stage = on_stage or (lambda _name: None)
    stage("model")
    model = resolve_source(config, train_callback)
    # An already-quantized source (stages/calibrate/prequant.py): its own scales, no calibration.
    from rescompile.errors import ConfigError
    from rescompile.stages.calibrate.prequant import prequantized_inputs, prequantized_model

    prequant = prequantized_model(model)
    if config.fp32_reference is not None and prequant is None:
        raise ConfigError("--fp32-reference is for models that are already quantized, and this one is not", "Drop --fp32-reference")
    inputs = None
    if config.precision.needs_calibration and prequant is not None:
        inputs, prequant = prequantized_inputs(prequant, model.spec, config.calib_data, config.eval_data, config.fp32_reference)
    elif config.precision.needs_calibration:  # bad data fails here, before the bundle is touched
        inputs = int8_inputs(model.spec, config.calib, config.calib_data, config.eval_data)
    _check_engine_options(config)
    out = Path(config.output_dir) if config.output_dir else default_output_dir(model)
    with writing_into(out):
        with staged_dir(out, last=(MANIFEST,), first_remove=(MANIFEST, *BUNDLE_FILES, BENCH_DIR)) as work:
            result = _write_bundle(config, model, inputs, work, out, stage, on_progress, prequant)
        result = relocate(result, work, out)
        result.notes = [*(model.intake.notes if model.intake else ()), *(prequant.notes if prequant else ()),
                        *(inputs.notes if inputs else ())]
        if config.bench:
            stage("bench")
            result.bench = quick_bench(out, on_progress)
    return result


@contextlib.contextmanager
def writing_into(out: Path) -> Iterator[None]:
    """One run's hold on an output folder: its lock (a second run fails fast), the staging folders a
    killed run left removed, and no empty folder left behind by a run that failed into a new one."""
    created = not out.exists()
    try:
        with output_lock(out):
            stale = remove_stale_staging(out)
            if stale:
                log.info("removed %d staging folder(s) left by an interrupted run", stale)
            yield
    except BaseException:
        if created:
            remove_if_empty(out)
        raise


def calibrate_into(
    model: LoadedModel, out: Path, calib: CalibConfig, inputs: Int8Inputs, on_progress: Any = None
) -> CalibrationResult:
    """`rescompile calibrate`: the FP32 and optimized ONNX plus every INT8 artifact, moved into
    ``out`` together once all are written (staged, under the folder's lock)."""
    with writing_into(out):
        with staged_dir(out) as work:
            calibration = calibrate_model(prepare_fp32(model, work), model.spec, work, calib, inputs, on_progress=on_progress)
        return relocate(calibration, work, out)


def _write_bundle(
    config: BuildConfig, model: LoadedModel, inputs: Int8Inputs | None, work: Path, out: Path, stage: Callable[[str], None],
    on_progress: Any, prequant: Any = None,
) -> BuildResult:
    if prequant is not None:  # already quantized: the FP32 copies are its Q/DQ-stripped graph (prequant.py)
        from rescompile.stages.calibrate.prequant import write_fp32

        stage("export")
        export_result, optimized = None, write_fp32(prequant, work / FP32_ONNX, work / OPTIMIZED_ONNX, stage)
    else:
        export_result, optimized = export_and_optimize(model, work, config.export, stage)
    report = write_json_atomic(work / FUSION_REPORT, optimized.report.to_dict())
    files = {"fp32_onnx": work / FP32_ONNX, "optimized_onnx": optimized.path, "fusion_report": report, "labels": write_labels(work, model.spec)}
    files.update(write_torch_model(work, model))

    calibration = None
    if inputs is not None:
        stage("calibrate")
        if prequant is not None:  # its own scales, as they are (prequant.py)
            from rescompile.stages.calibrate.prequant import calibrate_prequantized

            calibration = calibrate_prequantized(prequant, optimized.path, model.spec, work, config.calib, inputs.test, on_progress)
        else:
            calibration = calibrate_model(optimized.path, model.spec, work, config.calib, inputs, on_progress=on_progress)
        files.update({
            "qdq_onnx": calibration.qdq_path, "cpu_int8_onnx": calibration.cpu_path, "calibration_cache": calibration.cache_path,
            "scales": calibration.scales_path, "accuracy": calibration.accuracy_path,
        })
        if calibration.pixels_path is not None:
            files["cpu_int8_pixels_onnx"] = calibration.pixels_path
        if calibration.openvino_path is not None:
            files["openvino_int8_onnx"] = calibration.openvino_path
        if inputs.test is not None and len(inputs.test):
            from rescompile.deploy.deepstream import record_single_scale

            record_single_scale(optimized.path, inputs.test, model.spec.preprocessing, calibration.accuracy_path)
    if config.precision == Precision.fp16:
        files["fp16_onnx"] = write_fp16(optimized.path, work / FP16_ONNX)

    stage("build")
    engine_cfg = replace(config.engine, timing_cache=config.engine.timing_cache or out / TIMING_CACHE)
    io = onnx_io_names(optimized.path)
    engine, plan, target = build_engine_into(work, config.precision, model.spec, files, engine_cfg, config.calib.trt_version, io[0])
    if engine is not None:
        files.update(engine_files(engine, out))

    stage("manifest")
    doc = manifest_doc(model, files, export_result, optimized, calibration, config.precision, engine, plan, target, io)
    choice = measure_cpu_engines(files, model.spec)
    if choice is not None:
        doc["cpu_artifact"]["choice"] = choice
    doc["deploy"] = write_deploy(work, doc, files, name=out.name)
    manifest = write_manifest(work, doc, files)
    return BuildResult(out, manifest, model, export_result, optimized, calibration, files, engine, plan, target)


def relocate(obj: Any, old: Path, new: Path) -> Any:
    """Rewrite every Path under ``old`` (in dataclasses, dicts and lists, in place) to ``new``."""
    import dataclasses

    def move(value: Any) -> Any:
        if isinstance(value, Path):
            return new / value.relative_to(old) if value.is_relative_to(old) else value
        if isinstance(value, dict):
            for k, v in value.items():
                value[k] = move(v)
            return value
        if isinstance(value, list):
            value[:] = [move(v) for v in value]
            return value
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                object.__setattr__(value, f.name, move(getattr(value, f.name)))
            return value
        return value

    return move(obj)


# The build's closing benchmark: enough runs for a stable median, a few seconds per backend.
QUICK_BENCH = BenchConfig(batch_sizes=(1, 8), warmup_s=0.5, min_runs=10, max_s=1.0, max_eval_images=500)


def quick_bench(bundle: Path, on_progress: Any = None):
    """`rescompile bench` on the new bundle; a failure here never undoes a complete bundle."""
    from rescompile.bench import run_bench
    from rescompile.errors import RescompileError

    try:
        return run_bench(replace(QUICK_BENCH, bundle=bundle), on_progress=on_progress)
    except (RescompileError, RuntimeError, MemoryError) as exc:
        log.warning("the bundle is complete, but its benchmark failed: %s (run `rescompile bench %s`)", exc, bundle)
        return None


def _check_engine_options(config: BuildConfig) -> None:
    """Option errors surface before any work (the plan is checked again for the real target)."""
    c, h, w = 3, 8, 8
    dummy = {role: Path(role) for role in ("optimized_onnx", "qdq_onnx", "fp16_onnx", "calibration_cache")}
    target = build_target()
    if target.can_build:  # the engine is built here: this TensorRT, this GPU
        plan_engine(config.precision, target.trt_version, dummy, "input", (c, h, w), config.engine, gpu=target.gpu)
    else:
        plan_engine(config.precision, config.engine.target_trt_version or config.calib.trt_version, dummy, "input", (c, h, w), config.engine)


def write_torch_model(out: Path, model: LoadedModel) -> dict[str, Path]:
    """The FP32 PyTorch model inside the bundle: the benchmark's reference runs the very same weights."""
    if model.module is None:
        return {}
    if model.kind == "torchscript":
        torch = import_optional("torch")

        with atomic_path(out / TORCHSCRIPT) as tmp:
            torch.jit.save(model.module, str(tmp))
        return {"torchscript": out / TORCHSCRIPT}
    from rescompile.models.checkpoint import save_checkpoint

    return {"checkpoint": save_checkpoint(out / CHECKPOINT, model.module.state_dict(), model.spec, metrics=model.metrics)}


def write_labels(out: Path, spec: ModelSpec) -> Path:
    labels = [spec.label(i) for i in range(spec.num_classes)]
    return write_bytes_atomic(out / LABELS, ("\n".join(labels) + "\n").encode())


def write_fp16(optimized: Path, target: Path) -> Path:
    import onnx

    from rescompile.stages.build.fp16 import fp16_from_fp32

    half = fp16_from_fp32(onnx.load(str(optimized)))
    with atomic_path(target) as tmp:
        onnx.save(half, str(tmp))
    return target


def onnx_io_names(path: Path) -> tuple[str, str]:
    """(input, output) tensor names of an ONNX classifier: rescompile's own, or a foreign model's."""
    import onnx

    from rescompile.models.onnx_model import graph_inputs

    model = onnx.load(str(path), load_external_data=False)
    return graph_inputs(model)[0].name, model.graph.output[0].name


def build_engine_into(
    out: Path, precision: Precision, spec: ModelSpec, files: dict[str, Path], cfg: EngineConfig, cache_version: str,
    input_name: str = INPUT_NAME,
) -> tuple[EngineResult | None, EnginePlan | None, Target]:
    """Build the engine where TensorRT and a GPU are present; otherwise say so and return the plan
    the target will use (for the manifest)."""
    target = build_target()
    if not target.can_build:
        log.info("%s", target.explanation)
        version = cfg.target_trt_version or cache_version
        plan = plan_engine(precision, version, files, input_name, spec.input_shape, cfg)
        return None, plan, target
    plan = plan_engine(precision, target.trt_version, files, input_name, spec.input_shape, cfg, gpu=target.gpu)
    log.warning("%s", plan.reason)
    engine = engine_from_onnx(
        plan, out, blocks=read_blocks(files["fusion_report"]), node_names=node_names_by_output(files["optimized_onnx"]), gpu=target.gpu,
    )
    return engine, plan, target


def engine_files(engine: EngineResult, bundle_dir: Path | None = None) -> dict[str, Path]:
    files = {"engine": engine.path}
    if engine.layers_path is not None:
        files["engine_layers"] = engine.layers_path
    homes = {engine.path.parent, bundle_dir or engine.path.parent}
    if engine.timing_cache is not None and engine.timing_cache.parent in homes and engine.timing_cache.name == TIMING_CACHE:
        files["timing_cache"] = engine.timing_cache
        record = engine.timing_cache.with_name(engine.timing_cache.name + ".json")
        if record.is_file():
            files["timing_cache_record"] = record
    return files


def cpu_artifact(files: dict[str, Path]) -> dict[str, Any]:
    """The CPU artifact (ONNX Runtime) and, when written, its OpenVINO form; ``choice`` (which of the
    two measured faster here) is added by the build."""
    if "cpu_int8_onnx" in files:
        doc = {"path": files["cpu_int8_onnx"].name, "runtime": "onnxruntime", "precision": "int8"}
        if "openvino_int8_onnx" in files:
            doc["openvino"] = {"path": files["openvino_int8_onnx"].name, "runtime": "openvino", "precision": "int8"}
        return doc
    return {"path": files["optimized_onnx"].name, "runtime": "onnxruntime", "precision": "fp32"}


def manifest_doc(
    model: LoadedModel, files: dict[str, Path], export: ExportResult | None, optimized: OptimizeResult,
    calibration: CalibrationResult | None, precision: Precision, engine: EngineResult | None, plan: EnginePlan | None,
    target: Target, io: tuple[str, str] = (INPUT_NAME, OUTPUT_NAME),
) -> dict[str, Any]:
    spec = model.spec
    doc: dict[str, Any] = {
        "format": "rescompile.bundle",
        "format_version": MANIFEST_FORMAT_VERSION,
        "rescompile_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": {"source": model.source, "kind": model.kind, "metrics": model.metrics or {}},
        "spec": spec.to_dict(),
        "input": {"name": io[0], "shape": ["batch", *spec.input_shape], "dtype": "float32", "layout": spec.preprocessing.layout},
        "output": {"name": io[1], "shape": ["batch", spec.num_classes], "dtype": "float32"},
        "intake": model.intake.to_dict() if model.intake else None,
        "export": export.to_dict() if export else None,
        "optimize": {
            "rewrites": optimized.report.rewrites,
            "residual_blocks": len(optimized.report.blocks),
            "fusable_blocks": optimized.report.fusable_blocks,
            "batchnorm_before_after": [optimized.report.bn_before, optimized.report.bn_after],
            "nodes_before_after": [optimized.report.nodes_before, optimized.report.nodes_after],
            "max_abs_diff": optimized.check.max_abs_diff if optimized.check else None,
        },
        "precision": precision.value,
        "calibration": None if calibration is None else calibration_summary(calibration),
        "engine": None if engine is None else engine_summary(engine, target),
        "engine_plan": None if plan is None else plan.to_dict(),
        "cpu_artifact": cpu_artifact(files),
        "versions": library_versions(),
        "machine": machine(),
        "nvidia": {"tensorrt": target.trt_version, "gpu": target.gpu.to_dict() if target.gpu else None},
    }
    if doc["export"]:
        doc["export"]["path"] = Path(doc["export"]["path"]).name
    return doc


def calibration_summary(calibration: CalibrationResult) -> dict[str, Any]:
    return {
        "method": calibration.method, "percentile": calibration.percentile, "images": calibration.images,
        "trt_cache_version": calibration.cache_version, "float_layers": calibration.float_layers,
        "accuracy": calibration.accuracy, "lint_passed": calibration.lint.get("passed"), "provenance": calibration.provenance,
        **({"prequantized": calibration.prequantized} if calibration.prequantized else {}),  # placement findings, warnings
    }


def engine_summary(engine: EngineResult, target: Target) -> dict[str, Any]:
    plan = engine.plan
    return {
        "path": engine.path.name, "tensorrt_version": plan.trt_version, "precision": plan.precision.value,
        "int8_source": plan.int8_source, "strongly_typed": plan.strongly_typed, "built_from": plan.onnx_role,
        "gpu": target.gpu.to_dict() if target.gpu else None, "dla_core": plan.dla_core,
        "hardware_compatibility": plan.hardware_compatibility, "version_compatible": plan.version_compatible,
        "profiles": [plan.profile], "build_seconds": round(engine.build_seconds, 2), "bytes": engine.bytes,
        "report": engine.report.to_dict() if engine.report else None, "reason": plan.reason,
    }


def write_manifest(out: Path, doc: dict[str, Any], files: dict[str, Path]) -> Path:
    """Hash every file and write manifest.json last, atomically: a manifest never names a
    missing or partial file."""
    doc = dict(doc)
    doc["files"] = {role: {"path": p.name, "sha256": sha256_file(p), "bytes": p.stat().st_size} for role, p in files.items()}
    return write_json_atomic(out / MANIFEST, doc)


@dataclass
class RebuildResult:
    output_dir: Path
    manifest: Path
    engine: EngineResult
    plan: EnginePlan
    target: Target


def build_from_bundle(
    bundle_dir: Path, cfg: EngineConfig = EngineConfig(), precision: Precision | None = None,
    on_stage: Callable[[str], None] | None = None,
) -> RebuildResult:
    """Rebuild the engine of an existing bundle on this machine (a Jetson, a GPU server) from its
    Q/DQ ONNX or calibration cache. Needs TensorRT and a GPU; never PyTorch."""
    from rescompile.bundle import read_manifest, verify
    from rescompile.errors import MissingDependencyError

    stage = on_stage or (lambda _name: None)
    stage("bundle")
    manifest = read_manifest(bundle_dir)
    with output_lock(manifest.dir):
        precision = precision or Precision(manifest.precision or "fp32")
        wanted = [r for r in ("optimized_onnx", "qdq_onnx", "fp16_onnx", "calibration_cache", "fusion_report") if manifest.has(r)]
        verify(manifest, wanted)
        target = build_target()
        if not target.can_build:
            raise MissingDependencyError(
                f"--from-bundle builds a TensorRT engine, but there is {target.explanation.split(' here')[0]} here",
                "Run it on the NVIDIA machine (Jetson or GPU server) that will run the engine",
            )
        files = {role: manifest.file(role) for role in manifest.files}
        if precision == Precision.fp16 and "fp16_onnx" not in files:
            files["fp16_onnx"] = write_fp16(files["optimized_onnx"], manifest.dir / FP16_ONNX)
        cfg = replace(cfg, timing_cache=cfg.timing_cache or manifest.dir / TIMING_CACHE)
        stage("build")
        plan = plan_engine(precision, target.trt_version, files, (manifest.input or {}).get("name", INPUT_NAME), manifest.spec.input_shape,
                           cfg, gpu=target.gpu)
        log.warning("%s", plan.reason)
        engine = engine_from_onnx(
            plan, manifest.dir, blocks=read_blocks(files["fusion_report"]) if "fusion_report" in files else [],
            node_names=node_names_by_output(files["optimized_onnx"]), gpu=target.gpu,
        )
        files.update(engine_files(engine))
        stage("manifest")
        doc = dict(manifest.doc)
        doc.update({
            "precision": precision.value, "engine": engine_summary(engine, target), "engine_plan": plan.to_dict(),
            "nvidia": {"tensorrt": target.trt_version, "gpu": target.gpu.to_dict() if target.gpu else None},
            "rebuilt": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        })
        doc["deploy"] = write_deploy(manifest.dir, doc, files, name=manifest.dir.name)
        path = write_manifest(manifest.dir, doc, files)
        return RebuildResult(manifest.dir, path, engine, plan, target)
