"""Words that are not live refs, which the host world leaves in the stack slots no map covers.

A stack-map lookup bug shows only when a slot the right map leaves out holds a non-null word that
is not a live ref: the runtime then counts, roots or frees something it must not touch. Real
frames are full of such words (dead values the register allocator left behind, spilled
integers), so while a Wasm frame is suspended at a call site (`impl.world.World._safepoint`)
every externref slot that holds null and that no map the world's lookup gives for that pc covers
holds one of these, chosen from counters of the run (an i64 slot holds `SCALAR_WORD`, its own
value, which is one already):

    stale      the footer of a ref already freed (the checking heap quarantines freed blocks,
               so the address names no other block for the run)
    decoy      an integer that looks like a pointer: an aligned address in a region the host
               owns, whose bytes the checking heap watches
    interior   an address inside a live box: in its value, or its footer's `value_ptr`
    value      a live ref's value address (never its footer: a zero-sized value is skipped)
    scalar     `SCALAR_WORD`, an odd i64 in no mapping

When the frame resumes, its slots get their own words back. Touching any of these is seen: the
checking heap reports a write to a freed block, to the decoy region or to a live value's bytes
(`CheckingHeap.verify`, after every step), and the Python port's checked accessors refuse the
access and report it; a count taken on one shows in the table's elements and the drop log.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence

from externref_harness.impl.heap import FREED, LIVE
from externref_harness.model.layout import VALUE_PTR_OFFSET
from externref_harness.model.state import WORD

#: An i64 the register allocator spilled into a slot: odd, so never a footer, and in no block.
SCALAR_WORD = 0x0BAD_5CA1_A12F_0001
#: The decoy region's words: never a count that a few decrements bring to zero.
DECOY_WORD = 0x5EED_0000_0000_0000
DECOY_WORDS = 16

KINDS = ("stale", "decoy", "interior", "value", "scalar")


class NonRefWords:
    """Chooses a non-ref word for a slot; owns the decoy region (watched by the caller)."""

    def __init__(
        self,
        allocations: Sequence[tuple[int, int]],
        status: Callable[[int], str],
        sizes: Callable[[int], int],
    ) -> None:
        #: `(footer, value)` of every allocation of the run (the world's list, shared).
        self._allocations = allocations
        self._status = status
        self._size = sizes
        self.decoy = (ctypes.c_uint64 * DECOY_WORDS)(*[DECOY_WORD] * DECOY_WORDS)
        self.decoy_address = ctypes.addressof(self.decoy)
        self.decoy_bytes = bytes(self.decoy)

    def words(self, turns: Sequence[int]) -> list[tuple[str, int]]:
        """The choice for each turn: its kind, and the word (the next kind when one has no
        candidate now). Each kind's candidates are read once, from the heap as it is, and only
        when a turn needs them (the decoy and the scalar always have one: no heap to read)."""
        found: dict[str, list[int]] = {}
        out = []
        for turn in turns:
            for k in range(len(KINDS)):
                kind = KINDS[(turn + k) % len(KINDS)]
                candidates = found.get(kind)
                if candidates is None:
                    candidates = found[kind] = self._candidates(kind)
                if candidates:
                    out.append((kind, candidates[turn % len(candidates)]))
                    break
        return out

    def _candidates(self, kind: str) -> list[int]:
        if kind == "decoy":
            return [self.decoy_address + WORD * i for i in range(DECOY_WORDS)]
        if kind == "scalar":
            return [SCALAR_WORD]
        if kind == "stale":
            return [footer for footer, _ in self._allocations if self._status(footer) == FREED]
        live = [(f, v) for f, v in self._allocations if self._status(f) == LIVE]
        if kind == "value":
            return [v for f, v in live if v != f]
        # interior: a word inside the value past its first, or the footer's `value_ptr`.
        inside: list[int] = []
        for footer, value in live:
            inside += range(value + WORD, value + min(self._size(footer), 4 * WORD), WORD)
            inside.append(footer + VALUE_PTR_OFFSET)
        return inside
