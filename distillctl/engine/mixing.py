"""Mixup and CutMix on training batches (timm.data.Mixup): the student and the teacher both see the mixed images,
and the labels become the mixed one-hot targets that cross-entropy reads as class probabilities."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from distillctl.errors import UserError
from distillctl.losses import Objective


class BatchMixer:
    """Mixes each training batch with its own reverse, with timm's per-batch draw of mixup or cutmix."""

    def __init__(self, mixup_alpha: float, cutmix_alpha: float, num_classes: int) -> None:
        from timm.data import Mixup

        # Label smoothing stays the cross-entropy term's own (trainer.label_smoothing), not timm's default 0.1.
        self.mixup = Mixup(mixup_alpha=mixup_alpha, cutmix_alpha=cutmix_alpha, label_smoothing=0.0, num_classes=num_classes)
        self.num_classes = num_classes

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The mixed batch (in place) and its [batch, classes] targets. timm draws from NumPy's RNG: it is seeded
        from torch's, which every checkpoint keeps, so a resumed run mixes as the uninterrupted one would."""
        np.random.seed(int(torch.randint(2**31, (1,)).item()))
        targets = F.one_hot(y, self.num_classes).float()
        even = len(x) - len(x) % 2  # timm pairs images; an odd last batch keeps its last image as it is
        if even:
            x[:even], targets[:even] = self.mixup(x[:even], y[:even])
        return x, targets


def batch_mixer(mixup_alpha: float, cutmix_alpha: float, num_classes: int, objective: Objective) -> BatchMixer | None:
    """The mixer dataset.mixup_alpha / cutmix_alpha ask for (None when both are 0); refused for terms that need
    each image's one label."""
    if not mixup_alpha and not cutmix_alpha:
        return None
    if hard := sorted(name for name, t in objective.terms.items() if t.hard_labels):
        raise UserError(f"dataset.mixup_alpha / cutmix_alpha mix two images and their labels, but loss term {', '.join(hard)} "
                        "separates each image's one true class from the others. Turn mixing off (both 0) or use another loss.")
    return BatchMixer(mixup_alpha, cutmix_alpha, num_classes)
