"""SIGTERM ends a training run at the next step with its state saved, rather than wherever the signal finds it.

SLURM sends SIGTERM at a job's time limit and on preemption (SIGKILL follows after KillWait, 30 s by default), and so
do `docker stop`, Kubernetes and torchrun when it stops its workers. Without a handler the process dies at once and
`resume=true` starts again from the last finished epoch: hours of an ImageNet epoch lost. With it, the training loop
saves a mid-epoch checkpoint after the step it is in and raises SignalStop; `resume=true` continues from that step
with the batches the run would have seen. A second SIGTERM ends the process at once.
"""

from __future__ import annotations

import os
import signal
import threading
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the CLI imports SignalStop before torch loads
    import torch


class SignalStop(KeyboardInterrupt):
    """A run stopped on SIGTERM at a step boundary, its state saved. A KeyboardInterrupt, so that what cleans up
    after Ctrl-C (a search queues its trial again) cleans up after this too."""


class StopSignal:
    """Within `with`: SIGTERM is noted rather than fatal, for the loop to stop at its next step (`due`)."""

    def __init__(self) -> None:
        self.received = False
        self.previous: object = None
        self.installed = False
        self.alone = True

    def __enter__(self) -> "StopSignal":
        from distillctl.engine import distributed

        self.alone = not distributed.active()  # the process group is up before training starts
        # Only the main thread may set handlers; a loop run from another thread keeps the process's own.
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self.note)
            self.installed = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self.installed:
            signal.signal(signal.SIGTERM, self.previous)  # type: ignore[arg-type]
            self.installed = False

    def note(self, signum: int, frame: FrameType | None) -> None:
        """The handler: note the first signal; a second one ends the process as an unhandled SIGTERM would."""
        if self.received:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
        self.received = True

    def due(self, device: torch.device, collective: bool) -> bool:
        """Whether to stop now. Alone, as soon as the signal came; in a multi-process job only where `collective`
        (every process asks at the same steps), when any process received it, so that all stop at the same step."""
        if self.alone:
            return self.received
        from distillctl.engine import distributed

        return collective and not distributed.all_agree(not self.received, device)
