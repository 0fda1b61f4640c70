"""Which NVIDIA device this is: Jetson modules (any carrier board, with or without nvidia-smi)
before desktop GPUs. Files and commands are replaced; nothing depends on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from rescompile import nvidia

SMI_L4 = "NVIDIA L4, 8.9, 550.54.15\n"


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """Point the detection at files under tmp_path and at fake commands; returns a setter."""
    paths = {"release": tmp_path / "nv_tegra_release", "model": tmp_path / "model", "compatible": tmp_path / "compatible"}
    monkeypatch.setattr(nvidia, "_TEGRA_RELEASE", paths["release"])
    monkeypatch.setattr(nvidia, "_DEVICE_TREE_MODEL", paths["model"])
    monkeypatch.setattr(nvidia, "_DEVICE_TREE_COMPATIBLE", paths["compatible"])
    commands: dict[str, str] = {}

    def run(cmd):
        return commands.get(cmd[0] if len(cmd) > 1 or cmd[0] != "nvidia-smi" else "nvidia-smi-header")

    monkeypatch.setattr(nvidia, "_run", run)
    nvidia.find_gpu.cache_clear()
    yield paths, commands
    nvidia.find_gpu.cache_clear()


def write(path: Path, text: str) -> None:
    path.write_bytes(text.encode())


def test_a_desktop_gpu(machine):
    _, commands = machine
    commands["nvidia-smi"] = SMI_L4
    gpu = nvidia.find_gpu()
    assert (gpu.name, gpu.compute_capability, gpu.jetson) == ("NVIDIA L4", "8.9", False)


def test_a_jetpack7_orin_with_nvidia_smi_is_still_a_jetson(machine):
    paths, commands = machine
    write(paths["release"], "# R38 (release), REVISION: 2.0\n")
    write(paths["model"], "NVIDIA Jetson AGX Orin Developer Kit\x00")
    write(paths["compatible"], "nvidia,p3737-0000+p3701-0005\x00nvidia,p3701-0005\x00nvidia,tegra234\x00")
    commands["nvidia-smi"] = "Orin (nvgpu), 8.7, 580.00\n"
    commands["nvpmodel"] = "NV Power Mode: MAXN\n0\n"
    gpu = nvidia.find_gpu()
    assert gpu.jetson and gpu.compute_capability == "8.7" and gpu.power_mode == "MAXN" and gpu.driver == "580.00"


def test_a_carrier_board_whose_model_names_no_module(machine):
    """Seeed, Auvidea, ... boards: the model is the vendor's; the SoC in 'compatible' decides."""
    paths, commands = machine
    write(paths["release"], "# R36 (release), REVISION: 4.0\n")
    write(paths["model"], "reComputer J4012\x00")
    write(paths["compatible"], "nvidia,p3768-0000+p3767-0000\x00nvidia,p3767-0000\x00nvidia,tegra234\x00")
    commands["nvpmodel"] = "NV Power Mode: 25W\n1\n"
    gpu = nvidia.find_gpu()
    assert gpu.jetson and gpu.name == "reComputer J4012" and gpu.sm == "sm_87" and gpu.power_mode == "25W"


@pytest.mark.parametrize("soc, cc", [("tegra194", "7.2"), ("tegra210", "5.3"), ("tegra264", "11.0")])
def test_other_tegra_socs(machine, soc, cc):
    paths, _ = machine
    write(paths["model"], "Custom Board\x00")
    write(paths["compatible"], f"vendor,board\x00nvidia,{soc}\x00")
    assert nvidia.find_gpu().compute_capability == cc


def test_an_l4t_system_is_named_by_nvidia_smi_or_not_at_all(machine):
    paths, commands = machine
    write(paths["release"], "# R38 (release)\n")
    write(paths["model"], "Mystery Board\x00")
    assert nvidia.find_gpu() is None  # no guess
    commands["nvidia-smi"] = "NVIDIA Thor, 11.0, 580.00\n"
    nvidia.find_gpu.cache_clear()
    gpu = nvidia.find_gpu()
    assert gpu.jetson and gpu.compute_capability == "11.0"  # nvidia-smi names it, and it stays a Jetson


def test_nothing_nvidia(machine):
    assert nvidia.find_gpu() is None
