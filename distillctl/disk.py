"""The disk a run writes to: checked before training where it can be, and a failed write explained in one line.

A full disk or a read-only folder otherwise surfaces as whatever the writing library raises (safetensors'
SafetensorError, torch's "PytorchStreamWriter failed", an OSError) as a traceback, long after the run began.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from distillctl.errors import UserError

# What each failed write means for the user, by errno and by the words libraries put in their own exceptions.
CAUSES = {
    errno.ENOSPC: ("No space left on device", "the disk is full"),
    errno.EDQUOT: ("Disk quota exceeded", "the disk quota is used up"),
    errno.EFBIG: ("File too large", "a file grew past the size this system allows"),
    errno.EROFS: ("Read-only file system", "the folder is on a read-only file system"),
    errno.EACCES: ("Permission denied", "this user may not write there"),
    errno.ENOTDIR: ("Not a directory", "a part of the path is a file, not a folder"),
}
MB = 1e6


def write_failure(exc: BaseException) -> str | None:
    """What a failed write says about the disk ("the disk is full"), or None when exc is not about the disk."""
    code, text = getattr(exc, "errno", None), str(exc)
    return next((meaning for number, (words, meaning) in CAUSES.items() if code == number or words in text), None)


def explain_write_error(exc: BaseException) -> str | None:
    """One line saying why a write failed and what to do, or None when exc is not about the disk."""
    if (meaning := write_failure(exc)) is None:
        return None
    where = getattr(exc, "filename", None)
    place = f" {where}" if where else ""
    return (f"could not write{place}: {meaning}. Free some space or pick a writable run_dir=; finished results were "
            "left as they were, and an interrupted training stage resumes with resume=true.")


def check_writable(path: Path, key: str) -> None:
    """Refuse, before any work, a folder (or its nearest existing parent) that this process cannot write."""
    existing = Path(path).expanduser().absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(f"{key}: {existing} is a file, not a folder. Pick a folder ({key}=...).")
    if not os.access(existing, os.W_OK):
        reason = "a read-only file system" if read_only(existing) else "not writable by this user"
        raise UserError(f"{key}: {existing} is {reason}. Pick a writable folder ({key}=...).")


def read_only(path: Path) -> bool:
    """Whether path lies on a file system mounted read-only."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def check_free_space(folder: Path, needed_bytes: float, what: str) -> None:
    """Refuse to start work whose files will not fit on the disk under folder."""
    free = shutil.disk_usage(folder).free
    if free < needed_bytes:
        raise UserError(f"{what} needs about {needed_bytes / MB:,.0f} MB in {folder}, but only {free / MB:,.1f} MB are "
                        "free. Free some space or pick another run_dir=.")
