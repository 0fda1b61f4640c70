"""Lazy imports of optional dependencies, failing with the pip extra that installs them.

The base install (numpy, Pillow, onnx, Typer, Rich) is what an edge device needs; everything
else is an extra, and every import of it in library code goes through ``import_optional`` so a
missing one ends in one line naming the extra, never an ImportError traceback.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from rescompile.errors import MissingDependencyError

# top-level module -> (pip extra, what it is needed for)
EXTRAS = {
    "torch": ("compile", "training, export from PyTorch and the FP32 PyTorch reference"),
    "onnxruntime": ("compile", "running ONNX models (optimize checks, calibration, the CPU artifact)"),
    "onnxsim": ("compile", "ONNX simplification"),
    "sklearn": ("compile", "the bundled digits images"),
    "torchvision": ("vision", "torchvision ResNets and the CIFAR-10 download"),
    "matplotlib": ("plot", "PNG plots"),
    "polygraphy": ("trt", "TensorRT engine building"),
    "onnx_graphsurgeon": ("trt", "graph rewrites"),
    "tensorrt": ("trt", "TensorRT engines"),
    "openvino": ("openvino", "running ONNX models on OpenVINO (the openvino runtime backend)"),
    "nncf": ("nncf", "NNCF quantization (the nncf bench peer)"),
}
# Where an extra is not the whole story: what else installs the module.
_ALSO = {
    "onnxruntime": " (or, on a device that only runs the CPU artifact: pip install 'rescompile[ort]')",
    "tensorrt": " and TensorRT itself (JetPack ships it; elsewhere pip install tensorrt from NVIDIA's index)",
    "torch": " (on a Jetson, NVIDIA's own PyTorch build for JetPack instead)",
}


def install_hint(name: str) -> str:
    """How to install the top-level module ``name``: the rescompile extra that brings it."""
    top = name.split(".")[0]
    extra, _purpose = EXTRAS.get(top, ("", name))
    how = f"pip install 'rescompile[{extra}]'" if extra else f"pip install {top.replace('_', '-')}"
    return f"Install it with: {how}{_ALSO.get(top, '')}"


def import_optional(name: str, purpose: str | None = None) -> ModuleType:
    """Import ``name`` or raise a MissingDependencyError naming the extra to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        top = name.split(".")[0]
        needed_for = purpose or EXTRAS.get(top, ("", name))[1]
        pip_name = {"sklearn": "scikit-learn"}.get(top, top.replace("_", "-"))
        raise MissingDependencyError(f"{pip_name} is not installed here; it is needed for {needed_for}", install_hint(name)) from exc


def has_module(name: str) -> bool:
    """True when ``name`` can be imported (without raising for a missing one)."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True
