"""What every stage offers the commands that chain stages (pipeline, reproduce): the folder it writes, what its
result depends on, and how to run it; and the one rule for when to run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from rich.markup import escape
from rich.table import Table
from yaml import YAMLError

from distillctl.config_changes import changes
from distillctl.console import console
from distillctl.data.content_stamp import dataset_stamp
from distillctl.ranks import is_main, ranks
from distillctl.workspace import (CONFIG_FILE, METRICS_FILE, Workspace, finished, has_checkpoint, recorded_fingerprint, started,
                                  started_fingerprint)


@dataclass(frozen=True)
class Stage:
    """A command that leaves one finished folder in the workspace."""

    name: str
    # The workspace folder the stage writes for this config (quantize writes one per method).
    folder: Callable[[DictConfig], str]
    # The config sections its result depends on (beside the seed and its inputs).
    sections: Callable[[DictConfig], list[str]]
    # A digest of the config sections and input artifacts the result depends on; equal digests mean nothing to redo.
    fingerprint: Callable[[DictConfig, Workspace], str]
    run: Callable[[DictConfig], Any]
    # Whether the stage has nothing to do for this config (a teacher given as a file needs no training).
    skipped: Callable[[DictConfig], str | None] = lambda cfg: None
    # Whether this config's run trains a model: in a multi-process job every process takes part in one that does,
    # and rank 0 runs one that does not alone.
    trains: Callable[[DictConfig], bool] = lambda cfg: True


def run_stage(stage: Stage, cfg: DictConfig) -> Any:
    """Run the stage in this process, or, in a multi-process job, on rank 0 alone when it trains nothing."""
    return stage.run(cfg) if stage.trains(cfg) else on_rank_zero(stage.run, cfg)


def on_rank_zero(run: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """`run(cfg)` on rank 0 alone while the other processes of a multi-process job wait; every process gets its
    result. A single process just runs it."""
    if ranks().world == 1:
        return run(cfg)
    from distillctl.engine import distributed
    from distillctl.engine.device import pick_device

    distributed.setup(pick_device(cfg.trainer.device), cfg.trainer.dist_timeout_s)
    result = None
    if is_main():
        with distributed.alone():
            result = run(cfg)
    return distributed.broadcast(result)


def bring_up_to_date(stage: Stage, cfg: DictConfig, ws: Workspace, redo: bool = False) -> bool:
    """Run `stage` unless it has nothing to do or a finished run of the same fingerprint is in `ws`; an
    interrupted run of the same fingerprint is resumed rather than restarted. Returns whether it ran."""
    decision = plan(stage, cfg, ws, redo) if is_main() else None
    if ranks().world > 1:  # every process of the job takes rank 0's decision, which it took from the files it saw
        decision = on_rank_zero(lambda _: decision, cfg)
    if decision == "skip":
        return False
    if decision == "resume":
        cfg = OmegaConf.merge(cfg, {"resume": True})
    run_stage(stage, cfg)
    return True


@dataclass(frozen=True)
class Plan:
    """What bring_up_to_date does with a stage, and why."""

    action: str  # skip, link (take a finished twin's results), resume or run
    name: str  # the stage's folder, or its command where it has nothing to do
    why: str = ""  # empty for a first run
    source: Path | None = None  # the twin to link


def plan(stage: Stage, cfg: DictConfig, ws: Workspace, redo: bool) -> str:
    """What bring_up_to_date does with the stage: skip, resume or run (and the log says why)."""
    chosen = decide(stage, cfg, ws, redo)
    if chosen.action in ("skip", "link"):
        console.print(f"[green]skip[/] {chosen.name}: {escape(chosen.why)}")
        if chosen.source is not None:
            ws.adopt(chosen.name, chosen.source)
        return "skip"
    console.rule(f"{chosen.name} ({ws.job_dir})")
    if chosen.action == "resume":
        console.print(escape(chosen.why))
    elif chosen.why:
        console.print(f"[yellow]running {chosen.name} again[/]: {escape(chosen.why)}")
    return chosen.action


def decide(stage: Stage, cfg: DictConfig, ws: Workspace, redo: bool) -> Plan:
    """What bring_up_to_date would do with the stage, and why, with nothing changed (pipeline dry_run=true)."""
    folder = stage.folder(cfg)
    if reason := stage.skipped(cfg):
        return Plan("skip", stage.name, reason)
    wanted = stage.fingerprint(cfg, ws)
    done = ws.find(folder)
    if not redo and done is not None and recorded_fingerprint(done) == wanted:
        if (trained_on := started(done).get("data")) is not None and trained_on != dataset_stamp(cfg.dataset):
            return Plan("run", folder, f"the files of dataset.path={cfg.dataset.path} changed since {done} was made (added, removed, "
                                       "moved to another class or edited)")
        return Plan("skip", folder, f"{done} is up to date with this config (force=true redoes it)")
    if not redo and cfg.reuse and (twin := ws.twin(folder, wanted)) is not None:
        return Plan("link", folder, f"another job of this sweep finished it with this config ({twin}): linked, not rerun", twin)
    if not redo and cfg.reuse and (kin := ws.neighbour(folder, wanted, dataset_stamp(cfg.dataset))) is not None:
        return Plan("link", folder, f"{kin} was made with this very config, inputs and data: linked, not made again "
                                    "(reuse=false makes it here)", kin)
    partial = ws.job_dir / folder
    if not redo and not finished(partial) and holds_checkpoint_of(partial, wanted):
        return Plan("resume", folder, f"resuming the interrupted run in {partial}")
    if done is None:
        return Plan("run", folder)
    if not redo:
        return Plan("run", folder, why_outdated(stage, cfg, done))
    return Plan("run", folder, "force=true" if cfg.force else "a stage before it is made again in this run")


def holds_checkpoint_of(folder: Path, fingerprint: str) -> bool:
    """Whether `folder` holds a saved epoch of the run with this fingerprint, which a rerun may resume."""
    return started_fingerprint(folder) == fingerprint and has_checkpoint(folder)


def print_plans(title: str, plans: list[tuple[str, Plan]], labelled: str = "") -> None:
    """A dry run's table: what each stage would do, and why; `labelled` names a first column of the rows' labels."""
    table = Table(title=title, title_justify="left")
    for column in ([labelled] if labelled else []) + ["stage", "would", "why"]:
        table.add_column(column)
    for label, chosen in plans:
        table.add_row(*([label] if labelled else []), chosen.name, chosen.action, escape(chosen.why or "not made yet"))
    console.print(table)


def why_outdated(stage: Stage, cfg: DictConfig, done: Path) -> str:
    """Why the finished run in `done` is not this config's: the settings it was made with that differ, else its inputs."""
    keys = ["seed", *stage.sections(cfg)]
    if recorded_fingerprint(done) is None:
        return f"{done / METRICS_FILE} is damaged or records no fingerprint"
    if (made_with := asked_config(done)) is None:
        return f"{done} was made with another config (its {CONFIG_FILE} cannot be read)"
    now = {key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key] for key in keys}
    if listed := changes({key: made_with.get(key) for key in keys}, now):
        return f"{done} was made with {listed}"
    return f"what {done} was made from has changed since (an earlier stage was made again, or an older distillctl made it)"


def asked_config(done: Path) -> dict | None:
    """The config a finished stage was run with, as the command gave it. A training stage's config.yaml records the
    trainer its job ran (prune's fine-tuning epochs as trainer.epochs); the settings noted when it started do not."""
    record = started(done)
    if record.get("fingerprint") == recorded_fingerprint(done) and isinstance(record.get("settings"), dict):
        return record["settings"]
    try:
        made_with = OmegaConf.to_container(OmegaConf.load(done / CONFIG_FILE), resolve=False)
    except (OSError, ValueError, YAMLError, OmegaConfBaseException):  # nothing to compare with; it is redone all the same
        return None
    return made_with if isinstance(made_with, dict) else None
