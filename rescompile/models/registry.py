"""The explicit registry of architecture names -> builders."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rescompile._lazy import import_optional
from rescompile.data.preprocess import CIFAR10_MEAN, CIFAR10_STD, IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from rescompile.errors import ModelError

# Below this input size a torchvision ResNet's 7x7/2 stem + max-pool would shrink a
# 32x32 image to 8x8 before the first block; use the 3x3 stem instead.
SMALL_INPUT_THRESHOLD = 96


@dataclass(frozen=True)
class ArchInfo:
    name: str
    family: str  # "cifar", "resnet30", "torchvision"
    description: str
    build: Callable[..., Any]
    default_input: int
    default_classes: int


def _cifar(depth: int, residual: bool):
    def build(num_classes: int, zero_init_residual: bool = False, **_: Any):
        from rescompile.models.cifar import CifarResNet

        return CifarResNet(depth, num_classes, residual=residual, zero_init_residual=zero_init_residual)

    return build


def _resnet30(residual: bool):
    def build(num_classes: int, zero_init_residual: bool = False, small_input: bool = True, **_: Any):
        from rescompile.models.cifar import ResNet30

        return ResNet30(num_classes, residual, small_input, zero_init_residual)

    return build


def _torchvision(name: str):
    def build(
        num_classes: int,
        zero_init_residual: bool = False,
        small_input: bool = False,
        pretrained: bool = False,
        **_: Any,
    ):
        tv = import_optional("torchvision")
        nn = import_optional("torch.nn")

        ctor = getattr(tv.models, name)
        if pretrained:
            try:
                model = ctor(weights="DEFAULT")
            except Exception as exc:  # URLError, HTTPError, hash mismatch
                raise ModelError(
                    f"could not get pretrained {name} weights ({exc.__class__.__name__}: {exc})",
                    "Go online once (torchvision caches them under ~/.cache/torch), or drop --pretrained",
                ) from exc
            if num_classes != model.fc.out_features:
                model.fc = nn.Linear(model.fc.in_features, num_classes)
        else:
            model = ctor(weights=None, num_classes=num_classes, zero_init_residual=zero_init_residual)
        if small_input:
            # CIFAR-style stem for small images: 3x3 stride 1, no max-pool.
            model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
            nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            model.maxpool = nn.Identity()
        return model

    return build


def _registry() -> dict[str, ArchInfo]:
    reg: dict[str, ArchInfo] = {}
    for depth in (20, 32, 44, 56, 110):
        reg[f"resnet{depth}"] = ArchInfo(
            f"resnet{depth}", "cifar", f"CIFAR ResNet-{depth} (He et al. 2016), 16/32/64 channels", _cifar(depth, True), 32, 10
        )
        reg[f"plain{depth}"] = ArchInfo(
            f"plain{depth}", "cifar", f"plain twin of ResNet-{depth} (no skip connections)", _cifar(depth, False), 32, 10
        )
    reg["resnet30"] = ArchInfo("resnet30", "resnet30", "ResNet-30: 2/5/5/2 blocks, 64-512 channels", _resnet30(True), 32, 10)
    reg["plain30"] = ArchInfo("plain30", "resnet30", "plain twin of ResNet-30 (no skip connections)", _resnet30(False), 32, 10)
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "wide_resnet50_2", "resnext50_32x4d"):
        reg[name] = ArchInfo(name, "torchvision", f"torchvision {name}", _torchvision(name), 224, 1000)
    return reg


ARCHITECTURES: dict[str, ArchInfo] = _registry()


def available_architectures() -> list[str]:
    return list(ARCHITECTURES)


def arch_info(name: str) -> ArchInfo:
    info = ARCHITECTURES.get(name.lower())
    if info is None:
        raise ModelError(
            f"unknown architecture {name!r}",
            f"Choose one of: {', '.join(ARCHITECTURES)}",
        )
    return info


def default_preprocessing(name: str, input_size: int | None = None) -> Preprocessing:
    info = arch_info(name)
    size = input_size or info.default_input
    if info.family == "torchvision" and size >= SMALL_INPUT_THRESHOLD:
        return Preprocessing(size, IMAGENET_MEAN, IMAGENET_STD, resize=round(size * 256 / 224))
    return Preprocessing(size, CIFAR10_MEAN, CIFAR10_STD)


def resolve_options(name: str, input_size: int, small_input: bool | None = None, **extra: Any) -> dict[str, Any]:
    """Architecture options as stored in the ModelSpec (so a checkpoint rebuilds the same net)."""
    info = arch_info(name)
    opts: dict[str, Any] = {}
    if info.family in ("resnet30", "torchvision"):
        opts["small_input"] = bool(input_size < SMALL_INPUT_THRESHOLD) if small_input is None else bool(small_input)
    opts.update({k: v for k, v in extra.items() if v})
    return opts


def create_model(name: str, num_classes: int | None = None, **options: Any):
    """Build an architecture by name. ``options``: small_input, zero_init_residual, pretrained."""
    info = arch_info(name)
    import_optional("torch", f"building the {info.name} architecture")  # one line, not an ImportError from models.cifar
    return info.build(num_classes or info.default_classes, **options)
