"""rescompile build: the main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rescompile.cli import app
from rescompile.cli._common import Json, StepProgress, TrainProgress, err, guarded, out, print_json
from rescompile.cli.calibrate import (
    C, CalibBatch, CalibData, DataDirOpt, EvalData, MaxDrop, Method, NumImages, Percentile, Sensitivity, TrtVersion,
    calib_config, data_config, print_calibration,
)
from rescompile.cli.export import ArchOpt, ClassesOpt, SizeOpt
from rescompile.config import Precision


@app.command(
    epilog=(
        "Examples:\n\n"
        "  rescompile build                                (the embedded default: ResNet-20 on digits)\n\n"
        "  rescompile build runs/resnet20-digits/best.pt -o out/resnet20\n\n"
        "  rescompile build model.onnx -o out/model"
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
    precision: Annotated[Precision, typer.Option(case_sensitive=False, help="fp32 | int8 (calibrated on real images).")] = Precision.int8,
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
    arch: ArchOpt = None,
    num_classes: ClassesOpt = None,
    input_size: SizeOpt = None,
    json_out: Json = False,
) -> None:
    """Compile a model into a bundle: export -> optimize -> INT8 calibration, with a manifest."""
    from rescompile.config import BuildConfig
    from rescompile.pipeline import build as run_build

    config = BuildConfig(
        source=model, output_dir=output_dir, arch=arch, num_classes=num_classes, input_size=input_size, precision=precision,
        calib=calib_config(num_images, method, percentile, batch_size, trt_version, max_accuracy_drop, sensitivity),
        calib_data=data_config(calib_data, data_dir), eval_data=data_config(eval_data, data_dir),
    )
    stage = (lambda name: None) if json_out else (lambda name: err.print(f"[dim]>> {name}[/dim]"))
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
            "lint": result.calibration.lint,
        },
    }
    if json_out:
        print_json(summary)
        return
    spec = result.model.spec
    table = Table(title=f"rescompile build: {result.model.name} -> {result.output_dir}")
    table.add_column("artifact")
    table.add_column("file")
    table.add_column("notes")
    ex = result.export
    note = f"max |ONNX - PyTorch| {ex.check.max_abs_diff:.1e}, top-1 agreement {ex.check.top1_agreement:.0%}" if ex and ex.check else "copied"
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
        table.add_row("scales.json", cal.scales_path.name, f"{cal.method}, {cal.images} images")
    table.add_row("manifest", result.manifest.name, f"{spec.arch}, {spec.num_classes} classes, input {spec.input_size}x{spec.input_size}")
    out.print(table)
    if cal is not None:
        print_calibration(cal)
    metrics = result.model.metrics or {}
    if "test_acc" in metrics:
        out.print(f"model test top-1: {metrics['test_acc']:.2%} on {metrics.get('test_images', '?')} held-out images")
    out.print(f"bundle: {result.output_dir}")
