"""Which positions of a tuple changed between two steps, at the speed of a C loop.

The lockstep's per-step checks look only at what a step changed (`lockstep.memory_checks`), on both
sides: the model's heap of boxes and the implementation's footer facts; the implementation's
child process sends the parent only the facts that changed (`isolation.child`); the model keeps
a part of its state that a step left equal (`model.world`). A step changes a handful of positions
of tuples as long as the heap, and leaves the others the very same objects (the model's
transition and the adapter's probe both rebuild a tuple around the unchanged elements), so each
position is compared by identity first and by value only when the identity differs.

Two loops compute it. `_changes.c`, built by `setup.py`, reads the two item arrays in place: a
pointer comparison per unchanged position, about 1 ns, where this module's own loop (compiled by
mypyc, or interpreted) takes a reference to each item, about 5 ns: at 4,096 live refs that was
the largest heap-sized cost of a lockstep step. `compiled.py` decides whether this process may
use the C loop (a fresh build, not `EXTERNREF_HARNESS_INTERPRETED`); otherwise this module's loop
runs, and the two agree (`tests/test_changes.py`).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Sequence
from typing import Any

_Changed = Callable[[Sequence[Any], Sequence[Any]], list[int]]
_Same = Callable[[Sequence[Any], Sequence[Any]], bool]
_Pages = Callable[[int, int, int, int], list[int]]
_Joined = Callable[[tuple[tuple[Any, ...], ...]], tuple[Any, ...]]
_First = Callable[[int, int, int, int], int]
_Filled = Callable[[int, int, int], bool]
_Holds = Callable[[int, bytes], bool]
_Copy = Callable[[int, int, int], None]
_Words = Callable[[bytes, bytes], list[int]]


def _c_loop() -> tuple[_Changed, _Same, _Pages, _Joined, _First, _Filled, _Holds, _Copy, _Words] | None:
    try:
        from externref_harness import _changes
    except ImportError:  # not built, stale, or this process runs interpreted (`compiled.py`)
        return None
    return (
        _changes.changed_positions,
        _changes.same,
        _changes.changed_pages,
        _changes.joined,
        _changes.first_difference,
        _changes.filled,
        _changes.holds,
        _changes.copy,
        _changes.changed_words,
    )


_C_LOOP = _c_loop()


def changed_positions(old: Sequence[Any], new: Sequence[Any]) -> list[int]:
    """The indices `i < len(new)` where `new[i] != old[i]`, or `old` has no index `i`, ascending."""
    c = _C_LOOP
    if c is not None:
        return c[0](old, new)
    return python_changed_positions(old, new)


def same(old: Sequence[Any], new: Sequence[Any]) -> bool:
    """`list(old) == list(new)`, comparing identity first (no copy of either)."""
    c = _C_LOOP
    if c is not None:
        return c[1](old, new)
    return len(old) == len(new) and not python_changed_positions(old, new)


def changed_pages(now: int, then: int, length: int, page: int) -> list[int]:
    """Offsets (multiples of `page`, below `length`) of the pages whose bytes differ between the
    memory at address `now` and at address `then`, ascending; both ranges must be mapped.

    The checking heap compares each segment with its shadow after every step: at 4,096 live refs
    that is about 260 KB, where a `memcmp` per page through ctypes cost more than the bytes."""
    if length < 0 or page <= 0:
        raise ValueError("changed_pages: length must be >= 0 and page > 0")
    c = _C_LOOP
    if c is not None:
        return c[2](now, then, length, page)
    return python_changed_pages(now, then, length, page)


def first_difference(now: int, then: int, length: int, start: int) -> int:
    """The first offset in `[start, length)` at which the bytes at address `now` and at address
    `then` differ, -1 if none does; both ranges must be mapped.

    The checking heap finds which blocks a changed page's writes fall in (`CheckingHeap.verify`):
    the first difference, then the next one past that block's end. Done with Python's integers
    (the page's bytes twice, two 4 KB integers and their shifts) that was about 9 µs a changed
    page, a changed page or two every step that touches the heap."""
    if length < 0 or start < 0:
        raise ValueError("first_difference: length and start must be >= 0")
    c = _C_LOOP
    if c is not None:
        return c[4](now, then, length, start)
    return python_first_difference(now, then, length, start)


def python_first_difference(now: int, then: int, length: int, start: int) -> int:
    """`first_difference` through ctypes: the two ranges' bytes, and the lowest set bit of their
    exclusive or."""
    if start >= length:
        return -1
    a = ctypes.string_at(now + start, length - start)
    b = ctypes.string_at(then + start, length - start)
    if a == b:
        return -1
    diff = int.from_bytes(a, "little") ^ int.from_bytes(b, "little")
    return start + (((diff & -diff).bit_length() - 1) >> 3)


def changed_words(old: bytes, new: bytes) -> list[int]:
    """The indices `i` of `new`'s 8-byte words that differ from `old`'s word `i`, or that `old`
    has no word `i`, ascending: the slots of a chunk read at two steps that changed
    (`lockstep.memory_checks.ChunkCompare`), without making an integer of each of its words."""
    c = _C_LOOP
    if c is not None:
        return c[8](old, new)
    return python_changed_words(old, new)


def python_changed_words(old: bytes, new: bytes) -> list[int]:
    """`changed_words` by slicing."""
    n_old = len(old) // 8
    return [
        i for i in range(len(new) // 8) if i >= n_old or old[8 * i : 8 * i + 8] != new[8 * i : 8 * i + 8]
    ]


def filled(address: int, length: int, byte: int) -> bool:
    """Whether each of the `length` bytes at `address` (a mapped range) is `byte`: a redzone, a
    freed block's poison (`impl.heap.CheckingHeap.verify`). Through ctypes a compare of a few
    bytes cost about a microsecond of argument conversion and a copy; here it is a C loop."""
    if length < 0 or not 0 <= byte <= 255:
        raise ValueError("filled: length must be >= 0 and byte between 0 and 255")
    c = _C_LOOP
    if c is not None:
        return c[5](address, length, byte)
    return python_filled(address, length, byte)


def python_filled(address: int, length: int, byte: int) -> bool:
    """`filled` through ctypes."""
    return ctypes.string_at(address, length) == bytes((byte,)) * length


def holds(address: int, data: bytes) -> bool:
    """Whether the `len(data)` bytes at `address` (a mapped range) are `data`: a watched value
    (`impl.heap`), without copying them out."""
    c = _C_LOOP
    if c is not None:
        return c[6](address, data)
    return python_holds(address, data)


def python_holds(address: int, data: bytes) -> bool:
    """`holds` through ctypes."""
    return ctypes.string_at(address, len(data)) == data


def copy(to: int, source: int, length: int) -> None:
    """`memmove` of `length` bytes from address `source` to address `to` (both mapped): a changed
    page into the checking heap's shadow, after every step that wrote one."""
    if length < 0:
        raise ValueError("copy: length must be >= 0")
    c = _C_LOOP
    if c is not None:
        c[7](to, source, length)
        return
    python_copy(to, source, length)


def python_copy(to: int, source: int, length: int) -> None:
    """`copy` through ctypes."""
    ctypes.memmove(to, source, length)


def joined(parts: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    """The items of `parts`, in order, as one tuple: a persistent vector's leaves
    (`externref_harness.vec`) in one pass, where a list extended leaf by leaf and made a tuple
    is three (at 4,096 handles, the largest heap-sized cost of a probe that remained)."""
    c = _C_LOOP
    if c is not None:
        return c[3](parts)
    return python_joined(parts)


def python_joined(parts: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    """`joined` by this module's own loop (refusing what the C one refuses)."""
    if not isinstance(parts, tuple):
        raise TypeError("joined: parts must be a tuple of tuples")
    out: list[Any] = []
    for part in parts:
        if not isinstance(part, tuple):
            raise TypeError("joined: parts must be a tuple of tuples")
        out.extend(part)
    return tuple(out)


def uses_c_loop() -> bool:
    """Whether this process compares with `_changes.c`'s loop."""
    return _C_LOOP is not None


def python_changed_positions(old: Sequence[Any], new: Sequence[Any]) -> list[int]:
    """`changed_positions` by this module's own loop (the one that runs without the C build)."""
    # `tuple()` of a tuple is the tuple itself: only a list is copied.
    return _changed(tuple(old), tuple(new))


def _changed(old: tuple[Any, ...], new: tuple[Any, ...]) -> list[int]:
    if old is new:
        return []  # one tuple (a step left it alone): nothing differs, as the C loop says
    common = min(len(old), len(new))
    out: list[int] = []
    for i in range(common):
        a = old[i]
        b = new[i]
        if a is not b and a != b:
            out.append(i)
    out.extend(range(common, len(new)))
    return out


#: `python_changed_pages` compares this many pages at once, and each page only where they differ.
_WINDOW_PAGES = 16


def python_changed_pages(now: int, then: int, length: int, page: int) -> list[int]:
    """`changed_pages` through ctypes: a `memcmp` per window of pages, then per page of a window
    that differs."""
    out: list[int] = []
    window = _WINDOW_PAGES * page
    for start in range(0, length, window):
        size = min(window, length - start)
        if not _memcmp(now + start, then + start, size):
            continue
        for offset in range(start, start + size, page):
            if _memcmp(now + offset, then + offset, min(page, length - offset)):
                out.append(offset)
    return out


def _memcmp(a: int, b: int, size: int) -> int:
    return int(_libc_memcmp(a, b, size))


_libc_memcmp = ctypes.CDLL(None).memcmp
_libc_memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_libc_memcmp.restype = ctypes.c_int
