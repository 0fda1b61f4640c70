"""rescompile optimize / rescompile inspect"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from rescompile.cli import app, options
from rescompile.cli._common import err, guarded, out, print_json
from rescompile.cli._report import fusion_table, totals_line
from rescompile.cli.options import Check, Json, Simplify

OnnxArg = Annotated[Path, typer.Argument(metavar="MODEL", help="ONNX classifier to read (never modified).", show_default=False)]


@app.command(
    epilog=(
        "Examples:\n\n"
        "  rescompile optimize resnet50.onnx -o resnet50_opt.onnx\n\n"
        "  rescompile optimize model.onnx -o model_opt.onnx --json > report.json"
    )
)
@guarded
def optimize(
    model: OnnxArg,
    output: Annotated[Path, options.output_file()],
    simplify: Simplify = True,
    check: Check = True,
    json_out: Json = False,
) -> None:
    """Fold BatchNorm, remove no-ops, and put residual blocks into the shape TensorRT fuses."""
    from rescompile.stages.optimize import optimize_onnx

    result = optimize_onnx(model, output, check=check, simplify=simplify)
    if json_out:
        d = result.report.to_dict()
        d["output"] = str(result.path)
        d["check"] = None if result.check is None else vars(result.check)
        print_json(d)
        return
    for note in result.report.intake:
        err.print(f"intake: {escape(note)}", highlight=False)
    out.print(fusion_table(result.report, f"fusion report: {output}"))
    out.print(totals_line(result.report), highlight=False)
    if result.check:
        out.print(f"outputs before vs after: max abs diff {result.check.max_abs_diff:.2e} (ONNX Runtime, optimizations off)")


@app.command(epilog="Example:\n\n  rescompile inspect resnet18.onnx")
@guarded
def inspect(model: OnnxArg, json_out: Json = False) -> None:
    """Show the fusion report of any ONNX classifier without changing it."""
    from rescompile.stages.optimize import inspect_onnx

    report = inspect_onnx(model)
    if json_out:
        print_json(report.to_dict())
        return
    for note in report.intake:
        err.print(f"intake: {escape(note)}", highlight=False)
    out.print(fusion_table(report, f"fusion report: {model}"))
    out.print(totals_line(report), highlight=False)
