"""The frozen teacher a stage learns from: the workspace's, a given checkpoint, or an ensemble of several."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from distillctl.errors import UserError
from distillctl.models.ensemble import TeacherEnsemble
from distillctl.models import load_model
from distillctl.models.normalization import renormalized
from distillctl.workspace import MODEL_FILE, Workspace


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
    """The frozen teacher (an ensemble when `teachers` is set) fed images normalized as the run's data set is,
    and where it came from."""
    members, weights, paths = [], [], []
    for path, name, weight in teacher_checkpoints(cfg, ws):
        model, meta = load_model(path, name, num_classes)
        if meta["num_classes"] != num_classes:
            raise UserError(f"the teacher in {path} predicts {meta['num_classes']} classes but the data set has {num_classes}.")
        members.append(renormalized(model, meta, cfg.dataset.mean, cfg.dataset.std))
        weights.append(weight)
        paths.append(path)
    return (members[0] if len(members) == 1 else TeacherEnsemble(members, weights)), paths
