"""`distillctl distill`: the student trained from the frozen teacher with the recipe's loss terms."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from distillctl.artifacts import load_weights
from distillctl.errors import UserError
from distillctl.losses import build_objective
from distillctl.models import create_model, load_model
from distillctl.models.ensemble import TeacherEnsemble
from distillctl.stages.context import RunContext
from distillctl.stages.training import train_and_save
from distillctl.workspace import MODEL_FILE, Workspace, fingerprint as config_fingerprint, recorded_fingerprint

STAGE = "student"


def teacher_checkpoint(cfg: DictConfig, ws: Workspace) -> Path:
    """teacher.checkpoint when set, else the teacher that train-teacher left in the workspace."""
    if cfg.teacher.checkpoint:
        path = Path(cfg.teacher.checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"teacher.checkpoint '{path}' does not exist.")
        return path
    found = ws.find("teacher")
    if found is None:
        from hydra.core.hydra_config import HydraConfig

        recipe = HydraConfig.get().runtime.choices.get("recipe", "NAME") if HydraConfig.initialized() else "NAME"
        raise UserError(
            f"no trained teacher in {ws.root / 'teacher'}. Train one with `distillctl train-teacher recipe={recipe}` "
            "(same overrides), or point teacher.checkpoint=PATH at a weights file."
        )
    return found / MODEL_FILE


def teacher_checkpoints(cfg: DictConfig, ws: Workspace) -> list[tuple[Path, str, float]]:
    """(weights file, model name, weight) of every teacher: the `teachers` list, else the one teacher."""
    if not cfg.teachers:
        return [(teacher_checkpoint(cfg, ws), cfg.teacher.name, 1.0)]
    found = []
    for i, entry in enumerate(cfg.teachers):
        if not entry.checkpoint:
            raise UserError(f"teachers[{i}] ({entry.name}) needs a checkpoint: each teacher of an ensemble is a trained weights file.")
        path = Path(entry.checkpoint).expanduser()
        if not path.is_file():
            raise UserError(f"teachers[{i}].checkpoint '{path}' does not exist.")
        found.append((path, entry.name, entry.weight))
    return found


def load_teacher(cfg: DictConfig, ws: Workspace, num_classes: int) -> tuple[nn.Module, list[Path]]:
    """The frozen teacher (an ensemble when `teachers` is set) and where it came from."""
    members, weights, paths = [], [], []
    for path, name, weight in teacher_checkpoints(cfg, ws):
        model, meta = load_model(path, name, num_classes)
        if meta["num_classes"] != num_classes:
            raise UserError(f"the teacher in {path} predicts {meta['num_classes']} classes but the data set has {num_classes}.")
        members.append(model)
        weights.append(weight)
        paths.append(path)
    return (members[0] if len(members) == 1 else TeacherEnsemble(members, weights)), paths


def fingerprint(cfg: DictConfig, ws: Workspace) -> str:
    """What the student depends on: its config and the teacher it learns from."""
    sections = ["dataset", "student", "loss", "trainer", "optimizer", "scheduler"]
    try:
        paths = [path for path, _, _ in teacher_checkpoints(cfg, ws)]
    except UserError:
        return config_fingerprint(cfg, [*sections, "teachers"], [str(cfg.seed), "no-teacher"])
    teacher_ids = []
    for path in paths:
        teacher_id = recorded_fingerprint(path.parent) if path.name == MODEL_FILE else None
        if teacher_id is None:
            stat = path.stat()
            teacher_id = f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
        teacher_ids.append(teacher_id)
    return config_fingerprint(cfg, [*sections, "teachers"], [str(cfg.seed), *teacher_ids])


def run(cfg: DictConfig) -> dict:
    """Distill into the student and write runs/<recipe>/student/."""
    ctx = RunContext.open(cfg)
    objective = build_objective(cfg.loss.terms)
    teacher, teacher_paths = None, []
    if objective.needs_teacher:
        teacher, teacher_paths = load_teacher(cfg, ctx.workspace, ctx.data.num_classes)
    student = create_model(cfg.student.name, ctx.data.num_classes, cfg.student.pretrained, **cfg.student.kwargs)
    if cfg.student.checkpoint:  # start from given weights (e.g. a pretrained student) rather than from scratch
        load_weights(Path(cfg.student.checkpoint).expanduser(), student)
    lr = cfg.student.lr if cfg.student.lr is not None else cfg.optimizer.lr
    extra = {"teacher": ", ".join(map(str, teacher_paths)) or None, "loss_terms": sorted(cfg.loss.terms)}
    return train_and_save(ctx, STAGE, cfg.student.name, student, objective, lr, fingerprint(cfg, ctx.workspace), teacher, extra)
