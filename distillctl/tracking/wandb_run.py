"""Weights & Biases: one run per stage, offline by default (`wandb sync` uploads it later)."""

from __future__ import annotations

import re
from pathlib import Path

from omegaconf import DictConfig

from distillctl.tracking import RunInfo


class WandbRun:
    """The stage's W&B run in the group of its sweep, search or pipeline."""

    def __init__(self, settings: DictConfig, info: RunInfo) -> None:
        import wandb

        previous = info.previous.get("wandb")
        self.run = wandb.init(
            project=settings.project or f"distillctl-{info.experiment}",
            entity=settings.entity,
            group=info.group,
            name=info.name,
            dir=str(info.out_dir),
            mode=str(settings.mode),
            config=info.params,
            id=previous,  # a resumed stage continues its run
            resume="allow" if previous else None,
            reinit="create_new",  # a pipeline opens one run per stage in one process
            # Leave stdout alone: W&B's console capture would wrap the rich progress display.
            settings=wandb.Settings(console="off", silent=True),
        )

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def artifacts(self, paths: list[Path]) -> None:
        import wandb

        # One versioned artifact per stage folder: runs/quickstart/student -> runs-quickstart-student.
        artifact = wandb.Artifact(re.sub(r"[^\w.-]+", "-", self.run.name).strip("-"), type="distillctl-stage")
        for path in paths:
            artifact.add_file(str(path))
        self.run.log_artifact(artifact)

    def close(self, outcome: str) -> None:
        self.run.finish(exit_code=0 if outcome == "finished" else 1)  # W&B has no state for a stopped run

    def identity(self) -> str:
        return self.run.id


def open_run(settings: DictConfig, info: RunInfo) -> WandbRun:
    """The stage's W&B run."""
    return WandbRun(settings, info)
