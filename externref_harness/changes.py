"""Which positions of a sequence changed between two steps, at the speed of tuple comparison.

The lockstep's per-step checks look only at what a step changed (`lockstep.memory_checks`), on both
sides: the model's heap of boxes and the implementation's footer facts; the implementation's
child process sends the parent only the facts that changed (`isolation.child`). A step changes a handful
of positions of sequences as long as the heap, so the positions are found by halving: two equal
slices (compared in C, by identity first) are skipped whole, and only slices that differ are split
further. With k changed positions out of n this costs about k * n element comparisons in C (each a
pointer comparison for the unchanged ones), and no Python work per unchanged position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Below this many positions a differing slice is compared element by element.
LEAF = 32


def changed_positions(old: Sequence[Any], new: Sequence[Any]) -> list[int]:
    """The indices `i < len(new)` where `new[i] != old[i]`, or `old` has no index `i`, ascending."""
    common = min(len(old), len(new))
    out: list[int] = []
    if old[:common] != new[:common]:
        _split(old, new, 0, common, out)
    out.extend(range(common, len(new)))
    return out


def _split(old: Sequence[Any], new: Sequence[Any], lo: int, hi: int, out: list[int]) -> None:
    """`old[lo:hi] != new[lo:hi]`: add the positions where they differ."""
    if hi - lo <= LEAF:
        out.extend(i for i in range(lo, hi) if old[i] != new[i])
        return
    mid = (lo + hi) // 2
    if old[lo:mid] != new[lo:mid]:
        _split(old, new, lo, mid, out)
    if old[mid:hi] != new[mid:hi]:
        _split(old, new, mid, hi, out)
