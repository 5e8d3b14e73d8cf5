"""Progress of a long run: a spinner on a terminal, a plain line every few seconds elsewhere.

A CI log shows no spinner, and a run that prints nothing for minutes looks hung; off a terminal a
background thread writes `externref-harness check: lockstep: 120 examples, 7031 steps (35s)` to
stderr every `interval` seconds (`$EXTERNREF_HARNESS_PROGRESS_SECONDS`, default 10; 0: never).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console

from externref_harness.errors import UsageError, printable

PROGRESS_ENV = "EXTERNREF_HARNESS_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 10.0


def interval() -> float:
    """Seconds between two plain progress lines (0: none); bad values are bad input."""
    text = os.environ.get(PROGRESS_ENV)
    if text is None:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 86400:
        raise UsageError(f"${PROGRESS_ENV} must be a number of seconds in 0..86400, got {text[:40]!r}")
    return value


@contextmanager
def progress(command: str, what: Callable[[], str], console: Console | None = None) -> Iterator[None]:
    """Report `what()` while the block runs: a rich status on a terminal, else plain lines on stderr."""
    every = interval()
    if console is not None and console.is_terminal:
        with console.status(printable(what())) as status:
            stop = threading.Event()

            def spin() -> None:
                while not stop.wait(0.5):
                    status.update(printable(what()))

            thread = threading.Thread(target=spin, daemon=True)
            thread.start()
            try:
                yield
            finally:
                stop.set()
                thread.join()
        return
    if every == 0:
        yield
        return
    started = time.monotonic()
    stop = threading.Event()

    def tick() -> None:
        while not stop.wait(every):
            line = f"externref-harness {command}: {what()} ({time.monotonic() - started:.0f}s)"
            try:
                print(printable(line), file=sys.stderr, flush=True)
            except (OSError, ValueError):  # stderr closed: progress is best effort
                return

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
