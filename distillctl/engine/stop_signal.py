"""SIGTERM, Ctrl-C, a closed terminal and a scheduler's notice end a training run at the next step with its state
saved, rather than wherever they find it.

SLURM sends SIGTERM at a job's time limit and on preemption (SIGKILL follows after KillWait, 30 s by default), and so
do `docker stop`, Kubernetes and torchrun when it stops its workers; a person at a terminal presses Ctrl-C (SIGINT);
a dropped ssh connection or a closed terminal window sends SIGHUP (where `nohup` did not make the process ignore it).
Without a handler the process dies at once and `resume=true` starts again from the last finished epoch: hours of an
ImageNet epoch lost. With it, the training loop saves a mid-epoch checkpoint after the step it is in and raises
SignalStop; `resume=true` continues from that step with the batches the run would have seen. A second Ctrl-C ends the
process at once, as the first would have without the handler. A second SIGTERM is the same request again, not a
hurry: SLURM signals every process of a job step and torchrun passes on what it receives, so each process under
`srun torchrun` (or trainer.devices) gets the scheduler's SIGTERM twice; whoever means "now" sends SIGKILL (SLURM
after KillWait, docker and Kubernetes after their grace period). So is a second SIGHUP, which the kernel and the shell
may both send. submitit's notice (USR2 before a time limit) is handed to submitit once the state is saved, and
SLURM's requeued job resumes by itself (stages/training.py).
"""

from __future__ import annotations

import os
import signal
import stat
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING, TextIO

from distillctl import ranks

if TYPE_CHECKING:  # the CLI imports SignalStop before torch loads
    import torch

HANGUP = getattr(signal, "SIGHUP", None)  # not on Windows
# The signals that stop a run at its next step, by the name a message gives them.
STOPPING = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "Ctrl-C"}
if HANGUP is not None:
    STOPPING[HANGUP] = "SIGHUP (the terminal closed)"
# Signals taken only while they have their default handler: a shell ignores Ctrl-C for a job it started in the
# background (`&`), `nohup` makes SIGHUP ignored, and a host (a notebook, a test runner) may handle them its own way.
UNLESS_CHANGED = {signal.SIGINT: signal.default_int_handler, HANGUP: signal.SIG_DFL}


def scheduler_notice() -> signal.Signals | None:
    """The signal submitit gives a job before its time limit or a preemption (SUBMITIT_PREEMPT_SIGNAL, USR2 by
    default), where the platform has it."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2").upper().removeprefix("SIG")
    return getattr(signal, f"SIG{name}", None)


def without_terminal() -> None:
    """After SIGHUP, send what this process writes to a terminal or a pipe to /dev/null: the terminal is gone, and so
    is a pipe's reader (`| tee run.log`, hung up with it), so a write would fail (EIO, a broken pipe) and end the run
    before its save. A file it writes to stays; the run's train.log says where it stopped in any case."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for fd in (1, 2):
        try:
            mode = os.fstat(fd).st_mode
        except OSError:  # closed
            continue
        # A character device: a hung-up terminal no longer answers isatty(), and /dev/null is one too.
        if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode):
            os.dup2(devnull, fd)
    os.close(devnull)


class SignalStop(KeyboardInterrupt):
    """A run stopped on SIGTERM, SIGHUP or Ctrl-C at a step boundary, its state saved. A KeyboardInterrupt, so that
    what cleans up after an interrupt (a search queues its trial again, a tracker marks its run stopped) does so here
    too."""

    def __init__(self, message: str, signum: int = signal.SIGTERM) -> None:
        super().__init__(message)  # the message alone in args: unpickled (a joblib sweep's job), `code` comes back too
        self.code = 128 + signum  # what a shell or scheduler reports for a process that signal ended


class Requeued(SystemExit):
    """The scheduler's host (submitit) ends the process to requeue its job: the job goes on later, and a sweep must
    not record it as failed and go on in this process."""


