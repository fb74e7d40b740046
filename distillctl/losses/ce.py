"""Cross-entropy with the ground-truth labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillctl.losses.base import LossTerm, StepOutputs
from distillctl.losses.registry import term


@term("ce")
class CrossEntropy(LossTerm):
    """Supervised loss; the only term of teacher training and of the no-teacher baseline."""

    needs_teacher = False

    def forward(self, out: StepOutputs) -> torch.Tensor:
        return F.cross_entropy(out.student_logits.float(), out.labels, label_smoothing=self.params.label_smoothing)
