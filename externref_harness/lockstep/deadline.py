"""A time limit on one step of an in-process implementation.

A harness or implementation bug can turn a step into a loop that never ends (a stack walk that
never reaches the canary, say); without a limit `check` hangs instead of reporting. `time_limit`
arms `ITIMER_REAL` around the step and raises `Timeout` from the `SIGALRM` handler, which the
lockstep reports as a failing step. The handler runs between Python bytecodes, so it interrupts
Python code (the ctypes implementation and its checking heap), not a loop inside native code;
that needs the implementation in another process.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

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


@contextmanager
def time_limit(seconds: float, what: str) -> Iterator[None]:
    """Raise `Timeout` inside the block if it runs longer than `seconds` (no limit if <= 0 or not
    `available()`). An outer timer that was armed is re-armed with what is left of it."""
    if seconds <= 0 or not available():
        yield
        return

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        raise Timeout(f"{what} did not finish within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    outer, _ = signal.setitimer(signal.ITIMER_REAL, seconds)
    started = time.monotonic()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        if outer > 0:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - started), 1e-3))
