"""The explorer's symmetry reduction: one representative per class of states that behave alike.

Two states behave alike when they differ only by
- the names of refs: ids are allocation order and the model compares them only for equality;
- tombstones: the positions of dropped handles and consumed raw pointers;
- the order of the filled part of the bump chunk: every reader treats it as a multiset;
- stack maps no lookup will ever read (`model.world.live_stack_maps`).
The same moves, up to renumbering, lead from both to states that again differ only that way (a
bisimulation, checked by `tests/explore/test_explore_symmetry.py`). `canonical` picks one representative
per class, and the search expands representatives.

`canonical` runs once per transition, so it is written to be compiled and to do little for the
common successor that is nearly canonical already: the renaming is a list indexed by ref id, not
a dict; a part the renaming leaves alone is the state's own object, not a copy; and a state that
is its own representative comes back as the very same object.
"""

from __future__ import annotations

from externref_harness.model.state import (
    Box,
    Config,
    Frame,
    GlobalValue,
    RawPtr,
    Slot,
    State,
    Table,
    WasmFrame,
)
from externref_harness.model.world import live_stack_maps
from externref_harness.vec import Vec

#: What `canonical` orders the refs only the heap or the table holds by (`_description`).
_Described = tuple[int, bool, int, int, int, bool, bool, int]


def canonical(cfg: Config, state: State) -> State:
    """The representative of `state`'s symmetry class (see the module docstring).

    Refs are renamed in order of first appearance in the ordered parts of the state (handles, raw
    pointers, globals, Wasm slots); refs held only by the heap or the table are then ordered by
    everything the state says about them, so equally described refs are interchangeable and any
    order among them gives the same result. Stack maps no lookup can reach any more are dropped
    (`model.world.live_stack_maps`). Faults keep only their kind: any fault already violates I3 or
    I4, and the search stops there.
    """
    heap = state.heap
    n = len(heap)
    handles = state.handles
    raws = state.raws
    globals_ = state.globals
    frames = state.frames
    table = state.table
    chunk = table.chunk
    filled = chunk[: table.next]
    named = _named_in_order(state)
    identity = named >= 0 and (n - named < 2 or _rest_in_order(state, filled, named))
    # The renaming, only when it is not the identity: order[old] is the new id, first[new] the old.
    order: list[int] = []
    first: list[int] = []
    if not identity:
        order, first = _renaming(state, filled)

    youngest = len(frames) - 1
    rebuilt: list[Frame] | None = None
    for i in range(len(frames)):
        f = frames[i]
        if not isinstance(f, WasmFrame):
            continue
        stack_map, previous = live_stack_maps(cfg, f, i == youngest)
        if identity and stack_map == f.stack_map and previous == f.previous_stack_map:
            continue
        if rebuilt is None:
            rebuilt = list(frames)
        slots = f.slots if identity else _renamed_slots(f.slots, order)
        rebuilt[i] = WasmFrame(
            slots, stack_map, previous, f.called_from_wasm, f.ret_slot, f.resets_canary
        )
    if rebuilt is not None:
        frames = tuple(rebuilt)

    new_heap = heap
    new_filled = filled
    over_roots = table.over_approximated_stack_roots
    precise_roots = table.precise_stack_roots
    if identity:
        if None in handles:
            handles = Vec.of([h for h in handles if h is not None])
        if None in raws:
            raws = tuple([p for p in raws if p is not None])
    else:
        handles = Vec.of([order[h] for h in handles if h is not None])
        raws = tuple([RawPtr(order[p.ref], p.owned) for p in raws if p is not None])
        globals_ = _renamed_globals(globals_, order)
        new_heap = Vec.of([heap[old] for old in first])
        new_filled = tuple([None if r is None else order[r] for r in filled])
        if over_roots:
            over_roots = frozenset([order[r] for r in over_roots])
        if precise_roots:
            precise_roots = frozenset([order[r] for r in precise_roots])
    new_filled = _sorted_filled(new_filled)
    if not identity or new_filled is not filled:
        table = Table(
            new_filled + chunk[table.next :],
            table.next,
            over_roots,
            precise_roots,
            table.stack_canary,
            table.gc_okay,
        )
    faults = state.faults
    if faults:
        faults = tuple([f.split(":", 1)[0] for f in faults])
    if (
        table is state.table
        and handles is state.handles
        and raws is state.raws
        and globals_ is state.globals
        and frames is state.frames
        and new_heap is heap
        and faults is state.faults
    ):
        return state
    return State(new_heap, table, handles, raws, globals_, frames, faults, state.panic)


