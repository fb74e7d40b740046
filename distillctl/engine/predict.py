"""Running a model over a split: logits, and the accuracy figures computed from them."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from distillctl.engine.device import autocast


@torch.inference_mode()
def predict(model: nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device, precision: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float, on the CPU) and labels for every batch, with the model in eval mode."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    with autocast(device, precision):
        for x, y in batches:
            logits.append(model(x).float().cpu())
            labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Fraction of rows whose label is among the k highest logits."""
    k = min(k, logits.shape[1])
    return (logits.topk(k, dim=1).indices == labels[:, None]).any(dim=1).float().mean().item()


def top5_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float | None:
    """Top-5 accuracy, or None with 5 classes or fewer, where every label is among the top five."""
    return topk_accuracy(logits, labels, 5) if logits.shape[1] > 5 else None
