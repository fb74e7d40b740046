"""Correlation congruence (Peng et al. 2019, "Correlation Congruence for Knowledge Distillation", ICCV).

Beyond each image's own output, the *correlations between* the batch's images should be the teacher's: a B x B
matrix of a Gaussian kernel exp(-gamma * |f_i - f_j|^2) between L2-normalized embeddings, which for unit vectors is
exp(-2 gamma) * exp(2 gamma f_i . f_j), approximated by the paper's Taylor series to order P. The term is the mean
squared difference of the two matrices (the paper's ||C_s - C_t||^2 / B^2). Embeddings of any width compare.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from distillctl.losses.base import StepOutputs
from distillctl.losses.embedding import embedding
from distillctl.losses.pairs import OneLayer
from distillctl.losses.registry import term


def correlation(e: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """[B, B]: the order-P Taylor expansion of the Gaussian kernel between the rows of e, once L2-normalized."""
    unit = F.normalize(e.float(), dim=1)
    dots = unit @ unit.t()
    series = sum((2 * gamma) ** p / math.factorial(p) * dots.pow(p) for p in range(1, order + 1))
    return math.exp(-2 * gamma) * (1 + series)


def cc_loss(student: torch.Tensor, teacher: torch.Tensor, gamma: float, order: int) -> torch.Tensor:
    """Mean squared difference of the student's and the teacher's correlation matrices."""
    with torch.no_grad():
        c_t = correlation(teacher, gamma, order)
    return (correlation(student, gamma, order) - c_t).pow(2).mean()


@term("cc")
class CorrelationCongruence(OneLayer):
    """Keep how alike the teacher finds each pair of images, in the student's embeddings."""

    def forward(self, out: StepOutputs) -> torch.Tensor:
        p = self.params
        s, t = self.pair(out)
        return cc_loss(embedding(s), embedding(t), p.gamma, p.order)