def _named_in_order(state: State) -> int:
    """How many refs the ordered parts of `state` name, if they name them in order 0, 1, 2, ...
    (the renaming is then the identity on them); -1 if they do not.

    While the names are in order, the refs seen so far are exactly those below the count, so no
    set is needed to tell a new ref from one seen before.
    """
    named = 0
    for h in state.handles:
        if h is not None:
            if h == named:
                named += 1
            elif h > named:
                return -1
    for p in state.raws:
        if p is not None:
            r = p.ref
            if r == named:
                named += 1
            elif r > named:
                return -1
    for g in state.globals:
        if isinstance(g, int):
            if g == named:
                named += 1
            elif g > named:
                return -1
    for f in state.frames:
        if isinstance(f, WasmFrame):
            for s in f.slots:
                if isinstance(s, int):
                    if s == named:
                        named += 1
                    elif s > named:
                        return -1
    return named


def _description(state: State, filled: tuple[int | None, ...], r: int) -> _Described:
    """Everything the state says of a ref only the heap or the table holds, then its old id."""
    box: Box = state.heap[r]
    table = state.table
    return (
        box.ref_count, box.freed, box.size, box.align, filled.count(r),
        r in table.over_approximated_stack_roots, r in table.precise_stack_roots, r,
    )  # fmt: skip


def _rest_in_order(state: State, filled: tuple[int | None, ...], named: int) -> bool:
    """Whether the refs from `named` on, which only the heap or the table holds, keep their ids:
    their descriptions already ascend."""
    previous = _description(state, filled, named)
    for r in range(named + 1, len(state.heap)):
        d = _description(state, filled, r)
        if d < previous:
            return False
        previous = d
    return True


def _renaming(state: State, filled: tuple[int | None, ...]) -> tuple[list[int], list[int]]:
    """(order, first): refs named in order of first appearance in the ordered parts of the state
    (handles, raws, globals, Wasm slots), then the rest by `_description`."""
    order = [-1] * len(state.heap)
    first: list[int] = []
    for h in state.handles:
        if h is not None and order[h] < 0:
            order[h] = len(first)
            first.append(h)
    for p in state.raws:
        if p is not None and order[p.ref] < 0:
            order[p.ref] = len(first)
            first.append(p.ref)
    for g in state.globals:
        if isinstance(g, int) and order[g] < 0:
            order[g] = len(first)
            first.append(g)
    for f in state.frames:
        if isinstance(f, WasmFrame):
            for s in f.slots:
                if isinstance(s, int) and order[s] < 0:
                    order[s] = len(first)
                    first.append(s)
    if len(first) < len(state.heap):
        _order_the_rest(state, filled, order, first)
    return order, first


def _order_the_rest(
    state: State, filled: tuple[int | None, ...], order: list[int], first: list[int]
) -> None:
    """Name the refs only the heap or the table holds, ordered by what the state says of them.

    A stable sort by that description over increasing old ids is a sort by (description, old id).
    """
    rest = [r for r in range(len(state.heap)) if order[r] < 0]
    if len(rest) > 1:
        described = [_description(state, filled, r) for r in rest]
        described.sort()
        rest = [d[7] for d in described]
    for r in rest:
        order[r] = len(first)
        first.append(r)


def _renamed_slots(slots: tuple[Slot, ...], order: list[int]) -> tuple[Slot, ...]:
    return tuple([order[s] if isinstance(s, int) else s for s in slots])


def _renamed_globals(
    globals_: tuple[GlobalValue, ...], order: list[int]
) -> tuple[GlobalValue, ...]:
    if not globals_:
        return globals_
    return tuple([order[g] if isinstance(g, int) else g for g in globals_])


def _sorted_filled(filled: tuple[int | None, ...]) -> tuple[int | None, ...]:
    """The filled part of the chunk in ascending order (itself when it already is, or holds None)."""
    n = len(filled)
    if n < 2:
        return filled
    previous = -1
    ascending = True
    for r in filled:
        if r is None:
            return filled
        if r < previous:
            ascending = False
        previous = r
    if ascending:
        return filled
    return tuple(sorted([r for r in filled if r is not None]))


def live_handles(state: State) -> int:
    """Handles not yet dropped (the explorer's state constraint counts them)."""
    live = 0
    for h in state.handles:
        if h is not None:
            live += 1
    return live
