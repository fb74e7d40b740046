"""DIST (Huang et al. 2022, "Knowledge Distillation from A Stronger Teacher", NeurIPS).

KL divergence asks the student to reproduce the teacher's probabilities exactly, which a much stronger teacher makes
hard. DIST asks only for the same *relations*: the Pearson correlation between student and teacher probabilities
over the classes of each image (inter-class) and over the images of each class (intra-class); the loss is
beta * (1 - mean inter) + gamma * (1 - mean intra), times T^2 as in KD.
"""

from __future__ import annotations

import torch

from distillctl.losses.base import LossTerm, StepOutputs
from distillctl.losses.logits import softened
from distillctl.losses.registry import term


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of a with the same row of b."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-8)


def dist_loss(student: torch.Tensor, teacher: torch.Tensor, beta: float, gamma: float, temperature: float,
              standardize: bool = False) -> torch.Tensor:
    """beta * inter-class + gamma * intra-class relation loss, times T^2."""
    p_s = softened(student, temperature, standardize).softmax(1)
    p_t = softened(teacher, temperature, standardize).softmax(1)
    inter = 1 - pearson(p_s, p_t).mean()
    intra = 1 - pearson(p_s.t(), p_t.t()).mean()
    return (beta * inter + gamma * intra) * temperature**2


@term("dist")
class DIST(LossTerm):
    """Match the teacher's ranking of classes per image and of images per class."""

    def forward(self, out: StepOutputs) -> torch.Tensor:
        p = self.params
        return dist_loss(out.student_logits, out.teacher_logits, p.beta, p.gamma, p.temperature, p.standardize)
