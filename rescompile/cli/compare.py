"""rescompile compare: train architectures with one recipe and compare accuracy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rescompile.cli import app, options
from rescompile.cli._common import TrainProgress, err, guarded, out, print_json, train_config
from rescompile.cli.options import (
    TRAINING, Augment, BatchSize, DataDir, Dataset, Download, Epochs, Gamma, Json, Lr, MaxTrain, Milestones, Momentum,
    Nesterov, Opt, Sched, Seed, Smoothing, TrainInputSize, Warmup, WeightDecay,
)
from rescompile.config import Optimizer, Schedule, TrainConfig

D = TrainConfig()


@app.command(
    epilog=(
        "Examples:\n\n"
        "  rescompile compare                                 (ResNet-30 vs plain-30 on digits)\n\n"
        "  rescompile compare resnet56 plain56 --dataset cifar10 --data-dir ~/data --epochs 60"
    )
)
@guarded
def compare(
    archs: Annotated[
        list[str] | None, typer.Argument(metavar="ARCHS", help="Architectures to compare.", show_default="resnet30 plain30")
    ] = None,
    dataset: Dataset = D.data.dataset,
    data_dir: DataDir = None,
    download: Download = False,
    input_size: TrainInputSize = None,
    augment: Augment = True,
    max_train_images: MaxTrain = None,
    epochs: Epochs = 10,
    batch_size: BatchSize = D.batch_size,
    seed: Seed = D.seed,
    device: Annotated[str, options.device(TRAINING)] = D.device,
    threads: Annotated[int | None, options.threads(TRAINING)] = None,
    optimizer: Opt = Optimizer.sgd,
    lr: Lr = None,
    momentum: Momentum = D.momentum,
    nesterov: Nesterov = D.nesterov,
    weight_decay: WeightDecay = D.weight_decay,
    schedule: Sched = Schedule.cosine,
    milestones: Milestones = "0.5,0.75",
    gamma: Gamma = D.gamma,
    warmup_epochs: Warmup = D.warmup_epochs,
    label_smoothing: Smoothing = D.label_smoothing,
    output_dir: Annotated[Path | None, options.output_dir("<home>/runs/compare-<archs>")] = None,
    json_out: Json = False,
) -> None:
    """Train several architectures on one data set, recipe and seed; compare their accuracy.

    The default pair is the classic residual-vs-plain comparison of He et al. (2016):
    ResNet-30 and the same network without skip connections.
    """
    recipe = {k: v for k, v in locals().items() if k not in ("archs", "json_out")}
    from rescompile.compare import DEFAULT_PAIR, compare_architectures, plot_curves
    from rescompile.errors import MissingDependencyError

    names = list(archs or DEFAULT_PAIR)
    config = train_config(arch=names[0], **recipe)
    result = compare_architectures(names, config, None if json_out else TrainProgress)
    plot = None
    try:
        plot = plot_curves(result, result.output_dir / "curves.png")
    except MissingDependencyError as exc:
        err.print(f"no plot: {exc}")
    rows = {
        a: {"best_val_acc": r.best_val_acc, "test_acc": r.test_acc, "best_epoch": r.best_epoch, "checkpoint": str(r.checkpoint), "wall_time_s": round(r.wall_time_s, 1)}
        for a, r in result.results.items()
    }
    if json_out:
        print_json({"results": rows, "plot": str(plot) if plot else None})
        return
    table = Table(title=f"compare on {config.data.dataset} ({config.epochs} epochs, seed {config.seed})")
    for col in ("architecture", "best val top-1", "test top-1", "best epoch", "time"):
        table.add_column(col, justify="right")
    for a, r in rows.items():
        table.add_row(a, f"{r['best_val_acc']:.2%}", f"{r['test_acc']:.2%}", str(r["best_epoch"]), f"{r['wall_time_s']:.0f} s")
    out.print(table)
    if plot:
        err.print(f"curves: {plot}")
