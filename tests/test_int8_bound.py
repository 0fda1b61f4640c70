"""benchmarks/int8_bound.py: the multiply-accumulate count, the one-conv ONNX Runtime model it times, and the
AVX2 peak kernel it divides by."""

from __future__ import annotations

import importlib.util
import platform
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "int8_bound.py"
torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def mod():
    spec = importlib.util.spec_from_file_location("int8_bound", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["int8_bound"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("int8_bound", None)


def test_layer_shapes_count_strided_grouped_same_padded_convs_and_linears(mod):
    net = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 9x9 -> 5x5: 8*3*9*25
        torch.nn.Conv2d(8, 8, 3, padding="same", groups=4),  # 5x5: 8*2*9*25
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4))  # 8*4
    shapes = mod.layer_shapes(net.eval(), (3, 9, 9))
    assert [s.macs for s in shapes] == [8 * 3 * 9 * 25, 8 * 2 * 9 * 25, 32]
    assert shapes[0].out_hw == (5, 5) and shapes[0].stride == (2, 2)
    assert shapes[1].padding == (1, 1) and shapes[1].groups == 4
    assert [s.linear for s in shapes] == [False, False, True]


@pytest.mark.parametrize("arch, gmacs", [("resnet18", 1.814), ("resnet50", 4.089)])
def test_torchvision_resnets_have_their_published_multiply_accumulates(mod, arch, gmacs):
    torchvision = pytest.importorskip("torchvision")
    net = getattr(torchvision.models, arch)(weights=None).eval()
    total = sum(s.macs for s in mod.layer_shapes(net, (3, 224, 224)))
    assert total / 1e9 == pytest.approx(gmacs, abs=0.005)


@pytest.mark.parametrize("shape", [
    dict(cin=5, cout=6, kernel=(3, 3), stride=(2, 2), padding=(1, 1), groups=1, in_hw=(9, 7), out_hw=(5, 4)),
    dict(cin=4, cout=4, kernel=(3, 3), stride=(1, 1), padding=(1, 1), groups=2, in_hw=(6, 6), out_hw=(6, 6)),
])
def test_the_timed_model_is_the_integer_convolution_it_claims(mod, shape):
    """ONNX Runtime's output of the one-node model equals the convolution computed here in integers."""
    ort = pytest.importorskip("onnxruntime")
    from onnx import numpy_helper

    s = mod.ConvShape(**shape)
    model = mod.qlinearconv_model(s)
    weight = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "w")).astype(np.int64)
    x = np.random.default_rng(3).integers(0, 256, (1, *s.in_hw, s.cin)).astype(np.uint8)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]

    xc = torch.from_numpy(x.astype(np.int64) - 128).permute(0, 3, 1, 2).double()
    acc = torch.nn.functional.conv2d(xc, torch.from_numpy(weight).double(), stride=s.stride, padding=s.padding, groups=s.groups)
    want = np.clip(np.round(acc.permute(0, 2, 3, 1).numpy() * (0.02 * 0.01 / 0.05)), 0, 255)
    assert got.shape == (1, *s.out_hw, s.cout)
    assert np.abs(got.astype(np.int64) - want).max() <= 1
    assert (got > 0).mean() > 0.3  # not all clipped to zero: the comparison means something


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64") or not (shutil.which("cc") or shutil.which("gcc")),
                    reason="the AVX2 peak kernel needs an x86-64 CPU and a C compiler")
def test_peak_kernel_builds_and_reports_both_rates(mod):
    if "avx2" not in Path("/proc/cpuinfo").read_text(errors="replace").split():
        pytest.skip("this CPU has no AVX2")
    peak, why = mod.peak_rates(1)
    assert why == "" and peak is not None
    assert peak["u8s8_gmacs"] > 1 and peak["fp32_gmacs"] > 1
    flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    if "avx512_vnni" in flags:  # one vpdpbusd does the 32 MACs of the 3-instruction AVX2 sequence twice over
        assert peak["vnni_gmacs"] > peak["u8s8_gmacs"]
    else:
        assert "vnni_gmacs" not in peak
