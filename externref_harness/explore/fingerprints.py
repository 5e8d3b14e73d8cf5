"""The explorer's seen-set: 64-bit fingerprints of states, not the states themselves, as TLC keeps.

`FingerprintStore` is an open-addressing hash table over three flat arrays: the fingerprint, the
fingerprint of the state it was first reached from, and the index of the move taken there (in
`model.moves.flat_moves` order). That is all the search needs to rebuild a trace: walking the
parents back to the root and re-taking the moves gives real operations again. A slot costs 20
bytes; the table doubles at three quarters full, so a stored state costs 27 to 54 bytes.

The store is asked once per transition, so the module is compiled with the search core
(`partition`).

Two different states with the same fingerprint would be merged, and the part of the space behind
the second one never explored: `collision_probability` bounds the chance of that the way TLC's
"optimistic" estimate does.
"""

from __future__ import annotations

from array import array

MASK64 = (1 << 64) - 1
#: Marks an empty slot; a state whose fingerprint comes out 0 is stored as `ZERO_STANDIN`.
EMPTY = 0
ZERO_STANDIN = 1
#: The move index recorded for the initial state (it has no parent).
ROOT_MOVE = 0xFFFF_FFFF
_SLOT_BYTES = 8 + 8 + 4
_GOLDEN = 0x9E37_79B9_7F4A_7C15


def fingerprint(value: object) -> int:
    """A nonzero 64-bit fingerprint of a hashable value: its structural hash, spread over 64 bits.

    `hash` of a tuple or a frozen dataclass is an xxHash-style mix of its fields' hashes, the same
    in every process forked from one interpreter (which is how the workers start).
    """
    fp = (hash(value) * _GOLDEN) & MASK64
    return fp or ZERO_STANDIN


def owner(fp: int, partitions: int) -> int:
    """The partition that stores `fp` (high bits; the store indexes by the low ones)."""
    return (fp >> 40) % partitions


class FingerprintStore:
    """A set of fingerprints, each with the (parent fingerprint, move index) that first reached it."""

    __slots__ = ("_keys", "_mask", "_moves", "_parents", "_size")

    def __init__(self, capacity: int = 1 << 12) -> None:
        size = 1 << max(4, (capacity - 1).bit_length())
        self._mask = size - 1
        self._keys = array("Q", bytes(8 * size))
        self._parents = array("Q", bytes(8 * size))
        self._moves = array("I", bytes(4 * size))
        self._size = 0

    def __len__(self) -> int:
        return self._size

    @property
    def nbytes(self) -> int:
        """Bytes the three arrays occupy."""
        return len(self._keys) * _SLOT_BYTES

    def add(self, fp: int, parent: int, move: int) -> bool:
        """Store `fp` if it is new (True); a fingerprint already stored keeps its first parent."""
        keys = self._keys
        mask = self._mask
        i = fp & mask
        while True:
            k = keys[i]
            if k == fp:
                return False
            if k == EMPTY:
                break
            i = (i + 1) & mask
        keys[i] = fp
        self._parents[i] = parent
        self._moves[i] = move
        self._size += 1
        if self._size * 4 > len(keys) * 3:
            self._grow()
        return True

    def __contains__(self, fp: int) -> bool:
        return self._find(fp) >= 0

    def parent(self, fp: int) -> tuple[int, int] | None:
        """(parent fingerprint, move index) of a stored fingerprint; None if it is not stored."""
        i = self._find(fp)
        if i < 0:
            return None
        return self._parents[i], self._moves[i]

    def _find(self, fp: int) -> int:
        keys = self._keys
        mask = self._mask
        i = fp & mask
        while True:
            k = keys[i]
            if k == fp:
                return i
            if k == EMPTY:
                return -1
            i = (i + 1) & mask

    def _grow(self) -> None:
        keys, parents, moves = self._keys, self._parents, self._moves
        size = 2 * len(keys)
        mask = size - 1
        new_keys = array("Q", bytes(8 * size))
        new_parents = array("Q", bytes(8 * size))
        new_moves = array("I", bytes(4 * size))
        for j, k in enumerate(keys):
            if k == EMPTY:
                continue
            i = k & mask
            while new_keys[i] != EMPTY:
                i = (i + 1) & mask
            new_keys[i] = k
            new_parents[i] = parents[j]
            new_moves[i] = moves[j]
        self._keys, self._parents, self._moves, self._mask = new_keys, new_parents, new_moves, mask


def collision_probability(distinct: int, generated: int) -> float:
    """TLC's optimistic estimate of a fingerprint collision: `distinct * (generated - distinct) / 2^64`,
    where `generated` counts every successor computed (the initial state included) and
    `generated - distinct` of them were look-ups that found their fingerprint already stored."""
    return min(1.0, distinct * max(0, generated - distinct) / 2.0**64)
