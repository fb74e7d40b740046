"""Hint learning (Romero et al. 2015, "FitNets: Hints for Thin Deep Nets").

A regressor (conv + BN) maps the student's hint layer onto the teacher's guided layer; the loss is the mean squared
error between the two. `pretrain_epochs` reproduces the paper's first stage: for that many epochs the hint loss is
the only term, so the student is trained up to its hint layer before the whole objective takes over.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillctl.losses.base import StepOutputs
from distillctl.losses.pairs import OneLayer, placed_like
from distillctl.losses.params import HintParams
from distillctl.losses.registry import term


def match_size(feature: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bring a feature map to `size`: average pooling when shrinking, bilinear interpolation when growing."""
    if tuple(feature.shape[-2:]) == tuple(size):
        return feature
    if feature.shape[-2] >= size[0] and feature.shape[-1] >= size[1]:
        return F.adaptive_avg_pool2d(feature, size)
    return F.interpolate(feature, size=size, mode="bilinear", align_corners=False)


@term("hint")
class Hint(OneLayer):
    """MSE between regressor(student feature) and the teacher feature."""

    feature_ranks = (4,)

    def __init__(self, params: HintParams) -> None:
        super().__init__(params)
        self.regressor: nn.Module | None = None

    def alone_until_epoch(self) -> int:
        return self.params.pretrain_epochs

    def setup(self, probe: StepOutputs) -> None:
        s, t = self.pair(probe)
        k = self.params.kernel_size
        self.regressor = placed_like(nn.Sequential(
            nn.Conv2d(s.shape[1], t.shape[1], k, padding=k // 2, bias=False), nn.BatchNorm2d(t.shape[1])), s)

    def forward(self, out: StepOutputs) -> torch.Tensor:
        s, t = self.pair(out)
        s = match_size(self.regressor(s), t.shape[-2:])
        return F.mse_loss(s.float(), t.float())
