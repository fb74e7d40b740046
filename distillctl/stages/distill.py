"""`distillctl distill`: the student trained from the frozen teacher with the recipe's loss terms."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from distillctl.artifacts import load_weights
from distillctl.errors import UserError
from distillctl.losses import build_objective
from distillctl.models import create_model
from distillctl.models.teachers import load_teacher
from distillctl.provenance import made_from
from distillctl.stages.base import Stage
from distillctl.stages.context import RunContext
from distillctl.stages.training import TrainingJob, train_and_save
from distillctl.teacher_files import teacher_checkpoints
from distillctl.workspace import MODEL_FILE, Workspace, recorded_fingerprint
from distillctl.workspace import fingerprint as config_fingerprint

FOLDER = "student"


def sections(cfg: DictConfig) -> list[str]:
    """The config sections the student depends on."""
    return ["dataset", "student", "loss", "trainer", "optimizer", "scheduler", "teachers", "distill"]


def fingerprint(cfg: DictConfig, ws: Workspace) -> str:
    """What the student depends on: its config and the teacher it learns from."""
    try:
        paths = [path for path, _, _ in teacher_checkpoints(cfg, ws)]
    except UserError:
        return config_fingerprint(cfg, sections(cfg), [str(cfg.seed), "no-teacher"])
    teacher_ids = []
    for path in paths:
        teacher_id = recorded_fingerprint(path.parent) if path.name == MODEL_FILE else None
        if teacher_id is None:
            stat = path.stat()
            teacher_id = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        teacher_ids.append(teacher_id)
    return config_fingerprint(cfg, sections(cfg), [str(cfg.seed), *teacher_ids])


def run(cfg: DictConfig) -> dict:
    """Distill into the student and write runs/<recipe>/student/."""
    ctx = RunContext.open(cfg)
    objective = build_objective(cfg.loss.terms)
    teacher = load_teacher(cfg, ctx.workspace, ctx.data.classes) if objective.needs_teacher else None
    teacher_paths = teacher.paths if teacher else []
    s = cfg.student
    student = create_model(s.name, ctx.data.num_classes, s.pretrained, role="student", pretrained_file=s.pretrained_file,
                           image_size=cfg.dataset.image_size, **s.kwargs)
    if s.checkpoint:  # start from given weights (e.g. a pretrained student) rather than from scratch
        load_weights(Path(s.checkpoint).expanduser(), student)
    job = TrainingJob(
        FOLDER, s.name, student, objective, s.lr if s.lr is not None else cfg.optimizer.lr, fingerprint(cfg, ctx.workspace),
        teacher, model_kwargs=OmegaConf.to_container(s.kwargs),
        extra_metrics={"teacher": ", ".join(map(str, teacher_paths)) or None, "loss_terms": sorted(cfg.loss.terms),
                       "made_from": made_from(ctx.workspace, teacher_paths)},
    )
    return train_and_save(ctx, job)


STAGE = Stage("distill", lambda cfg: FOLDER, sections, fingerprint, run)
