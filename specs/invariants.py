"""The numbered invariants of `specs/SPEC.md`, each implemented once, as a function of a model state.

A check returns None when the invariant holds and a one-line description of the violation when it
does not. `violations` runs them all; the stateful tests, the explorer and the z3 cross-checks use
these functions and nothing else.

The explorer checks every new state it reaches, so the module is compiled and each check first
takes the cheap way to "holds" where there is one (no freed box: nothing reachable is freed; no
fault; no ref in a Wasm slot), counting owners in a list indexed by ref id; the description of a
violation is built only when there is one, and is the same either way.

I1 and I2 look at every ref, so a run that checks every state of a long walk over a large heap
(the lockstep) pays for the heap at every step. `Incremental` checks a step's state against the
one before it instead, at the cost of what the step changed: it keeps each ref's owner count up
to date from the positions of the owners that changed (`Vec.changed_positions` for the heap and
the handles, which skips the leaves two states share; `changes.changed_positions` for the other
tuples, an identity comparison per position) and looks again only at refs whose box, owners or
Wasm slots changed. Whatever it finds is then described by the full check, so its verdicts and messages are
exactly `first_violation`'s (a test compares the two on every state of random walks, mutants
included):

    before ──step──▶ after        owners[r] += what changed in handles, raws, globals, the table
                                  candidates = those refs ∪ changed boxes ∪ refs in Wasm slots
                                  I1, I2 on the candidates; the others are as they were, and held
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from externref_harness.changes import changed_positions
from externref_harness.model.runtime import FAULT_DOUBLE_DROP
from externref_harness.model.state import (
    Config,
    HostFrame,
    State,
    Table,
    WasmFrame,
    frame_sps,
    global_refs,
    owned_refs,
    table_elements,
    table_owned_refs,
    wasm_live_refs,
)


@dataclass(frozen=True)
class Invariant:
    id: str
    name: str
    check: Callable[[Config, State], str | None]


def reachable_refs(state: State) -> set[int]:
    """Refs something still uses: handles, owned raws, globals, live Wasm slots, the table."""
    out: set[int] = {h for h in state.handles if h is not None}
    out.update(_reachable_beyond_handles(state))
    return out


def is_reachable(state: State, r: int) -> bool:
    """`r in reachable_refs(state)`, without building the set: the handles, as many as the live
    refs, are searched in place (a lockstep step asks this of one ref it saw freed)."""
    for leaf in state.handles.leaves:  # compiled: an unboxed comparison per handle, not a rich one
        for h in leaf:
            if h is not None and h == r:
                return True
    return r in _reachable_beyond_handles(state)


def _reachable_beyond_handles(state: State) -> set[int]:
    out: set[int] = {p.ref for p in state.raws if p is not None and p.owned}
    out.update(global_refs(state.globals))
    out.update(wasm_live_refs(state.frames))
    out.update(table_elements(state.table))
    out.update(state.table.precise_stack_roots)
    return out


def i1_no_reachable_ref_freed(cfg: Config, state: State) -> str | None:
    for box in state.heap:
        if box.freed:
            break
    else:
        return None
    freed = sorted(r for r in reachable_refs(state) if state.heap[r].freed)
    return f"reachable refs {freed} were freed" if freed else None


def i2_exact_refcounts(cfg: Config, state: State) -> str | None:
    held = owner_counts(state)
    for r, box in enumerate(state.heap):
        if box.freed:
            continue
        if box.ref_count != held[r]:
            return f"ref {r}: ref_count is {box.ref_count} but {held[r]} owners hold it"
    return None


def owner_counts(state: State) -> list[int]:
    """`model.state.owners` as a list indexed by ref id (owners of ids outside the heap dropped)."""
    n = len(state.heap)
    counts = [0] * n
    for r in owned_refs(state):
        if 0 <= r < n:
            counts[r] += 1
    return counts


def i3_no_double_drop(cfg: Config, state: State) -> str | None:
    if not state.faults:
        return None
    doubles = [f for f in state.faults if f.startswith(FAULT_DOUBLE_DROP)]
    return doubles[0] if doubles else None


def i4_no_memory_fault(cfg: Config, state: State) -> str | None:
    if not state.faults:
        return None
    others = [f for f in state.faults if not f.startswith(FAULT_DOUBLE_DROP)]
    return others[0] if others else None


def is_quiescent(state: State) -> bool:
    """No handles, no raws, no global refs, no frames but the host's, and an empty table. Asked
    after every step (I5): the handles, as many as the live refs, are looked at last, leaf by
    leaf, and the first one held ends the look (iterating the vector would join its leaves, 4,096
    items, first)."""
    return (
        len(state.frames) == 1
        and all(p is None or not p.owned for p in state.raws)
        and not global_refs(state.globals)
        and not table_elements(state.table)
        and not state.table.precise_stack_roots
        and not _any_handle(state)
    )


def _any_handle(state: State) -> bool:
    for leaf in state.handles.leaves:
        for h in leaf:
            if h is not None:
                return True
    return False


def i5_no_leak_at_quiescence(cfg: Config, state: State) -> str | None:
    if not is_quiescent(state):
        return None
    leaked = [r for r, box in enumerate(state.heap) if not box.freed]
    return f"quiescent, yet refs {leaked} were never freed" if leaked else None


def i6_table_shape(cfg: Config, state: State) -> str | None:
    t = state.table
    if len(t.chunk) not in (0, cfg.chunk_size):
        return f"chunk has {len(t.chunk)} slots, expected 0 or CHUNK_SIZE={cfg.chunk_size}"
    if not 0 <= t.next <= len(t.chunk):
        return f"next={t.next} outside the chunk of {len(t.chunk)} slots"
    chunk = t.chunk
    for i in range(t.next, len(chunk)):
        if chunk[i] is not None:
            return "a slot at or after `next` is not None"
    for i in range(t.next):
        if chunk[i] is None:
            return "a slot before `next` is None"
    if t.precise_stack_roots:
        return "precise_stack_roots is not empty outside gc"
    return None


def i7_canary_sound(cfg: Config, state: State) -> str | None:
    """No Wasm frame without a canary, and the canary sits in the host frame below the oldest one."""
    frames = state.frames
    oldest = -1
    for i in range(len(frames)):
        if isinstance(frames[i], WasmFrame):
            oldest = i
            break
    canary = state.table.stack_canary
    if oldest < 0:
        return None if canary is None else f"canary {canary:#x} set with no Wasm frame on the stack"
    if canary is None:
        return "Wasm frames on the stack but no stack canary"
    sps = frame_sps(frames)
    caller = frames[oldest - 1]
    if not isinstance(caller, HostFrame) or not sps[oldest] <= canary <= sps[oldest - 1]:
        return f"canary {canary:#x} is not in the host frame that first called Wasm"
    return None


def i8_stack_roots_in_table(cfg: Config, state: State) -> str | None:
    table = state.table
    over = table.over_approximated_stack_roots
    filled = table.chunk[: table.next]
    missing: set[int] | None = None
    for f in state.frames:
        if isinstance(f, WasmFrame):
            for s in f.slots:
                if isinstance(s, int) and s not in over and s not in filled:
                    if missing is None:
                        missing = set()
                    missing.add(s)
    if missing is None:
        return None
    return f"live Wasm refs {sorted(missing)} are not in the activations table"


def i9_no_debug_assertion(cfg: Config, state: State) -> str | None:
    return None if state.panic is None else f"debug assertion fired: {state.panic}"


INVARIANTS: tuple[Invariant, ...] = (
    Invariant("I1", "no reachable ref is freed", i1_no_reachable_ref_freed),
    Invariant("I2", "exact refcount accounting", i2_exact_refcounts),
    Invariant("I3", "no double drop", i3_no_double_drop),
    Invariant("I4", "no use-after-free or wild-pointer access", i4_no_memory_fault),
    Invariant("I5", "no leak at quiescence", i5_no_leak_at_quiescence),
    Invariant("I6", "table shape", i6_table_shape),
    Invariant("I7", "canary soundness", i7_canary_sound),
    Invariant("I8", "every stack root is in the table", i8_stack_roots_in_table),
    Invariant("I9", "no debug assertion fires", i9_no_debug_assertion),
)
INVARIANTS_BY_ID = {inv.id: inv for inv in INVARIANTS}


def violations(cfg: Config, state: State) -> list[tuple[Invariant, str]]:
    out: list[tuple[Invariant, str]] = []
    for inv in INVARIANTS:
        message = inv.check(cfg, state)
        if message is not None:
            out.append((inv, message))
    return out


def first_violation(cfg: Config, state: State) -> tuple[Invariant, str] | None:
    for inv in INVARIANTS:
        message = inv.check(cfg, state)
        if message is not None:
            return inv, message
    return None


class Incremental:
    """`first_violation` of each state of one walk, at the cost of what each step changed.

    `check(cfg, before, after)` must be given the state it returned for last as `before`; given
    any other (the first step, a walk restarted, a state after a violation) it checks `after` in
    full and starts tracking from there. I3 to I9 cost no more than a step and run in full."""

    def __init__(self) -> None:
        #: The state `owners` counts, once it held every invariant; None: none yet.
        self.last: State | None = None
        #: Counted owners of each ref id of `last` (`owner_counts`).
        self.owners: list[int] = []

    def check(self, cfg: Config, before: State, after: State) -> tuple[Invariant, str] | None:
        if self.last is None or self.last is not before or len(after.heap) < len(before.heap):
            return self._restart(cfg, after)
        owners = self.owners
        owners.extend([0] * (len(after.heap) - len(owners)))
        changed: list[int] = []
        n = len(owners)

        def count(r: int, by: int) -> None:
            if 0 <= r < n:
                owners[r] += by
                changed.append(r)

        for i in after.handles.changed_positions(before.handles):
            if i < len(before.handles):
                old = before.handles[i]
                if old is not None:
                    count(old, -1)
            new = after.handles[i]
            if new is not None:
                count(new, 1)
        for i in changed_positions(before.raws, after.raws):
            if i < len(before.raws):
                old_raw = before.raws[i]
                if old_raw is not None and old_raw.owned:
                    count(old_raw.ref, -1)
            new_raw = after.raws[i]
            if new_raw is not None and new_raw.owned:
                count(new_raw.ref, 1)
        if before.globals is not after.globals:
            for r in global_refs(before.globals):
                count(r, -1)
            for r in global_refs(after.globals):
                count(r, 1)
        if before.table is not after.table:
            old_table, new_table = before.table, after.table
            if len(old_table.chunk) != len(new_table.chunk):
                for r in table_owned_refs(old_table):
                    count(r, -1)
                for r in table_owned_refs(new_table):
                    count(r, 1)
            else:
                _count_table_change(old_table, new_table, count)
        if len(after.handles) < len(before.handles) or len(after.raws) < len(before.raws):
            return self._restart(cfg, after)  # never done by a step: count it all again
        in_wasm = set(wasm_live_refs(after.frames))
        candidates = set(changed)
        candidates.update(after.heap.changed_positions(before.heap))
        candidates.update(in_wasm)
        heap = after.heap
        suspect = False
        for r in candidates:
            if not 0 <= r < len(heap):
                continue
            box = heap[r]
            if box.freed:
                if owners[r] > 0 or r in in_wasm:
                    suspect = True  # I1
            elif box.ref_count != owners[r]:
                suspect = True  # I2
        for inv in INVARIANTS:
            if inv.id == "I1" or inv.id == "I2":
                if not suspect:
                    continue
            message = inv.check(cfg, after)
            if message is not None:
                self.last = None
                return inv, message
        self.last = after
        return None

    def _restart(self, cfg: Config, state: State) -> tuple[Invariant, str] | None:
        found = first_violation(cfg, state)
        if found is None:
            self.last, self.owners = state, owner_counts(state)
        else:
            self.last = None
        return found


def _count_table_change(before: Table, after: Table, count: Callable[[int, int], None]) -> None:
    """What changed of `table_owned_refs` between two tables whose chunks are as long, counted
    (`count(r, -1)` for an owner gone, `count(r, 1)` for a new one) at the cost of what changed:
    the roots' sets by their differences; the chunk at the slots either tuple changed and those
    between the two bump fingers (a slot that did not change is in the filled part of both, or
    of neither). At chunk 512 recounting both tables was most of a step's invariant checks."""
    for old_roots, new_roots in (
        (before.over_approximated_stack_roots, after.over_approximated_stack_roots),
        (before.precise_stack_roots, after.precise_stack_roots),
    ):
        if old_roots is not new_roots and old_roots != new_roots:
            for r in old_roots - new_roots:
                count(r, -1)
            for r in new_roots - old_roots:
                count(r, 1)
    old_chunk, new_chunk = before.chunk, after.chunk
    slots = set(changed_positions(old_chunk, new_chunk))
    slots.update(range(min(before.next, after.next), max(before.next, after.next)))
    for i in slots:
        if i < len(old_chunk):
            old = old_chunk[i] if i < before.next else None
            if old is not None:
                count(old, -1)
        if i < len(new_chunk):
            new = new_chunk[i] if i < after.next else None
            if new is not None:
                count(new, 1)
