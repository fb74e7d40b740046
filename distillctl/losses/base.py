"""What a loss term is: its options (a dataclass in params.py), the layers it taps, a forward on one step's outputs."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from distillctl.losses.params import TermParams


@dataclass
class StepOutputs:
    """Everything a term may read about one training step."""

    student_logits: torch.Tensor
    labels: torch.Tensor
    teacher_logits: torch.Tensor | None = None
    # Outputs of the modules the terms asked for, keyed by module path, captured by forward hooks.
    student_features: dict[str, torch.Tensor] = field(default_factory=dict)
    teacher_features: dict[str, torch.Tensor] = field(default_factory=dict)
    epoch: int = 0  # 1-based epoch, for terms with a warm-up
    # Positions of the batch's images in the training split, and that split's size, for terms that keep something per
    # training image (CRD's memory bank). Both loaders give them (`positions`, `split_size` of their batches).
    indices: torch.Tensor | None = None
    num_images: int = 0


class LossTerm(nn.Module):
    """One piece of the objective. Subclasses set `Params` and implement `forward`.

    A term is an nn.Module so that parameters it owns (a hint regressor, a discriminator) are saved in the
    training state and left out of the exported student. By default they are trained with the student;
    a term with an optimizer of its own (an adversarial discriminator) overrides `student_parameters` and
    `after_step`, and keeps its optimizer's state in `get_extra_state`.
    """

    Params: ClassVar[type[TermParams]] = TermParams  # set by @term from distillctl.losses.params.PARAMS
    needs_teacher: ClassVar[bool] = True
    # State kept per training image (CRD's memory bank): each process of a multi-process job would update only its
    # own share, so such terms train on one process.
    per_image_state: ClassVar[bool] = False
    # Reads each image's one true class (not the class probabilities that mixup/cutmix make of the labels).
    hard_labels: ClassVar[bool] = False
    # The ranks of tapped features the term can read: (4,) for feature maps [batch, channels, height, width];
    # empty: any (terms on one embedding per image average a map's positions or a transformer's tokens).
    feature_ranks: ClassVar[tuple[int, ...]] = ()

    def __init__(self, params: TermParams) -> None:
        super().__init__()
        self.params = params

    @property
    def weight(self) -> float:
        """The factor the term's value is multiplied by in the total loss."""
        return self.params.weight

    def student_layers(self) -> list[str]:
        """Module paths of the student whose outputs this term reads."""
        return []

    def teacher_layers(self) -> list[str]:
        """Module paths of the teacher whose outputs this term reads."""
        return []

    def setup(self, probe: StepOutputs) -> None:
        """Build parameters that depend on output or feature shapes; called once before training on a probe batch."""

    def student_parameters(self) -> list[nn.Parameter]:
        """The term's parameters that the student's optimizer trains."""
        return list(self.parameters())

    def alone_until_epoch(self) -> int:
        """While epoch <= this, only such terms count (FitNets' first stage); 0 means never alone."""
        return 0

    def forward(self, out: StepOutputs) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def after_step(self, out: StepOutputs) -> dict[str, float]:
        """Extra optimisation after the student's step; returns figures worth logging."""
        return {}
