"""Bounds on library work that can run away rather than fail: the memory it may add, and how long it may stay in
one call.

torch-pruning's dependency graph maps channel indices through every layer. On some attention models
(EfficientFormerV2, MaxViT, YOLOv12: VainF/Torch-Pruning#525) those mappings feed each other and the index lists
grow without end, 40-60 MB/s on this machine, until the operating system kills the process, with no message. On
others (RexNet's sliced residuals, FocalNet) one channel group's search explores paths without end in flat memory,
and the process never returns. A watcher thread reads the process's resident memory and, when `stuck_in` is given,
which call of that function the guarded thread is in; past either bound it raises an exception inside the guarded
thread (CPython's PyThreadState_SetAsyncExc), which the guard turns into RanAway, for its caller to work around (a
channel group whose search does not end is left whole), or `bounded` into one UserError.

Why not `_thread.interrupt_main()`: it runs whatever SIGINT handler the process has, and a host's handler (a
pytest-xdist worker's, a launcher's) may end the process instead of raising KeyboardInterrupt.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import CodeType, FrameType

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
    """Raises Runaway in `target` (a thread id) once the process holds more than `limit` bytes, or once one call of
    `stuck_in` has run for more than `stuck_s` seconds; after `stop()` returns, nothing more is raised."""

    def __init__(self, limit: float, target: int, stuck_in: CodeType | None = None, stuck_s: float = 0.0) -> None:
        super().__init__(daemon=True, name="distillctl-runaway-guard")
        self.limit, self.target, self.fired, self.peak = limit, target, "", 0
        self.stuck_in, self.stuck_s, self.call, self.since = stuck_in, stuck_s, None, 0.0
        self.lock, self.stopped = threading.Lock(), threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(POLL_S):
            with self.lock:
                if self.stopped.is_set():
                    return
                self.peak = max(self.peak, resident_bytes() or 0)
                self.fired = "memory" if self.peak > self.limit else "time" if self.stuck() else ""
                if self.fired:
                    set_async_exception(self.target, Runaway)
                    return

    def stuck(self) -> bool:
        """Whether the target has been inside one call of `stuck_in` for longer than `stuck_s`."""
        if self.stuck_in is None:
            return False
        frame: FrameType | None = sys._current_frames().get(self.target)
        while frame is not None and frame.f_code is not self.stuck_in:
            frame = frame.f_back
        # The frame itself is held, not its id: a later call may reuse a finished call's address, not a live frame's.
        if frame is not self.call:
            self.call, self.since = frame, time.monotonic()
        return frame is not None and time.monotonic() - self.since > self.stuck_s

    def stop(self, withdraw: bool = True) -> None:
        """End the watch; with `withdraw`, a Runaway sent but not yet raised is withdrawn."""
        with self.lock:
            self.stopped.set()
            self.call = None  # the frame's locals (a whole dependency graph) go with it
        if self.fired and withdraw:
            set_async_exception(self.target, None)


class RanAway(Exception):
    """A guarded block went past its bound; `measured` says which bound and by how much."""

    def __init__(self, measured: str) -> None:
        super().__init__(measured)
        self.measured = measured


@contextmanager
def guarded(extra_bytes: float, stuck_in: CodeType | None = None, stuck_s: float = 0.0) -> Iterator[None]:
    """Run the block, raising RanAway if this process grows by more than `extra_bytes`, runs out of memory, or stays
    in one call of `stuck_in` for more than `stuck_s` seconds. Inside another guard, the inner one's bound raises
    RanAway there and the outer one's passes through to the outer. Unguarded where memory cannot be read."""
    start = resident_bytes()
    if start is None:
        yield
        return
    watcher = Watcher(start + extra_bytes, threading.get_ident(), stuck_in, stuck_s)
    watcher.start()
    try:
        try:
            yield
        except BaseException as error:
            # A Runaway in flight is this watcher's, delivered, or an enclosing guard's; anything else (the block's
            # own error) leaves a Runaway this watcher sent pending, to be withdrawn.
            watcher.stop(withdraw=not isinstance(error, Runaway))
            raise
        else:
            watcher.stop()  # a Runaway raised while it stops: the block did go past its bound
    except MemoryError:
        raise RanAway(f"out of memory after {(max(watcher.peak, resident_bytes() or 0) - start) / 2**30:.1f} GB more") from None
    except Runaway:
        if not watcher.fired:
            raise  # an enclosing guard's bound
        if watcher.fired == "time":
            raise RanAway(f"more than {stuck_s:.0f} s in one call of {stuck_in.co_qualname}, and not finishing") from None
        raise RanAway(f"past the {extra_bytes / 2**30:.1f} GB of memory it may add, and still growing") from None


@contextmanager
def bounded(extra_bytes: float, refusal: str, stuck_in: CodeType | None = None, stuck_s: float = 0.0) -> Iterator[None]:
    """`guarded`, refused with UserError(refusal, its `{measured}` filled in) past a bound."""
    try:
        with guarded(extra_bytes, stuck_in, stuck_s):
            yield
    except RanAway as ran:
        raise UserError(refusal.format(measured=ran.measured)) from None
