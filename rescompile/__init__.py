"""rescompile: ResNet from PyTorch to a fast INT8 inference engine, with the proof.

``import rescompile`` stays light: the public API below is resolved on first use, so
torch, onnx and friends load only when a function that needs them is called.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module that defines it
_API = {
    "RescompileError": "rescompile.errors",
    "TrainConfig": "rescompile.config",
    "ExportConfig": "rescompile.config",
    "BuildConfig": "rescompile.config",
    "DataConfig": "rescompile.config",
    "Preprocessing": "rescompile.data.preprocess",
    "ModelSpec": "rescompile.models.spec",
    "create_model": "rescompile.models.registry",
    "available_architectures": "rescompile.models.registry",
    "load_model": "rescompile.models.load",
    "load_dataset": "rescompile.data.datasets",
    "train": "rescompile.train",
    "onnx_from_torch": "rescompile.stages.export",
    "build": "rescompile.pipeline",
    "build_from_bundle": "rescompile.pipeline",
    "CalibConfig": "rescompile.config",
    "EngineConfig": "rescompile.config",
    "Precision": "rescompile.config",
    "read_manifest": "rescompile.bundle",
    "default_model": "rescompile.pipeline",
    "compare_architectures": "rescompile.compare",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'rescompile' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
