"""Each checkpoint records the mean and std its model was trained with; a model is fed images normalized that way."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def stored_normalization(meta: dict, mean: Sequence[float], std: Sequence[float]) -> tuple[list[float], list[float]]:
    """The (mean, std) a checkpoint was trained with; the given ones for a foreign file that records none."""
    return list(meta.get("mean") or mean), list(meta.get("std") or std)


class Renormalize(nn.Module):
    """Takes images normalized with one (mean, std) and gives the wrapped model images normalized with another,
    so that a teacher trained under other statistics (an ImageNet-pretrained model, another data set section)
    sees what it was trained on while the student keeps the run's normalization."""

    def __init__(self, model: nn.Module, given: tuple[Sequence[float], Sequence[float]], wanted: tuple[Sequence[float], Sequence[float]]) -> None:
        super().__init__()
        self.model = model
        given_mean, given_std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in given)
        wanted_mean, wanted_std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in wanted)
        # x_wanted = (x_given * given_std + given_mean - wanted_mean) / wanted_std = x_given * scale + shift
        self.register_buffer("scale", given_std / wanted_std, persistent=False)
        self.register_buffer("shift", (given_mean - wanted_mean) / wanted_std, persistent=False)

    @property
    def feature_source(self) -> nn.Module:
        """Feature terms name the wrapped model's layers."""
        return getattr(self.model, "feature_source", self.model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x * self.scale.to(x.dtype) + self.shift.to(x.dtype))


def renormalized(model: nn.Module, meta: dict, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """`model` as it is when its checkpoint's normalization is the run's, else wrapped in Renormalize."""
    stored = stored_normalization(meta, mean, std)
    if torch.allclose(torch.tensor(stored[0]), torch.tensor(list(mean))) and torch.allclose(torch.tensor(stored[1]), torch.tensor(list(std))):
        return model
    return Renormalize(model, (mean, std), stored)
