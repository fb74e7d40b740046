"""One vector per image from a tapped layer, for the terms that compare images with each other (RKD, PKT)."""

from __future__ import annotations

import torch


def embedding(feature: torch.Tensor) -> torch.Tensor:
    """[B, D] in float32: a feature map averaged over its spatial positions, a vector as it is."""
    f = feature.float()
    return f.flatten(2).mean(2) if f.dim() > 2 else f.flatten(1)
