"""A hung or crashing implementation step is a reported, saved failure, never a hang or a crash.

The seeded harness bugs here are real changes to the in-process implementation (a stack walk that
never reaches the canary, a GC that raises), applied with monkeypatch for one test.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from externref_harness import trace as tracefile
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.stack import NativeStack
from externref_harness.impl.world import World
from externref_harness.isolation.pool import ChildPool
from externref_harness.lockstep import deadline
from externref_harness.lockstep.check import run_lockstep_check
from externref_harness.lockstep.deadline import Timeout, time_limit
from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG, Lockstep, drive
from externref_harness.model import ops
from externref_harness.native.build import build_reference

#: How long the seeded endless walk really runs before it gives in: far past the test's limit, so
#: without the limit the step ends (and the test fails) instead of hanging the suite.
HANG_SECONDS = 4.0
LIMIT = 0.3


def test_time_limit_interrupts_a_busy_loop() -> None:
    started = time.monotonic()
    with pytest.raises(Timeout, match=r"the loop did not finish within 0\.2 s"), time_limit(0.2, "the loop"):
        while time.monotonic() - started < HANG_SECONDS:
            pass
    assert time.monotonic() - started < HANG_SECONDS / 2


def _busy(seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        pass


@pytest.fixture
def recorded_alarms() -> Iterator[list[int]]:
    """`SIGALRM` handled by a recorder before the limits' handler is installed over it (as code
    that had its own handler before a lockstep ran would see it), restored afterwards."""
    seen: list[int] = []
    before = signal.signal(signal.SIGALRM, lambda signum, frame: seen.append(signum))
    try:
        yield seen
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, before)


def test_the_timer_a_limit_leaves_running_is_dropped_when_it_fires_outside_a_limit(
    recorded_alarms: list[int],
) -> None:
    with time_limit(0.2, "a quick step"):
        pass
    assert signal.getitimer(signal.ITIMER_REAL)[0] > 0, "the timer lingers for the next limit"
    time.sleep(0.3)  # it fires here: neither a Timeout nor the handler from before sees it
    assert recorded_alarms == []
    os.kill(os.getpid(), signal.SIGALRM)  # anyone else's alarm outside a limit is passed on
    assert recorded_alarms == [signal.SIGALRM]


def test_release_stops_the_timer_a_limit_left_running(recorded_alarms: list[int]) -> None:
    with time_limit(5.0, "a quick step"):
        pass
    deadline.release()
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def _seconds_to_time_out(seconds: float, name: str) -> float:
    """How long a busy step under a limit of `seconds` ran before its `Timeout`."""
    started = time.monotonic()
    with pytest.raises(Timeout, match=rf"{name} did not finish within {seconds:g} s"):
        with time_limit(seconds, name):
            _busy(HANG_SECONDS)
    return time.monotonic() - started


def test_a_limit_is_enforced_at_its_own_deadline_whatever_timer_lingers(recorded_alarms: list[int]) -> None:
    # A shorter limit after a longer one: the lingering timer would fire too late, so it is armed again.
    with time_limit(5.0, "a quick step"):
        pass
    assert _seconds_to_time_out(0.2, "the short step") < 1.0
    # A longer limit after a shorter one: the lingering timer fires first, finds nothing expired,
    # and is armed again for this limit's deadline: not a Timeout before it.
    with time_limit(0.2, "a quick step"):
        pass
    assert 0.55 <= _seconds_to_time_out(0.6, "the long step") < 2.0
    assert recorded_alarms == []


def test_a_timer_running_before_a_limit_gets_its_time_back(recorded_alarms: list[int]) -> None:
    deadline.release()
    signal.setitimer(signal.ITIMER_REAL, 3.0)  # someone else's timer
    with time_limit(0.2, "a quick step"):
        pass
    left = signal.getitimer(signal.ITIMER_REAL)[0]
    assert 2.5 < left <= 3.0, "the other timer runs on with what was left of it, and ours is gone"


def test_a_closed_lockstep_leaves_no_timer_running() -> None:
    drive(LOCKSTEP_CONFIG, [ops.New(8, 8), ops.Gc(), ops.Drop(0)], InProcessImpl(), until_first=True)
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_a_start_that_hangs_in_process_is_the_locksteps_to_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    original = InProcessImpl.start

    def slow_start(self: InProcessImpl, config: object) -> None:
        until = time.monotonic() + HANG_SECONDS
        while time.monotonic() < until:
            pass
        original(self, config)  # type: ignore[arg-type]

    monkeypatch.setattr(InProcessImpl, "start", slow_start)
    monkeypatch.setattr(deadline, "STEP_SECONDS", LIMIT)
    started = time.monotonic()
    run = Lockstep(LOCKSTEP_CONFIG, InProcessImpl())
    try:
        hung = "the implementation hung: the implementation's start did not finish within 0.3 s"
        assert run.impl_broken == hung
    finally:
        run.close()
    assert time.monotonic() - started < HANG_SECONDS


def test_an_implementation_in_another_process_starts_and_finishes_without_a_timer_of_the_locksteps() -> None:
    """Its pool limits every read of its replies (`isolation.pool`), and its start is only sent
    here: a timer armed around it would guard a write (and cost two `setitimer` calls a run)."""
    pool = ChildPool(build_reference("debug"), step_timeout=5.0)
    try:
        run = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
        try:
            assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "the start armed a timer"
            check = run.step(ops.New(8, 8))
            assert check.impl_problem is None and check.model_problem is None
            for op in run.quiesce_ops():
                run.step(op)
            assert run.finish() is None
            assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0), "a step or the finish armed one"
        finally:
            run.close()
    finally:
        pool.close()


def _endless_walk(monkeypatch: pytest.MonkeyPatch) -> None:
    """`backtrace::trace` stuck on the youngest frame: `gc` never finds the canary."""
    original: Callable[..., Iterator[tuple[int, int]]] = NativeStack.walk

    def walk(self: NativeStack, has_unwind_info: Callable[[int], bool]) -> Iterator[tuple[int, int]]:
        top = self.frames[-1]
        until = time.monotonic() + HANG_SECONDS
        while time.monotonic() < until:
            yield top.pc, top.sp
        yield from original(self, has_unwind_info)

    monkeypatch.setattr(NativeStack, "walk", walk)


def test_a_step_that_hangs_is_a_failing_step(monkeypatch: pytest.MonkeyPatch) -> None:
    _endless_walk(monkeypatch)
    monkeypatch.setattr(deadline, "STEP_SECONDS", LIMIT)
    started = time.monotonic()
    steps = [ops.New(8, 8), ops.Gc(), ops.Drop(0)]
    driven = drive(LOCKSTEP_CONFIG, steps, InProcessImpl(), until_first=False)
    assert driven.impl_failure is not None, "the hung step was not reported"
    assert driven.impl_failure.step == 2
    assert "the implementation hung: the implementation's Gc() did not finish within 0.3 s" in (
        driven.impl_failure.problem
    )
    assert driven.model_failure is None
    assert time.monotonic() - started < HANG_SECONDS, "later steps are not run on a hung implementation"


def test_check_reports_and_saves_a_hung_step(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _endless_walk(monkeypatch)
    monkeypatch.setattr(deadline, "STEP_SECONDS", LIMIT)
    save_as = tmp_path / "hung.json"
    ci = settings(settings.get_profile("ci"), max_examples=5, stateful_step_count=20)
    out = run_lockstep_check(LOCKSTEP_CONFIG, LOCKSTEP_BOUNDS, ci, save_as)
    assert not out.passed
    assert out.failure is not None and "did not finish within 0.3 s" in out.failure
    saved = tracefile.load(save_as)
    assert saved.steps, "the failing trace is saved for replay"


def test_check_reports_and_saves_an_exception_from_the_implementation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def broken_gc(self: World, op: ops.Gc) -> None:
        raise RuntimeError("seeded: the walk lost its frame pointer")

    monkeypatch.setattr(World, "op_Gc", broken_gc)
    save_as = tmp_path / "raised.json"
    ci = settings(settings.get_profile("ci"), max_examples=5, stateful_step_count=20)
    out = run_lockstep_check(LOCKSTEP_CONFIG, LOCKSTEP_BOUNDS, ci, save_as)
    assert not out.passed
    assert out.failure is not None
    assert "the implementation raised RuntimeError: seeded: the walk lost its frame pointer" in out.failure
    steps = tracefile.load(save_as).steps
    assert steps[-1] == ops.Gc()


def test_an_implementation_that_cannot_start_fails_its_first_step(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_start(self: InProcessImpl, config: object) -> None:
        raise OSError("seeded: no heap")

    monkeypatch.setattr(InProcessImpl, "start", broken_start)
    driven = drive(LOCKSTEP_CONFIG, [ops.New(8, 8)], InProcessImpl(), until_first=True)
    assert driven.impl_failure is not None and driven.impl_failure.step == 1
    assert "the implementation raised OSError at start: seeded: no heap" in driven.impl_failure.problem
