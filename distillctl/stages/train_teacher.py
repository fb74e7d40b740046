"""`distillctl train-teacher`: the recipe's teacher trained on labels alone."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from distillctl.errors import UserError
from distillctl.losses import build_objective
from distillctl.models import create_model, pretrained_normalization
from distillctl.stages.base import Stage
from distillctl.stages.context import RunContext
from distillctl.stages.training import TrainingJob, train_and_save
from distillctl.teacher_files import given_teachers, trained_teacher_fingerprint, trained_teacher_sections
from distillctl.workspace import Workspace

FOLDER = "teacher"


def fingerprint(cfg: DictConfig, ws: Workspace) -> str:
    """What the trained teacher depends on."""
    return trained_teacher_fingerprint(cfg)


skipped = given_teachers  # a teacher given as a file is used as it is: nothing to train


def run(cfg: DictConfig) -> dict:
    """Train the teacher and write runs/<recipe>/teacher/."""
    if reason := skipped(cfg):
        # Training here would leave a teacher that distill never reads: it takes the given one.
        raise UserError(f"nothing to train: {reason}. To train this recipe's own teacher, add teacher.checkpoint=null (and teachers=[]).")
    ctx = RunContext.open(cfg)
    t = cfg.teacher
    model = create_model(t.name, ctx.data.num_classes, t.pretrained, role="teacher", pretrained_file=t.pretrained_file,
                         image_size=cfg.dataset.image_size, **t.kwargs)
    objective = build_objective({"ce": {"kind": "ce", "weight": 1.0, "label_smoothing": cfg.trainer.label_smoothing}})
    lr = t.lr if t.lr is not None else cfg.optimizer.lr
    # Pretrained weights are fine-tuned on images normalized as they were pretrained; the checkpoint records it,
    # and distill feeds the teacher that way whatever the student's normalization.
    norm = pretrained_normalization(model) if t.pretrained or t.pretrained_file else None
    job = TrainingJob(FOLDER, t.name, model, objective, lr, fingerprint(cfg, ctx.workspace), normalization=norm,
                      model_kwargs=OmegaConf.to_container(t.kwargs))
    return train_and_save(ctx, job)


STAGE = Stage("train-teacher", lambda cfg: FOLDER, trained_teacher_sections, fingerprint, run, skipped)
