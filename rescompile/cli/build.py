"""rescompile build: the main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from rescompile.cli import app
from rescompile.cli._common import Json, StepProgress, TrainProgress, err, guarded, out, print_json
from rescompile.cli.calibrate import (
    C, CalibBatch, CalibData, DataDirOpt, EvalData, Fallback, MaxDrop, Method, NumImages, Percentile, Sensitivity, TrtVersion,
    calib_config, data_config, print_calibration,
)
from rescompile.cli._prep import (
    CropOpt, DataFormat, FormatOpt, MeanOpt, OrderOpt, ResizeOpt, ScaleOpt, StdOpt, preprocessing_override,
)
from rescompile.cli.export import ArchOpt, ClassesOpt, SizeOpt, TrustOpt
from rescompile.config import EngineConfig, HardwareCompat, Int8Source, Precision
from rescompile.errors import ConfigError

MinBatch = Annotated[int, typer.Option(min=1, help="Engine optimization profile: smallest batch.")]
OptBatch = Annotated[int, typer.Option(min=1, help="Engine optimization profile: the batch kernels are tuned for.")]
MaxBatch = Annotated[int, typer.Option(min=1, help="Engine optimization profile: largest batch.")]
E = EngineConfig()


def engine_config(**kw) -> EngineConfig:
    kw["timing_cache"] = kw.pop("timing_cache")
    return EngineConfig(**kw)


@app.command(
    epilog=(
        "Examples:\n\n"
        "  rescompile build                                (the embedded default: ResNet-20 on digits, INT8)\n\n"
        "  rescompile build --retrain                      (the same, trained from scratch first)\n\n"
        "  rescompile build runs/resnet20-digits/best.pt -o out/resnet20 --precision int8\n\n"
        "  rescompile build model.onnx --calib-data images/ --max-batch 64 -o out/model\n\n"
        "  rescompile build --from-bundle out/resnet20     (on the Jetson: rebuild the engine, no PyTorch)"
    )
)
@guarded
def build(
    model: Annotated[
        str | None,
        typer.Argument(help="Name, checkpoint, TorchScript or ONNX file [default: the embedded ResNet-20 on digits].", show_default=False),
    ] = None,
    output_dir: Annotated[
        Path | None, typer.Option("--output-dir", "-o", file_okay=False, help="Bundle directory [default: <home>/builds/<model>].")
    ] = None,
    precision: Annotated[
        Precision | None,
        typer.Option(
            case_sensitive=False,
            help="fp32 | fp16 | int8 (calibrated; FP16 fallback) | best (int8 + fp16) [default: int8; with --from-bundle: the bundle's].",
            show_default=False,
        ),
    ] = None,
    from_bundle: Annotated[
        Path | None,
        typer.Option(file_okay=False, help="Rebuild the TensorRT engine of an existing bundle here (Jetson), from its Q/DQ ONNX or cache."),
    ] = None,
    calib_data: CalibData = None,
    data_dir: DataDirOpt = None,
    eval_data: EvalData = None,
    num_images: NumImages = C.num_images,
    method: Method = C.method,
    percentile: Percentile = C.percentile,
    batch_size: CalibBatch = C.batch_size,
    trt_version: TrtVersion = C.trt_version,
    max_accuracy_drop: MaxDrop = None,
    sensitivity: Sensitivity = False,
    fallback: Fallback = True,
    fp32_reference: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="MODEL already quantized (Q/DQ): the FP32 ONNX it came from, to measure its accuracy "
                     "against [default: its own Q/DQ-stripped graph, which says nothing about the quantization loss]."),
    ] = None,
    int8_source: Annotated[
        Int8Source, typer.Option(case_sensitive=False, help="TensorRT 10: qdq (explicit, default) or cache (implicit INT8 from calibration.cache).")
    ] = E.int8_source,
    min_batch: MinBatch = E.min_batch,
    opt_batch: OptBatch = E.opt_batch,
    max_batch: MaxBatch = E.max_batch,
    workspace_mib: Annotated[int | None, typer.Option(min=1, help="Builder workspace limit in MiB [default: TensorRT's].")] = None,
    opt_level: Annotated[int | None, typer.Option(min=0, max=5, help="Builder optimization level 0-5 [default: TensorRT's, 3].")] = None,
    timing_cache: Annotated[Path | None, typer.Option(dir_okay=False, help="Timing cache to load and save [default: timing.cache in the bundle].")] = None,
    dla_core: Annotated[int | None, typer.Option(min=0, help="Jetson: run on this DLA core (FP16/INT8).")] = None,
    gpu_fallback: Annotated[bool, typer.Option(help="DLA: layers it cannot run go to the GPU.")] = E.gpu_fallback,
    hardware_compat: Annotated[
        HardwareCompat, typer.Option(case_sensitive=False, help="none | ampere+ (any sm >= 80) | same-cc (any GPU of this compute capability).")
    ] = E.hardware_compatibility,
    version_compatible: Annotated[bool, typer.Option(help="Engine runs on later TensorRT releases of the same major version.")] = False,
    bench: Annotated[bool, typer.Option(help="End with a quick benchmark against FP32 PyTorch (batch 1 and 8).")] = True,
    retrain: Annotated[
        bool, typer.Option(help="No MODEL: train the default ResNet-20 on digits from scratch instead of using the embedded weights.")
    ] = False,
    trust_checkpoint: TrustOpt = False,
    arch: ArchOpt = None,
    num_classes: ClassesOpt = None,
    input_size: SizeOpt = None,
    data_format: FormatOpt = DataFormat.auto,
    mean: MeanOpt = None,
    std: StdOpt = None,
    scale: ScaleOpt = None,
    resize: ResizeOpt = None,
    center_crop: CropOpt = None,
    channel_order: OrderOpt = None,
    json_out: Json = False,
) -> None:
    """Compile a model into a bundle: export -> optimize -> INT8 calibration -> TensorRT engine
    (or the CPU artifact where there is no NVIDIA GPU), with a manifest."""
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
        table.add_row("scales.json", cal.scales_path.name, "the given model's own scales" if cal.prequantized else f"{cal.method}, {cal.images} images")
    if "fp16_onnx" in result.files:
        table.add_row("FP16 ONNX", result.files["fp16_onnx"].name, "TensorRT 11 strongly typed FP16")
    if result.engine is not None:
        table.add_row("TensorRT engine", result.engine.path.name, result.engine.plan.reason)
    table.add_row("labels", result.files["labels"].name, f"{spec.num_classes} class names")
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
