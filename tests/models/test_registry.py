from __future__ import annotations

import pytest
import torch

from rescompile.errors import ModelError
from rescompile.models.cifar import BasicBlock, CifarResNet, ResNet30
from rescompile.models.registry import ARCHITECTURES, create_model, resolve_options


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_resnet_depth_counts_weighted_layers(depth):
    model = create_model(f"resnet{depth}", 10)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert len(convs) + len(linears) == depth  # He et al.: 6n+2 weighted layers
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet20_has_the_papers_size():
    # He et al. 2016, Table 6: ResNet-20 has 0.27M parameters.
    assert abs(n_params(create_model("resnet20")) - 0.27e6) < 0.01e6


def test_plain_twin_has_no_skips_and_same_convs():
    res, plain = create_model("resnet30"), create_model("plain30")
    assert all(not b.residual and b.shortcut is None for b in plain.modules() if isinstance(b, BasicBlock))
    blocks = [b for b in res.modules() if isinstance(b, BasicBlock)]
    assert [len(s) for s in (res.layer1, res.layer2, res.layer3, res.layer4)] == [2, 5, 5, 2]
    projections = [b.shortcut[0] for b in blocks if b.shortcut is not None]
    assert len(projections) == 3 and all(p.kernel_size == (1, 1) and p.stride == (2, 2) for p in projections)
    convs = lambda m: [c.weight.shape for c in m.modules() if isinstance(c, torch.nn.Conv2d) and c.kernel_size != (1, 1)]  # noqa: E731
    assert convs(res) == convs(plain) and len(convs(res)) == 29  # stem + 28 block convs


def test_resnet30_plain_output_differs_from_residual_with_same_seed():
    torch.manual_seed(0)
    a = create_model("resnet30").eval()
    torch.manual_seed(0)
    b = create_model("plain30").eval()
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(a(x), b(x))


def test_zero_init_residual_zeroes_last_bn_of_each_branch():
    m = CifarResNet(20, zero_init_residual=True)
    blocks = [b for b in m.modules() if isinstance(b, BasicBlock)]
    assert all(float(b.bn2.weight.detach().abs().sum()) == 0.0 for b in blocks)
    assert all(float(b.bn1.weight.detach().sum()) > 0 for b in blocks)


def test_he_init_scale():
    m = ResNet30()
    w = m.layer2[1].conv1.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert abs(float(w.detach().std()) - (2.0 / fan_out) ** 0.5) < 0.1 * (2.0 / fan_out) ** 0.5


def test_torchvision_small_input_variant():
    m = create_model("resnet18", 10, small_input=True)
    assert m.conv1.kernel_size == (3, 3) and isinstance(m.maxpool, torch.nn.Identity)
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    assert resolve_options("resnet18", 32)["small_input"] is True
    assert resolve_options("resnet18", 224)["small_input"] is False


def test_registry_lists_every_required_architecture():
    required = {"resnet20", "resnet32", "resnet44", "resnet56", "resnet110", "resnet30", "plain30", "resnet18",
                "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "resnext50_32x4d"}
    assert required <= set(ARCHITECTURES)


def test_unknown_architecture_names_the_choices():
    with pytest.raises(ModelError, match="unknown architecture 'resnet21'.*resnet20"):
        create_model("resnet21")


def test_pretrained_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty cache: a download would be needed
    import torch.hub

    def no_network(*a, **k):
        raise OSError("network unreachable")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(ModelError, match="could not get pretrained resnet18 weights.*drop --pretrained"):
        create_model("resnet18", pretrained=True)
