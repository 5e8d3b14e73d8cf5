"""A time limit on one step of an in-process implementation.

A harness or implementation bug can turn a step into a loop that never ends (a stack walk that
never reaches the canary, say); without a limit `check` hangs instead of reporting. `time_limit`
arms `ITIMER_REAL` around the step and raises `Timeout` from the `SIGALRM` handler, which the
lockstep reports as a failing step. The handler runs between Python bytecodes, so it interrupts
Python code (the ctypes implementation and its checking heap), not a loop inside native code;
that needs the implementation in another process.

A lockstep arms a limit around every step, so a limit arms no timer when one of ours is already
running that fires no later than its deadline: the timer a limit armed keeps running after it
(it lingers), and the steps after it are covered by it.

    step 1 ──┐ step 2 ─┐ step 3 ─┐ ... step k ─┐           (deadlines d1 < d2 < ... < dk)
    setitimer(d1) ......................... SIGALRM at d1: nothing expired, setitimer(dk)

When the timer fires, the handler compares the armed limits' deadlines with the clock: one that
passed raises `Timeout`; otherwise the timer is armed again for the earliest deadline left, or,
nothing being armed, the alarm was the lingering timer's and is dropped. A run of steps costs one
`setitimer` when it starts and one per `STEP_SECONDS` after that, where arming and disarming
around each step cost two (1.3 µs of a 55 µs step). `release()` stops a lingering timer (the
lockstep calls it when a run closes), so no alarm of ours reaches code that runs after a run.

The `SIGALRM` handler is installed once, on the first limit, and stays. A signal that is not our
timer's and comes outside a limit goes to whatever handled `SIGALRM` before (the default action
included), so code outside a limit sees `SIGALRM` as if the handler were not there. Code that
installs its own handler (pytest-timeout's signal method) has its timer respected: the next limit
finds the handler replaced, installs `_on_alarm` again and forgets the timer it thought it had;
a timer that was running (anyone's) when a limit arms one gets its time back when that limit
ends, and that limit's timer does not linger.
"""

from __future__ import annotations

import _signal  # type: ignore[import-not-found]  # CPython's C module under `signal` (no stubs)
import os
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

#: Seconds one step of the implementation may take. Steps take milliseconds; this only has to
#: tell a loaded machine from a step that will never end.
STEP_SECONDS = 20.0


class Timeout(BaseException):
    """A step ran past its time limit.

    A `BaseException`, so the code under test cannot swallow it with `except Exception`.
    """


#: Whether this platform has `setitimer` (and `SIGALRM`).
_HAS_TIMER = hasattr(signal, "setitimer")


def available() -> bool:
    """Whether limits are enforced here: `SIGALRM` exists and this is the main thread (asked by
    thread id: `threading.current_thread()` costs a Python call a step)."""
    return _HAS_TIMER and threading.get_ident() == threading.main_thread().ident


#: The armed limits, innermost last (empty: no limit is running).
_armed: list[time_limit] = []
#: What handled `SIGALRM` before `_on_alarm` was installed.
_previous: list[Callable[[int, FrameType | None], Any] | int | None] = []


class _Timer:
    """`ITIMER_REAL` as armed by this module: when it fires, or 0.0 when it is not ours to know."""

    __slots__ = ("fires",)

    def __init__(self) -> None:
        #: The `time.monotonic()` instant the timer we armed fires at (0.0: we armed none, it fired,
        #: or it was released).
        self.fires = 0.0

    def arm(self, at: float, now: float) -> float:
        """Arm the timer to fire at `at`; what was left of the timer it replaced (0.0: none)."""
        left, _ = signal.setitimer(signal.ITIMER_REAL, max(at - now, MIN_SECONDS))
        self.fires = at
        return left

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        self.fires = 0.0


_timer = _Timer()
#: The shortest time a timer is armed for (0 would disarm it).
MIN_SECONDS = 1e-4


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    if _timer.fires:  # our timer: a limit's, or lingering after one
        _timer.fires = 0.0
        if not _armed:
            return  # it lingered past the last limit: nothing to time
        now = time.monotonic()
        expired = [limit for limit in _armed if limit._deadline <= now]
        if expired:
            raise Timeout(expired[-1].message())
        # It was armed for a limit that has ended: time the earliest of those still running.
        _timer.arm(min(limit._deadline for limit in _armed), now)
        return
    if _armed:
        raise Timeout(_armed[-1].message())
    previous = _previous[0] if _previous else signal.SIG_DFL
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        # The default action (the process ends), as if this handler were not installed.
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGALRM)


def _handler(signum: int) -> object:
    """The signal's handler as installed. `signal.getsignal` turns it into a `Handlers` member
    where it can, which for a function means raising and catching a `ValueError` inside the enum
    machinery: 4 µs on every step, where the C function alone takes 0.06 µs."""
    return _signal.getsignal(signum)


def _install() -> None:
    """Install `_on_alarm`, unless it is already the handler (someone may have replaced it: then
    the timer may be theirs too, and ours is forgotten)."""
    current = signal.getsignal(signal.SIGALRM)
    if current is not _on_alarm:
        _previous[:] = [current]
        signal.signal(signal.SIGALRM, _on_alarm)
        _timer.fires = 0.0


def release() -> None:
    """Stop the timer a finished limit left running (not while a limit runs: it is that one's)."""
    if _timer.fires and not _armed and _handler(signal.SIGALRM) is _on_alarm:
        _timer.stop()


class time_limit:
    """Raise `Timeout` inside the block if it runs longer than `seconds` (no limit if <= 0 or not
    `available()`). A timer that was running when this one is armed (an outer one, anyone's) is
    re-armed with what is left of it. `what` is formatted (`str`) only when the limit is reached:
    a step's name costs nothing until then."""

    __slots__ = ("_active", "_deadline", "_outer", "_seconds", "_what")

    def __init__(self, seconds: float, what: object) -> None:
        self._seconds = seconds
        self._what = what
        self._active = False
        self._outer = 0.0
        self._deadline = 0.0

    def __enter__(self) -> None:
        if self._seconds <= 0 or not available():
            return
        if _handler(signal.SIGALRM) is not _on_alarm:
            _install()
        now = time.monotonic()
        self._deadline = deadline = now + self._seconds
        self._active = True
        _armed.append(self)
        fires = _timer.fires
        if fires == 0.0:
            # No timer of ours: arm one. What it replaced (anyone's) is given back at the exit.
            self._outer = _timer.arm(deadline, now)
        elif fires > deadline:
            _timer.arm(deadline, now)
        # Else ours fires before this deadline, and the handler arms it again for this one.

    def message(self) -> str:
        return f"{self._what} did not finish within {self._seconds:g} s"

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._active:
            return
        self._active = False
        _armed.pop()
        if self._outer > 0:
            # A timer was running before ours: it gets what is left of it, and ours is gone.
            left = self._outer - (time.monotonic() - (self._deadline - self._seconds))
            _timer.stop()
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))
