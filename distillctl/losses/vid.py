"""Variational information distillation (Ahn et al. 2019, "Variational Information Distillation for Knowledge
Transfer", CVPR).

A lower bound on the mutual information between a teacher layer and a student layer is maximized: from the student's
feature a small network (three 1x1 convolutions with ReLUs between) predicts the mean of a Gaussian over the
teacher's feature, with one learned variance per teacher channel (softplus-parameterized, starting at 5 as in the
reference). The term is the Gaussian's negative log-likelihood of the teacher's feature, without the constant,
averaged over positions and summed over the layer pairs. The predictors and variances train with the student.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distillctl.losses.base import StepOutputs
from distillctl.losses.pairs import LayerPairs, placed_like, same_size
from distillctl.losses.registry import term

EPS = 1e-5


def vid_loss(mean: torch.Tensor, variance: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over every element of 0.5 * ((mean - teacher)^2 / variance + log variance); variance [C] per channel."""
    v = variance.view(1, -1, *([1] * (teacher.dim() - 2)))
    return (0.5 * ((mean.float() - teacher.float()).pow(2) / v + v.log())).mean()


def predictor(in_channels: int, out_channels: int) -> nn.Module:
    """The reference's mean predictor: 1x1 conv, ReLU, 1x1 conv, ReLU, 1x1 conv, as wide as the teacher's layer."""
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 1, bias=False), nn.ReLU(),
                         nn.Conv2d(out_channels, out_channels, 1, bias=False))


@term("vid")
class VariationalInformation(LayerPairs):
    """Make each teacher layer predictable from the matching student layer (Gaussian likelihood)."""

    feature_ranks = (4,)

    def setup(self, probe: StepOutputs) -> None:
        pairs = self.pairs(probe)
        self.predictors = nn.ModuleList(placed_like(predictor(s.shape[1], t.shape[1]), s) for s, t in pairs)
        # softplus(raw) + EPS starts at init_variance.
        raw = math.log(math.expm1(self.params.init_variance - EPS))
        self.raw_variances = nn.ParameterList(
            nn.Parameter(torch.full((t.shape[1],), raw, device=t.device)) for _, t in pairs)

    def forward(self, out: StepOutputs) -> torch.Tensor:
        total = 0.0
        for (s, t), predict, raw in zip(self.pairs(out), self.predictors, self.raw_variances):
            s, t = same_size(s, t)
            total = total + vid_loss(predict(s), F.softplus(raw) + EPS, t)
        return total
