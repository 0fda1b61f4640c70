"""Versions of everything that shapes an artifact, recorded in manifests and reports."""

from __future__ import annotations

import importlib.metadata
import platform

_PACKAGES = ("torch", "torchvision", "onnx", "onnxruntime", "onnxsim", "polygraphy", "tensorrt", "numpy")


def library_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict[str, str]:
    return {"platform": platform.platform(), "machine": platform.machine(), "processor": platform.processor()}
