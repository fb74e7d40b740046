"""What `resume=true` continues: the run a stage folder holds, checked against the command that asks.

A resume that builds another model cannot load the checkpoint, and before this check it also recorded itself as
the folder's run before failing: `pipeline` then no longer recognized the interrupted run as its own and trained it
again from the start. A resume with other settings (a batch size, a learning rate) loads, and its result differs
from a run never stopped; that is said, with what changed, and the run goes on.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.markup import escape

from distillctl import artifacts
from distillctl.console import console
from distillctl.errors import UserError
from distillctl.workspace import started

# Settings that say how a run is executed or kept, not what it computes.
HOW_NOT_WHAT = ("resume", "force", "run_dir", "trainer.threads", "trainer.devices", "trainer.log_every",
                "trainer.checkpoint_every_steps", "dataset.workers", "logger.")
SHOWN = 6  # changes listed before "and N more"


def check(out_dir: Path, last_weights: Path, fingerprint: str, model_name: str, settings: dict[str, Any]) -> None:
    """Refuse to resume `out_dir` into another model; warn when it resumes under other settings than it started with
    (`settings`: this command's resolved config)."""
    record = started(out_dir)
    began = f" (it was started by `{record['command']}`)" if isinstance(record.get("command"), str) else ""
    if last_weights.is_file():
        try:
            held = artifacts.read_metadata(last_weights).get("model")
        except UserError:  # unreadable: loading the state says what is wrong with it
            held = None
        if isinstance(held, str) and held != model_name:
            raise UserError(f"resume=true: {out_dir} holds a run of {held}{began}, and this command builds {model_name}. "
                            f"Resume with {held}, or leave out resume=true to train {model_name} from the start.")
    if record.get("fingerprint") in (None, fingerprint):
        return
    listed = changes(record.get("settings"), settings)
    console.print(f"[yellow]resume=true continues {out_dir} under settings other than those it started with"
                  f"{': ' + escape(listed) if listed else escape(began)}; its result will differ from a run never stopped[/]")


def changes(before: Any, after: Any) -> str:
    """The settings that differ between two resolved configs, as `key old -> new`, the first few of them."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return ""
    old, new = flat(before), flat(after)
    differ = [key for key in sorted(old.keys() | new.keys())
              if old.get(key) != new.get(key) and not key.startswith(HOW_NOT_WHAT)]
    shown = [f"{key} {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}" for key in differ[:SHOWN]]
    more = f" and {len(differ) - SHOWN} more" if len(differ) > SHOWN else ""
    return ", ".join(shown) + more


def flat(tree: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys to the values of a nested config, each as compact JSON."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True, default=str)
    return out
