"""Optimizer and per-iteration learning-rate schedule from the config."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch


def build_optimizer(params: Iterable[torch.nn.Parameter], cfg, lr: float, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov) or AdamW through timm's optimizer factory; weight decay skips biases and norm scales.

    The decay groups are made here: timm filters biases and norms only when handed one Module, and a trainee's
    parameters span the student and the loss terms' modules (a hint regressor)."""
    from timm.optim import create_optimizer_v2

    decay, no_decay = [], []
    for p in params:
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernels exist for CUDA only; on the CPU the foreach path is the fast one.
    fast = {"fused": True} if device.type == "cuda" else {"foreach": True}
    if cfg.name == "sgd":  # timm's "sgd" is Nesterov SGD and "momentum" the plain kind
        return create_optimizer_v2(groups, "sgd" if cfg.nesterov else "momentum", lr=lr, momentum=cfg.momentum, **fast)
    return create_optimizer_v2(groups, "adamw", lr=lr, betas=tuple(cfg.betas), **fast)


# Why not timm.scheduler: its schedulers are not torch LRSchedulers (they are stepped with step_update(n) and set
# group lrs themselves), so fit would need a second stepping and state protocol beside torch's; and their warm-up
# starts from a separate warmup_lr and counts the cosine from the start of warm-up, which would change every
# recorded figure for no gain. A LambdaLR over this shape is torch's own scheduler, and its state is plain data.
@dataclass(frozen=True)
class ScheduleShape:
    """Learning-rate multiplier per iteration: linear warm-up, then step, cosine or constant."""

    name: str
    steps_per_epoch: int
    epochs: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    min_factor: float = 0.0

    def factor(self, step: int) -> float:
        """Multiplier of the base learning rate at iteration `step`."""
        epoch = step / self.steps_per_epoch
        if self.warmup_epochs and epoch < self.warmup_epochs:
            return (step + 1) / (self.warmup_epochs * self.steps_per_epoch)
        if self.name == "step":
            return self.gamma ** sum(epoch >= m for m in self.milestones)
        if self.name == "cosine":
            progress = min(1.0, (epoch - self.warmup_epochs) / max(self.epochs - self.warmup_epochs, 1e-9))
            return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0


def build_schedule(optimizer: torch.optim.Optimizer, cfg, lr: float, steps_per_epoch: int, epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration; its state_dict is plain data, safe for weights_only loading."""
    shape = ScheduleShape(
        name=cfg.name,
        steps_per_epoch=steps_per_epoch,
        epochs=epochs,
        milestones=tuple(cfg.milestones),
        gamma=cfg.gamma,
        warmup_epochs=cfg.warmup_epochs,
        min_factor=cfg.min_lr / lr if lr else 0.0,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: shape.factor(step))
