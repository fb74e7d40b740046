"""Several teachers as one: their weighted average logits feed the logit terms."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class TeacherEnsemble(nn.Module):
    """Weighted mean of member logits. Feature terms tap the first member (`feature_source`)."""

    def __init__(self, members: Sequence[nn.Module], weights: Sequence[float]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        total = float(sum(weights))
        self.register_buffer("weights", torch.tensor([w / total for w in weights]), persistent=False)

    @property
    def feature_source(self) -> nn.Module:
        """The member whose layers feature-based terms name."""
        return self.members[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(w * m(x).float() for w, m in zip(self.weights, self.members))


def feature_source(teacher: nn.Module | None) -> nn.Module | None:
    """The module whose named layers a teacher-side tap refers to, through any wrappers (ensemble, renormalization)."""
    while teacher is not None and hasattr(teacher, "feature_source"):
        teacher = teacher.feature_source
    return teacher
