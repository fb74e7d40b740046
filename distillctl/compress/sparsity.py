"""Unstructured pruning: zero the smallest weights globally; the architecture and its speed stay the same."""

from __future__ import annotations

from torch import nn

from distillctl.errors import UserError


def prune_unstructured(model: nn.Module, sparsity: float) -> float:
    """Zero the smallest-magnitude conv/linear weights globally and make it permanent; returns the sparsity reached."""
    from torch.nn.utils import prune

    if not 0 < sparsity < 1:
        raise UserError(f"prune.sparsity={sparsity} must lie between 0 and 1.")
    targets = [(m, "weight") for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=sparsity)
    for module, name in targets:
        prune.remove(module, name)
    return weight_sparsity(model)


def weight_sparsity(model: nn.Module) -> float:
    """Fraction of conv/linear weights that are exactly zero."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    total = sum(w.numel() for w in weights)
    return sum((w == 0).sum().item() for w in weights) / max(total, 1)
