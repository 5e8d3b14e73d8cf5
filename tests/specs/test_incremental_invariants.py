"""`Incremental` gives `first_violation`'s verdict and message on every state of a walk.

The lockstep checks the model's invariants after every step with `Incremental`, at the cost of what
the step changed; these tests hold it to the full check on random walks of the seed and of every
model mutant (most of which break an invariant somewhere), and on steps built to break I1 and I2.
"""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from externref_harness.model.moves import Bounds, flat_moves
from externref_harness.model.mutants import MODEL_MUTANTS
from externref_harness.model.state import Box, State, Table
from externref_harness.model.transition import step
from externref_harness.search.space import MACHINE_BOUNDS, MACHINE_CONFIG
from externref_harness.specs.invariants import Incremental, first_violation

WIDE = Bounds(refs=24, handles=12, raws=3, frames=2, args=2, observers=True)


def _walks(
    mutant: str | None, bounds: Bounds, walks: int, length: int, chunk_size: int | None = None
) -> tuple[int, int]:
    """Random walks checked both ways at every step; (steps checked, violations found)."""
    cfg = replace(MACHINE_CONFIG, mutant=mutant, chunk_size=chunk_size or MACHINE_CONFIG.chunk_size)
    rng = random.Random(f"{mutant}")
    checked = found = 0
    for _ in range(walks):
        tracker, state = Incremental(), State.initial(cfg)
        assert tracker.check(cfg, state, state) == first_violation(cfg, state)
        for _ in range(length):
            moves = flat_moves(cfg, bounds, state)
            if not moves:
                break
            before = state
            state, _ = step(cfg, before, rng.choice(moves))
            full = first_violation(cfg, state)
            assert tracker.check(cfg, before, state) == full, (mutant, state)
            checked += 1
            if full is not None:
                found += 1
                break
    return checked, found


@pytest.mark.parametrize("bounds", [MACHINE_BOUNDS, WIDE], ids=["machine", "wide"])
def test_the_seed_agrees_with_the_full_check_on_every_state(bounds: Bounds) -> None:
    checked, found = _walks(None, bounds, 40, 60)
    assert checked > 1000 and found == 0


@pytest.mark.parametrize("chunk_size", [8, 64])
def test_a_larger_chunk_agrees_with_the_full_check_on_every_state(chunk_size: int) -> None:
    """The table's owners are counted from what changed of it (`_count_table_change`): the slots
    either chunk changed, those between the two bump fingers, the roots' set differences."""
    checked, found = _walks(None, WIDE, 40, 80, chunk_size=chunk_size)
    assert checked > 1000 and found == 0


def test_every_model_mutant_agrees_and_the_breaking_ones_are_caught() -> None:
    caught = set()
    for mutant in MODEL_MUTANTS:
        _, found = _walks(mutant.name, MACHINE_BOUNDS, 30, 40)
        if found:
            caught.add(mutant.name)
    assert len(caught) >= 5, caught  # 7 of the 8 under these seeds


def test_a_step_that_frees_a_held_ref_or_miscounts_is_caught() -> None:
    cfg = MACHINE_CONFIG
    before = State(heap=(Box(8, 8, ref_count=1), Box(8, 8, ref_count=1)), handles=(0, 1))
    tracker = Incremental()
    assert tracker.check(cfg, before, before) is None
    freed = replace_heap(before, 1, Box(8, 8, ref_count=0, freed=True))
    found = tracker.check(cfg, before, freed)
    assert found is not None and found[0].id == "I1" and found == first_violation(cfg, freed)
    tracker = Incremental()
    assert tracker.check(cfg, before, before) is None
    miscounted = State(heap=before.heap, handles=(0, None))  # a handle dropped, its count kept
    found = tracker.check(cfg, before, miscounted)
    assert found is not None and found[0].id == "I2" and found == first_violation(cfg, miscounted)


def replace_heap(state: State, r: int, box: Box) -> State:
    heap = list(state.heap)
    heap[r] = box
    return State(heap=tuple(heap), handles=state.handles)


@pytest.mark.parametrize("where", ["filled slot", "slot past next", "next moved over a slot", "root"])
def test_a_table_change_is_counted_as_the_full_check_counts_it(where: str) -> None:
    """A ref put in the chunk's filled part without a count of its own (I2); the same ref past the
    bump finger (not an owner, so no I2: the full check says I6); the finger moved back over a
    filled slot (an owner gone: I2); an over-approximated root added (I2)."""
    cfg = replace(MACHINE_CONFIG, chunk_size=4)
    heap = (Box(8, 8, ref_count=1), Box(8, 8, ref_count=2))
    before = State(heap=heap, handles=(0, 1), table=Table(chunk=(1, None, None, None), next=1))
    table = {
        "filled slot": Table(chunk=(1, 0, None, None), next=2),
        "slot past next": Table(chunk=(1, None, 0, None), next=1),
        "next moved over a slot": Table(chunk=(1, None, None, None), next=0),
        "root": Table(chunk=(1, None, None, None), next=1, over_approximated_stack_roots=frozenset({0})),
    }[where]
    after = State(heap=heap, handles=before.handles, table=table)
    tracker = Incremental()
    assert tracker.check(cfg, before, before) is None
    found = tracker.check(cfg, before, after)
    assert found is not None and found == first_violation(cfg, after)
    assert found[0].id == ("I6" if where == "slot past next" else "I2")
