"""Whole-number options: one argparse type for every command, so each bound is refused the same way.

A bound matters beyond tidiness: `gate --max-examples 10**12` would be accepted by a plain `int`
and then run a search that never ends, where the user almost certainly mistyped.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from externref_harness.errors import shown

#: The largest example budget or chunk size a command takes.
MAX_COUNT = 10**9


def whole_number(low: int, high: int) -> Callable[[str], int]:
    """An argparse `type` accepting a whole number in `low..high`, refusing anything else in one
    line that says what was expected and what was given."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {shown(repr(text))}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low:,}..{high:,}, got {shown(text)}")
        return value

    return parse


#: 1..`MAX_COUNT`: example budgets and chunk sizes.
count = whole_number(1, MAX_COUNT)
