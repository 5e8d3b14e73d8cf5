"""Soundness of the explorer's canonical form: a state and its representative behave alike.

`canonical` may merge two states only if every move of one has a counterpart move of the other
leading to the same class (a bisimulation). These tests check that on states reached by random
walks under every seeded bug, with every feature on, and that the check itself fails on a canonical
form that merges too much.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import replace

import pytest

from externref_harness.explore.driver import explore
from externref_harness.explore.explorer import ExploreBounds
from externref_harness.explore.symmetry import canonical
from externref_harness.model.moves import flat_moves, moves, ordered_kinds
from externref_harness.model.mutants import MODEL_MUTANTS
from externref_harness.model.state import RawPtr, State, Table, WasmFrame, replaced
from externref_harness.model.transition import step
from externref_harness.specs.invariants import first_violation

Key = Callable[[State], State]

EVERY_FEATURE = ExploreBounds(
    refs=3, handles=3, raws=1, args=2, globals=2, scalars=True, opaque_frames=True,
    gc_okay_toggles=True, observers=True,
)  # fmt: skip
MUTANTS = [None, *(m.name for m in MODEL_MUTANTS)]


def walk_states(knobs: ExploreBounds, walks: int = 40, length: int = 24) -> list[State]:
    """Actual (not canonical) states from seeded random walks, violations excluded.

    Each step picks a kind of move first, as the model state machine does, so calls and GCs are
    as likely as the many host-side moves.
    """
    search = knobs.search()
    cfg, bounds = search.cfg, search.bounds
    rnd = random.Random(f"{knobs.mutant}-{knobs.build}")
    out: list[State] = []
    for _ in range(walks):
        state = State.initial(cfg)
        for _ in range(length):
            groups = moves(cfg, bounds, state)
            if not groups:
                break
            kind = rnd.choice(ordered_kinds(groups))
            nxt, _ = step(cfg, state, rnd.choice(groups[kind]))
            if first_violation(cfg, nxt) is not None:
                break
            state = nxt
            out.append(state)
    return out


def bisimulation_mismatch(knobs: ExploreBounds, key: Key, states: list[State]) -> str | None:
    """The first state whose successors' classes differ from its representative's successors'."""
    search = knobs.search()
    cfg, bounds = search.cfg, search.bounds

    def successors(s: State) -> Counter[State]:
        return Counter(key(step(cfg, s, op)[0]) for op in flat_moves(cfg, bounds, s))

    for s in states:
        if successors(s) != successors(key(s)):
            return f"{s} and its representative {key(s)} have different successor classes"
    return None


def rename(state: State, perm: dict[int, int], rnd: random.Random) -> State:
    """The same state with refs renamed by `perm`, tombstones added and the chunk shuffled."""

    def r(x: object) -> object:
        return perm[x] if type(x) is int else x

    inverse = {new: old for old, new in perm.items()}
    heap = [state.heap[inverse[new]] for new in range(len(state.heap))]
    handles: list[int | None] = []
    for h in state.handles:
        handles += [None] * rnd.randint(0, 1) + [None if h is None else perm[h]]
    raws = [None if p is None else RawPtr(perm[p.ref], p.owned) for p in state.raws]
    raws.insert(rnd.randint(0, len(raws)), None)
    t = state.table
    filled = [r(x) for x in t.chunk[: t.next]]
    rnd.shuffle(filled)
    table = Table(
        (*filled, *t.chunk[t.next :]), t.next,  # type: ignore[arg-type]
        frozenset(perm[x] for x in t.over_approximated_stack_roots),
        frozenset(perm[x] for x in t.precise_stack_roots), t.stack_canary, t.gc_okay,
    )  # fmt: skip
    frames = tuple(
        replaced(f, slots=tuple(r(s) for s in f.slots)) if isinstance(f, WasmFrame) else f
        for f in state.frames
    )
    return State(
        tuple(heap), table, tuple(handles), tuple(raws),
        tuple(r(g) for g in state.globals), frames, state.faults, state.panic,  # type: ignore[misc]
    )  # fmt: skip


@pytest.mark.parametrize("mutant", MUTANTS)
def test_canonical_is_a_bisimulation_under_every_mutant(mutant: str | None) -> None:
    knobs = replace(EVERY_FEATURE, mutant=mutant)
    cfg = knobs.search().cfg
    states = walk_states(knobs)
    assert len(states) > 200
    assert bisimulation_mismatch(knobs, lambda s: canonical(cfg, s), states) is None


