"""`distillctl train-teacher`: the recipe's teacher trained on labels alone."""

from __future__ import annotations

from omegaconf import DictConfig

from distillctl.losses import build_objective
from distillctl.models import create_model
from distillctl.stages.context import RunContext
from distillctl.stages.training import train_and_save
from distillctl.workspace import Workspace, fingerprint as config_fingerprint

STAGE = "teacher"


def fingerprint(cfg: DictConfig, ws: Workspace) -> str:
    """What the trained teacher depends on."""
    return config_fingerprint(cfg, ["dataset", "teacher", "trainer", "optimizer", "scheduler"], [str(cfg.seed)])


def run(cfg: DictConfig) -> dict:
    """Train the teacher and write runs/<recipe>/teacher/."""
    ctx = RunContext.open(cfg)
    model = create_model(cfg.teacher.name, ctx.data.num_classes, cfg.teacher.pretrained, **cfg.teacher.kwargs)
    objective = build_objective({"ce": {"kind": "ce", "weight": 1.0, "label_smoothing": cfg.trainer.label_smoothing}})
    lr = cfg.teacher.lr if cfg.teacher.lr is not None else cfg.optimizer.lr
    return train_and_save(ctx, STAGE, cfg.teacher.name, model, objective, lr, fingerprint(cfg, ctx.workspace))
