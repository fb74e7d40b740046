"""Text and JSON files written atomically: what every stage leaves beside its weights (no torch needed to read)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

UMASK = os.umask(0o022)
os.umask(UMASK)


# A temporary file is named after its writer (.NAME.HOST-PID-RANDOM.partial), so that the next writer of NAME can
# tell the leftovers of a killed process from the file another live process is writing right now.
PARTIAL = ".partial"
HOST = socket.gethostname().replace(".", "_").replace("-", "_")


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` then rename tmp over `path`, so a crash leaves the previous file intact."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{HOST}-{os.getpid()}-", suffix=PARTIAL)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp's 0600 would make shared run folders unreadable to others
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_leftovers(path: Path) -> None:
    """Delete the temporary files of earlier writes of `path` whose process, on this host, is gone (killed mid-write):
    they can be as large as the file itself."""
    for leftover in path.parent.glob(f".{glob_escape(path.name)}.{HOST}-*{PARTIAL}"):
        pid = leftover.name[len(path.name) + len(HOST) + 3:].split("-")[0]
        if pid.isdigit() and not alive(int(pid)):
            leftover.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    """name with glob's special characters taken literally."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in name)


def alive(pid: int) -> bool:
    """Whether a process with this id runs on this host."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_json(path: Path, data: Any) -> None:
    """Pretty JSON, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, default=str) + "\n"))


def write_text(path: Path, text: str) -> None:
    """A text file, atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text))


def read_json(path: Path) -> dict[str, Any] | None:
    """The JSON object in `path`, or None when it is missing, unreadable or holds something else (a list where a
    metrics.json belongs is as unusable as a file cut short)."""
    value = read_json_value(path)
    return value if isinstance(value, dict) else None


def read_json_list(path: Path) -> list[Any] | None:
    """The JSON list in `path`, or None when it is missing, unreadable or holds something else."""
    value = read_json_value(path)
    return value if isinstance(value, list) else None


def read_json_value(path: Path) -> Any:
    """Whatever JSON `path` holds, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
