"""StopSignal: a first SIGTERM or Ctrl-C is noted for the loop, a second one stops at once, and a Ctrl-C that the
process was told to ignore stays ignored."""

from __future__ import annotations

import os
import signal

import pytest
import torch

from distillctl.engine.stop_signal import SignalStop, StopSignal

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


def test_a_ctrl_c_the_process_ignores_stays_ignored(ctrl_c_as_in_a_terminal):
    # A shell starts a background job (`distillctl distill ... &`) with SIGINT ignored; Ctrl-C is for the foreground.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    with StopSignal() as stop:
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.received is None
    assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