class StopSignal:
    """Within `with`: SIGTERM, Ctrl-C, SIGHUP and a scheduler's notice are noted rather than fatal, for the loop to
    stop at its next step (`due`); the SignalStop it then raises is recorded in `log`."""

    def __init__(self, log: TextIO | None = None) -> None:
        self.log = log  # where a stop is recorded (train.log): the terminal its message goes to may be gone
        self.received: int | None = None  # the first stopping signal
        self.previous: dict[int, object] = {}
        self.alone = True
        self.speaks = True  # the process that says a signal came: rank 0 of a job, which every process receives
        self.notice: int | None = None  # the scheduler's notice, where a host (submitit) handles it
        self.host: Callable[[int, FrameType | None], object] | None = None  # that handler

    def __enter__(self) -> "StopSignal":
        from distillctl.engine import distributed

        self.alone = not distributed.active()  # the process group is up before training starts
        self.speaks = ranks.is_main()
        # Only the main thread may set handlers; a loop run from another thread keeps the process's own.
        if threading.current_thread() is threading.main_thread():
            for signum in STOPPING:
                if signum in UNLESS_CHANGED and signal.getsignal(signum) is not UNLESS_CHANGED[signum]:
                    continue
                self.previous[signum] = signal.signal(signum, self.note)
            notice = scheduler_notice()
            host = signal.getsignal(notice) if notice is not None and notice not in STOPPING else None
            if callable(host):
                # submitit's handler requeues the job and ends the process wherever the notice finds it: it is
                # handed the notice once the state is saved (__exit__), and the requeued job resumes from there.
                self.notice, self.host = notice, host
                self.previous[notice] = signal.signal(notice, self.note)
        return self

    def __exit__(self, kind: object, error: BaseException | None, trace: object) -> None:
        for signum, previous in self.previous.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        self.previous = {}
        if isinstance(error, SignalStop) and self.log is not None:
            self.log.write(f"# {error}\n")
            self.log.flush()
        if self.received is not None and self.received == self.notice:
            self.hand_on(None)

    def hand_on(self, frame: FrameType | None) -> None:
        """Give the notice to its host: submitit requeues the job and ends this process (Requeued)."""
        try:
            self.host(self.notice, frame)  # type: ignore[misc]
        except SystemExit as exc:
            raise Requeued(exc.code) from None

    @property
    def cause(self) -> str:
        """The signal that stops the run, as a message names it."""
        if self.received is None:
            return "a signal to another process"
        notice = f"{signal.Signals(self.received).name}, the scheduler's notice of a time limit or preemption"
        return STOPPING.get(self.received) or notice

    @property
    def signum(self) -> int:
        """The signal SignalStop reports: this process's own, else SIGTERM (what reached another process)."""
        return self.received or signal.SIGTERM

    def note(self, signum: int, frame: FrameType | None) -> None:
        """The handler: note the first signal; a second Ctrl-C or notice ends the process as it would without this
        handler, and SIGTERM or SIGHUP again changes nothing."""
        if self.received is not None:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            if signum == self.notice:  # the host's own way, at once
                self.hand_on(frame)
            return  # SIGTERM, SIGHUP: the same request again, often passed on by a launcher or a shell
        if signum == HANGUP:
            without_terminal()
        self.received = signum
        if self.speaks:
            # Written past Python's buffers: the handler may run while the main thread is inside a write to stderr.
            again = " (press Ctrl-C again to stop at once)" if signum == signal.SIGINT else ""
            os.write(2, f"\n{self.cause}: stopping after this step with the training state saved{again}\n".encode())

    def due(self, device: torch.device, collective: bool) -> bool:
        """Whether to stop now. Alone, as soon as the signal came; in a multi-process job only where `collective`
        (every process asks at the same steps), when any process received it, so that all stop at the same step."""
        if self.alone:
            return self.received is not None
        from distillctl.engine import distributed

        return collective and not distributed.all_agree(self.received is None, device)
