"""Unstructured pruning: zero the smallest weights globally; the architecture and its speed stay the same."""

from __future__ import annotations

import torch
from torch import nn

from distillctl.errors import UserError


class SparsityMask:
    """The zeros of a globally magnitude-pruned model, kept through fine-tuning by zeroing them again after every
    optimizer step. Held apart from the model (not torch's `weight_orig * weight_mask` reparametrization), so its
    checkpoints, resume and weights file see a plain model; a resumed run rebuilds the same mask from the same source."""

    def __init__(self, model: nn.Module, sparsity: float) -> None:
        """Zero the smallest-magnitude `sparsity` of model's conv/linear weights, in place, and keep where they are."""
        from torch.nn.utils import prune

        if not 0 < sparsity < 1:
            raise UserError(f"prune.sparsity={sparsity} must lie between 0 and 1.")
        targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
        self.kept: list[tuple[nn.Parameter, torch.Tensor]] = []
        for module, name in targets:
            mask = getattr(module, f"{name}_mask").detach().clone()
            prune.remove(module, name)
            self.kept.append((getattr(module, name), mask))

    @torch.no_grad()
    def reapply(self) -> None:
        """Zero the pruned weights again (after an optimizer step moved them), on whatever device they now are."""
        for i, (weight, mask) in enumerate(self.kept):
            if mask.device != weight.device:
                mask = mask.to(weight.device)
                self.kept[i] = (weight, mask)
            weight.mul_(mask)


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of conv/linear weights that are exactly zero."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    return sum((w == 0).sum().item() for w in weights) / max(total, 1)
