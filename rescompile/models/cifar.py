"""CIFAR-style ResNets (He et al. 2016, "Deep Residual Learning", section 4.2) and plain twins.

ResNet-(6n+2): a 3x3 stem with 16 channels, three stages of n basic blocks at 16/32/64
channels on 32/16/8 pixel maps, global average pooling and one fully connected layer.
Shortcuts that change shape are 1x1 stride-2 projection convs with BN (the paper's option B;
its CIFAR runs used zero-padding option A, whose Slice+Pad graph TensorRT does not fuse).
``residual=False`` gives the paper's "plain" network of the same depth.
"""

from __future__ import annotations

import torch
from torch import nn


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN (+ shortcut) -ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1, residual: bool = True) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual = residual
        self.shortcut: nn.Module | None = None
        if residual and (stride != 1 or cin != cout):
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.shortcut is None else self.shortcut(x))
        return self.relu(out)


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> None:
    """He (Kaiming) normal init for convs (fan_out, as torchvision); BN gamma 1, beta 0.

    ``zero_init_residual`` zeroes the last BN gamma of each residual branch, so every block
    starts as the identity (Goyal et al. 2017, "Accurate, Large Minibatch SGD").
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_uniform_(m.weight, a=5**0.5)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, BasicBlock) and m.residual:
                nn.init.zeros_(m.bn2.weight)


class CifarResNet(nn.Module):
    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        residual: bool = True,
        widths: tuple[int, int, int] = (16, 32, 64),
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = conv3x3(3, widths[0])
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            blocks = []
            for j in range(n):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, residual))
                cin = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet30(nn.Module):
    """2/5/5/2 basic blocks at 64/128/256/512 channels (28 convs + stem + fc = 30 layers).

    Stage changes use 1x1 stride-2 projection shortcuts. ``residual=False`` is the plain
    twin with identical convs and no skips, for the residual-vs-plain comparison.
    ``small_input`` uses a 3x3 stride-1 stem without max-pool (32x32 images); otherwise
    the ImageNet stem (7x7 stride 2 + 3x3 max-pool).
    """

    stages = (2, 5, 5, 2)
    widths = (64, 128, 256, 512)

    def __init__(
        self,
        num_classes: int = 10,
        residual: bool = True,
        small_input: bool = True,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        w0 = self.widths[0]
        if small_input:
            self.conv1 = conv3x3(3, w0)
            self.maxpool: nn.Module = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(3, w0, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = nn.BatchNorm2d(w0)
        self.relu = nn.ReLU(inplace=True)
        layers, cin = [], w0
        for i, (count, w) in enumerate(zip(self.stages, self.widths)):
            blocks = []
            for j in range(count):
                blocks.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, residual))
                cin = w
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)
        init_weights(self, zero_init_residual)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))
