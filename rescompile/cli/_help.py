"""Help screens: each command's options in titled panels, one option to a line where the terminal allows.

Typer's own layout gives every option six columns (long name, short name, the --no- form, its short
name, type, help); with forty options and names like --no-version-compatible the help text is left a
third of the width. Here an option takes two columns: its names with a placeholder for its value, and
its help followed by the default. Help strings are printed as plain text, so a bracket in one is shown,
never read as markup.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from typer.core import TyperCommand, TyperGroup

OPTIONS = "Options"
ARGUMENTS = "Arguments"


def _without_flag_metavars(params: list[Any]) -> list[Any]:
    """Flags take no value, so nothing stands beside them for one (Typer would write <bool>)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    return params


class Group(TyperGroup):
    """The root command: Typer's layout, without a value placeholder beside flags."""

    def get_params(self, ctx: Any) -> list[Any]:
        return _without_flag_metavars(super().get_params(ctx))


class Command(TyperCommand):
    """A subcommand whose --help groups its options by their rich_help_panel."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        try:
            from rich.console import Console
        except ImportError:  # pragma: no cover - rich comes with the CLI
            return super().format_help(ctx, formatter)
        print_help(self, ctx, Console())


# -- rendering ------------------------------------------------------------------------------------

def _argument_name(param: Any) -> str:
    name = (param.metavar or param.name or "").upper()
    return name + ("..." if param.nargs != 1 else "")


def _is_negatable(param: Any) -> bool:
    """A --x/--no-x flag."""
    return bool(getattr(param, "is_flag", False) and param.secondary_opts)


def option_names(param: Any) -> str:
    """'-o, --output-dir <dir>', '--[no-]bench' (on by default), '--retrain' (off by default)."""
    if param.param_type_name == "argument":
        return _argument_name(param)
    short = [o for o in param.opts if not o.startswith("--")]
    long = [o for o in param.opts if o.startswith("--")]
    if _is_negatable(param) and param.default:
        # On by default: the --no- form is the one to type, so both are shown.
        pairs = list(zip(long, param.secondary_opts, strict=False))
        long = [f"--[no-]{pos[2:]}" if neg == f"--no-{pos[2:]}" else f"{pos}/{neg}" for pos, neg in pairs]
    names = ", ".join([*short, *long])
    metavar = "" if getattr(param, "is_flag", False) else (param.metavar or f"<{(param.name or 'value').replace('_', '-')}>")
    return f"{names} {metavar}" if metavar else names


def default_text(param: Any) -> str | None:
    """What the help says the default is, or None to say nothing."""
    shown = getattr(param, "show_default", None)
    if isinstance(shown, str):
        return shown
    if shown is False:
        return None
    default = param.default
    if getattr(param, "is_flag", False):
        return "on" if _is_negatable(param) and default else None
    if default is None or callable(default) or default in ("", (), []):
        return None
    if isinstance(default, Enum):
        return str(default.value)
    if isinstance(default, (list, tuple)):
        return ",".join(str(d.value if isinstance(d, Enum) else d) for d in default)
    return str(default)


def usage(command: Any, ctx: Any) -> str:
    pieces = [ctx.command_path, "[OPTIONS]"]
    for param in command.get_params(ctx):
        if param.param_type_name == "argument":
            name = _argument_name(param)
            pieces.append(name if param.required else f"[{name}]")
    return " ".join(pieces)


def panels(command: Any, ctx: Any) -> dict[str, list[Any]]:
    """Panel title -> its parameters, in the order the command declares them.

    Arguments come first; options without a panel next, under "Options"; --help joins the panel of the
    last option declared (Output, where --json is).
    """
    params = [p for p in command.get_params(ctx) if not getattr(p, "hidden", False)]
    help_option = command.get_help_option(ctx)
    grouped: dict[str, list[Any]] = {ARGUMENTS: [], OPTIONS: []}
    title = OPTIONS
    for param in params:
        if param is help_option:
            continue
        title = ARGUMENTS if param.param_type_name == "argument" else (getattr(param, "rich_help_panel", None) or OPTIONS)
        grouped.setdefault(title, []).append(param)
    if help_option is not None and help_option in params:
        grouped[OPTIONS if title == ARGUMENTS else title].append(help_option)
    return {title: members for title, members in grouped.items() if members}


def _help_cell(param: Any, width: int, console: Any):
    """The help, then the default: on the same line when both fit in width, else the default on a line of its own."""
    from rich.text import Text

    cell = Text(" ".join((param.help or "").split()))
    extra = []
    default = default_text(param)
    if default is not None:
        extra.append(f"[default: {default}]")
    if param.required:
        extra.append("[required]")
    if extra:
        note = " ".join(extra)
        last_line = cell.wrap(console, width)[-1] if cell else Text()
        if cell:
            cell.append(" " if len(last_line) + 1 + len(note) <= width else "\n")
        cell.append(note, style="dim")
    return cell


def print_help(command: Any, ctx: Any, console: Any) -> None:
    from rich.console import Group as Lines
    from rich.padding import Padding
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    console.print(Padding(Text.assemble(("Usage: ", "yellow"), (usage(command, ctx), "bold")), 1))
    text = (command.help or "").partition("\f")[0].strip()
    if text:
        first, _, rest = text.partition("\n\n")
        body = Text(" ".join(first.split()))
        for paragraph in rest.split("\n\n") if rest else ():
            body.append("\n\n" + " ".join(paragraph.split()), style="dim")
        console.print(Padding(body, (0, 1, 1, 1)))
    grouped = panels(command, ctx)
    width = max((len(option_names(p)) for members in grouped.values() for p in members), default=0)
    help_width = max(console.width - 4 - width - 2, 20)  # panel border and padding, then the gap between the columns
    for title, members in grouped.items():
        grid = Table.grid(padding=(0, 2), expand=True)
        grid.add_column(width=width, no_wrap=True, style="bold cyan")
        grid.add_column(ratio=1)
        for param in members:
            grid.add_row(Text(option_names(param)), _help_cell(param, help_width, console))
        console.print(Panel(grid, title=title, title_align="left", border_style="dim"))
    if command.epilog:
        # The epilog's paragraphs (the examples) print one to a line, each keeping its indent when it wraps.
        rows = []
        for paragraph in command.epilog.split("\n\n"):
            for line in paragraph.strip("\n").splitlines():
                body = line.lstrip(" ")
                rows.append(Padding(Text(body), (0, 0, 0, 1 + len(line) - len(body))))
        console.print()
        console.print(Lines(*rows))
