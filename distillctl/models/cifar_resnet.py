"""CIFAR ResNets (He et al. 2016, section 4.2): depth 6n+2, three stages at 32, 16 and 8 pixels.

`resnet8x4`/`resnet32x4` are the 4x-wider variants of the CRD benchmark (Tian et al. 2020). Shortcuts that
change shape are 1x1 conv + BN ("option B"), which keeps every layer a plain module that forward hooks and
structured pruning can see; it adds under 1% parameters over the paper's zero-padding shortcut.
"""

from __future__ import annotations

import torch
from torch import nn


def kaiming_init(model: nn.Module) -> None:
    """He initialisation of every conv, as both the ResNet and the WRN papers use."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an identity (or projection) shortcut."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, three stages of `blocks` BasicBlocks, global average pool, linear classifier."""

    def __init__(self, depth: int, widths: tuple[int, int, int, int] = (16, 16, 32, 64), num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages, channels = [], widths[0]
        for i, width in enumerate(widths[1:]):
            layers = [BasicBlock(channels if b == 0 else width, width, 2 if (i > 0 and b == 0) else 1) for b in range(blocks)]
            stages.append(nn.Sequential(*layers))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.global_pool = nn.AdaptiveAvgPool2d(1)  # timm's name for it
        self.fc = nn.Linear(channels, num_classes)
        # The stages as timm lists a model's (feature terms name them -4..-1); no channel counts: pruning changes them.
        self.feature_info = [{"module": m, "reduction": r} for m, r in (("relu", 1), ("layer1", 1), ("layer2", 2), ("layer3", 4))]
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.global_pool(x), 1))
