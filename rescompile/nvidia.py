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

# Jetson SoCs -> CUDA compute capability (NVIDIA's CUDA GPUs table, Jetson section). The SoC is
# read from the device tree's "compatible" list ("nvidia,tegra234"), which every L4T carrier
# board keeps; the "model" string is the board vendor's and need not name the module.
_TEGRA_CC = (("tegra264", "11.0"), ("tegra234", "8.7"), ("tegra194", "7.2"), ("tegra186", "6.2"), ("tegra210", "5.3"))
_JETSON_CC = (("thor", "11.0"), ("orin", "8.7"), ("xavier", "7.2"), ("tx2", "6.2"), ("nano", "5.3"), ("tx1", "5.3"))
_TEGRA_RELEASE = Path("/etc/nv_tegra_release")
_DEVICE_TREE_MODEL = Path("/proc/device-tree/model")
_DEVICE_TREE_COMPATIBLE = Path("/proc/device-tree/compatible")


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


def dla_cores() -> int | None:
    """DLA cores TensorRT sees on this machine (Jetson Xavier/Orin modules have 0-2; an Orin Nano
    has none); None when TensorRT is absent or cannot say."""
    try:
        trt = importlib.import_module("tensorrt")
        return int(trt.Builder(trt.Logger(trt.Logger.ERROR)).num_DLA_cores)
    except Exception:  # no TensorRT, no GPU, or a builder that cannot be created here
        return None


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
    rows = _smi_rows()
    if not rows:
        return None
    first = rows[0]
    header = _run(["nvidia-smi"]) or ""
    cuda = re.search(r"CUDA Version:\s*([\d.]+)", header)
    return GpuInfo(first[0], first[1], first[2], cuda.group(1) if cuda else None)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _smi_rows() -> list[list[str]]:
    text = _run(["nvidia-smi", "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"]) or ""
    return [[part.strip() for part in line.split(",")] for line in text.strip().splitlines() if line.count(",") >= 2]


def _jetson() -> GpuInfo | None:
    """The Jetson module (L4T: /etc/nv_tegra_release, or a Tegra SoC in the device tree), or None."""
    model = _read(_DEVICE_TREE_MODEL).strip("\x00 \n")
    compatible = _read(_DEVICE_TREE_COMPATIBLE).replace("\x00", " ").lower()
    soc_cc = next((cc for soc, cc in _TEGRA_CC if soc in compatible), None)
    if not _TEGRA_RELEASE.exists() and soc_cc is None and "jetson" not in model.lower():
        return None
    cc = soc_cc or next((cc for key, cc in _JETSON_CC if key in model.lower()), None)
    smi = _smi_rows()  # JetPack 7 (SBSA) modules have nvidia-smi; older JetPacks do not
    if cc is None and smi:
        cc = smi[0][1]
    if cc is None:
        return None  # an L4T system whose GPU we cannot name: no guess
    mode_text = _run(["nvpmodel", "-q"]) or ""
    mode = re.search(r"NV Power Mode:\s*(\S+)", mode_text)
    return GpuInfo(model or "NVIDIA Jetson", cc, driver=smi[0][2] if smi else None, jetson=True,
                   power_mode=mode.group(1) if mode else None)


def _is_l4t() -> bool:
    return _TEGRA_RELEASE.exists() or "tegra" in _read(_DEVICE_TREE_COMPATIBLE).lower()


@functools.lru_cache(maxsize=1)
def find_gpu() -> GpuInfo | None:
    """The Jetson module, else the first NVIDIA GPU nvidia-smi lists, else None. Jetson comes
    first: JetPack 7 (SBSA) modules have nvidia-smi too, and would otherwise pass for desktop GPUs."""
    jetson = _jetson()
    if jetson is not None or _is_l4t():
        return jetson
    return _discrete_gpu()


def summary() -> dict:
    """Versions and GPU for manifests and reports."""
    gpu = find_gpu()
    return {"tensorrt": tensorrt_version(), "gpu": gpu.to_dict() if gpu else None}
