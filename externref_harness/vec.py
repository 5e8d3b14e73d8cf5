"""A persistent vector: an immutable sequence whose updates share structure with the one they change.

    Vec(n=150)                 leaves, LEAF items each but the last
      ├── (x0 ... x63)
      ├── (x64 ... x127)
      └── (x128 ... x149)

    v.set(70, y)   ─▶ Vec(n=150): (x0 ... x63)  (x64 ... y ... x127)  (x128 ... x149)
                                   the same      a copy of one leaf     the same
    v.append(z)    ─▶ Vec(n=151): the same, the same, (x128 ... x149, z)

The model's heap holds a `Box` for every ref the run allocated. As a tuple, every write copied all
of it, every dropped state released all of it, and every check that asked what a step changed
compared it position by position: at 4,096 live refs, passes over 4,096 pointers that cost more
than the rest of a step. A write to a `Vec` copies one leaf and the spine (128 pointers at 4,096
items), the states of successive steps share every other leaf, and `changed_positions` compares
leaves by identity before items.

It is a value: equal to any `Vec`, tuple or list with the same items, hashed as the tuple of
them, shown as that tuple (reports and failures read as they did), pickled as one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Final, Generic, TypeVar

from externref_harness.changes import changed_positions, joined

T = TypeVar("T")

#: Items per leaf. A write copies a leaf and the spine: at 4,096 items, 64 + 64 pointers.
LEAF: Final = 64


class Vec(Generic[T]):
    """An immutable sequence of `n` items in leaves of `LEAF` (the last one may be shorter).

    Invariant: every leaf but the last holds exactly `LEAF` items, the last holds 1 to `LEAF`, and
    there is no leaf when `n == 0`."""

    __slots__ = ("_hash", "leaves", "n")

    def __init__(self, leaves: tuple[tuple[T, ...], ...] = (), n: int = 0) -> None:
        self.leaves: Final = leaves
        self.n: Final = n
        self._hash = -1

    @staticmethod
    def of(items: Iterable[T]) -> Vec[T]:
        """The items as a `Vec` (a `Vec` is returned as it is)."""
        if isinstance(items, Vec):
            return items
        flat = tuple(items)
        n = len(flat)
        if n <= LEAF:
            return Vec((flat,), n) if n else _EMPTY
        return Vec(tuple([flat[i : i + LEAF] for i in range(0, n, LEAF)]), n)

    def __len__(self) -> int:
        return self.n

    def __bool__(self) -> bool:
        return self.n > 0

    def __getitem__(self, i: int) -> T:
        leaves = self.leaves
        if len(leaves) == 1:  # the explorer's states: one leaf, indexed as a tuple is
            return leaves[0][i]
        n = self.n
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError("Vec index out of range")
        return leaves[i // LEAF][i % LEAF]

    def __iter__(self) -> Iterator[T]:
        # A tuple's own iterator (a generator here costs a resumption per item).
        return iter(self.as_tuple())

    def __contains__(self, item: object) -> bool:
        for leaf in self.leaves:
            if item in leaf:
                return True
        return False

    def as_tuple(self) -> tuple[T, ...]:
        leaves = self.leaves
        if len(leaves) == 1:
            return leaves[0]
        return joined(leaves)

    def set(self, i: int, item: T) -> Vec[T]:
        """This vector with item `i` replaced (`0 <= i < n`)."""
        if not 0 <= i < self.n:
            raise IndexError("Vec index out of range")
        leaves = self.leaves
        k = i // LEAF
        leaf = list(leaves[k])
        leaf[i % LEAF] = item
        if len(leaves) == 1:
            return Vec((tuple(leaf),), self.n)
        spine = list(leaves)
        spine[k] = tuple(leaf)
        return Vec(tuple(spine), self.n)

    def updated(self, writes: dict[int, T], added: list[T]) -> Vec[T]:
        """This vector with items replaced (`writes`, index to item, each `0 <= i < n`) and then
        `added` appended: every leaf written copied once, however many of its items changed (a
        step's writes made one by one with `set` would copy a leaf per write)."""
        n = self.n
        if n + len(added) <= LEAF:  # one leaf before and after: the explorer's states
            one: list[T] = list(self.leaves[0]) if n else []
            for i, item in writes.items():
                if not 0 <= i < n:
                    raise IndexError("Vec index out of range")
                one[i] = item
            one.extend(added)
            return Vec((tuple(one),), len(one)) if one else self
        leaves = list(self.leaves)
        touched: dict[int, list[T]] = {}
        for i, item in writes.items():
            if not 0 <= i < n:
                raise IndexError("Vec index out of range")
            k = i // LEAF
            leaf = touched.get(k)
            if leaf is None:
                leaf = touched[k] = list(leaves[k])
            leaf[i % LEAF] = item
        if added:
            at = 0
            if n % LEAF:  # fill the last leaf first
                k = len(leaves) - 1
                leaf = touched.get(k)
                if leaf is None:
                    leaf = touched[k] = list(leaves[k])
                at = LEAF - len(leaf)
                leaf.extend(added[:at])
            for start in range(at, len(added), LEAF):
                touched[len(leaves)] = added[start : start + LEAF]
                leaves.append(())
        for k, leaf in touched.items():
            leaves[k] = tuple(leaf)
        return Vec(tuple(leaves), n + len(added))

    def append(self, item: T) -> Vec[T]:
        leaves = self.leaves
        if self.n % LEAF == 0:
            return Vec(leaves + ((item,),), self.n + 1)  # noqa: RUF005 (one allocation, compiled)
        last = leaves[-1] + (item,)
        if len(leaves) == 1:
            return Vec((last,), self.n + 1)
        return Vec(leaves[:-1] + (last,), self.n + 1)  # noqa: RUF005

    def changed_positions(self, old: Vec[T]) -> list[int]:
        """The indices `i < len(self)` where `self[i] != old[i]`, or `old` has no index `i`,
        ascending. Leaves the two share are skipped whole; the others are compared by
        `changes.changed_positions` (identity first, then value)."""
        out: list[int] = []
        if old is self:
            return out
        mine, theirs = self.leaves, old.leaves
        for k in range(min(len(mine), len(theirs))):
            a, b = theirs[k], mine[k]
            if a is not b:
                base = k * LEAF
                out.extend([base + j for j in changed_positions(a, b)])
        if len(mine) > len(theirs):
            out.extend(range(len(theirs) * LEAF, self.n))
        return out

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if isinstance(other, Vec):
            if self.n != other.n:
                return False
            for a, b in zip(self.leaves, other.leaves, strict=True):
                if a is not b and a != b:
                    return False
            return True
        if isinstance(other, (tuple, list)):
            return len(other) == self.n and self.as_tuple() == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        if self._hash == -1:
            self._hash = hash(self.as_tuple())
        return self._hash

    def __repr__(self) -> str:
        return repr(self.as_tuple())

    def __reduce__(self) -> tuple[Any, ...]:
        return (_vec_of, (self.as_tuple(),))


def _vec_of(items: tuple[Any, ...]) -> Vec[Any]:
    return Vec.of(items)


_EMPTY: Final[Vec[Any]] = Vec()
