"""Logits softened for a logit-matching term: optionally standardized, then divided by the temperature.

Logit standardization (Sun et al. 2024, "Logit Standardization in Knowledge Distillation", CVPR) z-scores each
sample's logits first, so the student matches the teacher's logit *relations* rather than their range: the loss
no longer changes when the student's logits are shifted or scaled, and one temperature suits student and teacher.
"""

from __future__ import annotations

import torch


def softened(logits: torch.Tensor, temperature: float, standardize: bool = False) -> torch.Tensor:
    """logits (float32) / temperature, z-scored per sample first when standardize is set."""
    z = logits.float()
    if standardize:
        z = (z - z.mean(1, keepdim=True)) / (z.std(1, keepdim=True) + 1e-7)
    return z / temperature
