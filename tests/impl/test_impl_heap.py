"""The checking heap: every kind of report provably fires, and refused accesses touch nothing."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest

from externref_harness.impl import heap as h
from externref_harness.impl.heap import CheckingHeap


@pytest.fixture
def heap() -> Iterator[CheckingHeap]:
    checking = CheckingHeap()
    yield checking
    checking.release()


def kinds(heap: CheckingHeap) -> list[str]:
    return [r.kind for r in heap.reports]


def test_a_clean_run_reports_nothing(heap: CheckingHeap) -> None:
    a = heap.alloc(32, 16, "test")
    assert a % 16 == 0
    assert heap.store(a + 8, 7, "write")
    assert heap.load(a + 8, "read") == 7
    assert heap.load(a, "read") == int.from_bytes(bytes([h.FRESH_BYTE]) * 8, "little")
    assert heap.store(a, 0, "write")
    assert heap.fetch_add(a, 1, "increment") == 0
    assert heap.fetch_add(a, -1, "decrement") == 1
    heap.watch_value(a + 16, b"abc")
    ctypes.memmove(a + 16, b"abc", 3)
    heap.verify()
    heap.unwatch_value(a + 16, "drop")
    heap.free(a, 32, 16, "free")
    heap.verify()
    assert heap.reports == []
    assert heap.leaks() == []


def test_freed_blocks_are_poisoned_and_quarantined(heap: CheckingHeap) -> None:
    a = heap.alloc(24, 8, "test")
    heap.free(a, 24, 8, "free")
    assert ctypes.string_at(a, 24) == bytes([h.FREED_BYTE]) * 24
    others = {heap.alloc(24, 8, "test") for _ in range(50)}
    assert a not in others
    assert heap.status(a) == h.FREED


def test_use_after_free_is_reported_and_not_performed(heap: CheckingHeap) -> None:
    a = heap.alloc(24, 8, "test")
    heap.free(a, 24, 8, "free")
    assert heap.fetch_add(a, 1, "increment ref_count") is None
    assert heap.load(a + 8, "read value_ptr") is None
    assert kinds(heap) == [h.USE_AFTER_FREE, h.USE_AFTER_FREE]
    heap.verify()  # the poison is intact: nothing was written
    assert kinds(heap) == [h.USE_AFTER_FREE, h.USE_AFTER_FREE]


def test_wild_and_overflowing_accesses(heap: CheckingHeap) -> None:
    a = heap.alloc(16, 8, "chunk")
    assert not heap.store(8, 1, "write through a dangling pointer")
    assert not heap.store(a + 16, 1, "write one slot past the end")
    assert not heap.store(a + 12, 1, "write straddling the end")
    assert kinds(heap) == [h.WILD_ACCESS, h.BUFFER_OVERFLOW, h.BUFFER_OVERFLOW]
    heap.verify()
    assert h.REDZONE_WRITTEN not in kinds(heap)


def test_misaligned_atomic(heap: CheckingHeap) -> None:
    a = heap.alloc(32, 8, "test")
    assert heap.store(a + 1, 0, "write")
    assert heap.fetch_add(a + 1, 1, "increment ref_count") == 0
    assert kinds(heap) == [h.MISALIGNED]


def test_double_invalid_and_mismatched_frees(heap: CheckingHeap) -> None:
    a = heap.alloc(48, 16, "test")
    heap.free(a + 8, 48, 16, "free inside a block")
    heap.free(a, 48, 8, "free with another alignment")
    heap.free(a, 48, 16, "free again")
    assert kinds(heap) == [h.INVALID_FREE, h.BAD_DEALLOC_LAYOUT, h.DOUBLE_FREE]


def test_writes_that_bypass_the_accessors_are_found(heap: CheckingHeap) -> None:
    a = heap.alloc(16, 8, "test")
    b = heap.alloc(16, 8, "test")
    heap.free(b, 16, 8, "free")
    heap.watch_value(a, b"\x01\x02")
    ctypes.memmove(a, b"\x01\x02", 2)
    ctypes.memset(a, 0xFF, 1)  # value byte
    ctypes.memset(a + 16, 0, 1)  # redzone
    ctypes.memset(b + 4, 0, 1)  # freed block
    heap.verify()
    assert sorted(kinds(heap)) == sorted([h.VALUE_CORRUPTED, h.REDZONE_WRITTEN, h.FREED_BLOCK_WRITTEN])
    heap.verify()  # each finding is reported once
    assert len(heap.reports) == 3


def test_a_value_dropped_with_changed_bytes(heap: CheckingHeap) -> None:
    a = heap.alloc(16, 8, "test")
    heap.watch_value(a, b"xy")
    ctypes.memmove(a, b"xz", 2)
    heap.unwatch_value(a, "drop_in_place")
    assert kinds(heap) == [h.VALUE_CORRUPTED]


def test_leaks(heap: CheckingHeap) -> None:
    a = heap.alloc(16, 8, "VMExternData")
    b = heap.alloc(16, 8, "chunk")
    heap.free(a, 16, 8, "free")
    leaks = heap.leaks()
    assert [(r.kind, r.address) for r in leaks] == [(h.LEAK, b)]


def test_every_report_kind_is_covered_by_these_tests() -> None:
    import inspect
    import sys

    source = inspect.getsource(sys.modules[__name__])
    constant = {getattr(h, n): n for n in dir(h) if n.isupper() and isinstance(getattr(h, n), str)}
    missing = [k for k in h.REPORT_KINDS if f"h.{constant[k]}" not in source]
    assert not missing, f"report kinds no test makes fire: {missing}"


def test_the_write_record_finds_a_write_to_any_block_after_a_clean_verify(heap: CheckingHeap) -> None:
    """`verify` looks only at blocks whose bytes changed: a write that bypasses the accessors,
    to any of many blocks nothing else touched, is still found, and `take_changed` names exactly
    the blocks written (the probe re-reads only their footers)."""
    blocks = [heap.alloc(24, 8, "VMExternData") for _ in range(3000)]  # several segments
    freed = heap.alloc(24, 8, "VMExternData")
    heap.free(freed, 24, 8, "free")
    heap.verify()
    heap.take_changed()
    heap.verify()
    assert heap.take_changed() == set() and heap.reports == []
    far = blocks[2500]
    ctypes.memset(far, 0x01, 1)  # a footer word, in place: no report, but a change
    ctypes.memset(blocks[10] + 24, 0, 1)  # a redzone
    ctypes.memset(freed + 8, 0, 1)  # a freed block
    heap.verify()
    assert heap.take_changed() == {far, blocks[10], freed}
    assert sorted(kinds(heap)) == sorted([h.REDZONE_WRITTEN, h.FREED_BLOCK_WRITTEN])
    heap.verify()  # repaired, and the shadow follows: nothing new
    assert len(heap.reports) == 2 and heap.take_changed() == set()


def test_a_kept_segment_is_given_again_as_mmap_gives_one() -> None:
    """`release` keeps segments of the first size for the next heap (at most `SPARE_SEGMENTS`):
    what the last heap wrote anywhere in one, inside its blocks or past them, is gone, and so is
    its shadow's copy, so the next heap's write record starts from zero bytes as with a fresh
    `mmap`."""
    for base, _ in h._spare:  # kept by earlier tests: this one counts from none
        h._munmap(base, h.SEGMENT)
    h._spare.clear()
    first = CheckingHeap()
    block = first.alloc(64, 8, "VMExternData")
    ctypes.memset(block, 0x5A, 64)
    ctypes.memset(block + 4096, 0x77, 8)  # past every block: no check looks there
    first.verify()
    first.release()
    assert len(h._spare) == 1
    second = CheckingHeap()
    again = second.alloc(8, 8, "VMExternData")
    assert again == block and h._spare == []  # the kept segment, at its address
    seg = second._segments[0]
    rest = h.SEGMENT - 8 - h.REDZONE  # past the new block and its redzone
    assert ctypes.string_at(seg.base + 8 + h.REDZONE, rest) == b"\0" * rest
    assert bytes(seg.shadow) == b"\0" * h.SEGMENT
    second.verify()
    assert second.reports == []
    second.release()
    heaps = [CheckingHeap() for _ in range(h.SPARE_SEGMENTS + 2)]
    for each in heaps:
        each.alloc(8, 8, "VMExternData")
    for each in heaps:
        each.release()
    assert len(h._spare) == h.SPARE_SEGMENTS  # the others were unmapped
