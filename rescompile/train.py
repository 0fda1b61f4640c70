"""Training loop: a ResNet on a dataset, best checkpoint kept, with its ModelSpec inside.

The loop reports progress through a callback object; it never prints.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from rescompile._lazy import import_optional
from rescompile.config import Optimizer, Schedule, TrainConfig, rescompile_home
from rescompile.data.datasets import DatasetSplits, load_dataset
from rescompile.data.images import ImageSet, iter_batches
from rescompile.data.preprocess import Preprocessing
from rescompile.errors import ConfigError, DataError, TrainError
from rescompile.models.checkpoint import save_checkpoint
from rescompile.models.registry import arch_info, create_model, resolve_options
from rescompile.models.spec import ModelSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float


@dataclass
class TrainResult:
    checkpoint: Path  # best checkpoint (by validation accuracy)
    last_checkpoint: Path
    spec: ModelSpec
    best_epoch: int
    best_val_acc: float
    test_acc: float
    test_images: int
    wall_time_s: float
    history: list[EpochStats] = field(default_factory=list)


class TrainCallback(Protocol):
    def on_start(self, epochs: int, steps_per_epoch: int) -> None: ...
    def on_step(self, epoch: int, step: int, loss: float, acc: float) -> None: ...
    def on_epoch_end(self, stats: EpochStats, is_best: bool) -> None: ...


def resolve_device(device: str) -> str:
    torch = import_optional("torch")

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} asked for, but CUDA is not available here", "Use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"unknown device {device!r}", "Use auto, cpu, cuda or cuda:N")
    return device


def _check(config: TrainConfig) -> None:
    arch_info(config.arch)
    if config.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {config.epochs}")
    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {config.batch_size}")
    if config.warmup_epochs < 0 or config.warmup_epochs >= config.epochs:
        raise ConfigError(
            f"--warmup-epochs ({config.warmup_epochs}) must be >= 0 and < --epochs ({config.epochs})"
        )
    if not 0.0 <= config.label_smoothing < 1.0:
        raise ConfigError(f"--label-smoothing must be in [0, 1), got {config.label_smoothing}")
    if config.resolved_lr() <= 0:
        raise ConfigError(f"--lr must be positive, got {config.lr}")
    if config.weight_decay < 0:
        raise ConfigError(f"--weight-decay must be >= 0, got {config.weight_decay}")
    if config.schedule == Schedule.step and not all(0 < m < 1 for m in config.milestones):
        raise ConfigError(f"step milestones are fractions of training in (0, 1), got {config.milestones}")


def lr_factor(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning-rate multiplier at a global step: linear warmup, then cosine/step/constant."""
    total = config.epochs * steps_per_epoch
    warm = config.warmup_epochs * steps_per_epoch
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    if config.schedule == Schedule.cosine:
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if config.schedule == Schedule.step:
        return config.gamma ** sum(progress >= m for m in config.milestones)
    return 1.0


def _optimizer(config: TrainConfig, model):
    torch = import_optional("torch")

    # No weight decay on BN parameters and biases (standard practice, e.g. Goyal et al. 2017).
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    lr = config.resolved_lr()
    if config.optimizer == Optimizer.sgd:
        return torch.optim.SGD(groups, lr=lr, momentum=config.momentum, nesterov=config.nesterov and config.momentum > 0)
    if config.optimizer == Optimizer.adam:
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)


def augment_batch(x, generator, pad: int, hflip: bool):
    """Random translation by up to ``pad`` pixels (zero padding) and optional horizontal flips."""
    torch = import_optional("torch")
    F = import_optional("torch.nn.functional")

    n, _, h, w = x.shape
    if pad > 0:
        padded = F.pad(x, (pad, pad, pad, pad))
        offs = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
        x = torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offs.tolist())])
    if hflip:
        flip = torch.rand(n, generator=generator) < 0.5
        x = torch.where(flip[:, None, None, None], x.flip(3), x)
    return x


def evaluate(model, images: ImageSet, preprocessing: Preprocessing, device: str, batch_size: int = 256):
    """(mean loss, top-1 accuracy) of ``model`` on labelled images; (nan, nan) for an empty set."""
    torch = import_optional("torch")
    F = import_optional("torch.nn.functional")

    if len(images) == 0:
        return float("nan"), float("nan")
    images.require_labels("evaluation")
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.inference_mode():
        for x, y in iter_batches(images, preprocessing, batch_size):
            xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
            logits = model(xt)
            loss_sum += float(F.cross_entropy(logits, yt, reduction="sum"))
            correct += int((logits.argmax(1) == yt).sum())
    return loss_sum / len(images), correct / len(images)


