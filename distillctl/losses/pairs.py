"""Terms that read a student layer against a teacher layer: one pair (OneLayer), or several pairwise (LayerPairs)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distillctl.errors import UserError
from distillctl.losses.base import LossTerm, StepOutputs
from distillctl.losses.params import PairedParams


class OneLayer(LossTerm):
    """A term over `student_layer` against `teacher_layer`."""

    def student_layers(self) -> list[str]:
        return [self.params.student_layer]

    def teacher_layers(self) -> list[str]:
        return [self.params.teacher_layer]

    def pair(self, out: StepOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(student feature, teacher feature)."""
        return out.student_features[self.params.student_layer], out.teacher_features[self.params.teacher_layer]


class LayerPairs(LossTerm):
    """A term over `student_layers[i]` against `teacher_layers[i]`, for every i."""

    def __init__(self, params: PairedParams) -> None:
        super().__init__(params)
        if len(params.student_layers) != len(params.teacher_layers):
            raise UserError(f"{params.kind} needs as many student_layers as teacher_layers "
                            f"({len(params.student_layers)} vs {len(params.teacher_layers)}): the i-th of each are compared.")

    def student_layers(self) -> list[str]:
        return list(self.params.student_layers)

    def teacher_layers(self) -> list[str]:
        return list(self.params.teacher_layers)

    def pairs(self, out: StepOutputs) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(student feature, teacher feature) for each pair, in the configured order."""
        return [(out.student_features[s], out.teacher_features[t])
                for s, t in zip(self.params.student_layers, self.params.teacher_layers)]


def same_size(student: torch.Tensor, teacher: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two feature maps at the smaller of their spatial sizes, the larger average-pooled (as NST's and VID's
    reference implementations do), so that the teacher is never interpolated into detail it did not compute."""
    size = tuple(min(a, b) for a, b in zip(student.shape[-2:], teacher.shape[-2:]))
    return tuple(f if tuple(f.shape[-2:]) == size else F.adaptive_avg_pool2d(f, size) for f in (student, teacher))


def placed_like(module: nn.Module, feature: torch.Tensor) -> nn.Module:
    """`module` on `feature`'s device and in its memory format (channels-last features keep fast convolutions)."""
    channels_last = feature.dim() == 4 and feature.is_contiguous(memory_format=torch.channels_last)
    return module.to(device=feature.device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
