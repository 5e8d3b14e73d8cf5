"""The explorer's symmetry reduction: one representative per class of states that behave alike.

Two states behave alike when they differ only by
- the names of refs: ids are allocation order and the model compares them only for equality;
- tombstones: the positions of dropped handles and consumed raw pointers;
- the order of the filled part of the bump chunk: every reader treats it as a multiset;
- stack maps no lookup will ever read (`model.world.live_stack_maps`).
The same moves, up to renumbering, lead from both to states that again differ only that way (a
bisimulation, checked by `tests/test_explore_symmetry.py`). `canonical` picks one representative
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
    # order[old] = new id; -1 until the ref is first seen.
    order = [-1] * n
    first: list[int] = []
    handles = state.handles
    for h in handles:
        if h is not None and order[h] < 0:
            order[h] = len(first)
            first.append(h)
    raws = state.raws
    for p in raws:
        if p is not None and order[p.ref] < 0:
            order[p.ref] = len(first)
            first.append(p.ref)
    globals_ = state.globals
    for g in globals_:
        if isinstance(g, int) and order[g] < 0:
            order[g] = len(first)
            first.append(g)
    frames = state.frames
    for f in frames:
        if isinstance(f, WasmFrame):
            for s in f.slots:
                if isinstance(s, int) and order[s] < 0:
                    order[s] = len(first)
                    first.append(s)
    table = state.table
    chunk = table.chunk
    filled = chunk[: table.next]
    if len(first) < n:
        _order_the_rest(state, filled, order, first)
    identity = True
    for new in range(n):
        if first[new] != new:
            identity = False
            break

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
            handles = tuple([h for h in handles if h is not None])
        if None in raws:
            raws = tuple([p for p in raws if p is not None])
    else:
        handles = tuple([order[h] for h in handles if h is not None])
        raws = tuple([RawPtr(order[p.ref], p.owned) for p in raws if p is not None])
        globals_ = _renamed_globals(globals_, order)
        new_heap = tuple([heap[old] for old in first])
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


def _order_the_rest(
    state: State, filled: tuple[int | None, ...], order: list[int], first: list[int]
) -> None:
    """Name the refs only the heap or the table holds, ordered by what the state says of them.

    A stable sort by that description over increasing old ids is a sort by (description, old id).
    """
    heap = state.heap
    rest = [r for r in range(len(heap)) if order[r] < 0]
    if len(rest) > 1:
        over = state.table.over_approximated_stack_roots
        precise = state.table.precise_stack_roots
        described: list[tuple[int, bool, int, int, int, bool, bool, int]] = []
        for r in rest:
            box: Box = heap[r]
            described.append((
                box.ref_count, box.freed, box.size, box.align,
                filled.count(r), r in over, r in precise, r,
            ))  # fmt: skip
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
