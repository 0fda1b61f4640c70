"""Shared models for the calibration tests: the trained ResNet-20 and a random-weight resnet18."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from rescompile.data.datasets import load_dataset
from rescompile.data.images import iter_batches


class Model:
    def __init__(self, loaded, path) -> None:
        self.loaded, self.path = loaded, path
        self.spec = loaded.spec
        self.onnx = onnx.load(str(path))


def _prepare(source, out, **options) -> Model:
    from rescompile.models.load import load_model
    from rescompile.pipeline import prepare_fp32

    loaded = load_model(str(source), **options)
    return Model(loaded, prepare_fp32(loaded, out))


@pytest.fixture(scope="session")
def r20(trained, tmp_path_factory) -> Model:
    """The session's trained ResNet-20 (digits), exported and optimized."""
    return _prepare(trained.checkpoint, tmp_path_factory.mktemp("r20"))


@pytest.fixture(scope="session")
def r18(tmp_path_factory) -> Model:
    pytest.importorskip("torchvision")
    return _prepare("resnet18", tmp_path_factory.mktemp("r18"), num_classes=10, input_size=64)


@pytest.fixture(scope="session")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="session")
def r20_stats(r20, digits):
    from rescompile.stages.calibrate.collect import collect_statistics

    calib = digits.train.subset(np.arange(256))
    return collect_statistics(r20.onnx, lambda: (x for x, _ in iter_batches(calib, r20.spec.preprocessing, 64)))
