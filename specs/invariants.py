"""The numbered invariants of `specs/SPEC.md`, each implemented once, as a function of a model state.

A check returns None when the invariant holds and a one-line description of the violation when it
does not. `violations` runs them all; the stateful tests, the explorer and the z3 cross-checks use
these functions and nothing else.

The explorer checks every new state it reaches, so the module is compiled and each check first
takes the cheap way to "holds" where there is one (no freed box: nothing reachable is freed; no
fault; no ref in a Wasm slot), counting owners in a list indexed by ref id; the description of a
violation is built only when there is one, and is the same either way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from externref_harness.model.runtime import FAULT_DOUBLE_DROP
from externref_harness.model.state import (
    Config,
    HostFrame,
    State,
    WasmFrame,
    frame_sps,
    global_refs,
    owned_refs,
    table_elements,
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
    out.update(p.ref for p in state.raws if p is not None and p.owned)
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
    """No handles, no raws, no global refs, no frames but the host's, and an empty table."""
    return (
        len(state.frames) == 1
        and all(h is None for h in state.handles)
        and all(p is None or not p.owned for p in state.raws)
        and not global_refs(state.globals)
        and not table_elements(state.table)
        and not state.table.precise_stack_roots
    )


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
