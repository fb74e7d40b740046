"""The frozen teacher a stage learns from: the workspace's, a given checkpoint, or an ensemble of several."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig
from torch import nn

from distillctl.errors import UserError
from distillctl.models import fixed_image_size, load_model
from distillctl.models.ensemble import TeacherEnsemble
from distillctl.models.normalization import renormalized
from distillctl.teacher_files import teacher_checkpoints
from distillctl.workspace import Workspace


def load_teacher(cfg: DictConfig, ws: Workspace, num_classes: int) -> tuple[nn.Module, list[Path]]:
    """The frozen teacher (an ensemble when `teachers` is set) fed images normalized as the run's data set is,
    and where it came from."""
    members, weights, paths = [], [], []
    for path, name, weight in teacher_checkpoints(cfg, ws):
        model, meta = load_model(path, name, num_classes)
        if meta["num_classes"] != num_classes:
            raise UserError(f"the teacher in {path} predicts {meta['num_classes']} classes but the data set has {num_classes}.")
        size = cfg.dataset.image_size
        if (fixed := fixed_image_size(model)) not in (None, (size, size)):
            raise UserError(f"the teacher in {path} takes {fixed[0]}x{fixed[1]} images only and dataset.image_size is {size}: "
                            f"set dataset.image_size={fixed[0]}, or train a teacher for {size} px.")
        members.append(renormalized(model, meta, cfg.dataset.mean, cfg.dataset.std))
        weights.append(weight)
        paths.append(path)
    return (members[0] if len(members) == 1 else TeacherEnsemble(members, weights)), paths
