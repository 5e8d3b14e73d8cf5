"""`Vec` is a tuple that shares structure: every operation agrees with the tuple it stands for."""

from __future__ import annotations

import pickle

from hypothesis import given
from hypothesis import strategies as st

from externref_harness.changes import python_changed_positions
from externref_harness.vec import LEAF, Vec

#: Writes as (index seed, value); appends as (None, value): lengths across several leaves.
edits = st.lists(st.tuples(st.none() | st.integers(0, 10_000), st.integers(-3, 3)), max_size=3 * LEAF + 5)


def applied(
    start: tuple[int, ...], changes: list[tuple[int | None, int]]
) -> tuple[Vec[int], tuple[int, ...]]:
    vec, model = Vec.of(start), list(start)
    for at, value in changes:
        if at is None or not model:
            vec = vec.append(value)
            model.append(value)
        else:
            i = at % len(model)
            vec = vec.set(i, value)
            model[i] = value
    return vec, tuple(model)


@given(st.lists(st.integers(-3, 3), max_size=3 * LEAF), edits)
def test_a_vec_is_the_tuple_of_its_edits(start: list[int], changes: list[tuple[int | None, int]]) -> None:
    before = Vec.of(start)
    vec, model = applied(tuple(start), changes)
    assert len(vec) == len(model) and tuple(vec) == model and vec.as_tuple() == model
    assert vec == model and vec == list(model) and vec == Vec.of(model)
    assert hash(vec) == hash(model) and repr(vec) == repr(model)
    assert all(vec[i] == model[i] and vec[i - len(model)] == model[i] for i in range(len(model)))
    assert all(0 < len(leaf) <= LEAF for leaf in vec.leaves)
    assert all(len(leaf) == LEAF for leaf in vec.leaves[:-1])
    assert pickle.loads(pickle.dumps(vec)) == vec
    assert tuple(before) == tuple(start), "an edit changed the vector it was made from"
    assert vec.changed_positions(before) == python_changed_positions(tuple(start), model)


@given(
    st.lists(st.integers(-3, 3), max_size=3 * LEAF),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(-3, 3)), max_size=LEAF + 3),
    st.lists(st.integers(-3, 3), max_size=2 * LEAF + 3),
)
def test_updated_is_the_writes_then_the_appends(
    start: list[int], writes: list[tuple[int, int]], added: list[int]
) -> None:
    vec, model = Vec.of(start), list(start)
    by_index = {at % len(start): value for at, value in writes} if start else {}
    for i, value in by_index.items():
        model[i] = value
    model += added
    got = vec.updated(by_index, added)
    assert got == tuple(model) and tuple(vec) == tuple(start)
    assert all(0 < len(leaf) <= LEAF for leaf in got.leaves)
    assert all(len(leaf) == LEAF for leaf in got.leaves[:-1])
    assert got.changed_positions(vec) == python_changed_positions(tuple(start), tuple(model))


def test_an_edit_shares_the_leaves_it_did_not_write() -> None:
    vec = Vec.of(range(10 * LEAF))
    written = vec.set(3 * LEAF + 1, -1)
    shared = [a is b for a, b in zip(vec.leaves, written.leaves, strict=True)]
    assert shared == [k != 3 for k in range(10)]
    assert written.changed_positions(vec) == [3 * LEAF + 1]
    assert written != vec and written.set(3 * LEAF + 1, 3 * LEAF + 1) == vec


def test_out_of_range_is_an_index_error() -> None:
    vec = Vec.of(range(5))
    for bad in (5, -6):
        try:
            vec[bad]
        except IndexError:
            continue
        raise AssertionError(f"index {bad} of 5 items did not raise")
    try:
        vec.set(5, 0)
    except IndexError:
        return
    raise AssertionError("set(5) of 5 items did not raise")
