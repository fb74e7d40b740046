"""Photo formats PIL does not read by itself: HEIC/HEIF, an iPhone's default, read through pillow-heif when it is
installed (`pip install 'distillctl[heic]'`), and camera raw files. Such a file was left out of a folder as a
stray non-image would be, so a class of iPhone photos lost them without a word; now the log names them."""

from __future__ import annotations

import os
from collections import Counter
from functools import lru_cache
from pathlib import Path

# Photo files that a plugin or a conversion makes readable, and what does.
NEEDS = {
    **dict.fromkeys((".heic", ".heif", ".hif"), "pip install 'distillctl[heic]' (pillow-heif) to read them"),
    **dict.fromkeys((".cr2", ".cr3", ".nef", ".arw", ".dng", ".raf", ".orf", ".rw2"), "convert them to JPEG or PNG"),
}


@lru_cache(maxsize=1)
def register_plugins() -> bool:
    """Teach PIL the formats of the installed plugins (pillow-heif: HEIC/HEIF) in this process; whether there was one."""
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


def left_out_note(root: Path, readable: frozenset[str]) -> str | None:
    """A line for the log naming the photos under `root` that are left out because nothing reads their format
    (`readable`: the suffixes PIL opens); None when there are none."""
    counts = Counter()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            suffix = os.path.splitext(name)[1].lower()
            if suffix in NEEDS and suffix not in readable and not name.startswith("."):
                counts[suffix] += 1
    if not counts:
        return None
    found = ", ".join(f"{n:,} {suffix}" for suffix, n in counts.most_common())
    needs: dict[str, list[str]] = {}
    for suffix in counts:
        needs.setdefault(NEEDS[suffix], []).append(suffix)
    fixes = "; ".join(f"{', '.join(suffixes)}: {need}" for need, suffixes in needs.items())
    return f"note: photos left out, in a format nothing here reads: {found} under '{root}' ({fixes})"
