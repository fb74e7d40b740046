"""Where a stage's teachers come from: teacher.checkpoint, the workspace's trained teacher, or the `teachers` list.

Only the file system is asked, so the CLI checks it before torch is imported (distillctl.preflight).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from distillctl.errors import UserError
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
