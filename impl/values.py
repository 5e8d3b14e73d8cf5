"""The embedder's values: their bytes, their drop glue, and `dyn Any` vtables laid out as rustc does.

Each value type (one per size and alignment) has a static vtable in memory: `drop_in_place`, `size`,
`align`, then the `Any` method. The implementation finds a value's size and alignment only through
its vtable, as `drop_and_dealloc` does with `size_of_val` / `align_of_val`, and runs the value's
destructor by calling the function pointer stored there. The destructor hands the value's address
to the harness's `value_dropped` hook, which checks its bytes are intact and records the drop.
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


def fill_byte(serial: int) -> int:
    """The byte the `serial`-th value is filled with: it differs between neighbouring values and is
    never 0 or 1, so no word of a value reads as a null pointer or a small count, and a stray write
    of a footer field into a value shows."""
    return 0x80 + serial % 0x7F


class Values:
    """The value types of one run: their vtables, and the drop glue that reports each drop."""

    def __init__(self, heap: CheckingHeap, value_dropped: Callable[[int], None]) -> None:
        self.heap = heap
        self._value_dropped = value_dropped
        self._glue = DropInPlace(self._drop_in_place)
        self._glue_address = ctypes.cast(self._glue, ctypes.c_void_p).value or 0
        self._vtables: dict[tuple[int, int], AnyVTable] = {}
        self._by_address: dict[int, AnyVTable] = {}

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

    @staticmethod
    def make(size: int, fill: int) -> Callable[[int], None]:
        """`make_value` of `new_with`: writes a fresh value, every byte `fill`, in place."""

        def write(address: int) -> None:
            ctypes.memset(address, fill, size)

        return write

    def _drop_in_place(self, address: int) -> None:
        self._value_dropped(address)


def call_drop_in_place(function: int, address: int) -> None:
    """Call the `drop_in_place` a vtable points at."""
    DropInPlace(function)(address)
