"""Children a test interrupts with SIGINT, as Ctrl-C reaches a terminal's foreground job."""

from __future__ import annotations

import signal


def interruptible() -> None:
    """A `preexec_fn`: SIGINT back to its default. A CI runner (or any shell) that starts the suite
    in the background hands its children SIGINT ignored, and an ignored SIGINT stays ignored
    across `exec`: the campaign would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
