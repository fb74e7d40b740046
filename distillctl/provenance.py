"""Which stages of its workspace a stage was made from, and whether they have been made again since.

A finished stage records the fingerprints of the stages it read (`made_from` in its metrics.json): the student its
teacher's, the pruned model its student's, a quantized model its source's. `pipeline` remakes a stage whose inputs
changed by itself; a stage run alone (`distill trainer.epochs=5`) leaves the ones made from the old student as they
were, and `evaluate`, `predict` and `runs` say so instead of comparing models that no longer belong together.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from distillctl import files
from distillctl.workspace import METRICS_FILE, Workspace, finished, recorded_fingerprint

Finder = Callable[[str], "Path | None"]


def made_from(ws: Workspace, sources: Iterable[Path]) -> dict[str, str]:
    """Stage name -> fingerprint of each source that is a finished stage of `ws` (a folder or a file in it); files
    from elsewhere (`teacher.checkpoint=...`) are left out: nothing in the workspace remakes them."""
    inputs, bases = {}, {ws.job_dir.resolve(), ws.root.resolve()}
    for source in sources:
        folder = (source if source.is_dir() else source.parent).resolve()
        if folder.parent not in bases:
            continue
        found = ws.find(folder.name)
        if found is not None and found.resolve() == folder and (fp := recorded_fingerprint(found)):
            inputs[folder.name] = fp
    return inputs


def outdated(stages: Iterable[str], find: Finder) -> dict[str, str]:
    """Outdated stage -> the stage it was made from, for those of `stages` (in the order a pipeline makes them)
    whose source has been made again since with other settings or inputs, or is itself outdated."""
    stages, found = list(stages), {}
    for stage in stages:
        folder = find(stage)
        recorded = (files.read_json(folder / METRICS_FILE) or {}).get("made_from") if folder is not None else None
        # Read from a file anyone may have edited: only the names of stages made before this one are looked up.
        known = stages[:stages.index(stage)]
        for source, fingerprint in (recorded.items() if isinstance(recorded, dict) else ()):
            if source not in known:
                continue
            if source in found or ((current := find(source)) is not None and recorded_fingerprint(current) != fingerprint):
                found[stage] = source
                break
    return found


def chain(stage: str, outdated: dict[str, str]) -> list[str]:
    """The stages an outdated stage was made from, back to the one made again since (the last)."""
    sources = [outdated[stage]]
    while sources[-1] in outdated:
        sources.append(outdated[sources[-1]])
    return sources


def why(stage: str, outdated: dict[str, str]) -> str:
    """What an outdated stage was made from: `made from pruned, made from an earlier student`."""
    *between, changed = chain(stage, outdated)
    return ", ".join([f"made from {source}" for source in between] + [f"made from an earlier {changed}"])


def describe(outdated: dict[str, str]) -> dict[str, str]:
    """Outdated stage -> one line on it: what it was made from and what remakes it."""
    lines = {}
    for stage in outdated:
        changed = chain(stage, outdated)[-1]
        lines[stage] = (f"{stage} is outdated: {why(stage, outdated)} ({changed}/ was made again since); `distillctl "
                        f"pipeline` with the overrides that made the new {changed} remakes it")
    return lines


def in_folder(workspace: Path) -> Finder:
    """A finder over one workspace folder alone, for readers without a Workspace (`distillctl runs`)."""
    return lambda stage: workspace / stage if finished(workspace / stage) else None
