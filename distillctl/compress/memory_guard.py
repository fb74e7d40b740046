"""A bound on how much memory a piece of library work may add, for work that can run away rather than fail.

torch-pruning's dependency graph maps channel indices through every reshape; on some attention models
(EfficientFormerV2, YOLOv12: VainF/Torch-Pruning#525) those mappings feed each other and the index lists grow
without end, 40-60 MB/s on this machine, until the operating system kills the process, with no message. A
watcher thread reads the process's resident memory and, past the bound, interrupts the main thread, which turns
the interruption into one UserError; a Ctrl-C of the user's own is re-raised as it came.
"""

from __future__ import annotations

import _thread
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from distillctl.errors import UserError

POLL_S = 0.05


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


class Watcher(threading.Thread):
    """Interrupts the main thread once the process holds more than `limit` bytes; `stop()` ends it for good."""

    def __init__(self, limit: int) -> None:
        super().__init__(daemon=True, name="distillctl-memory-guard")
        self.limit, self.fired, self.peak = limit, False, 0
        self.lock, self.stopped = threading.Lock(), threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(POLL_S):
            with self.lock:
                if self.stopped.is_set():
                    return
                self.peak = max(self.peak, resident_bytes() or 0)
                if self.peak > self.limit:
                    self.fired = True
                    _thread.interrupt_main()
                    return

    def stop(self) -> None:
        """No interruption is sent once this returns."""
        with self.lock:
            self.stopped.set()


@contextmanager
def bounded_growth(extra_bytes: int, refusal: str) -> Iterator[None]:
    """Run the block, refused with UserError(refusal, its `{measured}` filled in) if this process grows by more
    than `extra_bytes` or runs out of memory. Unguarded where memory cannot be read, and off the main thread (the
    only one that can be interrupted)."""
    start = resident_bytes()
    if start is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    watcher = Watcher(start + extra_bytes)
    watcher.start()
    try:
        yield
        watcher.stop()
        if watcher.fired:
            # Sent as the block ended: it lands at the main thread's next check, here where it is caught. Short
            # sleeps give it those checks; a long one would not end for it (no real signal interrupts the call).
            for _ in range(100):
                time.sleep(0.01)
    except (KeyboardInterrupt, MemoryError) as error:
        watcher.stop()
        if isinstance(error, KeyboardInterrupt) and not watcher.fired:
            raise  # the user's own Ctrl-C
        if watcher.fired:
            measured = f"past the {extra_bytes / 2**30:.1f} GB of memory it may add, and still growing"
        else:
            measured = f"out of memory after {(max(watcher.peak, resident_bytes() or 0) - start) / 2**30:.1f} GB more"
        raise UserError(refusal.format(measured=measured)) from None
    except BaseException:
        watcher.stop()
        raise
