"""The bounds on memory and time around library work that can run away (torch-pruning's dependency graph)."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from distillctl.compress.runaway import RanAway, bounded, guarded, resident_bytes
from distillctl.errors import UserError

MB = 2**20


def grow_forever(held: list[bytes]) -> None:
    """Take 8 MB more every 10 ms, written so that it is resident, as a runaway index list is."""
    while True:
        held.append(b"x" * (8 * MB))
        time.sleep(0.01)


def search_without_end() -> None:
    """A call that never returns in flat memory, as torch-pruning's group search does on RexNet."""
    while True:
        time.sleep(0.01)


def short_search() -> None:
    """A call that returns in 20 ms."""
    time.sleep(0.02)


def test_a_block_that_keeps_growing_is_stopped_past_its_bound_with_one_user_error():
    held: list[bytes] = []
    began = time.monotonic()
    with pytest.raises(UserError, match=r"^it ran away \(past the 0\.2 GB of memory it may add, and still growing\)\.$"):
        with bounded(200 * MB, "it ran away ({measured})."):
            grow_forever(held)
    # Stopped at the bound (what else the process allocates counts too), soon after it (50 ms polls; on 2 cores
    # shared with pruning tests the watcher waited up to ~0.3 s, 424 MB), not at the machine's limit.
    assert 150 * MB <= len(held) * 8 * MB < 1024 * MB
    assert time.monotonic() - began < 5  # ~0.3 s of growth: the refusal follows at once
    held.clear()


def test_a_block_within_its_bound_returns_its_work_and_no_interruption_follows():
    start = resident_bytes()
    assert start and start > 10 * MB
    with bounded(200 * MB, "unused"):
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
            with bounded(100 * MB, "ran away ({measured})"):
                grow_forever([])
    finally:
        signal.signal(signal.SIGINT, previous)
    outcome: list[BaseException] = []

    def guarded() -> None:
        try:
            with bounded(100 * MB, "ran away ({measured})"):
                grow_forever([])
        except BaseException as error:  # noqa: BLE001  (what the thread ended with is the result)
            outcome.append(error)

    thread = threading.Thread(target=guarded)
    thread.start()
    thread.join(30)
    assert len(outcome) == 1 and isinstance(outcome[0], UserError)


def test_the_users_own_ctrl_c_and_other_errors_pass_through_unchanged():
    with pytest.raises(KeyboardInterrupt):
        with bounded(200 * MB, "unused"):
            raise KeyboardInterrupt
    with pytest.raises(ValueError, match="its own"):
        with bounded(200 * MB, "unused"):
            raise ValueError("its own")


def test_a_call_that_does_not_return_is_stopped_after_its_time_with_one_user_error():
    began = time.monotonic()
    with pytest.raises(UserError, match=r"^stuck \(more than 1 s in one call of search_without_end, and not finishing\)$"):
        with bounded(200 * MB, "stuck ({measured})", stuck_in=search_without_end.__code__, stuck_s=1):
            search_without_end()
    assert 1 <= time.monotonic() - began < 5


def test_many_short_calls_are_not_taken_for_one_long_one():
    # 75 calls of 20 ms, 1.5 s in all, each perhaps at the address of the one before: the bound is per call.
    with bounded(200 * MB, "unused", stuck_in=short_search.__code__, stuck_s=0.5):
        for _ in range(75):
            short_search()
    time.sleep(0.3)  # six polls: a watcher left running would interrupt here


def test_an_inner_guard_stops_its_own_call_and_lets_the_outer_bound_through():
    # The prune stage bounds the whole job's memory, and each channel group's search by time within it: a search
    # past its time is the inner guard's to report (that group is left whole); memory past the job's bound is the
    # outer guard's, even while the inner one watches.
    with bounded(200 * MB, "outer ({measured})"):
        with pytest.raises(RanAway, match=r"^more than 1 s in one call of search_without_end, and not finishing$"):
            with guarded(float("inf"), stuck_in=search_without_end.__code__, stuck_s=1):
                search_without_end()
        work = "after the inner bound, the outer block goes on"
    assert work
    with pytest.raises(UserError, match=r"^outer \(past the 0\.2 GB of memory it may add, and still growing\)$"):
        with bounded(200 * MB, "outer ({measured})"):
            with guarded(float("inf"), stuck_in=search_without_end.__code__, stuck_s=60):
                grow_forever([])
