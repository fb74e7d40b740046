"""What a model constructor argument (`student.kwargs`, the `kwargs` in a weights file's metadata) may be: something
that shapes the architecture, never something that loads, fetches or locates a file, nor a size without bound.

The same rule serves the config (so a model is never saved with arguments its own file could not be loaded with)
and every weights file read (where a crafted file could otherwise point timm at a file of its choosing through
`checkpoint_path` or `pretrained_cfg`, or allocate without bound with `depth=10**8`).
"""

from __future__ import annotations

import math
import re
from typing import Any

NAME = re.compile(r"^[a-z][a-z0-9_]{0,40}$")
# Words in the names of constructor arguments that load, fetch or locate something rather than shape the model.
FORBIDDEN_WORDS = ("path", "file", "url", "cfg", "pretrained", "checkpoint", "hub", "cache", "dir", "features_only", "out_indices")
MAX_INT = 4096  # depths, widths and multipliers of real architectures stay far below this
MAX_STRING = 64


def allowed_name(key: Any) -> bool:
    """Whether key can name an architecture argument."""
    return isinstance(key, str) and bool(NAME.match(key)) and not any(word in key for word in FORBIDDEN_WORDS)


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
