"""Neuron selectivity transfer (Huang & Wang 2017, "Like What You Like: Knowledge Distill via Neuron Selectivity
Transfer").

Each channel of a feature map, as a vector over spatial positions and L2-normalized, is one sample of where the
layer's neurons fire; the student's channels should be distributed like the teacher's. The distance is the squared
maximum mean discrepancy with the paper's polynomial kernel k(x, y) = (x . y)^2, per image, averaged over the batch
and summed over the layer pairs. Channel counts may differ; spatial sizes are brought to the smaller one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from distillctl.losses.base import StepOutputs
from distillctl.losses.pairs import LayerPairs, same_size
from distillctl.losses.registry import term


def mean_kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[B]: the mean of (a_i . b_j)^2 over every channel pair of each image; a [B, C, N], b [B, C', N]."""
    return (a @ b.transpose(1, 2)).pow(2).mean((1, 2))


def nst_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Squared MMD between the two maps' channel distributions, averaged over the batch."""
    student, teacher = same_size(student.float(), teacher.float())
    s, t = (F.normalize(f.flatten(2), dim=2) for f in (student, teacher))
    return (mean_kernel(t, t) + mean_kernel(s, s) - 2 * mean_kernel(s, t)).mean()


@term("nst")
class NeuronSelectivity(LayerPairs):
    """Where the student's neurons fire, distributed as where the teacher's do (MMD per layer pair)."""

    feature_ranks = (4,)

    def forward(self, out: StepOutputs) -> torch.Tensor:
        return sum(nst_loss(s, t) for s, t in self.pairs(out))
