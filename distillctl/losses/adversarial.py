"""Adversarial distillation (Xu, Hsu & Huang 2018, "Training Student Networks for Acceleration with
Conditional Adversarial Networks", BMVC).

A discriminator learns to tell the teacher's outputs from the student's; the student, beside its other terms,
is trained to make its outputs pass for the teacher's. We use the non-saturating GAN losses (Goodfellow et al.
2014): D minimises BCE(D(teacher), 1) + BCE(D(student), 0), the student minimises BCE(D(student), 1).
D is an MLP on softmax outputs by default (`input: logits`) or on globally pooled features of named layers
(`input: features`); it has its own Adam optimizer and takes `d_steps` updates after every student step.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from distillctl.engine import distributed
from distillctl.errors import UserError
from distillctl.losses.embedding import embedding
from distillctl.losses.base import LossTerm, StepOutputs
from distillctl.losses.params import AdversarialParams
from distillctl.losses.registry import term


def discriminator(width: int, hidden: int) -> nn.Module:
    """A small MLP: input -> hidden -> hidden -> one real/fake logit."""
    return nn.Sequential(
        nn.Linear(width, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
    )


@term("adversarial")
class Adversarial(LossTerm):
    """The generator loss for the student; the discriminator's own update in after_step."""

    feature_ranks = (4,)

    def __init__(self, params: AdversarialParams) -> None:
        super().__init__(params)
        if params.input not in ("logits", "features"):
            raise UserError(f"adversarial input={params.input}: use logits or features.")
        self.discriminator: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.last_accuracy = torch.tensor(0.5)

    def student_layers(self) -> list[str]:
        return [self.params.student_layer] if self.params.input == "features" else []

    def teacher_layers(self) -> list[str]:
        return [self.params.teacher_layer] if self.params.input == "features" else []

    def inputs(self, out: StepOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """What D sees for the student and the teacher: softmax outputs, or pooled features."""
        if self.params.input == "logits":
            return out.student_logits.float().softmax(1), out.teacher_logits.float().softmax(1)
        s = embedding(out.student_features[self.params.student_layer])
        t = embedding(out.teacher_features[self.params.teacher_layer])
        if s.shape[1] != t.shape[1]:
            raise UserError(
                f"adversarial on features needs equal channel counts (the student's {self.params.student_layer}: {s.shape[1]}, "
                f"the teacher's {self.params.teacher_layer}: {t.shape[1]}); pick matching layers or input=logits."
            )
        return s, t

    def setup(self, probe: StepOutputs) -> None:
        """Build D for the width of what it will see, with an optimizer of its own."""
        s, _ = self.inputs(probe)
        self.discriminator = discriminator(s.shape[1], self.params.hidden).to(s.device)
        self.optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=self.params.lr, betas=tuple(self.params.betas))

    def student_parameters(self) -> list[nn.Parameter]:
        return []  # D is trained by its own optimizer, never by the student's

    def forward(self, out: StepOutputs) -> torch.Tensor:
        s, _ = self.inputs(out)
        verdict = self.discriminator(s)
        return F.binary_cross_entropy_with_logits(verdict, torch.ones_like(verdict))

    def discriminator_loss(self, s: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D's loss and its accuracy at telling teacher (1) from student (0)."""
        real, fake = self.discriminator(t), self.discriminator(s)
        loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real)) + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        accuracy = torch.cat([(real > 0).float(), (fake < 0).float()]).mean()
        return loss, accuracy.detach()

    def after_step(self, out: StepOutputs) -> dict[str, float]:
        s, t = self.inputs(out)
        s, t = s.detach(), t.detach()
        for _ in range(self.params.d_steps):
            loss, accuracy = self.discriminator_loss(s, t)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            distributed.average_gradients(self.discriminator.parameters())  # every process's D takes the same step
            self.optimizer.step()
        self.last_accuracy = accuracy
        return {}

    def get_extra_state(self) -> dict[str, Any]:
        return {"optimizer": self.optimizer.state_dict() if self.optimizer is not None else None}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])  # setup() has built it before any resume
