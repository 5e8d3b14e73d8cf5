"""Which positions of a tuple changed between two steps, at the speed of a C loop.

The lockstep's per-step checks look only at what a step changed (`lockstep.memory_checks`), on both
sides: the model's heap of boxes and the implementation's footer facts; the implementation's
child process sends the parent only the facts that changed (`isolation.child`). A step changes a
handful of positions of tuples as long as the heap, and leaves the others the very same objects
(the model's transition and the adapter's probe both rebuild a tuple around the unchanged
elements), so each position is compared by identity first and by value only when the identity
differs.

The module is compiled (`compiled.COMPILED_MODULES`): the loop is then a pointer comparison per
unchanged position, a few nanoseconds, where slicing tuples in halves and comparing the halves
(this module's first form) allocated and compared about twice the heap per changed position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def changed_positions(old: Sequence[Any], new: Sequence[Any]) -> list[int]:
    """The indices `i < len(new)` where `new[i] != old[i]`, or `old` has no index `i`, ascending."""
    # `tuple()` of a tuple is the tuple itself: only a list the parent rebuilt is copied.
    return _changed(tuple(old), tuple(new))


def _changed(old: tuple[Any, ...], new: tuple[Any, ...]) -> list[int]:
    common = min(len(old), len(new))
    out: list[int] = []
    for i in range(common):
        a = old[i]
        b = new[i]
        if a is not b and a != b:
            out.append(i)
    out.extend(range(common, len(new)))
    return out
