"""benchmarks/without_vnni.py: the AVX2-only view of an x86 CPU that the no-VNNI figures are measured under."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "without_vnni.py"


def _module():
    spec = importlib.util.spec_from_file_location("without_vnni", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_masked_cpuinfo_drops_every_avx512_vnni_and_amx_flag_and_nothing_else():
    mod = _module()
    text = "processor\t: 0\nflags\t\t: fpu sse2 avx2 fma avx512f avx512bw avx512_vnni avx_vnni amx_int8 amx_tile cpuid_fault\nbogomips\t: 1\n"
    out = mod.masked_cpuinfo(text)
    flags = next(line for line in out.splitlines() if line.startswith("flags")).split(":", 1)[1].split()
    assert flags == ["fpu", "sse2", "avx2", "fma", "cpuid_fault"]
    assert "processor\t: 0" in out and "bogomips\t: 1" in out


def test_the_shims_masks_are_the_sdm_bits_of_each_hidden_flag():
    """avx2 clears what AVX-512, VNNI and AMX set in CPUID leaf 7 and 7.1; avx512-vnni clears only AMX's (and later)."""
    mod = _module()
    full = mod.clear_masks(mod.ISAS["avx2"])
    assert full == {"MASK_7_0_B": 0xDC230000, "MASK_7_0_C": 0x5842, "MASK_7_0_D": 0x3C0010C, "MASK_7_1_A": 0x800030, "MASK_7_1_D": 0x430}
    amx = mod.clear_masks(mod.ISAS["avx512-vnni"])
    assert amx["MASK_7_0_B"] == 0 and amx["MASK_7_0_C"] == 0  # AVX-512 F/BW/VL and VNNI stay
    assert amx["MASK_7_0_D"] == (1 << 22) | (1 << 23) | (1 << 24) | (1 << 25)  # AMX-BF16, AVX512-FP16, AMX-TILE, AMX-INT8
    text = "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_int8 amx_tile avx512_fp16\n"
    kept = mod.masked_cpuinfo(text, mod.ISAS["avx512-vnni"]).split(":", 1)[1].split()
    assert kept == ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"]


def _can_mask() -> str | None:
    if sys.platform != "linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "needs Linux on x86-64"
    if "cpuid_fault" not in Path("/proc/cpuinfo").read_text(errors="replace").split():
        return "this CPU or hypervisor offers no CPUID faulting"
    if shutil.which("cc") is None or shutil.which("unshare") is None:
        return "needs a C compiler and unshare"
    probe = subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True)
    if probe.returncode != 0 and subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode != 0:
        return "no mount namespaces here"
    return None


@pytest.mark.skipif(_can_mask() is not None, reason=str(_can_mask()))
def test_inside_the_mask_rescompile_sees_no_vnni():
    res = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "VNNI for rescompile: False" in res.stdout
    flags = res.stdout.split("says):", 1)[1].splitlines()[0]
    assert "avx512" not in flags and "vnni" not in flags and "amx" not in flags


@pytest.mark.skipif(_can_mask() is not None, reason=str(_can_mask()))
def test_with_isa_avx512_vnni_rescompile_sees_vnni_but_no_amx():
    if "avx512_vnni" not in Path("/proc/cpuinfo").read_text(errors="replace").split():
        pytest.skip("this CPU has no AVX512-VNNI to keep")
    res = subprocess.run([sys.executable, str(SCRIPT), "--isa", "avx512-vnni", "--check"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "VNNI for rescompile: True" in res.stdout
    flags = res.stdout.split("says):", 1)[1].splitlines()[0]
    assert "avx512_vnni" in flags and "amx" not in flags
