"""`distillctl runs [PATH]`: every workspace under a folder (default `runs/`), each stage finished, running,
interrupted or failed (and why), with its test top-1 and what continues an interrupted one.

Read from the files the stages leave (metrics.json, started.json, train.log, the stage locks), without torch or Hydra,
so it answers at once however much has been trained. Workspaces that `reproduce`, `search` and `-m` sweeps make inside
another are summed up on one line each; `distillctl runs runs/<recipe>/reproduce` lists them in full.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distillctl import files, provenance
from distillctl.errors import UserError
from distillctl.model_files import MODEL_STAGES
from distillctl.workspace import METRICS_FILE, NESTED, STAGING, STARTED_FILE, finished, lock_file, recorded_fingerprint
from distillctl.workspace import started as started_record

# Stages in the order a pipeline makes them; a folder of another name is not a stage.
STAGES = (*MODEL_STAGES, "export", "report")
EPOCH = re.compile(r" epoch (\d+)/(\d+) ")
# Each run of a stage starts its train.log lines with this header; a mid-epoch checkpoint leaves the other line.
RUN_HEADER = re.compile(r"^# .*: epochs \d+\.\.(\d+)", re.M)
SAVED_STEP = re.compile(r"^# checkpoint: epoch (\d+), step (\d+)$", re.M)
# What a run stopped by a signal records as it ends (engine/stop_signal.py): the signal, as its message names it.
STOPPED_BY = re.compile(r"^# stopped by (.+?) (?:in|after) epoch \d+", re.M)


@dataclass
class StageStatus:
    """One stage of one workspace."""

    workspace: str
    stage: str
    state: str  # finished | running | interrupted | failed: why | finished, newer run interrupted | ...
    model: str = ""
    top1: float | None = None
    epochs: str = ""
    finished_at: str = ""
    resume: str = ""  # the command that continues an interrupted run


def stage_status(workspace: Path, stage: str, outdated: dict[str, str] | None = None) -> StageStatus | None:
    """The state of workspace/stage, or None where no run of it ever started; `outdated` (provenance.outdated)
    names the stages made from one made again since."""
    folder = workspace / stage
    started = started_record(folder)
    done = finished(folder)
    if not done and not started and not (folder / STAGING).is_dir():
        return None
    metrics = files.read_json(folder / METRICS_FILE) if done else {}
    damaged = metrics is None  # cut short or edited by hand: not a newer run, which its missing fingerprint suggests
    metrics = metrics or {}
    outdated = outdated or {}
    status = StageStatus(str(workspace), stage, f"outdated: {provenance.why(stage, outdated)}" if stage in outdated else "finished")
    if done:
        status.model = str(metrics.get("model", ""))
        top1 = metrics.get("test_top1", metrics.get("top1"))
        status.top1 = float(top1) if isinstance(top1, (int, float)) else None
        status.epochs = str(metrics.get("epochs", "") or "")
        status.finished_at = time.strftime("%Y-%m-%d %H:%M", time.localtime((folder / METRICS_FILE).stat().st_mtime))
    newer = started.get("fingerprint") not in (None, recorded_fingerprint(folder) if done else None)
    run = last_run(folder)
    reached = progress(run)
    if writer_alive(workspace, stage):
        status.state = "running" + (f" (epoch {reached})" if reached else "")
    elif damaged:
        status.state = f"damaged: {METRICS_FILE} is unreadable; its command with force=true (or pipeline) makes it again"
    elif error := first_sentence(started.get("failed")):  # the last run stopped on an error (workspace.note_failure)
        status.state = f"finished; a newer run failed: {error}" if done else f"failed: {error}"
    elif newer or not done:  # started and not finished, or results staged and never published
        saved = saved_step(run)
        what = f"interrupted in epoch {saved}" if saved else f"interrupted at epoch {reached}" if reached else "interrupted"
        what += f" by {cause}" if (cause := stopped_by(run)) else ""
        status.state = f"finished; a newer run {what}" if done else what
        if started.get("command"):
            status.resume = continuation(workspace, str(started["command"]))
    return status


def continuation(workspace: Path, command: str) -> str:
    """What continues an interrupted run made by `command` in `workspace`."""
    parts = workspace.parts
    if "sweep" in parts[:-1]:  # a job of a -m sweep: the sweep is run again on its own folder
        sweep = Path(*parts[: parts.index("sweep") + 2])
        return f"the sweep's command again, with hydra.sweep.dir={sweep}"
    verb = command.split()[1] if len(command.split()) > 1 else ""
    # pipeline, reproduce and search resume their interrupted stages by themselves; a stage alone is told to
    return command if verb in ("pipeline", "reproduce", "search") else f"{command} resume=true"


def last_run(folder: Path) -> tuple[str, str]:
    """(the last run's lines of the stage's train.log, its last epoch number or ''), read from the log's tail."""
    try:
        with (folder / "train.log").open("rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 16384))  # the tail: a long run's log is long
            tail = log.read().decode(errors="replace")
    except OSError:
        return "", ""
    headers = list(RUN_HEADER.finditer(tail))
    return (tail[headers[-1].end():], headers[-1].group(1)) if headers else (tail, "")


def progress(run: tuple[str, str]) -> str:
    """`k/N`: the last epoch that the last run (`last_run`) reports finished, or '' when none."""
    found = EPOCH.findall(run[0])
    return f"{found[-1][0]}/{found[-1][1]}" if found else ""


def saved_step(run: tuple[str, str]) -> str:
    """`e/N at step s (saved)` where the last run (`last_run`) saved a checkpoint inside an epoch after its last
    finished one (trainer.checkpoint_every_steps, or a stop on a signal), else ''."""
    lines, epochs = run
    saved = list(SAVED_STEP.finditer(lines))
    if not saved or EPOCH.search(lines, saved[-1].end()):
        return ""
    epoch, step = saved[-1].groups()
    return f"{epoch}/{epochs or '?'} at step {step} (saved)"


def stopped_by(run: tuple[str, str]) -> str:
    """The signal that stopped the last run (`last_run`) as it records it (Ctrl-C, SIGTERM, ...), or '' where it
    recorded none (killed, crashed, or still going)."""
    found = STOPPED_BY.findall(run[0])
    return found[-1] if found else ""


def first_sentence(error: object) -> str:
    """What an error says happened, without the advice after it; '' for none."""
    # A sentence ends where a capital letter follows: "e.g. a path" and "1. 5" go on.
    return re.split(r"\.\s+(?=[A-Z])", error)[0].rstrip(".") if isinstance(error, str) else ""


def writer_alive(workspace: Path, stage: str) -> bool:
    """Whether a distillctl process holds the stage's lock now: the pid the lock names is alive and is distillctl.
    Read, not locked: taking the lock even for an instant could refuse a run starting then."""
    path = lock_file(workspace, stage)
    try:
        holder = path.read_text().strip()
    except OSError:
        return False
    if not holder.startswith("pid ") or not holder[4:].isdigit():
        return False
    pid = int(holder[4:])
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError, OverflowError):
        return False
    try:  # a pid the lock names may have been reused by another program since
        return b"distillctl" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True  # no /proc (macOS): alive is the best evidence there is


