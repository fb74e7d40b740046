"""What differs between two resolved configs, in the settings that decide what a run computes."""

from __future__ import annotations

import json
from typing import Any

from distillctl.errors import first_few
from distillctl.execution_settings import EXECUTION_ONLY, RUN_CONTROL

# Settings that say how a run is executed or kept, not what it computes.
HOW_NOT_WHAT = (*RUN_CONTROL, "logger.", *EXECUTION_ONLY)
SHOWN = 6  # changes listed before "and N more"


def changes(before: Any, after: Any) -> str:
    """The settings that differ between two resolved configs, as `key old -> new`, the first few of them."""
    if not isinstance(before, dict) or not isinstance(after, dict):
        return ""
    old, new = flat(before), flat(after)
    differ = [key for key in sorted(old.keys() | new.keys())
              if old.get(key) != new.get(key) and not key.startswith(HOW_NOT_WHAT)]
    return first_few([f"{key} {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}" for key in differ], SHOWN)


def flat(tree: dict, prefix: str = "") -> dict[str, str]:
    """Dotted keys to the values of a nested config, each as compact JSON."""
    out: dict[str, str] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True, default=str)
    return out
