"""StopSignal: a first SIGTERM, Ctrl-C or SIGHUP is noted for the loop, a second Ctrl-C stops at once, a second
SIGTERM or SIGHUP changes nothing, and a Ctrl-C that the process was told to ignore stays ignored."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import sys
import time

import pytest
import torch

from distillctl.engine.stop_signal import Requeued, SignalStop, StopSignal

CPU = torch.device("cpu")


def test_a_first_ctrl_c_is_noted_and_said_and_a_second_interrupts_at_once(ctrl_c_as_in_a_terminal, capfd):
    with StopSignal() as stop:
        assert not stop.due(CPU, collective=True)
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received == signal.SIGINT and stop.due(CPU, collective=False) and stop.cause == "Ctrl-C"
        with pytest.raises(KeyboardInterrupt) as second:
            os.kill(os.getpid(), signal.SIGINT)
        assert not isinstance(second.value, SignalStop)  # nothing saved for this one: the plain interrupt
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    said = capfd.readouterr().err
    assert "Ctrl-C: stopping after this step with the training state saved (press Ctrl-C again to stop at once)" in said


def test_sigterm_again_is_the_same_request_and_ctrl_c_still_stops_at_once(ctrl_c_as_in_a_terminal, capfd):
    # Under `srun torchrun`, SLURM's SIGTERM reaches each process directly and again through torchrun, a moment apart.
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)  # without the rule, the process would be dead here, its step unsaved
        assert stop.received == signal.SIGTERM and stop.due(CPU, collective=False) and stop.cause == "SIGTERM"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    said = capfd.readouterr().err
    assert said.count("SIGTERM: stopping after this step with the training state saved\n") == 1


@pytest.fixture
def hangup_as_in_a_terminal():
    """SIGHUP at its default, as for a command typed in a terminal, whatever the tests were started under (nohup)."""
    host = signal.signal(signal.SIGHUP, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGHUP, host)


def test_a_hangup_is_noted_once_and_a_write_to_the_gone_terminal_cannot_end_the_run(hangup_as_in_a_terminal, capfd):
    # capfd: this process's stdout and stderr are files here, which stay; a terminal or a pipe would go to /dev/null
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        os.kill(os.getpid(), signal.SIGHUP)  # the kernel's, then the shell's: one request
        assert stop.received == signal.SIGHUP and stop.due(CPU, collective=False)
        assert stop.cause == "SIGHUP (the terminal closed)" and SignalStop("", stop.signum).code == 129
    assert signal.getsignal(signal.SIGHUP) is signal.SIG_DFL
    assert capfd.readouterr().err.count("SIGHUP (the terminal closed): stopping after this step") == 1
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # nohup's
    with StopSignal() as stop:
        os.kill(os.getpid(), signal.SIGHUP)
        assert stop.received is None


@pytest.mark.slow
def test_a_closed_terminal_stops_training_at_a_step_with_its_state_saved_and_resume_finishes(cli, tmp_path):
    # A dropped ssh connection: the run is the session leader of a pseudo-terminal whose other end closes, and the
    # kernel sends it SIGHUP; every write to the terminal fails from then on.
    import pty

    args = ["distill", "trainer.threads=1", "dataset.test_limit=64", "distill.teacher_cache=off", "trainer.epochs=30",
            "trainer.max_steps_per_epoch=6", "trainer.batch_size=32", "trainer.log_every=2", "run_dir=runs/hup"]
    pid, terminal = pty.fork()
    if pid == 0:  # the child: a command typed at that terminal
        os.chdir(tmp_path)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
        os.execv(sys.executable, [sys.executable, "-m", "distillctl", *args])
    shown = b""
    try:
        state, deadline = tmp_path / "runs/hup/student/last_state.pt", time.monotonic() + 240
        # Read what it shows, as a terminal does, until its first checkpoint is saved and its epoch line shown.
        while not (state.exists() and b"student epoch 1/30" in shown):
            assert time.monotonic() < deadline, shown.decode(errors="replace")
            if select.select([terminal], [], [], 0.05)[0]:
                shown += os.read(terminal, 65536)
    finally:
        os.close(terminal)  # the connection drops
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 129
    # Nobody saw the message: the run's log keeps it, and `runs` says what continues it.
    log = (tmp_path / "runs/hup/student/train.log").read_text()
    stopped = r"^# stopped by SIGHUP \(the terminal closed\) (in epoch \d+ at step \d+ of 6|after epoch \d+ of 30), with the"
    assert re.search(stopped, log, re.M), log
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "runs/hup/student/history.jsonl").read_text().splitlines()]
    assert 1 <= len(epochs) < 30
    status_now = cli("runs", "runs/hup")
    assert "by SIGHUP (the terminal closed)" in status_now.out and "resume=true" in status_now.out, status_now.text
    resumed = cli(*args, "resume=true")
    assert resumed.code == 0, resumed.text
    epochs = [json.loads(line)["epoch"] for line in (tmp_path / "runs/hup/student/history.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 31))


def test_a_ctrl_c_the_process_ignores_stays_ignored(ctrl_c_as_in_a_terminal):
    # A shell starts a background job (`distillctl distill ... &`) with SIGINT ignored; Ctrl-C is for the foreground.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with StopSignal() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received is None
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN


def test_a_schedulers_notice_goes_to_its_host_once_the_state_is_saved():
    # submitit handles USR2 (a time limit or preemption ahead) by requeueing the job and exiting at once.
    requeued = []

    def submitit_stand_in(signum, frame):
        requeued.append(signum)
        raise SystemExit(144)  # what submitit's local executor exits with to be run again

    host = signal.signal(signal.SIGUSR2, submitit_stand_in)
    try:
        with pytest.raises(Requeued) as ended:
            with StopSignal() as stop:
                os.kill(os.getpid(), signal.SIGUSR2)
                assert stop.due(CPU, collective=False) and requeued == []  # the step ends and is saved first
                assert stop.cause.startswith("SIGUSR2, the scheduler's notice")
                raise SignalStop(f"stopped by {stop.cause}", stop.signum)
        assert ended.value.code == 144 and requeued == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is submitit_stand_in
    finally:
        signal.signal(signal.SIGUSR2, host)


def test_without_a_host_for_the_notice_it_is_left_as_it_was():
    before = signal.getsignal(signal.SIGUSR2)
    with StopSignal():
        assert signal.getsignal(signal.SIGUSR2) == before
