"""Export round trips: ONNX Runtime output == PyTorch output for every architecture."""

from __future__ import annotations

import copy
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from rescompile.config import ExportConfig
from rescompile.errors import ConfigError, ExportError
from rescompile.models.load import load_model
from rescompile.models.spec import ONNX_METADATA_KEY, ModelSpec
from rescompile.stages.export import CHECK_METADATA_KEY, onnx_from_torch
from tests.tolerance import Tolerance

CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet30", "plain30", "plain20"]
# torchvision nets are fully convolutional; 64x64 keeps the suite fast while exercising every layer.
TORCHVISION = ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "resnext50_32x4d"]


def ort_run(path, x):
    so = ort.SessionOptions()
    so.log_severity_level = 3
    s = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    return s.run(None, {s.get_inputs()[0].name: x})[0]


def settle_batchnorm(module, shape):
    """Give BN layers the running statistics a trained model has (freshly initialised ones
    have mean 0 / var 1, which makes deep residual nets output logits in the thousands)."""
    for bn in module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.momentum = None  # cumulative average
            bn.reset_running_stats()
    module.train()
    with torch.no_grad():
        for _ in range(2):
            module(torch.randn(8, *shape))
    module.eval()


def roundtrip(name, tmp_path, size=None):
    torch.manual_seed(0)
    m = load_model(name, input_size=size)
    settle_batchnorm(m.module, m.spec.input_shape)
    path = tmp_path / f"{name}.onnx"
    res = onnx_from_torch(m.module, m.spec, path, ExportConfig(check=False))
    rng = np.random.default_rng(1)
    worst, noise = 0.0, 0.0
    exact = copy.deepcopy(m.module).double()
    for batch in (1, 4):
        x = rng.standard_normal((batch, *m.spec.input_shape)).astype(np.float32)
        with torch.inference_mode():
            ref = m.module(torch.from_numpy(x)).numpy()
            ref64 = exact(torch.from_numpy(x).double()).numpy()
        got = ort_run(path, x)
        assert got.shape == ref.shape == (batch, m.spec.num_classes)
        assert np.abs(ref).max() > 1e-2  # a real signal, not all zeros
        worst = max(worst, float(np.abs(got - ref).max()))
        noise = max(noise, float(np.abs(ref - ref64).max()))
    return res, worst, noise


def bound(noise: float) -> float:
    """1e-4, unless PyTorch's own float32 result is further than that from float64 (the
    deepest random-weight torchvision nets: ~3e-4 for resnet152); then the export may differ
    from PyTorch by at most twice PyTorch's own rounding error."""
    return max(1e-4, 2 * noise)


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_family_roundtrip(name, tmp_path):
    _, diff, noise = roundtrip(name, tmp_path)
    assert noise < 5e-5 and diff <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", TORCHVISION)
def test_torchvision_roundtrip(name, tmp_path):
    _, diff, noise = roundtrip(name, tmp_path, size=64)
    assert diff <= bound(noise)


def test_resnet18_at_224_roundtrip(tmp_path):
    res, diff, _ = roundtrip("resnet18", tmp_path)
    assert diff <= 1e-4 and res.simplified


def test_export_writes_dynamic_batch_names_metadata_and_check(trained, tmp_path):
    m = load_model(trained.checkpoint)
    path = tmp_path / "m.onnx"
    res = onnx_from_torch(m.module, m.spec, path)
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    (inp,), (out,) = model.graph.input, model.graph.output
    assert (inp.name, out.name) == ("input", "logits")
    assert inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    meta = {p.key: p.value for p in model.metadata_props}
    spec = ModelSpec.from_dict(json.loads(meta[ONNX_METADATA_KEY]))
    assert spec.preprocessing == m.spec.preprocessing and spec.labels == tuple("0123456789")
    check = json.loads(meta[CHECK_METADATA_KEY])
    assert check["passed"] and check["max_abs_diff"] <= 1e-4
    # FP32 against FP32 on 5 random inputs: only logits that tie within float rounding may order differently.
    Tolerance(1, 5, "FP32 vs FP32 on 5 random inputs").check_agreement_rate(check["top1_agreement"])
    assert res.check.batch_sizes == (1, 4)
    assert res.simplified and not any(n.op_type == "BatchNormalization" for n in model.graph.node)


def test_failed_check_raises_and_leaves_no_file(tmp_path, monkeypatch):
    m = load_model("resnet20")
    import rescompile.stages.export as ex

    real = ex.check_against_torch

    def broken(*a, **k):
        c = real(*a, **k)
        return type(c)(c.batch_sizes, 1.0, c.max_abs_logit, 0.5, c.tolerance, False)

    monkeypatch.setattr(ex, "check_against_torch", broken)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        onnx_from_torch(m.module, m.spec, tmp_path / "bad.onnx")
    assert list(tmp_path.iterdir()) == []


def test_old_opset_is_refused(tmp_path):
    m = load_model("resnet20")
    with pytest.raises(ConfigError, match="opset 13 is too old"):
        onnx_from_torch(m.module, m.spec, tmp_path / "x.onnx", ExportConfig(opset=13))


def test_unexportable_module_is_an_export_error(tmp_path):
    class Bad(torch.nn.Module):
        def forward(self, x):
            raise ValueError("boom")

    spec = load_model("resnet20").spec
    with pytest.raises(ExportError, match="torch.onnx.export failed: ValueError"):
        onnx_from_torch(Bad(), spec, tmp_path / "x.onnx")
    assert list(tmp_path.iterdir()) == []
