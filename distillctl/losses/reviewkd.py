"""Knowledge review (Chen et al. 2021, "Distilling Knowledge via Knowledge Review", CVPR).

Each teacher stage is taught from *several* student stages: the student's features are fused from the deepest stage
down, each level mixing its own (1x1-projected) feature with the deeper levels' fused one through a learned
two-way attention (attention-based fusion, ABF), and a 3x3 conv maps each fused level onto its teacher stage. The
hierarchical context loss (HCL) compares every level with its teacher stage as a whole and average-pooled to 4x4,
2x2 and 1x1 (each pooled size half the weight of the one before, normalized), summed over the levels; the term is
ramped in linearly over `warmup` epochs. The fusion modules train with the student.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillctl.losses.base import StepOutputs
from distillctl.losses.pairs import LayerPairs, placed_like
from distillctl.losses.registry import term

POOLED_SIZES = (4, 2, 1)


def hcl_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """MSE of the maps, then of their 4x4, 2x2 and 1x1 averages (where smaller than the map), weights 1, 1/2, 1/4, ...
    divided by their sum."""
    s, t = student.float(), teacher.float()
    loss, weight, total = F.mse_loss(s, t), 1.0, 1.0
    for size in POOLED_SIZES:
        if size >= s.shape[-2]:
            continue
        weight /= 2
        loss = loss + weight * F.mse_loss(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
        total += weight
    return loss / total


class Fusion(nn.Module):
    """One level of the review: project the student's feature, mix in the deeper levels' fused one (when there is
    one) by per-position attention weights, and map the result onto the teacher stage's width and size."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, deeper: bool) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if deeper else None
        self.output = nn.Sequential(nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels))
        for conv in (self.project[0], self.output[0]):
            nn.init.kaiming_uniform_(conv.weight, a=1)  # as the reference initializes them

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(the level's prediction of the teacher stage, the fused feature passed to the next shallower level)."""
        x = self.project(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, x.shape[-2:], mode="nearest")
            a = self.attention(torch.cat([x, deeper], 1))
            x = x * a[:, :1] + deeper * a[:, 1:]
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size, mode="nearest")
        return self.output(x), x


def as_map(feature: torch.Tensor) -> torch.Tensor:
    """A pooled vector [B, C] as a 1x1 map, so the last level (the embedding) fuses like the others."""
    return feature if feature.dim() == 4 else feature.view(*feature.shape, 1, 1)


@term("reviewkd")
class KnowledgeReview(LayerPairs):
    """Teach every teacher stage from the student's stages at and below it, fused deepest first."""

    feature_ranks = (2, 4)  # the last level may be a pooled vector

    def setup(self, probe: StepOutputs) -> None:
        pairs = [(as_map(s), as_map(t)) for s, t in self.pairs(probe)]
        mid = self.params.mid_channels
        self.fusions = nn.ModuleList(
            placed_like(Fusion(s.shape[1], mid, t.shape[1], deeper=i < len(pairs) - 1), s) for i, (s, t) in enumerate(pairs))

    def predictions(self, out: StepOutputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(the student's prediction of the teacher stage, the teacher stage) per level, shallow to deep."""
        pairs = [(as_map(s), as_map(t)) for s, t in self.pairs(out)]
        fused, result = None, []
        for (s, t), fusion in reversed(list(zip(pairs, self.fusions))):
            prediction, fused = fusion(s, fused, t.shape[-2:])
            result.insert(0, (prediction, t))
        return result

    def forward(self, out: StepOutputs) -> torch.Tensor:
        total = sum(hcl_loss(prediction, t) for prediction, t in self.predictions(out))
        warmup = self.params.warmup
        return total * (min(out.epoch / warmup, 1.0) if warmup else 1.0)
