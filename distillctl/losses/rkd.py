"""Relational knowledge distillation (Park et al. 2019, "Relational Knowledge Distillation", CVPR).

The student's embeddings of a batch should be placed like the teacher's: the same pairwise distances (each set
divided by its mean distance, so the two spaces need not share a scale or a width) and the same angles of every
triplet, each compared with the smooth L1 (Huber) loss. Weights w_D = 25 and w_A = 50 are the paper's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillctl.losses.base import StepOutputs
from distillctl.losses.embedding import embedding
from distillctl.losses.pairs import OneLayer
from distillctl.losses.registry import term


def normalized_distances(e: torch.Tensor) -> torch.Tensor:
    """Pairwise Euclidean distances [B, B] divided by the mean of the off-diagonal ones."""
    d = torch.cdist(e, e)
    off = ~torch.eye(len(e), dtype=torch.bool, device=e.device)
    return d / d[off].mean().clamp_min(1e-12)


def angles(e: torch.Tensor) -> torch.Tensor:
    """cos of the angle at j between i and k, for every triplet: [B, B, B]."""
    unit = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), dim=2)  # unit[j, i] = (e_i - e_j) / |e_i - e_j|
    return unit @ unit.transpose(1, 2)


def rkd_loss(student: torch.Tensor, teacher: torch.Tensor, distance_weight: float, angle_weight: float) -> torch.Tensor:
    """w_D * distance-wise + w_A * angle-wise loss between [B, D_s] and [B, D_t] embeddings."""
    with torch.no_grad():
        d_t, a_t = normalized_distances(teacher), angles(teacher)
    loss = distance_weight * F.smooth_l1_loss(normalized_distances(student), d_t)
    return loss + angle_weight * F.smooth_l1_loss(angles(student), a_t)


@term("rkd")
class RelationalKD(OneLayer):
    """Distances and angles between the batch's embeddings, as the teacher has them."""

    def forward(self, out: StepOutputs) -> torch.Tensor:
        p = self.params
        s, t = (embedding(f) for f in self.pair(out))
        return rkd_loss(s, t, p.distance_weight, p.angle_weight)
