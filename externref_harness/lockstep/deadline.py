"""A time limit on one step of an in-process implementation.

A harness or implementation bug can turn a step into a loop that never ends (a stack walk that
never reaches the canary, say); without a limit `check` hangs instead of reporting. `time_limit`
arms `ITIMER_REAL` around the step and raises `Timeout` from the `SIGALRM` handler, which the
lockstep reports as a failing step. The handler runs between Python bytecodes, so it interrupts
Python code (the ctypes implementation and its checking heap), not a loop inside native code;
that needs the implementation in another process.

A lockstep arms a limit around every step, so arming costs two `setitimer` calls and nothing
else: the `SIGALRM` handler is installed once, on the first limit, and stays. Between limits it
hands the signal to whatever handled `SIGALRM` before it (the default action included), so code
outside a limit sees `SIGALRM` as if the handler were not there.
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


def available() -> bool:
    """Whether limits are enforced here: `SIGALRM` exists and this is the main thread."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


#: The armed limits, innermost last (empty: the signal is not ours).
_armed: list[time_limit] = []
#: What handled `SIGALRM` before `_on_alarm` was installed.
_previous: list[Callable[[int, FrameType | None], Any] | int | None] = []


def _on_alarm(signum: int, frame: FrameType | None) -> None:
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
    """Install `_on_alarm`, unless it is already the handler (someone may have replaced it)."""
    current = signal.getsignal(signal.SIGALRM)
    if current is not _on_alarm:
        _previous[:] = [current]
        signal.signal(signal.SIGALRM, _on_alarm)


class time_limit:
    """Raise `Timeout` inside the block if it runs longer than `seconds` (no limit if <= 0 or not
    `available()`). An outer timer that was armed is re-armed with what is left of it. `what` is
    formatted (`str`) only when the limit is reached: a step's name costs nothing until then."""

    __slots__ = ("_active", "_outer", "_seconds", "_started", "_what")

    def __init__(self, seconds: float, what: object) -> None:
        self._seconds = seconds
        self._what = what
        self._active = False
        self._outer = 0.0
        self._started = 0.0

    def __enter__(self) -> None:
        if self._seconds <= 0 or not available():
            return
        if _handler(signal.SIGALRM) is not _on_alarm:
            _install()
        self._active = True
        _armed.append(self)
        self._outer, _ = signal.setitimer(signal.ITIMER_REAL, self._seconds)
        self._started = time.monotonic() if self._outer > 0 else 0.0

    def message(self) -> str:
        return f"{self._what} did not finish within {self._seconds:g} s"

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self._active:
            return
        self._active = False
        signal.setitimer(signal.ITIMER_REAL, 0)
        _armed.pop()
        if self._outer > 0:
            left = self._outer - (time.monotonic() - self._started)
            signal.setitimer(signal.ITIMER_REAL, max(left, 1e-3))
