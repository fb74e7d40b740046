"""Overhaul of feature distillation (Heo et al. 2019, "A Comprehensive Overhaul of Feature Distillation", ICCV).

The teacher's features are taken before their ReLU (taps ending in `:preact`), where negative responses still say
something, but only down to a per-channel margin: the expected value of the channel's negative responses under the
paper's Gaussian model of the channel. The paper reads that Gaussian off the BN layer before the ReLU; in a ResNet
block a residual sum comes between them, so here its mean and spread are measured on the probe batch that terms are
set up with (the first 32 training images, unaugmented; kept in checkpoints). The student's pre-ReLU features pass a connector (1x1 conv + BN) and meet the target through
the partial L2 distance, which costs nothing where the student is already below a non-positive target. Pair i of n
is divided by 2^(n-1-i), so deeper pairs count more; summed over positions and averaged over the batch.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from distillctl.losses.base import StepOutputs
from distillctl.losses.pairs import LayerPairs, placed_like, same_size
from distillctl.losses.registry import term

RARE = 1e-3  # below this chance of a negative response, the paper takes the margin as -3 standard deviations


def margin(feature: torch.Tensor) -> torch.Tensor:
    """[C]: E[x | x < 0] for each channel's x ~ N(mean, std), fitted over the feature's images and positions."""
    values = feature.float().transpose(0, 1).flatten(1)
    mean, std = values.mean(1), values.std(1).clamp_min(1e-6)
    negative = torch.special.ndtr(-mean / std)
    density = torch.exp(-0.5 * (mean / std) ** 2) / math.sqrt(2 * math.pi)
    return torch.where(negative > RARE, mean - std * density / negative.clamp_min(RARE), -3 * std)


def partial_l2(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences, leaving out positions where student <= target <= 0."""
    return ((student - target).pow(2) * ((student > target) | (target > 0))).sum()


def connector(in_channels: int, out_channels: int) -> nn.Module:
    """1x1 conv + BN onto the teacher's width, initialized as the reference does (He, fan-out; BN at identity)."""
    conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(out_channels))


@term("ofd")
class FeatureOverhaul(LayerPairs):
    """The teacher's pre-ReLU features above their margins, from the student's pre-ReLU features through connectors."""

    feature_ranks = (4,)

    def setup(self, probe: StepOutputs) -> None:
        pairs = self.pairs(probe)
        self.connectors = nn.ModuleList(placed_like(connector(s.shape[1], t.shape[1]), s) for s, t in pairs)
        for i, (_, t) in enumerate(pairs):
            self.register_buffer(f"margin{i}", margin(t).view(1, -1, *([1] * (t.dim() - 2))))

    def forward(self, out: StepOutputs) -> torch.Tensor:
        pairs, total = self.pairs(out), 0.0
        for i, ((s, t), connect) in enumerate(zip(pairs, self.connectors)):
            s, t = same_size(connect(s), t)
            target = torch.maximum(t.float(), getattr(self, f"margin{i}"))
            total = total + partial_l2(s.float(), target) / 2 ** (len(pairs) - 1 - i)
        return total / len(out.student_logits)
