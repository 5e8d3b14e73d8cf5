"""`changes`: the C loop and this module's own loop find the same positions, identity first.

In CI the package is built, so `changed_positions` and `same` run `_changes.c`; each test compares
them with `python_changed_positions`, the loop that runs without the build.
"""

from __future__ import annotations

import ctypes
import os
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from externref_harness import changes


@pytest.mark.skipif(not os.environ.get("CI"), reason="a developer's checkout may be interpreted")
def test_ci_uses_the_c_loop() -> None:
    assert changes.uses_c_loop()


items = st.one_of(st.integers(-3, 3), st.none(), st.tuples(st.integers(0, 2)))


@given(st.lists(items, max_size=12), st.lists(items, max_size=12), st.booleans())
def test_both_loops_find_the_same_positions(old: list[Any], new: list[Any], as_tuples: bool) -> None:
    a: Any = tuple(old) if as_tuples else old
    b: Any = tuple(new) if as_tuples else new
    expected = [i for i in range(len(new)) if i >= len(old) or old[i] != new[i]]
    assert changes.changed_positions(a, b) == expected
    assert changes.python_changed_positions(a, b) == expected
    assert changes.same(a, b) == (old == new)


class _Equal:
    """Equal to every other `_Equal`: a position holding another one did not change."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Equal)

    __hash__ = None  # type: ignore[assignment]


def test_a_different_but_equal_object_is_not_a_change() -> None:
    old, new = (_Equal(), 1, _Equal()), (_Equal(), 2, _Equal())
    assert changes.changed_positions(old, new) == [1]
    assert changes.same(old, (_Equal(), 1, _Equal()))


class _Shrinks:
    """A comparison that empties the list being compared: the loop must read its length again."""

    def __init__(self, victim: list[Any]) -> None:
        self.victim = victim

    def __eq__(self, other: object) -> bool:
        self.victim.clear()
        return False

    __hash__ = None  # type: ignore[assignment]


def test_a_comparison_that_changes_the_list_is_survived() -> None:
    new: list[Any] = []
    old: list[Any] = [_Shrinks(new), 1, 2, 3]
    new.extend([object(), 1, 2, 3])
    assert changes.changed_positions(old, new) == [0]  # `new` is empty after the comparison
    assert not changes.same(old, new)


def test_a_comparison_that_raises_propagates() -> None:
    class Raises:
        def __eq__(self, other: object) -> bool:
            raise ValueError("no comparison")

        __hash__ = None  # type: ignore[assignment]

    with pytest.raises(ValueError, match="no comparison"):
        changes.changed_positions([Raises()], [Raises()])
    with pytest.raises(ValueError, match="no comparison"):
        changes.same([Raises()], [Raises()])


@given(st.integers(0, 5 * 4096 + 100), st.sets(st.integers(0, 5 * 4096 + 99), max_size=6))
def test_both_loops_find_the_same_changed_pages(length: int, written: set[int]) -> None:
    now = ctypes.create_string_buffer(b"\x55" * length, length)
    then = ctypes.create_string_buffer(b"\x55" * length, length)
    for at in written:
        if at < length:
            now[at] = b"\x66"
    expected = sorted({at // 4096 * 4096 for at in written if at < length})
    addresses = (ctypes.addressof(now), ctypes.addressof(then), length, 4096)
    assert changes.changed_pages(*addresses) == expected
    assert changes.python_changed_pages(*addresses) == expected


@given(st.integers(0, 300), st.sets(st.integers(0, 299), max_size=6), st.integers(0, 310))
def test_both_loops_find_the_same_first_difference(length: int, written: set[int], start: int) -> None:
    now = ctypes.create_string_buffer(b"\x55" * length, length)
    then = ctypes.create_string_buffer(b"\x55" * length, length)
    for at in written:
        if at < length:
            now[at] = b"\x66"
    expected = min((at for at in written if start <= at < length), default=-1)
    addresses = (ctypes.addressof(now), ctypes.addressof(then), length, start)
    assert changes.first_difference(*addresses) == expected
    assert changes.python_first_difference(*addresses) == expected


def test_first_difference_refuses_bad_sizes() -> None:
    buffer = ctypes.create_string_buffer(16)
    with pytest.raises(ValueError, match="length and start must be >= 0"):
        changes.first_difference(ctypes.addressof(buffer), ctypes.addressof(buffer), 16, -1)


def test_changed_pages_refuses_bad_sizes() -> None:
    buffer = ctypes.create_string_buffer(16)
    with pytest.raises(ValueError, match="page > 0"):
        changes.changed_pages(ctypes.addressof(buffer), ctypes.addressof(buffer), 16, 0)


@given(st.lists(st.lists(items, max_size=5), max_size=6))
def test_both_joins_are_the_parts_in_order(parts: list[list[Any]]) -> None:
    as_tuples = tuple(tuple(part) for part in parts)
    expected = tuple(item for part in parts for item in part)
    assert changes.joined(as_tuples) == expected
    assert changes.python_joined(as_tuples) == expected


def test_joined_refuses_what_is_not_a_tuple_of_tuples() -> None:
    for bad in ([(1,)], ((1,), [2])):
        with pytest.raises(TypeError):
            changes.joined(bad)  # type: ignore[arg-type]


@given(st.integers(0, 200), st.sets(st.integers(0, 199), max_size=4), st.integers(0, 255))
def test_both_loops_tell_a_filled_range_and_the_bytes_it_holds(
    length: int, written: set[int], byte: int
) -> None:
    """`filled` and `holds` (the checking heap's redzones, poison and watched values): a range of
    one byte is filled with it, and holds its own bytes, until a byte of it is written."""
    buffer = ctypes.create_string_buffer(bytes((byte,)) * length, length)
    address = ctypes.addressof(buffer)
    before = buffer.raw
    changed = False
    for at in written:
        if at < length:
            buffer[at] = bytes(((byte + 1) % 256,))
            changed = True
    for check in (changes.filled, changes.python_filled):
        assert check(address, length, byte) == (not changed)
    for compare in (changes.holds, changes.python_holds):
        assert compare(address, before) == (not changed)
        assert compare(address, buffer.raw)


@given(st.binary(max_size=300), st.integers(0, 40))
def test_both_copies_copy_the_bytes_and_nothing_past_them(data: bytes, shift: int) -> None:
    for copy in (changes.copy, changes.python_copy):
        source = ctypes.create_string_buffer(data, len(data))
        target = ctypes.create_string_buffer(b"\x77" * (len(data) + shift + 8), len(data) + shift + 8)
        copy(ctypes.addressof(target) + shift, ctypes.addressof(source), len(data))
        assert target.raw == b"\x77" * shift + data + b"\x77" * 8


def test_filled_holds_and_copy_refuse_bad_arguments() -> None:
    buffer = ctypes.create_string_buffer(16)
    address = ctypes.addressof(buffer)
    with pytest.raises(ValueError, match="byte between 0 and 255"):
        changes.filled(address, 16, 256)
    with pytest.raises(ValueError, match="length must be >= 0"):
        changes.filled(address, -1, 0)
    with pytest.raises(ValueError, match="length must be >= 0"):
        changes.copy(address, address, -1)
    if changes.uses_c_loop():
        from externref_harness import _changes

        with pytest.raises(TypeError, match="data must be bytes"):
            _changes.holds(address, bytearray(4))  # type: ignore[arg-type]


@given(st.binary(max_size=200), st.binary(max_size=200))
def test_both_loops_find_the_same_changed_words(old: bytes, new: bytes) -> None:
    a = struct.unpack(f"<{len(old) // 8}Q", old[: len(old) // 8 * 8])
    b = struct.unpack(f"<{len(new) // 8}Q", new[: len(new) // 8 * 8])
    expected = [i for i in range(len(b)) if i >= len(a) or a[i] != b[i]]
    assert changes.changed_words(old, new) == expected
    assert changes.python_changed_words(old, new) == expected


@given(st.integers(0, 64), st.sets(st.integers(0, 63), max_size=5))
def test_changed_words_are_the_words_written(words: int, written: set[int]) -> None:
    old = bytes(8 * words)
    new = bytearray(old)
    for i in written:
        if i < words:
            new[8 * i + 7] = 1
    assert changes.changed_words(old, bytes(new)) == sorted(i for i in written if i < words)

