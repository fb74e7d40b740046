"""Cross-entropy with the ground-truth labels."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from distillctl.bounds import bounded
from distillctl.losses.base import LossTerm, StepOutputs, TermParams
from distillctl.losses.registry import term


@dataclass
class CEParams(TermParams):
    label_smoothing: float = bounded(0.0, min=0, below=1)


@term("ce")
class CrossEntropy(LossTerm):
    """Supervised loss; the only term of teacher training and of the no-teacher baseline."""

    Params = CEParams
    needs_teacher = False
    follows = {"label_smoothing": "trainer.label_smoothing"}

    def forward(self, out: StepOutputs) -> torch.Tensor:
        return F.cross_entropy(out.student_logits.float(), out.labels, label_smoothing=self.params.label_smoothing)
