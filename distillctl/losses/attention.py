"""Attention transfer (Zagoruyko & Komodakis 2017, "Paying More Attention to Attention").

The attention map of a feature f is the channel mean of |f|^p (p=2), flattened and L2-normalised; the term is
half the sum over layer pairs of the mean squared difference of student and teacher maps, so that with the
paper's beta (1000, the default weight) the total is the reference implementation's beta/2 * sum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillctl.losses.base import StepOutputs
from distillctl.losses.pairs import LayerPairs
from distillctl.losses.registry import term


def attention_map(feature: torch.Tensor, p: float, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Normalised spatial attention [B, H*W] of a feature map [B, C, H, W], resized to `size` if given."""
    a = feature.float().abs().pow(p).mean(1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        a = F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    return F.normalize(a.flatten(1), dim=1)


@term("attention")
class AttentionTransfer(LayerPairs):
    """Match where the student's layers put their activation energy to where the teacher's do."""

    feature_ranks = (4,)

    def forward(self, out: StepOutputs) -> torch.Tensor:
        total = 0.0
        for s, t in self.pairs(out):
            a_t = attention_map(t, self.params.p)
            a_s = attention_map(s, self.params.p, t.shape[-2:])
            total = total + (a_s - a_t).pow(2).mean()
        return total / 2