def test_the_bisimulation_check_fails_on_a_canonical_form_that_merges_too_much() -> None:
    """Forgetting every stack map merges frames a lookup still tells apart."""
    knobs = replace(EVERY_FEATURE, mutant="cve-2021-39218")
    cfg = knobs.search().cfg

    def forgetful(s: State) -> State:
        c = canonical(cfg, s)
        frames = tuple(
            replaced(f, stack_map=None, previous_stack_map=None) if isinstance(f, WasmFrame) else f
            for f in c.frames
        )
        return replaced(c, frames=frames)

    assert bisimulation_mismatch(knobs, forgetful, walk_states(knobs)) is not None


@pytest.mark.parametrize("build", ["debug", "release"])
def test_canonical_ignores_ref_names_tombstones_and_chunk_order(build: str) -> None:
    knobs = replace(EVERY_FEATURE, build=build)  # type: ignore[arg-type]
    cfg = knobs.search().cfg
    rnd = random.Random(7)
    states = walk_states(knobs)
    renamed_some = 0
    for s in states:
        c = canonical(cfg, s)
        assert canonical(cfg, c) == c, "idempotent"
        ids = list(range(len(s.heap)))
        rnd.shuffle(ids)
        other = rename(s, dict(enumerate(ids)), rnd)
        renamed_some += other != s
        assert canonical(cfg, other) == c
        v, w = first_violation(cfg, s), first_violation(cfg, c)
        assert (v and v[0].id) == (w and w[0].id)
    assert renamed_some > len(states) // 2


def test_canonical_keeps_counts_and_live_maps_apart() -> None:
    """Merging is by renaming only: a different count or a different live map is another class."""
    knobs = replace(EVERY_FEATURE, mutant="cve-2021-39218")
    cfg = knobs.search().cfg
    states = walk_states(knobs)
    assert 1 < len({canonical(cfg, s) for s in states}) < len(set(states))
    s = next(s for s in states if s.heap and not s.heap[0].freed)
    bumped = replaced(s, heap=(replaced(s.heap[0], ref_count=s.heap[0].ref_count + 1), *tuple(s.heap)[1:]))
    assert canonical(cfg, bumped) != canonical(cfg, s)
    suspended = next(
        s for s in states
        if any(isinstance(f, WasmFrame) and f.stack_map for f in s.frames[:-1])
    )  # fmt: skip
    i = next(
        i for i, f in enumerate(suspended.frames[:-1]) if isinstance(f, WasmFrame) and f.stack_map
    )
    frames = list(suspended.frames)
    frame = frames[i]
    assert isinstance(frame, WasmFrame)
    frames[i] = replaced(frame, stack_map=None)
    assert canonical(cfg, replaced(suspended, frames=tuple(frames))) != canonical(cfg, suspended)


def test_expanding_representatives_reaches_the_classes_expanding_actual_states_does() -> None:
    """The explorer expands canonical representatives; expanding the actual states it reached
    instead (the textbook way) must give the same classes and transitions."""
    knobs = replace(EVERY_FEATURE, refs=1, handles=2, args=1, observers=False, depth=5)
    search = knobs.search()
    cfg, bounds = search.cfg, search.bounds
    initial = State.initial(cfg)
    seen = {canonical(cfg, initial)}
    frontier = [initial]
    transitions = 0
    for _ in range(5):
        grown = []
        for state in frontier:
            for op in flat_moves(cfg, bounds, state):
                succ, _ = step(cfg, state, op)
                transitions += 1
                if canonical(cfg, succ) not in seen:
                    seen.add(canonical(cfg, succ))
                    grown.append(succ)
        frontier = grown
    out = explore(search)
    assert out.violation is None
    assert (out.states, out.transitions) == (len(seen), transitions)


def test_the_identity_shortcut_agrees_with_the_full_renaming() -> None:
    """`canonical` skips building the renaming when it can tell it is the identity; on walked
    states and their renamed copies, it tells so exactly when the full renaming is the identity."""
    from externref_harness.explore.symmetry import _named_in_order, _renaming, _rest_in_order

    rnd = random.Random(11)
    states = walk_states(EVERY_FEATURE)
    both = {True: 0, False: 0}
    for s in states:
        ids = list(range(len(s.heap)))
        rnd.shuffle(ids)
        for t in (s, rename(s, dict(enumerate(ids)), rnd)):
            filled = t.table.chunk[: t.table.next]
            named = _named_in_order(t)
            n = len(t.heap)
            shortcut = named >= 0 and (n - named < 2 or _rest_in_order(t, filled, named))
            order, first = _renaming(t, filled)
            assert shortcut == (first == list(range(n))), t
            assert sorted(first) == list(range(n)) and all(order[old] == new for new, old in enumerate(first))
            both[shortcut] += 1
    assert both[True] > 50 and both[False] > 50, both
