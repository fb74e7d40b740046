"""Similarity-preserving distillation (Tung & Mori 2019, "Similarity-Preserving Knowledge Distillation", ICCV).

Images that the teacher's feature maps find alike should be alike in the student's: the B x B Gram matrix of the
flattened feature maps, each row L2-normalized, is matched in squared Frobenius norm divided by B^2. Feature maps
of any width or size compare, since only the Gram matrices meet.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillctl.losses.base import StepOutputs
from distillctl.losses.pairs import OneLayer
from distillctl.losses.registry import term


def similarity_matrix(feature: torch.Tensor) -> torch.Tensor:
    """[B, B]: the row-normalized Gram matrix of the flattened features."""
    f = feature.float().flatten(1)
    return F.normalize(f @ f.t(), dim=1)


def sp_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """||G_s - G_t||_F^2 / B^2."""
    with torch.no_grad():
        g_t = similarity_matrix(teacher)
    return (similarity_matrix(student) - g_t).pow(2).sum() / len(student) ** 2


@term("sp")
class SimilarityPreserving(OneLayer):
    """The teacher's pairwise similarities between the batch's images, kept in the student's features."""

    def forward(self, out: StepOutputs) -> torch.Tensor:
        return sp_loss(*self.pair(out))
