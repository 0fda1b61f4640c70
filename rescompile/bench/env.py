"""The machine a benchmark ran on: CPU, cores, threads, GPU, driver, CUDA, library versions, and on
Jetson the power mode and (with tegrastats) the board's power draw."""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from rescompile import nvidia
from rescompile.versions import library_versions


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith(("model name", "hardware", "processor\t: arm")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> list[str]:
    """The x86 features INT8 speed depends on (VNNI: 8-bit dot products; AVX-512), as /proc/cpuinfo lists them."""
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((ln for ln in fh if ln.startswith(("flags", "Features"))), "")
    except OSError:
        return []
    have = set(line.split(":", 1)[-1].split())
    return [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm") if f in have]


def environment(threads: int | None) -> dict[str, Any]:
    gpu = nvidia.find_gpu()
    env = {
        "cpu": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "threads": threads,
        "platform": platform.platform(),
        "gpu": gpu.to_dict() if gpu else None,
        "tensorrt": nvidia.tensorrt_version(),
        "versions": library_versions(),
    }
    mask = os.environ.get("RESCOMPILE_CPU_MASK")  # set by benchmarks/without_vnni.py: the flags are hidden, not absent
    if mask:
        env["cpu_mask"] = mask
    return env


def describe_cpu_flags(env: dict[str, Any]) -> str:
    """The CPU flags line of a report: what /proc/cpuinfo lists, and a mask when one hid some."""
    text = ", ".join(env.get("cpu_flags") or []) or "no AVX2/AVX-512/VNNI"
    return text + (f"; {env['cpu_mask']}" if env.get("cpu_mask") else "")


# tegrastats prints the board's input rail as e.g. "VDD_IN 5123mW/5012mW" (Orin) or
# "POM_5V_IN 4321/4200" (Xavier, Nano): current/average milliwatts.
_RAIL = re.compile(r"\b(VDD_IN|POM_5V_IN)\s+(\d+)(?:mW)?/(\d+)(?:mW)?")


def parse_tegrastats_power(line: str) -> float | None:
    """The board input power in watts from one tegrastats line, or None."""
    match = _RAIL.search(line)
    return int(match.group(2)) / 1000.0 if match else None


class PowerSampler:
    """Samples tegrastats while a benchmark runs (Jetson only; a no-op elsewhere)."""

    def __init__(self, interval_ms: int = 100) -> None:
        self.interval_ms = interval_ms
        self.watts: list[float] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return shutil.which("tegrastats") is not None

    def __enter__(self) -> PowerSampler:
        if self.available:
            self._proc = subprocess.Popen(
                ["tegrastats", "--interval", str(self.interval_ms)], stdout=subprocess.PIPE, text=True, stderr=subprocess.DEVNULL
            )
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            watts = parse_tegrastats_power(line)
            if watts is not None:
                self.watts.append(watts)

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=5)

    @property
    def mean_watts(self) -> float | None:
        return sum(self.watts) / len(self.watts) if self.watts else None
