"""Decoupled knowledge distillation (Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR).

KD split into target-class KD (TCKD: binary target/non-target distributions) and non-target-class KD (NCKD:
the distribution over the other classes), weighted alpha and beta, ramped in linearly over `warmup` epochs.
Defaults are the paper's CIFAR-100 settings (alpha 1, beta 8, T 4, 20 warm-up epochs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillctl.losses.base import LossTerm, StepOutputs
from distillctl.losses.logits import softened
from distillctl.losses.registry import term


def dkd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, alpha: float, beta: float, temperature: float,
             standardize: bool = False) -> torch.Tensor:
    """alpha * TCKD + beta * NCKD, each a batch-mean KL divergence times T^2."""
    s, t = softened(student, temperature, standardize), softened(teacher, temperature, standardize)
    target = F.one_hot(labels, s.shape[1]).bool()
    p_s, p_t = s.softmax(1), t.softmax(1)
    # Target / non-target binary distributions.
    b_s = torch.stack([p_s[target], p_s.masked_fill(target, 0).sum(1)], 1)
    b_t = torch.stack([p_t[target], p_t.masked_fill(target, 0).sum(1)], 1)
    tckd = F.kl_div(b_s.clamp_min(1e-12).log(), b_t, reduction="batchmean")
    # Distributions over the non-target classes: the target logit pushed out of the softmax.
    log_q_s = F.log_softmax(s.masked_fill(target, -1e9), 1)
    log_q_t = F.log_softmax(t.masked_fill(target, -1e9), 1)
    nckd = F.kl_div(log_q_s, log_q_t, reduction="batchmean", log_target=True)
    return (alpha * tckd + beta * nckd) * temperature**2


@term("dkd")
class DecoupledKD(LossTerm):
    """TCKD + NCKD with a linear warm-up of the whole term."""

    hard_labels = True

    def forward(self, out: StepOutputs) -> torch.Tensor:
        ramp = min(out.epoch / self.params.warmup, 1.0) if self.params.warmup else 1.0
        p = self.params
        return ramp * dkd_loss(out.student_logits, out.teacher_logits, out.labels, p.alpha, p.beta, p.temperature, p.standardize)
