"""One vector per image from a tapped layer, for the terms that compare images with each other (RKD, PKT)."""

from __future__ import annotations

import torch


def embedding(feature: torch.Tensor) -> torch.Tensor:
    """[B, D] in float32: a feature map [B, C, H, W] averaged over its spatial positions, a transformer's tokens
    [B, N, C] (timm's ViT blocks) averaged over the tokens, a vector as it is."""
    f = feature.float()
    if f.dim() == 3:
        return f.mean(1)
    return f.flatten(2).mean(2) if f.dim() > 2 else f.flatten(1)
