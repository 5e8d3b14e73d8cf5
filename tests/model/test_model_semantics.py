"""The model mirrors the seed's semantics, oddities included: targeted scenarios, step by step."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from externref_harness.model import ops
from externref_harness.model.layout import layout_for
from externref_harness.model.observation import Err, Misuse, Observation, Ok, Panic
from externref_harness.model.ops import Op
from externref_harness.model.state import STACK_TOP, Config, State
from externref_harness.model.transition import run, step
from externref_harness.specs.invariants import violations

DEBUG = Config(chunk_size=4, slots=3, n_globals=1)
RELEASE = Config(chunk_size=4, slots=3, n_globals=1, build="release")


def play(cfg: Config, steps: Sequence[Op]) -> tuple[State, list[Observation]]:
    results = run(cfg, steps)
    return results[-1][0], [obs for _, obs in results]


def test_the_bump_chunk_starts_empty_and_is_allocated_by_the_first_sweep() -> None:
    state, obs = play(DEBUG, [ops.New(8, 8), ops.TryInsert(0), ops.Gc(), ops.TryInsert(0)])
    assert obs[1].result == Err("chunk-full")  # the first insert always misses the fast path
    assert "sweep:lazy-chunk-allocation" in obs[2].events
    assert obs[3].result == Ok()
    assert state.table.chunk == (0, None, None, None) and state.table.next == 1


def test_bump_capacity_remaining_is_in_bytes_and_num_filled_in_slots() -> None:
    _, obs = play(
        DEBUG,
        [ops.BumpCapacityRemaining(), ops.Gc(), ops.New(8, 8), ops.InsertWithoutGc(0),
         ops.BumpCapacityRemaining(), ops.NumFilledInBumpChunk()],
    )  # fmt: skip
    assert obs[0].result == Ok(0)
    assert obs[4].result == Ok(3 * 8)  # three free slots, reported as 24 bytes
    assert obs[5].result == Ok(1)


def test_a_hashset_insert_of_a_present_ref_drops_the_handle_passed_in() -> None:
    steps: list[Op] = [ops.New(8, 8), ops.Clone(0), ops.Clone(0)]
    steps += [ops.InsertWithoutGc(0), ops.InsertWithoutGc(1), ops.StrongCount(2)]
    state, obs = play(DEBUG, steps)  # chunk still empty: both go to the hash set
    assert obs[4].events == ("insert:slow-without-gc", "hashset:duplicate-dropped")
    assert obs[5].result == Ok(2)  # one count for the set, one for handle 2
    assert state.table.over_approximated_stack_roots == frozenset({0})
    assert violations(DEBUG, state) == []


def test_sweep_drops_chunk_and_old_over_approximation_exactly_once() -> None:
    steps: list[Op] = [ops.New(8, 8), ops.New(8, 8), ops.InsertWithoutGc(0), ops.Gc()]
    steps += [ops.InsertWithoutGc(1), ops.Gc()]
    state, obs = play(DEBUG, steps)
    assert obs[3].dropped == frozenset({0})
    assert obs[5].dropped == frozenset({1})
    assert all(box.freed for box in state.heap)


def test_gc_takes_stack_map_roots_and_keeps_them_alive() -> None:
    steps: list[Op] = [ops.New(8, 8), ops.CallWasm((0,)), ops.WasmCallHost((), 1), ops.Gc()]
    state, obs = play(DEBUG, steps)
    assert obs[3].events == ("gc:wasm-frame", "gc:stack-map-root", "gc:canary-found")
    assert state.table.over_approximated_stack_roots == frozenset({0})
    assert state.heap[0].ref_count == 1 and not state.heap[0].freed
    assert violations(DEBUG, state) == []


def test_canary_is_the_entering_host_frame_sp_and_reset_on_return() -> None:
    steps: list[Op] = [ops.CallWasm(()), ops.WasmCallHost((), 0), ops.StackCanary()]
    steps += [ops.ReturnToWasm(None), ops.WasmReturn(None), ops.StackCanary()]
    _, obs = play(DEBUG, steps)
    assert obs[2].result == Ok(STACK_TOP - 32)
    assert obs[5].result == Ok(None)


def test_canary_not_found_clears_precise_roots_and_does_not_sweep() -> None:
    steps: list[Op] = [ops.New(8, 8), ops.CallWasm((0,)), ops.WasmCallHost((), 1, False)]
    steps += [ops.Gc()]
    before, _ = play(DEBUG, steps[:-1])
    after, obs = play(DEBUG, steps)
    assert obs[-1].events[-2:] == ("gc:unwinder-stopped", "gc:canary-not-found")
    assert after.table == before.table and after.heap == before.heap


def test_gc_with_gc_okay_false_is_misuse_in_debug_and_runs_in_release() -> None:
    steps: list[Op] = [ops.SetGcOkay(False), ops.Gc()]
    _, debug = play(DEBUG, steps)
    _, release = play(RELEASE, steps)
    assert debug[0].result == Ok(True) and isinstance(debug[1].result, Misuse)
    assert release[0].result == Ok(True) and release[1].result == Ok()


def test_missing_canary_with_wasm_frames_panics_in_debug_and_frees_live_refs_in_release() -> None:
    """`gc` without the canary its contract requires. The embedder may not clear it under Wasm
    (`SetStackCanary(None)` is refused as misuse), so the state is built with it cleared."""
    steps: list[Op] = [ops.New(8, 8), ops.CallWasm((0,)), ops.WasmCallHost((), 1)]
    assert isinstance(play(DEBUG, [*steps, ops.SetStackCanary(None)])[1][-1].result, Misuse)
    outcomes = []
    for cfg in (DEBUG, RELEASE):
        state = run(cfg, steps)[-1][0]
        state = state.with_(table=state.table.with_(stack_canary=None))
        outcomes.append(step(cfg, state, ops.Gc()))
    (debug, dobs), (release, _) = outcomes
    assert isinstance(dobs.result, Panic)
    assert [inv.id for inv, _ in violations(DEBUG, debug)][:1] == ["I7"]
    assert "I1" in [inv.id for inv, _ in violations(RELEASE, release)]


@pytest.mark.parametrize(
    ("steps", "kind"),
    [
        ([ops.New(8, 8), ops.Drop(0), ops.Clone(0)], "dropped-handle"),
        ([ops.Clone(3)], "no-such-handle"),
        ([ops.New(8, 8), ops.AsRaw(0), ops.FromRaw(0)], "from-raw-unowned"),
        ([ops.New(8, 8), ops.AsRaw(0), ops.Drop(0), ops.CloneFromRaw(0)], "raw-of-freed-ref"),
        ([ops.WasmNull(0)], "wrong-frame"),
        ([ops.New(8, 3)], "bad-layout"),
        ([ops.WasmGlobalGet(0, 0)], "wrong-frame"),
        ([ops.HostGlobalGet(0)], "uninit-global"),
    ],
)
def test_misuse_is_refused_with_an_explicit_outcome_and_no_state_change(
    steps: list[Op], kind: str
) -> None:
    before, _ = play(DEBUG, steps[:-1]) if len(steps) > 1 else (State.initial(DEBUG), [])
    after, obs = step(DEBUG, before, steps[-1])
    assert isinstance(obs.result, Misuse) and obs.result.kind == kind
    assert after == before


def test_step_is_pure_and_states_are_hashable() -> None:
    state = State.initial(DEBUG)
    for op in [ops.New(8, 8), ops.CallWasm((0,)), ops.WasmCallHost((0,), 1)]:
        a = step(DEBUG, state, op)
        b = step(DEBUG, state, op)
        assert a == b and hash(a[0]) == hash(b[0])
        state = a[0]


def test_layout_matches_the_seed_for_common_types() -> None:
    assert layout_for(0, 1).footer_offset == 0
    assert layout_for(1, 1).footer_offset == 8
    assert layout_for(24, 8).alloc_size == 48
    assert layout_for(32, 16).alloc_align == 16


def test_teardown_of_uninitialised_globals_is_harmless_on_the_seed() -> None:
    cfg = Config(chunk_size=2, slots=2, n_globals=2)
    state, _ = play(cfg, [ops.InitGlobals(1), ops.TeardownGlobals()])
    assert state.faults == ()


def test_a_null_externref_result_still_counts_for_the_pre_gc() -> None:
    """`Func::invoke` compares the number of externref *results* (types, not values) with the capacity."""
    cfg = Config(chunk_size=1, slots=2, n_globals=0)
    steps: list[Op] = [ops.Gc(), ops.New(8, 8), ops.InsertWithoutGc(0), ops.CallWasm(())]
    steps += [ops.WasmCallHost((), 0), ops.ReturnToWasm(None)]
    _, obs = play(cfg, steps)
    assert "gc:canary-found" in obs[-1].events
