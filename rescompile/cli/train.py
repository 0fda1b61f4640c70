"""rescompile train"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rescompile.cli import app, options
from rescompile.cli._common import TrainProgress, err, guarded, out, print_json, train_config
from rescompile.cli.options import (
    MODEL, TRAINING, Augment, BatchSize, DataDir, Dataset, Download, Epochs, Gamma, Json, Lr, MaxTrain, Milestones,
    Momentum, Nesterov, Opt, Pretrained, Sched, Seed, Smoothing, TrainInputSize, Warmup, WeightDecay, ZeroInit,
)
from rescompile.config import Optimizer, Schedule, TrainConfig

D = TrainConfig()


@app.command(
    epilog=(
        "Examples:\n\n"
        "  rescompile train                                   (ResNet-20 on digits)\n\n"
        "  rescompile train --arch resnet56 --dataset cifar10 --data-dir ~/data --epochs 160 --schedule step\n\n"
        "  rescompile train --arch resnet18 --dataset ./flowers --input-size 224 --pretrained -o runs/flowers"
    )
)
@guarded
def train(
    arch: Annotated[
        str, typer.Option("--arch", "-a", metavar="<name>", help="Architecture to train; rescompile models lists them.", rich_help_panel=MODEL)
    ] = D.arch,
    pretrained: Pretrained = False,
    zero_init_residual: ZeroInit = D.zero_init_residual,
    dataset: Dataset = D.data.dataset,
    data_dir: DataDir = None,
    download: Download = False,
    input_size: TrainInputSize = None,
    augment: Augment = True,
    max_train_images: MaxTrain = None,
    epochs: Epochs = D.epochs,
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
    output_dir: Annotated[Path | None, options.output_dir("<home>/runs/<arch>-<dataset>")] = None,
    json_out: Json = False,
) -> None:
    """Train a ResNet; keep the best checkpoint with its architecture and preprocessing."""
    config = train_config(**{k: v for k, v in locals().items() if k != "json_out"})
    from rescompile.train import train as run_train

    result = run_train(config, None if json_out else TrainProgress(config.arch))
    summary = {
        "checkpoint": str(result.checkpoint),
        "arch": config.arch,
        "dataset": result.spec.dataset,
        "best_epoch": result.best_epoch,
        "best_val_acc": result.best_val_acc,
        "test_acc": result.test_acc,
        "test_images": result.test_images,
        "wall_time_s": round(result.wall_time_s, 2),
    }
    if json_out:
        print_json(summary)
        return
    table = Table(title=f"{config.arch} on {result.spec.dataset}")
    table.add_column("best epoch", justify="right")
    table.add_column("val top-1", justify="right")
    table.add_column(f"test top-1 ({result.test_images} images)", justify="right")
    table.add_column("time", justify="right")
    table.add_row(str(result.best_epoch), f"{result.best_val_acc:.2%}", f"{result.test_acc:.2%}", f"{result.wall_time_s:.0f} s")
    out.print(table)
    err.print(f"checkpoint: {result.checkpoint}\nnext: rescompile build {result.checkpoint}")
