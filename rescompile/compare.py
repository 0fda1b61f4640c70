"""Train several architectures with one recipe and compare them (e.g. ResNet-30 vs plain-30)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from rescompile.config import TrainConfig
from rescompile.errors import ConfigError
from rescompile.models.registry import arch_info
from rescompile.train import TrainCallback, TrainResult, default_run_dir, train

DEFAULT_PAIR = ("resnet30", "plain30")


@dataclass
class Comparison:
    results: dict[str, TrainResult]
    output_dir: Path


def compare_architectures(
    archs: Sequence[str] = DEFAULT_PAIR,
    config: TrainConfig = TrainConfig(),
    callback_for: Callable[[str], TrainCallback | None] | None = None,
) -> Comparison:
    """Train each of ``archs`` with the same data, recipe and seed; each run gets its own folder."""
    if len(archs) < 2:
        raise ConfigError("compare needs at least two architectures", "e.g. rescompile compare resnet30 plain30")
    if len(set(archs)) != len(archs):
        raise ConfigError(f"architectures repeat in {list(archs)}", "Name each architecture once")
    for a in archs:
        arch_info(a)
    base = Path(config.output_dir) if config.output_dir else default_run_dir(config).parent / ("compare-" + "-".join(archs))
    results = {}
    for arch in archs:
        run = replace(config, arch=arch, output_dir=base / arch)
        results[arch] = train(run, callback_for(arch) if callback_for else None)
    return Comparison(results, base)


def plot_curves(comparison: Comparison, path: Path) -> Path:
    """PNG of training loss and validation accuracy per epoch, one line per architecture."""
    from rescompile._io import atomic_path
    from rescompile._lazy import import_optional

    matplotlib = import_optional("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for arch, res in comparison.results.items():
        epochs = [h.epoch for h in res.history]
        ax_loss.plot(epochs, [h.train_loss for h in res.history], marker="o", label=arch)
        ax_acc.plot(epochs, [100 * h.val_acc for h in res.history], marker="o", label=arch)
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Training loss", yscale="log")
    ax_acc.set(xlabel="epoch", ylabel="validation top-1 (%)", title="Validation accuracy")
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return path
