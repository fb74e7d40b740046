"""The frozen teacher a stage learns from: the workspace's, a given checkpoint, or an ensemble of several."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from omegaconf import DictConfig
from torch import nn

from distillctl.console import console
from distillctl.errors import UserError
from distillctl.models import load_model
from distillctl.models.ensemble import TeacherEnsemble
from distillctl.models.image_size import built_size, size_problem
from distillctl.models.metadata import finite, require_classes
from distillctl.models.normalization import renormalized
from distillctl.ranks import is_main
from distillctl.teacher_files import teacher_checkpoints
from distillctl.workspace import Workspace


class Teacher(NamedTuple):
    """A loaded teacher: the model to run, the file and architecture of each member, and the lowest validation
    top-1 the members' files record from their training (None where one records none: a foreign checkpoint)."""

    model: nn.Module
    paths: list[Path]
    names: list[str]
    trained_top1: float | None = None


def load_teacher(cfg: DictConfig, ws: Workspace, classes: list[str]) -> Teacher:
    """The frozen teacher (an ensemble when `teachers` is set) fed images normalized as the run's data set is,
    and where it came from."""
    members, weights, paths, names, recorded = [], [], [], [], []
    for path, name, weight in teacher_checkpoints(cfg, ws):
        model, meta = load_model(path, name, len(classes))
        require_classes(meta, classes, "teacher", path)
        size = cfg.dataset.image_size
        if problem := size_problem(model, size):
            built = built_size(model)
            native = f"set dataset.image_size={built}, or " if built not in (None, size) else ""
            raise UserError(f"the teacher in {path} cannot take {size}x{size} images ({problem}): {native}train a teacher for {size} px.")
        if is_main():  # which weights a run learns from, in its log: a teacher may come from a file or another workspace
            named = f" ({'teachers[].name' if cfg.teachers else 'teacher.name'} says {name}: the file's own model is used)" if meta["model"] != name else ""
            console.print(f"teacher: {meta['model']} from {path}{named}", highlight=False, soft_wrap=True)
        members.append(renormalized(model, meta, cfg.dataset.mean, cfg.dataset.std))
        weights.append(weight)
        paths.append(path)
        names.append(str(meta["model"]))
        recorded.append(meta.get("val_top1"))
    trained = min(recorded) if all(finite(r) for r in recorded) else None  # a number from the file, nothing more
    return Teacher(members[0] if len(members) == 1 else TeacherEnsemble(members, weights), paths, names, trained)
