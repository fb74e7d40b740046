"""Probabilistic knowledge transfer (Passalis & Tefas 2018, "Learning Deep Representations with Probabilistic
Knowledge Transfer", ECCV).

Each image's cosine similarities to the other images of the batch, mapped to [0, 1] and normalized to sum to one,
form a conditional distribution over its neighbours; the student's should match the teacher's (KL divergence, with
the reference implementation's averaging over all B x B entries). Cosines make it blind to the embeddings' scale
and width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillctl.losses.base import StepOutputs
from distillctl.losses.embedding import embedding
from distillctl.losses.pairs import OneLayer
from distillctl.losses.registry import term

EPS = 1e-7


def neighbour_distribution(e: torch.Tensor) -> torch.Tensor:
    """[B, B]: row i is the probability of picking each image as i's neighbour, from cosine similarity."""
    unit = F.normalize(e, dim=1, eps=EPS)
    similarity = (unit @ unit.t() + 1) / 2
    return similarity / similarity.sum(1, keepdim=True)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean over B x B of p_t * log(p_t / p_s) between the two neighbour distributions."""
    p_s = neighbour_distribution(student)
    with torch.no_grad():
        p_t = neighbour_distribution(teacher)
    return (p_t * torch.log((p_t + EPS) / (p_s + EPS))).mean()


@term("pkt")
class ProbabilisticKT(OneLayer):
    """The same neighbours for each image, in the same proportions, as in the teacher's embedding."""

    def forward(self, out: StepOutputs) -> torch.Tensor:
        s, t = self.pair(out)
        return pkt_loss(embedding(s), embedding(t))
