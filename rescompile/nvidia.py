"""What NVIDIA software and hardware this machine has: TensorRT version, GPU, Jetson, CUDA.

Detection never raises and never imports PyTorch: it is used by `build` to choose a path,
by the runtime to check an engine against the machine, and by reports. TensorRT is imported
only to read its version.
"""

from __future__ import annotations

import functools
import importlib
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

# Jetson modules -> CUDA compute capability (NVIDIA's CUDA GPUs table, Jetson section).
_JETSON_CC = (("thor", "11.0"), ("orin", "8.7"), ("xavier", "7.2"), ("tx2", "6.2"), ("nano", "5.3"), ("tx1", "5.3"))
_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
_DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"
    driver: str | None = None
    cuda: str | None = None  # the CUDA version the driver supports
    jetson: bool = False
    power_mode: str | None = None  # Jetson nvpmodel mode, e.g. "MAXN"

    @property
    def sm(self) -> str:
        return "sm_" + self.compute_capability.replace(".", "")

    def to_dict(self) -> dict:
        return {**asdict(self), "sm": self.sm}


def tensorrt_version() -> str | None:
    """The installed TensorRT's version ("10.3.0"), or None when it cannot be imported."""
    try:
        trt = importlib.import_module("tensorrt")
    except Exception:  # ImportError, or a broken install raising OSError for its libraries
        return None
    version = getattr(trt, "__version__", None)
    return str(version) if version else None


def major(version: str | None) -> int | None:
    if not version:
        return None
    match = re.match(r"\s*(\d+)", version)
    return int(match.group(1)) if match else None


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=15, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def _discrete_gpu() -> GpuInfo | None:
    text = _run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"])
    if not text or not text.strip():
        return None
    first = [part.strip() for part in text.strip().splitlines()[0].split(",")]
    if len(first) < 3:
        return None
    header = _run(["nvidia-smi"]) or ""
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return GpuInfo(first[0], first[1], first[2], cuda.group(1) if cuda else None)


def _jetson() -> GpuInfo | None:
    if not _TEGRA_RELEASE.exists() and not _DEVICE_TREE_MODEL.exists():
        return None
    try:
        model = _DEVICE_TREE_MODEL.read_text(errors="replace").strip("\x00 \n")
    except OSError:
        model = ""
    if "jetson" not in model.lower() and not _TEGRA_RELEASE.exists():
        return None
    cc = next((cc for key, cc in _JETSON_CC if key in model.lower()), None)
    if cc is None:
        return None
    mode_text = _run(["nvpmodel", "-q"]) or ""
    mode = re.search(r"NV Power Mode:\s*(\S+)", mode_text)
    return GpuInfo(model or "NVIDIA Jetson", cc, jetson=True, power_mode=mode.group(1) if mode else None)


@functools.lru_cache(maxsize=1)
def find_gpu() -> GpuInfo | None:
    """The first NVIDIA GPU (nvidia-smi), or the Jetson module, or None."""
    return _discrete_gpu() or _jetson()


def summary() -> dict:
    """Versions and GPU for manifests and reports."""
    gpu = find_gpu()
    return {"tensorrt": tensorrt_version(), "gpu": gpu.to_dict() if gpu else None}