def is_workspace(folder: Path) -> bool:
    """Whether a folder holds any stage folder a run started."""
    return any((folder / stage / name).exists() for stage in STAGES for name in (METRICS_FILE, STARTED_FILE, STAGING))


def workspaces(root: Path, nested: bool) -> list[Path]:
    """The workspaces under root (root included), shallow first; inside reproduce/search/sweep folders only when
    `nested` (or when root is one)."""
    found, queue = [], [root]
    while queue:
        folder = queue.pop(0)
        # a folder only reproduce, search or a sweep wrote into is listed for its summary lines
        if is_workspace(folder) or (not nested and any((folder / name).is_dir() for name in NESTED)):
            found.append(folder)
        try:
            children = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
        except OSError:
            continue
        queue += [c for c in children if c.name not in STAGES and (nested or c.name not in NESTED)]
    return found


def nested_summary(workspace: Path) -> list[str]:
    """One line for each reproduce, search or sweep folder inside a workspace."""
    lines = []
    reproduce = workspace / "reproduce"
    if reproduce.is_dir():
        seeds = sorted(p.name for p in reproduce.iterdir() if p.name.startswith("seed-") and not p.name.endswith("-baseline"))
        lines.append(f"{reproduce}: {plural(len(seeds), 'seed')}, {reproduce_results(reproduce)}")
    search = workspace / "search"
    if search.is_dir():
        trials = [p for p in search.glob("trial-*") if p.is_dir()]
        lines.append(f"{search}: {plural(len(trials), 'trial')}, {search_results(search)}")
    sweeps = workspace / "sweep"
    if sweeps.is_dir():
        for sweep in sorted(p for p in sweeps.iterdir() if p.is_dir()):
            jobs = [p for p in sweep.iterdir() if p.is_dir() and not p.name.startswith(".")]
            failed = sum((job / "failed.json").is_file() for job in jobs)
            lines.append(f"{sweep}: {plural(len(jobs), 'job')}" + (f", {failed} failed" if failed else ""))
    return [f"{line} (list them: distillctl runs {line.split(':')[0]})" for line in lines]


