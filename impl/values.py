"""The embedder's values: their bytes, their drop glue, and `dyn Any` vtables laid out as rustc does.

Each value type (one per size and alignment) has a static vtable in memory: `drop_in_place`, `size`,
`align`, then the `Any` method. The implementation finds a value's size and alignment only through
its vtable, as `drop_and_dealloc` does with `size_of_val` / `align_of_val`, and runs the value's
destructor by calling the function pointer stored there. The destructor is harness code: it checks
the value's bytes are intact and records that this value was dropped.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from externref_harness.impl.heap import CheckingHeap

#: `unsafe fn drop_in_place(*mut T)`.
DropInPlace = ctypes.CFUNCTYPE(None, ctypes.c_size_t)


class AnyVTable(ctypes.Structure):
    """A `dyn Any + Send + Sync` vtable: the three entries every vtable starts with, then `type_id`."""

    _fields_ = (
        ("drop_in_place", ctypes.c_size_t),
        ("size", ctypes.c_size_t),
        ("align", ctypes.c_size_t),
        ("type_id", ctypes.c_size_t),
    )


def value_bytes(serial: int, size: int) -> bytes:
    """The bytes of the `serial`-th value: distinct per value, and never a small count or a null
    word in their first bytes, so a stray write of a footer field shows."""
    base = b"\x5a\xa5\xc3\x3c" + (serial & 0xFFFF_FFFF).to_bytes(4, "little")
    return (base * (size // len(base) + 1))[:size]


class Values:
    """The value types of one run, and the values dropped so far (by address, in order)."""

    def __init__(self, heap: CheckingHeap) -> None:
        self.heap = heap
        self.dropped: list[int] = []
        self._glue = DropInPlace(self._drop_in_place)
        self._glue_address = ctypes.cast(self._glue, ctypes.c_void_p).value or 0
        self._vtables: dict[tuple[int, int], AnyVTable] = {}
        self._by_address: dict[int, AnyVTable] = {}
        self._serial = 0

    def vtable(self, size: int, align: int) -> int:
        """The address of the static vtable of the value type with this layout."""
        table = self._vtables.get((size, align))
        if table is None:
            type_id = len(self._vtables) + 1
            table = self._vtables[size, align] = AnyVTable(self._glue_address, size, align, type_id)
            self._by_address[ctypes.addressof(table)] = table
        return ctypes.addressof(table)

    def vtable_at(self, address: int) -> AnyVTable | None:
        """The vtable at `address`, if it is one of this run's (never dereferences a stray word)."""
        return self._by_address.get(address)

    def make(self, size: int) -> Callable[[int], None]:
        """`make_value` of `new_with`: writes a fresh value in place and asks the heap to watch it."""
        self._serial += 1
        data = value_bytes(self._serial, size)

        def write(address: int) -> None:
            ctypes.memmove(address, data, size)
            self.heap.watch_value(address, data)

        return write

    def _drop_in_place(self, address: int) -> None:
        self.heap.unwatch_value(address, "drop_in_place")
        self.dropped.append(address)


def call_drop_in_place(function: int, address: int) -> None:
    """Call the `drop_in_place` a vtable points at."""
    DropInPlace(function)(address)
