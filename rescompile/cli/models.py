"""rescompile models"""

from __future__ import annotations

from rich.table import Table

from rescompile.cli import app
from rescompile.cli._common import out, print_json
from rescompile.cli.options import Json


@app.command(epilog="Example:\n\n  rescompile models")
def models(json_out: Json = False) -> None:
    """List the architectures rescompile can train, load and export."""
    from rescompile.models.registry import ARCHITECTURES

    if json_out:
        print_json({n: {"family": a.family, "description": a.description, "input": a.default_input} for n, a in ARCHITECTURES.items()})
        return
    table = Table(title="architectures")
    for col in ("name", "family", "default input", "description"):
        table.add_column(col)
    for name, info in ARCHITECTURES.items():
        table.add_row(name, info.family, f"{info.default_input}x{info.default_input}", info.description)
    out.print(table)
