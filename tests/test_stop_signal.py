"""StopSignal: a first SIGTERM or Ctrl-C is noted for the loop, a second Ctrl-C stops at once, a second SIGTERM
changes nothing, and a Ctrl-C that the process was told to ignore stays ignored."""

from __future__ import annotations

import os
import signal

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
