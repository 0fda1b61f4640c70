"""rescompile build: the main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from rescompile.cli import app, options
from rescompile.cli._common import StepProgress, TrainProgress, err, guarded, out, print_json
from rescompile.cli._prep import DataFormat, preprocessing_override
from rescompile.cli.calibrate import C, calib_config, data_config, print_calibration
from rescompile.cli.options import (
    ENGINE, MODEL, MODEL_HELP, OUTPUT, Arch, CalibBatch, CalibData, CenterCrop, DataDir, EvalData, Fallback, Format, Json, MaxDrop,
    Mean, Method, ModelInputSize, NumClasses, NumImages, Order, Percentile, Resize, Scale, Sensitivity, Std, TrtVersion,
    TrustCheckpoint,
)
from rescompile.config import EngineConfig, HardwareCompat, Int8Source, Precision
from rescompile.errors import ConfigError

E = EngineConfig()


def engine_config(**kw) -> EngineConfig:
    kw["timing_cache"] = kw.pop("timing_cache")
    return EngineConfig(**kw)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  rescompile build                              (the embedded default: ResNet-20 on digits, INT8)\n\n"
        "  rescompile build --retrain                    (the same, trained from scratch first)\n\n"
        "  rescompile build runs/resnet20-digits/best.pt -o out/resnet20 --precision int8\n\n"
        "  rescompile build model.onnx --calib-data images/ --max-batch 64 -o out/model\n\n"
        "  rescompile build --from-bundle out/resnet20   (on the Jetson: rebuild the engine, no PyTorch)"
    )
)
@guarded
def build(
    model: Annotated[str | None, typer.Argument(metavar="MODEL", help=MODEL_HELP, show_default="the embedded ResNet-20 trained on digits")] = None,
    from_bundle: Annotated[Path | None, typer.Option(
        file_okay=False, metavar="<dir>", help="Rebuild the TensorRT engine of an existing bundle on this machine.", rich_help_panel=MODEL,
    )] = None,
    retrain: Annotated[bool, typer.Option(
        help="Train the default ResNet-20 from scratch instead of loading it.", rich_help_panel=MODEL,
    )] = False,
    arch: Arch = None,
    num_classes: NumClasses = None,
    input_size: ModelInputSize = None,
    trust_checkpoint: TrustCheckpoint = False,
    fp32_reference: Annotated[Path | None, typer.Option(
        exists=True, dir_okay=False, metavar="<file>", help="For an already quantized MODEL: the FP32 ONNX it came from.",
        show_default="its own Q/DQ-stripped graph", rich_help_panel=MODEL,
    )] = None,
    output_dir: Annotated[Path | None, options.output_dir("<home>/builds/<model>")] = None,
    precision: Annotated[Precision | None, typer.Option(
        case_sensitive=False, metavar="<precision>", help="fp32, fp16, int8 (calibrated) or best (int8 + fp16).",
        show_default="int8; with --from-bundle, the bundle's", rich_help_panel=OUTPUT,
    )] = None,
    bench: Annotated[bool, typer.Option(help="End with a quick benchmark against FP32 PyTorch.", rich_help_panel=OUTPUT)] = True,
    calib_data: CalibData = None,
    eval_data: EvalData = None,
    data_dir: DataDir = None,
    data_format: Format = DataFormat.auto,
    mean: Mean = None,
    std: Std = None,
    scale: Scale = None,
    resize: Resize = None,
    center_crop: CenterCrop = None,
    channel_order: Order = None,
    method: Method = C.method,
    num_images: NumImages = C.num_images,
    max_accuracy_drop: MaxDrop = None,
    fallback: Fallback = True,
    percentile: Percentile = C.percentile,
    batch_size: CalibBatch = C.batch_size,
    sensitivity: Sensitivity = False,
    trt_version: TrtVersion = C.trt_version,
    max_batch: Annotated[int, typer.Option(min=1, metavar="<n>", help="Largest batch the engine takes.", rich_help_panel=ENGINE)] = E.max_batch,
    opt_batch: Annotated[int, typer.Option(min=1, metavar="<n>", help="Batch the engine's kernels are tuned for.", rich_help_panel=ENGINE)] = E.opt_batch,
    min_batch: Annotated[int, typer.Option(min=1, metavar="<n>", help="Smallest batch the engine takes.", rich_help_panel=ENGINE)] = E.min_batch,
    int8_source: Annotated[Int8Source, typer.Option(
        case_sensitive=False, metavar="<source>", help="TensorRT 10 INT8 from the Q/DQ ONNX (auto, qdq) or from calibration.cache (cache).",
        rich_help_panel=ENGINE,
    )] = E.int8_source,
    workspace_mib: Annotated[int | None, typer.Option(
        min=1, metavar="<MiB>", help="Builder workspace limit.", show_default="TensorRT's", rich_help_panel=ENGINE,
    )] = None,
    opt_level: Annotated[int | None, typer.Option(
        min=0, max=5, metavar="<0-5>", help="Builder optimization level.", show_default="TensorRT's, 3", rich_help_panel=ENGINE,
    )] = None,
    timing_cache: Annotated[Path | None, typer.Option(
        dir_okay=False, metavar="<file>", help="Timing cache to load and save.", show_default="<bundle>/timing.cache",
        rich_help_panel=ENGINE,
    )] = None,
    dla_core: Annotated[int | None, typer.Option(
        min=0, metavar="<n>", help="Jetson: run on this DLA core, in FP16 or INT8.", rich_help_panel=ENGINE,
    )] = None,
    gpu_fallback: Annotated[bool, typer.Option(help="DLA: layers it cannot run go to the GPU.", rich_help_panel=ENGINE)] = E.gpu_fallback,
    hardware_compat: Annotated[HardwareCompat, typer.Option(
        case_sensitive=False, metavar="<mode>", help="GPUs the engine runs on: none (like this one), ampere+ or same-cc.",
        rich_help_panel=ENGINE,
    )] = E.hardware_compatibility,
    version_compatible: Annotated[bool, typer.Option(
        help="Engine also runs on later TensorRT releases of this major version.", rich_help_panel=ENGINE,
    )] = False,
    json_out: Json = False,
) -> None:
    """Compile a model into a bundle: INT8 ONNX, TensorRT engine (or CPU INT8), manifest."""
    from rescompile.config import BuildConfig

    engine = engine_config(
        int8_source=int8_source, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch, workspace_mib=workspace_mib,
        optimization_level=opt_level, timing_cache=timing_cache, dla_core=dla_core, gpu_fallback=gpu_fallback,
        hardware_compatibility=hardware_compat, version_compatible=version_compatible,
    )
    stage = (lambda name: None) if json_out else (lambda name: err.print(f"[dim]>> {name}[/dim]"))
    if from_bundle is not None:
        if model is not None or retrain:
            raise ConfigError("--from-bundle rebuilds an existing bundle: it takes no MODEL and no --retrain", "Drop one of them")
        from rescompile.pipeline import build_from_bundle

        rebuilt = build_from_bundle(from_bundle, engine, precision, on_stage=stage)
        if json_out:
            print_json({"output_dir": str(rebuilt.output_dir), "engine": str(rebuilt.engine.path), "plan": rebuilt.plan.to_dict(),
                        "report": rebuilt.engine.report.to_dict() if rebuilt.engine.report else None})
            return
        print_engine(rebuilt.engine)
        out.print(f"bundle: {rebuilt.output_dir}")
        return
    if retrain and model is not None:
        raise ConfigError("--retrain trains the embedded default model; it takes no MODEL", "Drop MODEL, or drop --retrain")
    from rescompile.pipeline import build as run_build

    config = BuildConfig(
        source=model, output_dir=output_dir, retrain=retrain, arch=arch, num_classes=num_classes, input_size=input_size, precision=precision or Precision.int8,
        calib=calib_config(num_images, method, percentile, batch_size, trt_version, max_accuracy_drop, sensitivity, fallback),
        calib_data=data_config(calib_data, data_dir, data_format), eval_data=data_config(eval_data, data_dir, data_format), engine=engine,
        bench=bench, trust_checkpoint=trust_checkpoint,
        preprocessing=preprocessing_override(mean, std, scale, resize, center_crop, channel_order),
        fp32_reference=fp32_reference,
    )
    with StepProgress(enabled=not json_out) as progress:
        result = run_build(
            config, train_callback=None if json_out else TrainProgress("default model"), on_stage=stage, on_progress=progress
        )
    written = _manifest(result)
    summary = {
        "output_dir": str(result.output_dir),
        "manifest": result.manifest.name,
        "model": result.model.source,
        "files": {k: str(v) for k, v in result.files.items()},
        "export": result.export.to_dict() if result.export else None,
        "fusion": result.optimize.report.to_dict(),
        "calibration": None if result.calibration is None else {
            "method": result.calibration.method, "images": result.calibration.images, "accuracy": result.calibration.accuracy,
            "lint": result.calibration.lint, "safety_net": result.calibration.safety,
            "prequantized": result.calibration.prequantized or None,
        },
        "engine": None if result.engine is None else {"path": str(result.engine.path), "plan": result.engine.plan.to_dict()},
        "engine_plan": None if result.plan is None else result.plan.to_dict(),
        "notes": result.notes,
        "target": result.target.explanation if result.target else None,
        "cpu_engine": (written.get("cpu_artifact") or {}).get("choice"),
        "deploy": written.get("deploy"),
        "bench": None if result.bench is None else {
            "verdict": result.bench.verdict, "warnings": result.bench.warnings,
            "report": str(result.bench.files.get("markdown")), "measurements": [m.to_dict(False) for m in result.bench.measurements],
        },
    }
    if json_out:
        print_json(summary)
        return
    for note in result.notes:
        err.print(escape(note), highlight=False)
    spec = result.model.spec
    table = Table(title=f"rescompile build: {result.model.name} -> {result.output_dir}")
    table.add_column("artifact")
    table.add_column("file")
    table.add_column("notes")
    ex = result.export
    note = f"max |ONNX - PyTorch| {ex.check.max_abs_diff:.1e}, top-1 agreement {ex.check.top1_agreement:.0%}" if ex and ex.check else "copied"
    if result.calibration is not None and result.calibration.prequantized:  # prequant.py
        note = "the given quantized model with its Q/DQ stripped"
    table.add_row("FP32 ONNX", result.files["fp32_onnx"].name, note)
    rep = result.optimize.report
    table.add_row(
        "optimized ONNX",
        result.files["optimized_onnx"].name,
        f"BN {rep.bn_before}->{rep.bn_after}, {rep.fusable_blocks}/{len(rep.blocks)} residual blocks fusable",
    )
    table.add_row("fusion report", result.files["fusion_report"].name, "rescompile inspect shows it for any ONNX")
    cal = result.calibration
    if cal is not None:
        table.add_row("INT8 Q/DQ ONNX", cal.qdq_path.name, "TensorRT 10/11 explicit quantization")
        table.add_row("calibration cache", cal.cache_path.name, f"TensorRT {config.calib.trt_version} implicit INT8 (JetPack)")
        table.add_row("CPU INT8 ONNX", cal.cpu_path.name, "ONNX Runtime, uint8 activations")
        if cal.pixels_path is not None:
            table.add_row("CPU INT8 ONNX, pixels in", cal.pixels_path.name, "uint8 RGB pixels in, normalisation folded in (classify, predict)")
        if cal.openvino_path is not None:
            table.add_row("OpenVINO INT8 ONNX", cal.openvino_path.name, "the same scales in the form OpenVINO runs fastest")
        table.add_row("scales.json", cal.scales_path.name, "the given model's own scales" if cal.prequantized else f"{cal.method}, {cal.images} images")
    if "fp16_onnx" in result.files:
        table.add_row("FP16 ONNX", result.files["fp16_onnx"].name, "TensorRT 11 strongly typed FP16")
    if result.engine is not None:
        table.add_row("TensorRT engine", result.engine.path.name, result.engine.plan.reason)
    table.add_row("labels", result.files["labels"].name, f"{spec.num_classes} class names")
    deploy = written.get("deploy") or {}
    if deploy:
        table.add_row("DeepStream config", deploy.get("deepstream_config", "-"), "nvinfer primary classifier (labels, preprocessing, engine)")
        table.add_row("Triton config", deploy.get("triton_config", "-"), "model repository: tritonserver --model-repository <bundle>/deploy/triton")
    table.add_row("manifest", result.manifest.name, f"{spec.arch}, {spec.num_classes} classes, input {spec.input_size}x{spec.input_size}")
    out.print(table)
    if cal is not None:
        print_calibration(cal)
    metrics = result.model.metrics or {}
    if "test_acc" in metrics:
        out.print(f"model test top-1: {metrics['test_acc']:.2%} on {metrics.get('test_images', '?')} held-out images")
    if result.engine is not None:
        print_engine(result.engine)
    elif result.target is not None:
        out.print(f"[yellow]{result.target.explanation}[/yellow]")
        if result.plan is not None:
            out.print(f"on the target: {result.plan.reason}")
    choice = summary["cpu_engine"]
    if choice:
        engine = "OpenVINO on its OpenVINO form" if choice["fastest"] == "openvino" else "ONNX Runtime on the CPU artifact"
        if choice.get("dispatch"):
            names = {"onnxruntime": "ONNX Runtime on the CPU artifact", "openvino": "OpenVINO on its OpenVINO form"}
            engine = ", ".join(f"{names[e]} from batch {b}" for b, e in choice["dispatch"])
        out.print(f"CPU engine: runtime.load runs {engine} here ({escape(str(choice.get('why', '')))})")
    if result.bench is not None:
        from rescompile.cli.bench import print_report

        print_report(result.bench)
    out.print(f"bundle: {result.output_dir}")
    next_steps(result)


def print_engine(engine) -> None:
    plan = engine.plan
    out.print(f"engine: {engine.path.name}, {engine.bytes / 2**20:.1f} MiB, built in {engine.build_seconds:.1f} s ({plan.reason})")
    rep = engine.report
    if rep is None:
        return
    table = Table(title=f"engine layers: {rep.layers} ({', '.join(f'{k} {v}' for k, v in sorted(rep.by_precision.items()))})")
    for col in ("residual block", "convs INT8", "Add fused into Conv"):
        table.add_column(col)
    for b in rep.blocks:
        table.add_row(b.name, f"{b.int8_convs}/{b.convs}", "yes" if b.add_fused else "[red]no[/red]")
    out.print(table)
    if rep.blocks and rep.fused_adds < len(rep.blocks):
        out.print(f"[yellow]{len(rep.blocks) - rep.fused_adds} residual Add(s) did not fuse: see engine_layers.json[/yellow]")


def next_steps(result) -> None:
    d = result.output_dir
    lines = ["next:"]
    if result.engine is None:
        lines.append(f"  on the Jetson / GPU machine (after copying the bundle there):  rescompile build --from-bundle {d}")
    lines.append(f"  in your app:  rescompile.runtime.load('{d}').classify(image)")
    out.print("\n".join(lines))


def _manifest(result) -> dict:
    """The manifest the build wrote ({} when unreadable)."""
    import json

    try:
        return json.loads(Path(result.manifest).read_text())
    except (OSError, ValueError):
        return {}
