"""Lazy imports of optional dependencies, failing with the pip extra that installs them."""

from __future__ import annotations

import importlib
from types import ModuleType

from rescompile.errors import MissingDependencyError

# module -> (pip extra, what it is needed for)
_EXTRAS = {
    "torchvision": ("vision", "torchvision ResNets and the CIFAR-10 download"),
    "matplotlib": ("plot", "PNG plots"),
    "onnxsim": ("", "ONNX simplification"),
    "polygraphy": ("trt", "TensorRT engine building"),
    "onnx_graphsurgeon": ("trt", "graph rewrites"),
    "tensorrt": ("trt", "TensorRT engines"),
}


def import_optional(name: str) -> ModuleType:
    """Import ``name`` or raise a MissingDependencyError naming the extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        extra, purpose = _EXTRAS.get(name.split(".")[0], ("", name))
        pip_name = name.split(".")[0].replace("_", "-")
        how = f"pip install 'rescompile[{extra}]'" if extra else f"pip install {pip_name}"
        raise MissingDependencyError(
            f"{pip_name} is not installed ({purpose} needs it: {exc})",
            f"Install it with: {how}",
        ) from exc


def has_module(name: str) -> bool:
    """True when ``name`` can be imported (without raising for a missing one)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
