"""rescompile export"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rescompile.cli import app
from rescompile.cli._common import Json, guarded, out, print_json
from rescompile.config import ExportConfig

E = ExportConfig()
ModelArg = Annotated[
    str, typer.Argument(help="Architecture name, checkpoint (.pt/.pth), TorchScript file, or ONNX file.", show_default=False)
]
ArchOpt = Annotated[str | None, typer.Option("--arch", "-a", help="Architecture of a plain state-dict checkpoint.")]
ClassesOpt = Annotated[int | None, typer.Option(min=1, help="Number of classes, when the file does not say.")]
SizeOpt = Annotated[int | None, typer.Option(min=8, help="Input size, when the file does not say.")]
TrustOpt = Annotated[
    bool, typer.Option(help="Allow full unpickling of the checkpoint (runs code from the file: only for files you trust).")
]


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
    output: Annotated[Path, typer.Option("--output", "-o", dir_okay=False, help="ONNX file to write.")],
    opset: Annotated[int, typer.Option(min=17, help="ONNX opset.")] = E.opset,
    simplify: Annotated[bool, typer.Option(help="Simplify with onnxsim.")] = E.simplify,
    check: Annotated[bool, typer.Option(help="Check ONNX Runtime against PyTorch.")] = E.check,
    arch: ArchOpt = None,
    num_classes: ClassesOpt = None,
    input_size: SizeOpt = None,
    trust_checkpoint: TrustOpt = False,
    json_out: Json = False,
) -> None:
    """Export a model to ONNX (dynamic batch, preprocessing in metadata), simplify it, check it."""
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
