"""The embedder protocol (`model.protocol`) pinned by outcomes written down from the seed's embedder.

`model/protocol.py` runs on both sides of the lockstep, so a change to it changes both sides alike
and the lockstep cannot see it. These traces state what wasmtime v0.37.0's embedder does around the
table (specs/CONTEXT.md, "The embedder protocol"), each with the observation and the state facts
worked out by hand from the seed's code, not read back from the model:

- chunk of 2 slots (16 bytes of bump capacity once allocated), 3 slots per Wasm frame, 1 global;
- the bump chunk starts empty, so `bump_capacity_remaining()` is 0 bytes until the first sweep;
- a GC with no canary sweeps at once; with one, it walks from the youngest frame and stops after the
  frame whose older neighbour's sp bounds the canary (the main host frame here).

Each trace also runs in lockstep, so the implementation agrees with what is written here.

Under `no-gc-free-insert` the host passes arguments by the counted protocol instead (the last
traces): its own counted copy of each argument until every insert is done.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from externref_harness.impl.adapter import InProcessImpl
from externref_harness.lockstep.runner import drive
from externref_harness.model import capabilities, ops
from externref_harness.model.observation import Misuse, Observation, Ok
from externref_harness.model.state import Config, HostFrame, State, WasmFrame
from externref_harness.model.transition import run
from externref_harness.model.world import Machine

CFG = Config(chunk_size=2, slots=3, n_globals=1)

NO_CANARY_SWEEP = ("gc:no-canary", "sweep:lazy-chunk-allocation")
#: A GC from a host frame above one Wasm frame with no live refs (so it registered no stack map).
WALK_ONE_WASM_FRAME = ("gc:wasm-frame", "gc:wasm-frame-without-stack-map", "gc:canary-found")


def _run(steps: list[ops.Op]) -> tuple[list[Observation], State]:
    return _run_with(CFG, steps)


def _run_with(cfg: Config, steps: list[ops.Op]) -> tuple[list[Observation], State]:
    results = run(cfg, steps)
    driven = drive(cfg, steps, InProcessImpl(), until_first=False)
    assert driven.first is None, driven.first
    return [obs for _, obs in results], results[-1][0]


def _wasm_top(state: State) -> WasmFrame:
    top = state.frames[-1]
    assert isinstance(top, WasmFrame)
    return top


def test_a_call_with_more_ref_arguments_than_capacity_bytes_gcs_before_entering_wasm() -> None:
    """`TypedFunc::_call`: 1 externref argument > 0 bytes remaining, so `store.gc()` runs first.

    It runs before the canary is set (a GC with no canary: it sweeps, allocating the chunk), and
    the argument then goes into the fresh chunk's first slot, not the hash set.
    """
    observations, state = _run([ops.New(8, 8), ops.CallWasm((0,))])
    assert observations[1] == Observation(Ok(), frozenset(), NO_CANARY_SWEEP)
    assert state.table.chunk == (0, None) and state.table.next == 1
    assert state.table.over_approximated_stack_roots == frozenset()
    assert state.heap[0].ref_count == 1  # the table's slot; the Wasm slot only borrows
    assert _wasm_top(state).slots == (0, None, None)


def test_a_call_with_no_ref_arguments_runs_no_gc() -> None:
    """0 arguments is not more than 0 bytes: no GC, the chunk stays unallocated."""
    observations, state = _run([ops.CallWasm(())])
    assert observations == [Observation(Ok())]
    assert state.table.chunk == () and state.table.next == 0


def test_the_pre_gc_compares_refs_with_bytes_not_slots() -> None:
    """After the first sweep 2 free slots are 16 bytes: 3 arguments are not more than 16, so no
    GC runs and the third argument falls back to the hash set (`insert_slow_without_gc`)."""
    steps = [ops.Gc(), ops.New(8, 8), ops.New(8, 8), ops.New(8, 8), ops.CallWasm((0, 1, 2))]
    observations, state = _run(steps)
    assert observations[0] == Observation(Ok(), frozenset(), NO_CANARY_SWEEP)
    assert observations[4] == Observation(Ok(), frozenset(), ("insert:slow-without-gc",))
    assert state.table.chunk == (0, 1) and state.table.over_approximated_stack_roots == {2}
    assert [box.ref_count for box in state.heap] == [1, 1, 1]


def test_a_host_functions_null_result_counts_for_the_pre_gc() -> None:
    """`Func::invoke`: one externref result type > 0 bytes remaining, so a GC runs before the
    result goes back, even though the result is null (nothing is inserted). It walks the stack:
    the Wasm frame (no live refs, no stack map), then finds the canary at the main host frame."""
    steps = [ops.CallWasm(()), ops.WasmCallHost((), 0), ops.ReturnToWasm(None)]
    observations, state = _run(steps)
    assert observations[2] == Observation(
        Ok(), frozenset(), (*WALK_ONE_WASM_FRAME, "sweep:lazy-chunk-allocation")
    )
    assert state.table.chunk == (None, None) and state.table.next == 0


#: A global holding ref 0 and nothing else, then a call into Wasm (no pre-GC: no arguments).
GLOBAL_ONLY = [
    ops.New(8, 8), ops.InitGlobals(1), ops.HostGlobalSet(0, 0), ops.Drop(0), ops.CallWasm(())
]  # fmt: skip


def test_global_get_pins_a_clone_in_the_table_before_the_libcall_can_gc() -> None:
    """The libcall clones the value and inserts one clone with `insert_without_gc` before the
    GC-capable insert: with the chunk still empty the pinned clone goes to the hash set, then
    `insert_with_gc` misses the fast path and GCs. The GC's sweep drops the pinned clone; the
    second clone goes into the hash set after it. The global still holds its own count, so the
    value is never freed, and it lands in the destination slot."""
    observations, state = _run([*GLOBAL_ONLY, ops.WasmGlobalGet(0, 0)])
    assert observations[5] == Observation(
        Ok(),
        frozenset(),
        (
            "insert:slow-without-gc",  # the pinned clone, before any GC
            "insert:gc-and-insert-slow",
            *WALK_ONE_WASM_FRAME,
            "sweep:lazy-chunk-allocation",
        ),
    )
    assert state.heap[0].ref_count == 2  # the global and the hash set
    assert state.table.over_approximated_stack_roots == {0}
    assert _wasm_top(state).slots == (0, None, None)


def test_global_get_fills_the_chunk_first_so_the_gc_insert_sweeps() -> None:
    """With one free slot left, the pinned clone takes it, so `insert_with_gc` finds the chunk full
    and GCs: the sweep frees ref 0, which only the chunk held. (An insert_with_gc alone would
    have taken that slot and run no GC.)"""
    steps = [
        ops.Gc(), ops.New(8, 8), ops.InsertWithoutGc(0),  # ref 0 is held by the chunk alone
        ops.New(8, 8), ops.InitGlobals(1), ops.HostGlobalSet(0, 1), ops.Drop(1),
        ops.CallWasm(()), ops.WasmGlobalGet(0, 0),
    ]  # fmt: skip
    observations, state = _run(steps)
    assert observations[8] == Observation(
        Ok(), frozenset({0}), ("insert:gc-and-insert-slow", *WALK_ONE_WASM_FRAME)
    )
    assert state.heap[0].freed
    assert state.heap[1].ref_count == 2  # the global and the hash set
    assert state.table.chunk == (None, None) and state.table.over_approximated_stack_roots == {1}
    assert _wasm_top(state).slots == (1, None, None)


def test_global_get_hands_wasm_the_value_and_returning_it_gives_the_host_a_counted_handle() -> None:
    """The slot holds the global's ref (not null), and `WasmReturn` of it to the host makes a new
    handle with its own count (`clone_from_raw`): global + hash set + handle."""
    observations, state = _run([*GLOBAL_ONLY, ops.WasmGlobalGet(0, 0), ops.WasmReturn(0)])
    assert observations[6] == Observation(Ok(1))
    assert state.handles == (None, 0)
    assert state.heap[0].ref_count == 3
    assert isinstance(state.frames[-1], HostFrame) and state.table.stack_canary is None


# --- no-gc-free-insert: the counted protocol (model.protocol.move_refs_counted) --------------------

NO_GC_FREE = replace(CFG, capabilities=(capabilities.NO_GC_FREE_INSERT,))
#: A full-size chunk, three refs, then a call that passes all three: the third insert finds the
#: chunk full and GCs (no canary yet: it sweeps the first two out of the chunk).
COUNTED = [ops.Gc(), ops.New(8, 8), ops.New(8, 8), ops.New(8, 8), ops.CallWasm((0, 1, 2))]


def test_the_counted_protocol_keeps_arguments_alive_across_a_gc_in_a_later_insert() -> None:
    """try_insert(0), try_insert(1) fill the chunk; try_insert(2) fails, insert_with_gc(2) GCs:
    the sweep drops the chunk's counts of 0 and 1, which the host's copies keep alive; 2 goes to
    the hash set; 0 and 1 go in again from the copies; the copies are dropped. Nothing is freed,
    each ref has one count (the table's), and every argument is in the table."""
    observations, state = _run_with(NO_GC_FREE, COUNTED)
    assert observations[4] == Observation(
        Ok(), frozenset(), ("insert:gc-and-insert-slow", "gc:no-canary")
    )
    assert state.table.chunk == (0, 1) and state.table.over_approximated_stack_roots == {2}
    assert [box.ref_count for box in state.heap] == [1, 1, 1]
    assert not any(box.freed for box in state.heap)


def _insert_each_with_gc(machine: Machine, refs: Sequence[int]) -> None:
    """The obvious protocol without GC-free inserts: each argument in with `insert_with_gc`."""
    for r in refs:
        machine.insert_with_gc(r)


def test_without_the_host_s_copies_the_gc_in_a_later_insert_frees_arguments() -> None:
    """What the counted protocol exists for: the same call with plain GC-capable inserts frees the
    two arguments the GC swept, though the Wasm frame about to be pushed holds them."""
    state = run(NO_GC_FREE, COUNTED[:4])[-1][0]
    machine = Machine(NO_GC_FREE, state)
    _insert_each_with_gc(machine, [machine.host.take(h) for h in (0, 1, 2)])
    after = machine.freeze()
    assert [box.freed for box in after.heap] == [True, True, False]


def test_the_counted_protocol_carries_at_most_chunk_size_plus_one_refs() -> None:
    steps = [ops.New(8, 8), ops.New(8, 8), ops.New(8, 8), ops.New(8, 8)]
    results = run(Config(chunk_size=2, slots=4, capabilities=(capabilities.NO_GC_FREE_INSERT,)), [
        *steps, ops.CallWasm((0, 1, 2, 3))
    ])  # fmt: skip
    result = results[-1][1].result
    assert isinstance(result, Misuse) and "at most 3" in result.detail


def test_global_get_needs_no_gc_free_insert() -> None:
    steps = [ops.InitGlobals(1), ops.New(8, 8), ops.HostGlobalSet(0, 0), ops.CallWasm(())]
    steps += [ops.WasmGlobalGet(0, 1), ops.WasmReturn(1)]
    _, seed_state = _run(steps)
    _, state = _run_with(NO_GC_FREE, steps)
    assert seed_state.heap[0].ref_count == state.heap[0].ref_count
