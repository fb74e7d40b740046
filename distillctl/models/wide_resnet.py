"""Wide ResNets for CIFAR (Zagoruyko & Komodakis 2016): depth 6n+4, widen factor k, pre-activation blocks."""

from __future__ import annotations

import torch
from torch import nn

from distillctl.models.cifar_resnet import kaiming_init


class WideBlock(nn.Module):
    """BN-ReLU-conv twice; the shortcut is a 1x1 conv when the shape changes."""

    def __init__(self, in_channels: int, channels: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity() if stride == 1 and in_channels == channels else nn.Conv2d(in_channels, channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.relu(self.bn1(x))
        out = self.conv2(self.relu(self.bn2(self.conv1(pre))))
        # The projection shortcut reads the pre-activated input, as in the reference implementation.
        return out + (x if isinstance(self.shortcut, nn.Identity) else self.shortcut(pre))


class WideResNet(nn.Module):
    """WRN-depth-k: stem conv at 16 channels, stages at 16k, 32k, 64k channels."""

    def __init__(self, depth: int, widen: int, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        widths = [16 * widen, 32 * widen, 64 * widen]
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, 16, 3, 1, 1, bias=False)
        stages, channels = [], 16
        for i, width in enumerate(widths):
            stages.append(nn.Sequential(*[WideBlock(channels if b == 0 else width, width, 2 if (i > 0 and b == 0) else 1) for b in range(blocks)]))
            channels = width
        self.layer1, self.layer2, self.layer3 = stages
        self.bn = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.global_pool = nn.AdaptiveAvgPool2d(1)  # timm's name for it
        self.fc = nn.Linear(channels, num_classes)
        # The stages as timm lists a model's (feature terms name them -4..-1); no channel counts: pruning changes them.
        self.feature_info = [{"module": m, "reduction": r} for m, r in (("conv1", 1), ("layer1", 1), ("layer2", 2), ("layer3", 4))]
        kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.conv1(x))))
        return self.fc(torch.flatten(self.global_pool(self.relu(self.bn(x))), 1))
