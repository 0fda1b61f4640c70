from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rescompile.config import DataConfig, Optimizer, Schedule, TrainConfig
from rescompile.errors import ConfigError, TrainError
from rescompile.train import augment_batch, lr_factor, train
from tests.conftest import write_image_folder


def test_trained_model_learns_digits_and_keeps_best(trained):
    # 5 short epochs: far above the 10% of chance on the held-out test split.
    assert trained.test_acc > 0.8 and trained.test_images == 360  # floor: far above chance (10%)
    best = max(trained.history, key=lambda h: (h.val_acc, -h.val_loss))
    assert trained.best_epoch == best.epoch and trained.best_val_acc == best.val_acc
    ckpt = torch.load(trained.checkpoint, weights_only=True)
    assert ckpt["spec"]["arch"] == "resnet20" and ckpt["spec"]["preprocessing"]["input_size"] == 32
    assert ckpt["spec"]["labels"] == [str(i) for i in range(10)]
    assert ckpt["metrics"]["epoch"] == trained.best_epoch and ckpt["metrics"]["test_acc"] == trained.test_acc
    assert ckpt["train_config"]["epochs"] == 5
    assert trained.last_checkpoint.exists()


def test_lr_schedules():
    cfg = TrainConfig(epochs=10, warmup_epochs=2, schedule=Schedule.cosine)
    assert lr_factor(cfg, 0, 10) == pytest.approx(0.05)
    assert lr_factor(cfg, 19, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 20, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 60, 10) == pytest.approx(0.5)
    assert lr_factor(cfg, 99, 10) < 0.01
    step = TrainConfig(epochs=10, warmup_epochs=0, schedule=Schedule.step, milestones=(0.5, 0.75), gamma=0.1)
    assert [lr_factor(step, s, 1) for s in (0, 4, 5, 7, 8)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    const = TrainConfig(epochs=4, warmup_epochs=0, schedule=Schedule.constant)
    assert lr_factor(const, 3, 1) == 1.0


def test_augment_shifts_and_flips_but_keeps_shape():
    g = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8)
    y = augment_batch(x, g, pad=2, hflip=True)
    assert y.shape == x.shape and not torch.equal(x, y)
    assert torch.equal(augment_batch(x, g, pad=0, hflip=False), x)


def test_train_on_image_folder_with_adamw_and_step_schedule(tmp_path):
    root = write_image_folder(tmp_path / "imgs", per_class=10, size=16)
    res = train(
        TrainConfig(
            arch="resnet20", data=DataConfig(str(root)), epochs=2, batch_size=8, optimizer=Optimizer.adamw,
            schedule=Schedule.step, label_smoothing=0.1, zero_init_residual=True, output_dir=tmp_path / "run",
            warmup_epochs=0,
        )
    )
    assert res.spec.labels == ("cat", "dog", "owl") and res.spec.input_size == 16
    assert res.spec.options == {"zero_init_residual": True}
    assert (tmp_path / "run" / "best.pt").exists() and len(res.history) == 2


def test_input_size_override_and_small_input_for_torchvision(tmp_path):
    res = train(TrainConfig(arch="resnet18", epochs=1, warmup_epochs=0, input_size=16, max_train_images=32, output_dir=tmp_path))
    assert res.spec.input_size == 16 and res.spec.options["small_input"] is True


def test_divergence_is_a_clear_error(tmp_path, monkeypatch):

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", lambda *a, **k: torch.tensor(math.nan, requires_grad=True))
    with pytest.raises(TrainError, match="training diverged.*Lower --lr"):
        train(TrainConfig(epochs=1, warmup_epochs=0, max_train_images=16, output_dir=tmp_path))
    assert not (tmp_path / "best.pt").exists()


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": 0}, "--epochs must be >= 1"),
        ({"warmup_epochs": 5, "epochs": 5}, "--warmup-epochs"),
        ({"label_smoothing": 1.0}, "--label-smoothing"),
        ({"lr": -1.0}, "--lr must be positive"),
        ({"arch": "resnet99"}, "unknown architecture"),
        ({"device": "tpu"}, "unknown device"),
    ],
)
def test_bad_training_options(changes, message, tmp_path):
    from rescompile.errors import RescompileError

    with pytest.raises(RescompileError, match=message):
        train(TrainConfig(output_dir=tmp_path, **changes))
    assert list(tmp_path.iterdir()) == []


def test_cuda_requested_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(TrainConfig(device="cuda", output_dir=tmp_path))


@pytest.mark.gpu
def test_train_on_cuda(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU")
    res = train(TrainConfig(device="cuda", epochs=2, warmup_epochs=0, output_dir=tmp_path))
    assert res.test_acc > 0.5 and np.isfinite(res.history[-1].train_loss)  # floor: far above chance (10%)
