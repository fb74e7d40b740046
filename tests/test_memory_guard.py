"""The memory bound around library work that can run away (torch-pruning's dependency graph)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from distillctl.compress.memory_guard import bounded_growth, resident_bytes
from distillctl.errors import UserError

MB = 2**20


def grow_forever(held: list[bytes]) -> None:
    """Take 8 MB more every 10 ms, written so that it is resident, as a runaway index list is."""
    while True:
        held.append(b"x" * (8 * MB))
        time.sleep(0.01)


def test_a_block_that_keeps_growing_is_stopped_past_its_bound_with_one_user_error():
    held: list[bytes] = []
    began = time.monotonic()
    with pytest.raises(UserError, match=r"^it ran away \(past the 0\.2 GB of memory it may add, and still growing\)\.$"):
        with bounded_growth(200 * MB, "it ran away ({measured})."):
            grow_forever(held)
    # Stopped at the bound (what else the process allocates counts too), soon after it (50 ms polls), not at the
    # machine's limit.
    assert 150 * MB <= len(held) * 8 * MB < 400 * MB
    assert time.monotonic() - began < 5  # ~0.3 s of growth: the refusal follows at once
    held.clear()


def test_a_block_within_its_bound_returns_its_work_and_no_interruption_follows():
    start = resident_bytes()
    assert start and start > 10 * MB
    with bounded_growth(200 * MB, "unused"):
        work = [b"x" * (8 * MB) for _ in range(5)]
    time.sleep(0.3)  # six polls: a watcher left running would interrupt here
    assert len(work) == 5


def test_the_process_signal_handlers_are_left_alone_and_any_thread_can_be_guarded():
    # A pytest-xdist worker's SIGINT handler ends the worker: a guard that simulated Ctrl-C crashed two of them.
    def fail(*_):
        raise AssertionError("the guard ran the SIGINT handler")

    previous = signal.signal(signal.SIGINT, fail)
    try:
        with pytest.raises(UserError, match="ran away"):
            with bounded_growth(100 * MB, "ran away ({measured})"):
                grow_forever([])
    finally:
        signal.signal(signal.SIGINT, previous)
    outcome: list[BaseException] = []

    def guarded() -> None:
        try:
            with bounded_growth(100 * MB, "ran away ({measured})"):
                grow_forever([])
        except BaseException as error:  # noqa: BLE001  (what the thread ended with is the result)
            outcome.append(error)

    thread = threading.Thread(target=guarded)
    thread.start()
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], UserError)


def test_the_users_own_ctrl_c_and_other_errors_pass_through_unchanged():
    with pytest.raises(KeyboardInterrupt):
        with bounded_growth(200 * MB, "unused"):
            raise KeyboardInterrupt
    with pytest.raises(ValueError, match="its own"):
        with bounded_growth(200 * MB, "unused"):
            raise ValueError("its own")
