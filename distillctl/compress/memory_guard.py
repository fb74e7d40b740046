"""A bound on how much memory a piece of library work may add, for work that can run away rather than fail.

torch-pruning's dependency graph maps channel indices through every reshape; on some attention models
(EfficientFormerV2, YOLOv12: VainF/Torch-Pruning#525) those mappings feed each other and the index lists grow
without end, 40-60 MB/s on this machine, until the operating system kills the process, with no message. A
watcher thread reads the process's resident memory and, past the bound, raises an exception inside the guarded
thread (CPython's PyThreadState_SetAsyncExc), which the guard turns into one UserError.

Why not `_thread.interrupt_main()`: it runs whatever SIGINT handler the process has, and a host's handler (a
pytest-xdist worker's, a launcher's) may end the process instead of raising KeyboardInterrupt.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from distillctl.errors import UserError

POLL_S = 0.05


class Runaway(BaseException):
    """Raised inside the guarded thread by its watcher; a BaseException, so library code's `except Exception` lets it by."""


def resident_bytes() -> int | None:
    """This process's resident memory now (Linux), its peak so far elsewhere (macOS: growth past that peak is what
    counts there), or None where neither is known."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def set_async_exception(thread_id: int, exception: type[BaseException] | None) -> None:
    """Have `thread_id` raise `exception` at its next Python instruction; None withdraws one not yet raised."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exception) if exception else None)


class Watcher(threading.Thread):
    """Raises Runaway in `target` (a thread id) once the process holds more than `limit` bytes; after `stop()`
    returns, nothing more is raised."""

    def __init__(self, limit: int, target: int) -> None:
        super().__init__(daemon=True, name="distillctl-memory-guard")
        self.limit, self.target, self.fired, self.peak = limit, target, False, 0
        self.lock, self.stopped = threading.Lock(), threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(POLL_S):
            with self.lock:
                if self.stopped.is_set():
                    return
                self.peak = max(self.peak, resident_bytes() or 0)
                if self.peak > self.limit:
                    self.fired = True
                    set_async_exception(self.target, Runaway)
                    return

    def stop(self) -> None:
        """End the watch; a Runaway sent but not yet raised is withdrawn, so that the block's work stands."""
        with self.lock:
            self.stopped.set()
        if self.fired:
            set_async_exception(self.target, None)


@contextmanager
def bounded_growth(extra_bytes: int, refusal: str) -> Iterator[None]:
    """Run the block, refused with UserError(refusal, its `{measured}` filled in) if this process grows by more
    than `extra_bytes` or runs out of memory. Unguarded where memory cannot be read."""
    start = resident_bytes()
    if start is None:
        yield
        return
    watcher = Watcher(start + extra_bytes, threading.get_ident())
    watcher.start()
    try:
        try:
            yield
        finally:
            # A Runaway raised in here, sent just before the watcher stopped, replaces what was in flight: the
            # block did go past its bound.
            watcher.stop()
    except (Runaway, MemoryError) as error:
        if isinstance(error, Runaway):
            measured = f"past the {extra_bytes / 2**30:.1f} GB of memory it may add, and still growing"
        else:
            measured = f"out of memory after {(max(watcher.peak, resident_bytes() or 0) - start) / 2**30:.1f} GB more"
        raise UserError(refusal.format(measured=measured)) from None
