"""Every invariant of SPEC.md holds on the initial state and fails on a state that breaks it."""

from __future__ import annotations

import pytest

from externref_harness.model.state import Box, Config, HostFrame, State, Table, WasmFrame
from externref_harness.specs.invariants import INVARIANTS, INVARIANTS_BY_ID, Invariant, violations

CFG = Config(chunk_size=2, slots=2, n_globals=0)
HOST = HostFrame()

#: For each invariant, a state that breaks it (and, where possible, nothing else).
BROKEN: dict[str, State] = {
    "I1": State(heap=(Box(8, 8, 0, freed=True),), handles=(0,)),
    "I2": State(heap=(Box(8, 8, ref_count=2),), handles=(0,)),
    "I3": State(faults=("double-drop: ref_count of freed ref 0 decremented",)),
    "I4": State(faults=("wild-pointer: ref_count incremented through a non-ref stack word",)),
    "I5": State(heap=(Box(8, 8, ref_count=1),)),
    "I6": State(table=Table(chunk=(None, None), next=1)),
    "I7": State(frames=(HOST, WasmFrame(slots=(None, None)))),
    "I8": State(
        heap=(Box(8, 8, ref_count=1),),
        handles=(0,),
        table=Table(stack_canary=0x7FFF_0000_0000 - 32),
        frames=(HOST, WasmFrame(slots=(0, None), resets_canary=True)),
    ),
    "I9": State(panic="slots >= the `next` bump finger are always `None`"),
}


def test_every_invariant_has_a_breaking_state() -> None:
    assert set(BROKEN) == set(INVARIANTS_BY_ID)


def test_the_initial_state_satisfies_every_invariant() -> None:
    assert violations(CFG, State.initial(CFG)) == []


@pytest.mark.parametrize("inv", INVARIANTS, ids=lambda i: i.id)
def test_invariant_fails_on_its_breaking_state(inv: Invariant) -> None:
    message = inv.check(CFG, BROKEN[inv.id])
    assert message is not None, f"{inv.id} did not notice"
    assert isinstance(message, str) and message


@pytest.mark.parametrize("inv_id", ["I1", "I3", "I4", "I6", "I7", "I8", "I9"])
def test_breaking_states_break_only_their_own_invariant(inv_id: str) -> None:
    """The breaking states are precise: each one is caught by its invariant and no other."""
    assert [inv.id for inv, _ in violations(CFG, BROKEN[inv_id])] == [inv_id]


def test_canary_outside_the_entering_host_frame_is_unsound() -> None:
    state = State(
        table=Table(stack_canary=0x1000),
        frames=(HOST, WasmFrame(slots=(None, None), resets_canary=True)),
    )
    message = INVARIANTS_BY_ID["I7"].check(CFG, state)
    assert message is not None and "not in the host frame" in message


def _walked_states() -> list[State]:
    """States of seeded random walks under every model mutant with every feature on, each walk
    kept up to and including its first violating state."""
    import random

    from externref_harness.explore.explorer import ExploreBounds
    from externref_harness.model.moves import flat_moves
    from externref_harness.model.mutants import MODEL_MUTANTS
    from externref_harness.model.transition import step

    out: list[State] = []
    for mutant in [None, *(m.name for m in MODEL_MUTANTS)]:
        search = ExploreBounds(
            refs=3, handles=3, raws=1, args=2, globals=2, scalars=True, opaque_frames=True,
            gc_okay_toggles=True, mutant=mutant,
        ).search()  # fmt: skip
        rnd = random.Random(f"owners-{mutant}")
        for _ in range(15):
            state = State.initial(search.cfg)
            for _ in range(20):
                options = flat_moves(search.cfg, search.bounds, state)
                if not options:
                    break
                state = step(search.cfg, state, rnd.choice(options))[0]
                out.append(state)
                if violations(search.cfg, state):
                    break
    return out


def test_owner_counts_are_the_owners_of_every_heap_ref() -> None:
    """I2 counts owners in a list indexed by ref id; it must count exactly what `owners` does."""
    from externref_harness.model.state import owners
    from externref_harness.specs.invariants import owner_counts

    states = _walked_states()
    assert any(violations(CFG, s) for s in states), "the walks reach violations too"
    for s in states:
        held = owners(s)
        assert owner_counts(s) == [held.get(r, 0) for r in range(len(s.heap))], s
