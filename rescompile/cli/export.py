"""rescompile export"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rescompile.cli import app, options
from rescompile.cli._common import guarded, out, print_json
from rescompile.cli.options import ONNX, Arch, Check, Json, ModelArg, ModelInputSize, NumClasses, Simplify, TrustCheckpoint
from rescompile.config import ExportConfig

E = ExportConfig()


@app.command(
    epilog=(
        "Examples:\n\n"
        "  rescompile export ~/.cache/rescompile/runs/resnet20-digits/best.pt -o resnet20.onnx\n\n"
        "  rescompile export resnet50 -o resnet50.onnx            (torchvision, random weights)\n\n"
        "  rescompile export model.pt --arch resnet18 --num-classes 5 --input-size 224 -o model.onnx"
    )
)
@guarded
def export(
    model: ModelArg,
    output: Annotated[Path, options.output_file()],
    arch: Arch = None,
    num_classes: NumClasses = None,
    input_size: ModelInputSize = None,
    trust_checkpoint: TrustCheckpoint = False,
    opset: Annotated[int, typer.Option(min=17, metavar="<n>", help="ONNX opset to export with.", rich_help_panel=ONNX)] = E.opset,
    simplify: Simplify = E.simplify,
    check: Check = E.check,
    json_out: Json = False,
) -> None:
    """Export a model to ONNX with a dynamic batch and its preprocessing in the metadata.

    The graph is simplified with onnxsim and checked against the model with ONNX Runtime.
    """
    from rescompile.errors import ConfigError
    from rescompile.models.load import load_model
    from rescompile.stages.export import onnx_from_torch

    loaded = load_model(model, arch=arch, num_classes=num_classes, input_size=input_size, trust_checkpoint=trust_checkpoint)
    if loaded.kind == "onnx":
        raise ConfigError(f"{model} is already ONNX", "Pass it straight to 'rescompile build'")
    config = ExportConfig(opset=opset, simplify=simplify, check=check)
    result = onnx_from_torch(loaded.module, loaded.spec, output, config)
    if json_out:
        print_json(result.to_dict())
        return
    table = Table(title=f"export: {output}")
    for col in ("nodes", "opset", "simplified", "max |ONNX - PyTorch|", "top-1 agreement"):
        table.add_column(col, justify="right")
    c = result.check
    table.add_row(
        str(result.nodes),
        str(result.opset),
        "yes" if result.simplified else "no",
        f"{c.max_abs_diff:.2e}" if c else "not checked",
        f"{c.top1_agreement:.1%}" if c else "-",
    )
    out.print(table)
    if not result.simplified:
        out.print(f"note: {result.simplify_note}")
