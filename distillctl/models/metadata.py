"""A weights file's metadata, checked before anything in it is used: the file may come from anyone.

Its `kwargs` go to timm's model constructor, so a crafted file could otherwise point timm at another file of its
choosing (`checkpoint_path`, `pretrained_cfg`) or allocate without bound (`depth=10**8`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from distillctl.errors import UserError

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
KWARG = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
# Constructor arguments that load, fetch or locate something rather than shape the architecture.
FORBIDDEN_WORDS = ("path", "file", "url", "cfg", "pretrained", "checkpoint", "hub", "cache", "dir", "features_only", "out_indices")
MAX_INT = 4096  # depths, widths and multipliers of real architectures stay far below this
MAX_CLASSES = 100_000
MAX_STRING = 64


def checked(meta: dict[str, Any], path: Path) -> dict[str, Any]:
    """meta itself when every field that rebuilds the model is sane, else a UserError naming the field."""

    def refuse(what: str) -> UserError:
        return UserError(f"'{path}' has untrustworthy metadata ({what}); refusing to load it. Use a file written by distillctl or timm.")

    name = meta.get("model")
    if name is not None and not (isinstance(name, str) and NAME.match(name)):
        raise refuse(f"model name {str(name)[:40]!r}")
    classes = meta.get("num_classes")
    if classes is not None and not (isinstance(classes, int) and not isinstance(classes, bool) and 1 <= classes <= MAX_CLASSES):
        raise refuse(f"num_classes {str(classes)[:40]!r}")
    kwargs = meta.get("kwargs", {})
    if not isinstance(kwargs, dict):
        raise refuse("kwargs is not a mapping")
    for key, value in kwargs.items():
        if not (isinstance(key, str) and KWARG.match(key)) or any(word in key for word in FORBIDDEN_WORDS):
            raise refuse(f"model argument {str(key)[:40]!r} is not an architecture argument")
        if not plain_value(value):
            raise refuse(f"model argument {key}={str(value)[:40]} is not a small number, flag or short name")
    for key in ("shapes", "quantization"):  # their own loaders check what is inside
        if key in meta and not isinstance(meta[key], dict):
            raise refuse(f"{key} is not a mapping")
    for key in ("mean", "std"):
        stats = meta.get(key)
        if stats is not None and not (isinstance(stats, list) and 1 <= len(stats) <= 4 and all(finite(v) for v in stats)):
            raise refuse(f"{key} is not 1-4 finite numbers")
    return meta


def finite(value: Any) -> bool:
    """A real number that is not NaN or infinite."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def plain_value(value: Any) -> bool:
    """A constructor argument that can only shape a model: a flag, a bounded number or a short name."""
    if isinstance(value, bool):
        return True
    if isinstance(value, int):
        return abs(value) <= MAX_INT
    if isinstance(value, float):
        return math.isfinite(value) and abs(value) <= MAX_INT
    if isinstance(value, str):
        return len(value) <= MAX_STRING and not any(c in value for c in "/\\:~")
    return False
