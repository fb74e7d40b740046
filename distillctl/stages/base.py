"""What every stage offers the commands that chain stages (pipeline, reproduce): the folder it writes, what its
result depends on, and how to run it; and the one rule for when to run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from distillctl.console import console
from distillctl.engine.fit import LAST_STATE
from distillctl.workspace import Workspace, finished, recorded_fingerprint, started_fingerprint


@dataclass(frozen=True)
class Stage:
    """A command that leaves one finished folder in the workspace."""

    name: str
    # The workspace folder the stage writes for this config (quantize writes one per method).
    folder: Callable[[DictConfig], str]
    # A digest of the config sections and input artifacts the result depends on; equal digests mean nothing to redo.
    fingerprint: Callable[[DictConfig, Workspace], str]
    run: Callable[[DictConfig], Any]
    # Whether the stage has nothing to do for this config (a teacher given as a file needs no training).
    skipped: Callable[[DictConfig], str | None] = lambda cfg: None


def bring_up_to_date(stage: Stage, cfg: DictConfig, ws: Workspace, redo: bool = False) -> bool:
    """Run `stage` unless it has nothing to do or a finished run of the same fingerprint is in `ws`; an
    interrupted run of the same fingerprint is resumed rather than restarted. Returns whether it ran."""
    folder = stage.folder(cfg)
    if reason := stage.skipped(cfg):
        console.print(f"[green]skip[/] {stage.name}: {reason}")
        return False
    wanted = stage.fingerprint(cfg, ws)
    done = ws.find(folder)
    if not redo and done is not None and recorded_fingerprint(done) == wanted:
        console.print(f"[green]skip[/] {folder}: {done} is up to date with this config (force=true redoes it)")
        return False
    console.rule(f"{folder} ({ws.job_dir})")
    partial = ws.job_dir / folder
    if not redo and not finished(partial) and started_fingerprint(partial) == wanted and (partial / LAST_STATE).is_file():
        console.print(f"resuming the interrupted run in {partial}")
        cfg = OmegaConf.merge(cfg, {"resume": True})
    stage.run(cfg)
    return True
