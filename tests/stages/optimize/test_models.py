"""The optimize stage on real ResNets exported with their BatchNorm kept."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch

from rescompile.models.load import load_model
from rescompile.stages.optimize import inspect_onnx, optimize_onnx
from tests.stages.optimize.graphs import run
from tests.stages.test_export import settle_batchnorm

CIFAR = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet30", "plain30"]
EXPECTED_BLOCKS = {"resnet18": 8, "resnet50": 16, "resnet20": 9, "resnet32": 15, "resnet44": 21, "resnet56": 27,
                   "resnet110": 54, "resnet30": 14, "plain30": 0}


def export_with_bn(name: str, path, training: bool = False):
    """Export with BN nodes kept (no constant folding), BN holding realistic, non-trivial statistics."""
    torch.manual_seed(0)
    m = load_model(name)
    settle_batchnorm(m.module, m.spec.input_shape)
    gen = torch.Generator().manual_seed(1)
    for bn in m.module.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            with torch.no_grad():
                bn.weight.mul_(torch.empty_like(bn.weight).uniform_(0.7, 1.3, generator=gen))
                bn.bias.add_(0.1 * torch.randn(bn.bias.shape, generator=gen))
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.PRESERVE
    module = m.module.train() if training else m.module.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, (torch.zeros(1, *m.spec.input_shape),), str(path), dynamo=False, opset_version=17,
            input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            training=mode, do_constant_folding=False,
        )
    return m.module.eval(), m.spec


def check(name, tmp_path, training=False):
    raw, opt = tmp_path / "raw.onnx", tmp_path / "opt.onnx"
    module, spec = export_with_bn(name, raw, training)
    before_bytes = raw.read_bytes()
    n_bn = sum(n.op_type == "BatchNormalization" for n in onnx.load(str(raw)).graph.node)
    result = optimize_onnx(raw, opt)
    assert raw.read_bytes() == before_bytes  # the input is never modified
    after = onnx.load(str(opt))
    assert n_bn > 0 and result.report.bn_before == n_bn
    assert not any(n.op_type == "BatchNormalization" for n in after.graph.node)
    x = np.random.default_rng(3).standard_normal((2, *spec.input_shape)).astype(np.float32)
    with torch.inference_mode():
        ref = module(torch.from_numpy(x)).numpy()  # PyTorch eval mode: running statistics
    got = run(after, x)
    assert np.abs(got - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    if not training:
        assert np.abs(run(onnx.load(str(raw)), x) - got).max() <= 1e-4 * max(1.0, np.abs(ref).max())
    blocks = result.report.blocks
    assert len(blocks) == EXPECTED_BLOCKS[name]
    assert len({b.name for b in blocks}) == len(blocks) and all(b.name for b in blocks)
    assert all(b.fusable and not b.blockers for b in blocks)
    again = optimize_onnx(opt, tmp_path / "opt2.onnx")
    assert again.rewrites == 0  # idempotent
    return result


@pytest.mark.parametrize("name", CIFAR)
def test_cifar_resnets(name, tmp_path):
    result = check(name, tmp_path)
    if name.startswith("resnet"):
        assert {b.kind for b in result.report.blocks} == {"basic"}
        assert sum(b.skip == "projection" for b in result.report.blocks) == (3 if name == "resnet30" else 2)


def test_resnet18(tmp_path):
    result = check("resnet18", tmp_path)
    assert [b.name for b in result.report.blocks] == [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    assert [b.skip for b in result.report.blocks] == ["identity", "identity"] + ["projection", "identity"] * 3


@pytest.mark.slow
def test_resnet50(tmp_path):
    result = check("resnet50", tmp_path)
    assert {b.kind for b in result.report.blocks} == {"bottleneck"}
    assert sum(b.skip == "projection" for b in result.report.blocks) == 4


def test_model_exported_in_training_mode(tmp_path):
    result = check("resnet20", tmp_path, training=True)
    assert result.report.rewrites["batchnorm_inference_mode"] == 21


def test_inspect_reports_without_changing(tmp_path):
    raw = tmp_path / "raw.onnx"
    export_with_bn("resnet20", raw)
    before = raw.read_bytes()
    report = inspect_onnx(raw)
    assert raw.read_bytes() == before
    assert len(report.blocks) == 9 and report.bn_before == report.bn_after == 21
    # BN between conv and add blocks fusion until folded, and the report says so
    assert not any(b.fusable for b in report.blocks)
    assert all(any("BatchNormalization" in x for x in b.blockers) for b in report.blocks)
    assert report.to_dict()["totals"] == {"residual_blocks": 9, "fusable_blocks": 0}
