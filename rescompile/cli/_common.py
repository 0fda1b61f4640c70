"""Shared CLI pieces: consoles, logging, error handling, progress bars."""

from __future__ import annotations

import functools
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rescompile.config import TrainConfig
from rescompile.errors import RescompileError

out = Console()  # results
err = Console(stderr=True)  # progress, logs, errors

F = TypeVar("F", bound=Callable[..., Any])


def setup_logging(verbose: bool) -> None:
    from rich.logging import RichHandler

    handler = RichHandler(console=err, show_time=False, show_path=False, markup=False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, handlers=[handler], format="%(message)s", force=True)


def guarded(fn: F) -> F:
    """Turn library errors into one line on stderr and a non-zero exit code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RescompileError as exc:
            rows = getattr(exc, "rows", None)  # a failed safety net: what it tried, before the one error line
            if rows:
                for r in rows:
                    drop = "" if r.get("drop_points") is None else f", drop {r['drop_points']:+.2f} pts"
                    err.print(f"  {escape(r['calibrator'])}: agreement {r['top1_agreement']:.1%}{drop}", highlight=False)
            # escape: messages hold pip extras like 'rescompile[compile]', which Rich would read as markup
            err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, markup=True, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted: no partial artifacts were kept")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


class TrainProgress:
    """A rich progress bar for the training loop (implements rescompile.train.TrainCallback)."""

    def __init__(self, title: str = "train") -> None:
        self.title = title
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.2%}  val {task.fields[val]}"),
            TimeElapsedColumn(),
            console=err,
            transient=False,
        )
        self.task = None

    def on_start(self, epochs: int, steps_per_epoch: int) -> None:
        self.steps = steps_per_epoch
        self.progress.start()
        self.task = self.progress.add_task(self.title, total=epochs * steps_per_epoch, loss=0.0, acc=0.0, val="-")

    def on_step(self, epoch: int, step: int, loss: float, acc: float) -> None:
        self.progress.update(
            self.task, completed=(epoch - 1) * self.steps + step, loss=loss, acc=acc, description=f"{self.title} {epoch}"
        )

    def on_epoch_end(self, stats, is_best: bool) -> None:
        star = " *" if is_best else ""
        self.progress.update(self.task, val=f"{stats.val_acc:.2%}{star}")
        if stats.epoch * self.steps >= self.progress.tasks[0].total:
            self.progress.stop()


class StepProgress:
    """Progress bars for named steps, fed as ``progress(task, done, total)``; a context manager."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.progress = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=err
        )
        self.tasks: dict[str, Any] = {}

    def __call__(self, task: str, done: int, total: int) -> None:
        if not self.enabled:
            return
        if task not in self.tasks:
            if not self.tasks:
                self.progress.start()
            self.tasks[task] = self.progress.add_task(task, total=total)
        self.progress.update(self.tasks[task], completed=done, total=total)

    def __enter__(self) -> StepProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.tasks:
            self.progress.stop()


def parse_milestones(text: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated fractions like 0.5,0.75, got {text!r}") from None


def train_config(**kw: Any) -> TrainConfig:
    from rescompile.config import DataConfig

    data = DataConfig(dataset=kw.pop("dataset"), data_dir=kw.pop("data_dir"), download=kw.pop("download"))
    kw["milestones"] = parse_milestones(kw.pop("milestones"))
    kw["num_threads"] = kw.pop("threads")
    return TrainConfig(data=data, **kw)
