"""rescompile doctor"""

from __future__ import annotations

from rich.markup import escape
from rich.table import Table

from rescompile.cli import app
from rescompile.cli._common import guarded, out, print_json
from rescompile.cli.options import Json


@app.command(epilog="Examples:\n\n  rescompile doctor\n\n  rescompile doctor --json")
@guarded
def doctor(json_out: Json = False) -> None:
    """What this machine can do: Python, PyTorch, CUDA, TensorRT INT8, ONNX Runtime, Jetson."""
    from rescompile.doctor import capabilities, checks

    found = checks()
    if json_out:
        print_json({"checks": [c.__dict__ for c in found], "commands": dict(capabilities(found))})
        return
    table = Table(title="rescompile doctor")
    for col in ("", "component", "found", "to fix"):
        table.add_column(col)
    for c in found:
        table.add_row("[green]ok[/green]" if c.ok else "[yellow]--[/yellow]", c.name, escape(c.detail), "" if c.ok else escape(c.fix))
    out.print(table)
    for command, line in capabilities(found):
        out.print(f"{command}: {escape(line)}")
