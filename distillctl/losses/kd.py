"""Logit distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network"); with
standardize=true, logit-standardized KD (Sun et al. 2024: losses/logits.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillctl.losses.base import LossTerm, StepOutputs
from distillctl.losses.logits import softened
from distillctl.losses.registry import term


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float, standardize: bool = False) -> torch.Tensor:
    """KL(p_teacher^T || p_student^T) averaged over the batch, times T^2 so gradients keep their scale."""
    log_p_student = F.log_softmax(softened(student_logits, temperature, standardize), dim=1)
    log_p_teacher = F.log_softmax(softened(teacher_logits, temperature, standardize), dim=1)
    return F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True) * temperature**2


@term("kd")
class KnowledgeDistillation(LossTerm):
    """Match the teacher's temperature-softened class distribution."""

    def forward(self, out: StepOutputs) -> torch.Tensor:
        return kd_loss(out.student_logits, out.teacher_logits, self.params.temperature, self.params.standardize)