def _prepare(config: TrainConfig) -> tuple[DatasetSplits, ModelSpec]:
    splits = load_dataset(config.data, input_size=config.input_size)
    labels = splits.train.require_labels("training")
    if len(splits.train) == 0:
        raise DataError(f"dataset {config.data.dataset!r} has no training images", "Add images to the train split")
    if config.max_train_images is not None:
        if config.max_train_images < 1:
            raise ConfigError(f"--max-train-images must be >= 1, got {config.max_train_images}")
        keep = np.sort(np.random.default_rng(config.seed).permutation(len(labels))[: config.max_train_images])
        splits.train = splits.train.subset(keep)
    size = splits.preprocessing.input_size
    options = resolve_options(
        config.arch, size, config.small_input, zero_init_residual=config.zero_init_residual, pretrained=config.pretrained
    )
    spec = ModelSpec(config.arch, splits.num_classes, splits.preprocessing, splits.classes, options, splits.name)
    return splits, spec


def default_run_dir(config: TrainConfig) -> Path:
    dataset = Path(config.data.dataset).name if config.data.dataset not in ("digits", "cifar10") else config.data.dataset
    return rescompile_home() / "runs" / f"{config.arch}-{dataset}"


def train(config: TrainConfig = TrainConfig(), callback: TrainCallback | None = None) -> TrainResult:
    """Train ``config.arch`` on ``config.data``; write best.pt and last.pt into the output dir."""
    torch = import_optional("torch")
    F = import_optional("torch.nn.functional")

    _check(config)
    device = resolve_device(config.device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    splits, spec = _prepare(config)
    out = Path(config.output_dir) if config.output_dir else default_run_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    best_path, last_path = out / "best.pt", out / "last.pt"

    model = create_model(config.arch, spec.num_classes, **spec.options).to(device)
    opt = _optimizer(config, model)
    base_lrs = [g["lr"] for g in opt.param_groups]
    steps = math.ceil(len(splits.train) / config.batch_size)
    augment = config.augment if config.augment is not None else True
    pad = max(1, spec.input_size // 8) if augment else 0
    hflip = augment and splits.allow_hflip
    val_set = splits.val if len(splits.val) else splits.train
    if not len(splits.val):
        log.warning("no validation images: choosing the best epoch on training accuracy")
    if callback:
        callback.on_start(config.epochs, steps)

    history: list[EpochStats] = []
    best = (-1.0, math.inf)  # (val acc, val loss)
    best_epoch, step_global, t_start = 0, 0, time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        t0 = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        batches = iter_batches(splits.train, spec.preprocessing, config.batch_size, shuffle=True, seed=config.seed + epoch)
        for step, (x, y) in enumerate(batches, 1):
            for group, base in zip(opt.param_groups, base_lrs):
                group["lr"] = base * lr_factor(config, step_global, steps)
            xt = augment_batch(torch.from_numpy(x), gen, pad, hflip).to(device)
            yt = torch.from_numpy(y).to(device)
            logits = model(xt)
            loss = F.cross_entropy(logits, yt, label_smoothing=config.label_smoothing)
            if not torch.isfinite(loss):
                raise TrainError(
                    f"training diverged: loss is {float(loss.detach())} at epoch {epoch}, step {step}",
                    "Lower --lr, add --warmup-epochs, or check the data",
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step_global += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += int((logits.argmax(1) == yt).sum())
            seen += len(y)
            if callback:
                callback.on_step(epoch, step, loss_sum / seen, correct / seen)
        val_loss, val_acc = evaluate(model, val_set, spec.preprocessing, device)
        stats = EpochStats(
            epoch, loss_sum / seen, correct / seen, val_loss, val_acc, opt.param_groups[0]["lr"], time.perf_counter() - t0
        )
        history.append(stats)
        is_best = (val_acc, -val_loss) > (best[0], -best[1])
        metrics = {"epoch": epoch, "val_acc": val_acc, "val_loss": val_loss, "train_acc": stats.train_acc}
        if is_best:
            best, best_epoch = (val_acc, val_loss), epoch
            save_checkpoint(best_path, model.state_dict(), spec, metrics=metrics, train_config=config)
        if callback:
            callback.on_epoch_end(stats, is_best)
    save_checkpoint(last_path, model.state_dict(), spec, metrics=metrics, train_config=config)

    # Test accuracy of the kept (best) weights, stored in the checkpoint itself.
    state = torch.load(best_path, map_location=device, weights_only=True)
    model.load_state_dict(state["state_dict"])
    _, test_acc = evaluate(model, splits.test, spec.preprocessing, device)
    wall = time.perf_counter() - t_start
    state["metrics"].update({"test_acc": test_acc, "test_images": len(splits.test), "train_seconds": wall})
    save_checkpoint(best_path, state["state_dict"], spec, metrics=state["metrics"], train_config=config)
    log.info("best epoch %d: val %.4f, test %.4f (%.1fs)", best_epoch, best[0], test_acc, wall)
    return TrainResult(best_path, last_path, spec, best_epoch, best[0], test_acc, len(splits.test), wall, history)
