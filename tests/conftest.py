"""Shared fixtures: an isolated rescompile home, a small trained model, and data made on the fly."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def home(tmp_path_factory, monkeypatch) -> Path:
    """Every test gets its own RESCOMPILE_HOME, so nothing touches the user's cache."""
    path = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("RESCOMPILE_HOME", str(path))
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A ResNet-20 trained briefly on digits (a real checkpoint, with spec and metrics)."""
    from rescompile.config import TrainConfig
    from rescompile.train import train

    out = tmp_path_factory.mktemp("run")
    return train(TrainConfig(epochs=5, output_dir=out))


def write_image_folder(root: Path, classes=("cat", "dog", "owl"), per_class: int = 6, size: int = 20, seed: int = 0) -> Path:
    """Class-per-folder PNGs whose mean colour depends on the class (so they are learnable)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            base = np.zeros((size, size, 3), np.uint8)
            base[..., k % 3] = 180
            noise = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            Image.fromarray(base + noise).save(d / f"{name}_{i}.png")
    return root


def write_cifar_py(root: Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Path:
    """CIFAR-10 python batches in the published layout (dict of bytes keys, data (N, 3072))."""
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    for name, n in [(f"data_batch_{i}", n_train) for i in range(1, 6)] + [("test_batch", n_test)]:
        batch = {
            b"batch_label": name.encode(),
            b"labels": [int(x) for x in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [f"{i}.png".encode() for i in range(n)],
        }
        with open(d / name, "wb") as fh:
            pickle.dump(batch, fh, protocol=2)
    return root


def write_cifar_bin(root: Path, n: int = 12, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        labels = rng.integers(0, 10, (n, 1), dtype=np.uint8)
        pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        np.concatenate([labels, pixels], axis=1).tofile(d / name)
    return root


def files_under(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()} if path.exists() else set()


def pytest_collection_modifyitems(config, items):
    """`trt` tests need TensorRT and a GPU, `gpu` tests need CUDA: skip them where absent."""
    from rescompile import nvidia

    has_trt = nvidia.tensorrt_version() is not None and nvidia.find_gpu() is not None
    for item in items:
        if "trt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT and an NVIDIA GPU"))
