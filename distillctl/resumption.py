"""What `resume=true` continues: the run a stage folder holds, checked against the command that asks.

A resume that builds another model cannot load the checkpoint, and before this check it also recorded itself as
the folder's run before failing: `pipeline` then no longer recognized the interrupted run as its own and trained it
again from the start. A resume with other settings (a batch size, a learning rate) loads, and its result differs
from a run never stopped; that is said, with what changed, and the run goes on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape

from distillctl import artifacts
from distillctl.config_changes import changes
from distillctl.console import console
from distillctl.errors import UserError
from distillctl.workspace import started


def check(out_dir: Path, last_weights: Path, fingerprint: str, model_name: str, settings: dict[str, Any],
          shapes: dict[str, tuple[int, ...]] | None = None) -> None:
    """Refuse to resume `out_dir` into another model, or into the same one with other layer sizes than `shapes` (this
    command's model: a pruning ratio changed); warn when it resumes under other settings than it started with
    (`settings`: this command's resolved config)."""
    record = started(out_dir)
    began = f" (it was started by `{record['command']}`)" if isinstance(record.get("command"), str) else ""
    listed = changes(record.get("settings"), settings) if record.get("fingerprint") not in (None, fingerprint) else ""
    if last_weights.is_file():
        try:
            held, held_shapes = artifacts.read_metadata(last_weights).get("model"), artifacts.tensor_shapes(last_weights)
        except UserError:  # unreadable: loading the state says what is wrong with it
            held, held_shapes = None, {}
        if isinstance(held, str) and held != model_name:
            raise UserError(f"resume=true: {out_dir} holds a run of {held}{began}, and this command builds {model_name}. "
                            f"Resume with {held}, or leave out resume=true to train {model_name} from the start.")
        if differ := [name for name, shape in (shapes or {}).items() if held_shapes.get(name, shape) != shape]:
            first = differ[0]
            raise UserError(f"resume=true: {out_dir} holds a {held or model_name} with other layer sizes than this command "
                            f"builds ({first}: {list(held_shapes[first])} there, {list(shapes[first])} here"
                            f"{'; changed: ' + listed if listed else ''}){began}. Resume with the settings it started with, "
                            "or leave out resume=true to start again.")
    if not listed and record.get("fingerprint") in (None, fingerprint):
        return
    console.print(f"[yellow]resume=true continues {out_dir} under settings other than those it started with"
                  f"{': ' + escape(listed) if listed else escape(began)}; its result will differ from a run never stopped[/]")
