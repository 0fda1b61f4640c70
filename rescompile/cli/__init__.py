"""The ``rescompile`` command line: the only place that prints or exits."""

from __future__ import annotations

from typing import Any

import typer

from rescompile import __version__
from rescompile.cli._help import Command, Group


class _Typer(typer.Typer):
    """Every subcommand gets the grouped --help of rescompile.cli._help."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", Command)
        return super().command(*args, **kwargs)


app = _Typer(
    name="rescompile",
    cls=Group,
    help=(
        "Take a ResNet from PyTorch to a fast INT8 inference engine and prove the speed-up.\n\n"
        "[bold]rescompile build[/bold] with no arguments loads the ResNet-20 shipped trained on the bundled "
        "digits images and compiles it; [bold]--retrain[/bold] trains it from scratch first."
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rescompile {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Show the version and exit."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what each stage does."),
) -> None:
    from rescompile.cli._common import setup_logging

    setup_logging(verbose)


def _register() -> None:
    # Each command lives in its own module; importing them is cheap (no torch at import).
    from rescompile.cli import train, export, optimize, calibrate, build, bench, predict, compare, models, doctor  # noqa: F401, I001


_register()


def main() -> None:
    app()