def reproduce_results(folder: Path) -> str:
    """What a reproduce folder's results.json says in a few words: the means over seeds of the student, the baseline
    and the gain, and whether the expectations held; methods run one by one compare at a glance."""
    results = files.read_json(folder / "results.json")
    rows = results.get("rows") if results else None
    if not isinstance(rows, dict):
        return "no results yet"
    said = []
    for name, label in (("student", "student"), ("baseline", "no teacher"), ("gain", "gain")):
        row = rows.get(name)
        if isinstance(row, dict) and isinstance(row.get("mean"), (int, float)) and isinstance(row.get("std"), (int, float)):
            mean = f"{100 * row['mean']:+.2f}" if name == "gain" else f"{100 * row['mean']:.2f}%"
            said.append(f"{label} {mean} ± {100 * row['std']:.2f}")
    checked = [e for e in results.get("expectations") or [] if isinstance(e, dict)]
    missed = sum(e.get("ok") is False for e in checked)
    if checked:
        said.append(f"{missed} of {plural(len(checked), 'expectation')} missed" if missed else "expectations met")
    return ", ".join(said + ["results.md"])


def search_results(folder: Path) -> str:
    """The best trial a search's results.json names, with its validation top-1, and best.yaml when written."""
    if not (folder / "best.yaml").is_file():
        return "no best.yaml yet"
    best = (files.read_json(folder / "results.json") or {}).get("best")
    if not isinstance(best, dict) or not isinstance(best.get("val_top1"), (int, float)):
        return "best.yaml"
    own = " (the recipe's own values)" if best.get("recipe_default") is True else ""
    return f"best trial {best.get('number')}: {100 * best['val_top1']:.2f}% validation top-1{own}, best.yaml"


def plural(count: int, noun: str) -> str:
    """`1 seed`, `3 seeds`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def collect(root: Path) -> tuple[list[StageStatus], list[str]]:
    """Every stage's status under root, and the one-line summaries of the nested workspaces."""
    if not root.is_dir():
        raise UserError(f"{root} is no folder of runs: give the folder the runs were written to (run_dir's parent, "
                        "runs/ by default), e.g. `distillctl runs runs`.")
    nested = root.name in NESTED or root.parent.name in NESTED
    rows, notes = [], []
    for workspace in workspaces(root, nested):
        outdated = provenance.outdated(STAGES, provenance.in_folder(workspace))
        rows += [s for stage in STAGES if (s := stage_status(workspace, stage, outdated)) is not None]
        if not nested:
            notes += nested_summary(workspace)
    return rows, notes


def show(args: list[str]) -> None:
    """`distillctl runs [PATH] [--json]`: a table on a terminal, tab-separated lines when piped, or JSON."""
    as_json = "--json" in args
    paths = [a for a in args if a != "--json"]
    if len(paths) > 1 or any(p.startswith("-") for p in paths):
        raise UserError("runs takes one folder and --json: `distillctl runs [runs] [--json]`.")
    if not paths and not Path("runs").is_dir():
        rows, notes = [], []  # nothing run from this folder yet: said as such, not as a mistake
    else:
        rows, notes = collect(Path(paths[0] if paths else "runs"))
    if as_json:
        print(json.dumps({"stages": [asdict(r) for r in rows], "nested": notes}, indent=2))
        return
    from distillctl.console import console

    if not console.is_terminal:  # for grep and cut: one line per stage
        for r in rows:
            print("\t".join([r.workspace, r.stage, r.state, r.model, fmt_top1(r.top1), r.epochs, r.finished_at, r.resume]))
        for note in notes:
            print(note)
        return
    if rows or not notes:
        table_of(rows, console)
    for note in notes:
        console.print(note, highlight=False, soft_wrap=True)
    for r in rows:
        if r.resume:
            console.print(f"continue {r.workspace}/{r.stage}: {r.resume}", highlight=False, soft_wrap=True)


def table_of(rows: list[StageStatus], console: Any) -> None:
    """The rich table of stages, each workspace named once."""
    from rich.table import Table

    table = Table(title_justify="left")
    for column in ("workspace", "stage", "state", "model", "test top-1", "epochs", "finished"):
        table.add_column(column, justify="right" if column in ("test top-1", "epochs") else "left",
                         overflow="fold" if column == "workspace" else "ellipsis")
    if not rows:
        console.print("no runs here yet: `distillctl pipeline` writes its stages to runs/<recipe>/")
        return
    previous = None
    for r in rows:
        style = "yellow" if "interrupted" in r.state or r.state.startswith(("outdated", "damaged")) else "cyan" if r.state.startswith("running") else None
        when = r.finished_at.removeprefix(time.strftime("%Y-"))  # this year's dates without the year: a narrower table
        table.add_row(r.workspace if r.workspace != previous else "", r.stage, r.state, r.model, fmt_top1(r.top1),
                      r.epochs, when, style=style)
        previous = r.workspace
    console.print(table)


def fmt_top1(top1: float | None) -> str:
    """A top-1 as the reports print it."""
    return f"{100 * top1:.2f}%" if top1 is not None else ""
