"""A weights file's metadata, checked before anything in it is used: the file may come from anyone (its `kwargs`
go to timm's model constructor: distillctl/model_arguments.py says what they may be)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from distillctl.errors import UserError
from distillctl.model_arguments import allowed_name, plain_value

NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,100}$")
MAX_CLASSES = 100_000


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
        if not allowed_name(key):
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
