"""rescompile build: the main job."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rescompile.cli import app
from rescompile.cli._common import Json, TrainProgress, err, guarded, out, print_json
from rescompile.cli.export import ArchOpt, ClassesOpt, SizeOpt


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
    arch: ArchOpt = None,
    num_classes: ClassesOpt = None,
    input_size: SizeOpt = None,
    json_out: Json = False,
) -> None:
    """Compile a model into a bundle directory with a manifest (export -> ONNX -> optimize)."""
    from rescompile.config import BuildConfig
    from rescompile.pipeline import build as run_build

    config = BuildConfig(source=model, output_dir=output_dir, arch=arch, num_classes=num_classes, input_size=input_size)
    stage = (lambda name: None) if json_out else (lambda name: err.print(f"[dim]>> {name}[/dim]"))
    result = run_build(config, train_callback=None if json_out else TrainProgress("default model"), on_stage=stage)
    summary = {
        "output_dir": str(result.output_dir),
        "manifest": str(result.manifest),
        "model": result.model.source,
        "files": {k: str(v) for k, v in result.files.items()},
        "export": result.export.to_dict() if result.export else None,
        "fusion": result.optimize.report.to_dict(),
    }
    if json_out:
        print_json(summary)
        return
    spec = result.model.spec
    table = Table(title=f"rescompile build: {result.model.name}")
    table.add_column("artifact")
    table.add_column("path")
    table.add_column("notes")
    ex = result.export
    note = f"max |ONNX - PyTorch| {ex.check.max_abs_diff:.1e}, top-1 agreement {ex.check.top1_agreement:.0%}" if ex and ex.check else "copied"
    table.add_row("FP32 ONNX", str(result.files["fp32_onnx"]), note)
    rep = result.optimize.report
    table.add_row(
        "optimized ONNX",
        str(result.files["optimized_onnx"]),
        f"BN {rep.bn_before}->{rep.bn_after}, {rep.fusable_blocks}/{len(rep.blocks)} residual blocks fusable",
    )
    table.add_row("fusion report", str(result.files["fusion_report"]), "rescompile inspect shows it for any ONNX")
    table.add_row("manifest", str(result.manifest), f"{spec.arch}, {spec.num_classes} classes, input {spec.input_size}x{spec.input_size}")
    out.print(table)
    metrics = result.model.metrics or {}
    if "test_acc" in metrics:
        out.print(f"model test top-1: {metrics['test_acc']:.2%} on {metrics.get('test_images', '?')} held-out images")
    err.print(f"bundle: {result.output_dir}")
