"""Each capability's rule in the model, the protocol and the generators, worked out by hand.

The traces use a chunk of 2 slots (16 bytes) and 3 slots per Wasm frame. Each rule is shown beside
what the seed does in the same trace, so a rule that stopped applying would fail here. The
traces of the protocol's capabilities also run in lockstep on the Python port (the seed's runtime
in a host world that applies them), so the host world agrees; those of the runtime's own choices
(eager-chunk, capacity-slots) run in lockstep on their C variants (tests/native).
"""

from __future__ import annotations

import pytest

from externref_harness.errors import UsageError
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.lockstep.runner import check_available, drive
from externref_harness.model import capabilities, ops
from externref_harness.model.moves import Bounds, flat_moves, misuse_moves
from externref_harness.model.observation import Observation, Ok
from externref_harness.model.state import Config, State
from externref_harness.model.transition import run
from externref_harness.search.model_check import REQUIRED_EVENTS, required_events

SEED = Config(chunk_size=2, slots=3, n_globals=1)


def _with(*names: str) -> Config:
    return Config(chunk_size=2, slots=3, n_globals=1, capabilities=capabilities.canonical(names))


#: Capabilities of the runtime itself, which the Python port of the seed does not have.
RUNTIME_CHOICES = (capabilities.EAGER_CHUNK, capabilities.CAPACITY_SLOTS)


def _run(cfg: Config, steps: list[ops.Op]) -> tuple[list[Observation], State]:
    results = run(cfg, steps)
    if not any(cfg.has(name) for name in RUNTIME_CHOICES):
        driven = drive(cfg, steps, InProcessImpl(), until_first=False)
        assert driven.first is None, driven.first
    return [obs for _, obs in results], results[-1][0]


# --- eager-chunk ------------------------------------------------------------------------------


def test_eager_chunk_starts_with_a_full_size_empty_chunk() -> None:
    assert State.initial(SEED).table.chunk == ()
    eager = State.initial(_with(capabilities.EAGER_CHUNK))
    assert eager.table.chunk == (None, None) and eager.table.next == 0


def test_eager_chunk_capacity_and_inserts_before_the_first_gc_follow() -> None:
    """The seed answers 0 bytes and its first insert GCs (allocating the chunk); an eager table
    answers 16 bytes and the insert lands in slot 0 with no GC."""
    steps = [ops.BumpCapacityRemaining(), ops.New(8, 8), ops.InsertWithGc(0)]
    seed, seed_state = _run(SEED, steps)
    assert seed[0].result == Ok(0)
    assert seed[2] == Observation(
        Ok(), frozenset(), ("insert:gc-and-insert-slow", "gc:no-canary", "sweep:lazy-chunk-allocation")
    )
    assert seed_state.table.over_approximated_stack_roots == {0}
    eager, state = _run(_with(capabilities.EAGER_CHUNK), steps)
    assert eager[0].result == Ok(16)
    assert eager[2] == Observation(Ok())
    assert state.table.chunk == (0, None) and state.table.next == 1


def test_eager_chunk_never_allocates_in_a_sweep() -> None:
    observations, _ = _run(_with(capabilities.EAGER_CHUNK), [ops.Gc()])
    assert observations[0].events == ("gc:no-canary",)


# --- capacity-slots ---------------------------------------------------------------------------


def test_capacity_slots_answers_slots_and_the_embedder_compares_with_them() -> None:
    """After the first sweep 2 slots are free. The seed says 16 bytes, so 3 arguments are not more
    and no pre-GC runs (the third goes to the hash set); in slots 3 > 2, so the embedder GCs first,
    with the same outcome for the refs."""
    steps = [ops.Gc(), ops.BumpCapacityRemaining(), ops.New(8, 8), ops.New(8, 8), ops.New(8, 8)]
    steps.append(ops.CallWasm((0, 1, 2)))
    seed, _ = _run(SEED, steps)
    assert seed[1].result == Ok(16)
    assert seed[5].events == ("insert:slow-without-gc",)
    slots, state = _run(_with(capabilities.CAPACITY_SLOTS), steps)
    assert slots[1].result == Ok(2)
    assert slots[5].events == ("gc:no-canary", "insert:slow-without-gc")
    assert state.table.chunk == (0, 1) and state.table.over_approximated_stack_roots == {2}


NO_GC_FREE = _with(capabilities.NO_GC_FREE_INSERT)


# --- no-gc-free-insert: the counted protocol is pinned in test_protocol_pinned.py -----------------


# --- canary-guard: the model's rule is unchanged -------------------------------------------------


def test_canary_guard_runs_the_seed_s_rule() -> None:
    steps = [ops.New(8, 8), ops.CallWasm((0,)), ops.WasmCallHost((0,), 1), ops.Gc()]
    steps += [ops.ReturnToWasm(None), ops.WasmReturn(None), ops.Gc()]
    seed, seed_state = _run(SEED, steps)
    guard, state = _run(_with(capabilities.CANARY_GUARD), steps)
    assert seed == guard and seed_state == state


# --- what is drawn --------------------------------------------------------------------------------

RICH = Bounds(refs=3, handles=3, raws=1, frames=2, args=3, insert_many=True)


def _reachable_moves(cfg: Config, depth: int = 3) -> set[ops.Op]:
    """Every move of every state within `depth` steps of the start (the host's side)."""
    seen: set[ops.Op] = set()
    frontier = [State.initial(cfg)]
    for _ in range(depth):
        nxt = []
        for state in frontier:
            for op in flat_moves(cfg, RICH, state):
                seen.add(op)
                if isinstance(op, ops.New | ops.IntoRaw | ops.AsRaw | ops.Gc | ops.SetGcOkay):
                    nxt.append(run(cfg, [op], state)[-1][0])
            seen.update(misuse_moves(cfg, state))
        frontier = nxt
    return seen


@pytest.mark.parametrize("capability", sorted(ops.REMOVED_BY))
def test_an_operation_a_capability_removes_is_never_drawn(capability: str) -> None:
    removed = ops.REMOVED_BY[capability]
    cfg = _with(capability)
    assert not [op for op in _reachable_moves(cfg) if ops.unavailable(op, cfg.capabilities)]
    # The seed draws every one of them: the filter is what takes them out.
    seed_kinds = {type(op) for op in _reachable_moves(SEED)}
    assert set(removed) <= seed_kinds


def test_a_trace_step_the_library_lacks_is_refused_in_one_line() -> None:
    cfg = _with(capabilities.NO_RAW)
    refused = r"step 2 \(IntoRaw\(h=0\)\) cannot run: IntoRaw calls a function a no-raw"
    with pytest.raises(UsageError, match=refused):
        check_available(cfg, [ops.New(8, 8), ops.IntoRaw(0)])
    assert ops.unavailable(ops.InsertMany(0, 3, False), (capabilities.NO_GC_FREE_INSERT,)) is not None
    assert ops.unavailable(ops.InsertMany(0, 3, True), (capabilities.NO_GC_FREE_INSERT,)) is None
    assert ops.unavailable(ops.IntoRaw(0), ()) is None


def test_the_required_paths_leave_out_only_what_a_capability_rules_out() -> None:
    """`check` fails a run that misses a required path; an eager chunk is never allocated by a
    sweep, and nothing calls insert_without_gc under no-gc-free-insert."""
    assert required_events(SEED) == REQUIRED_EVENTS
    eager = set(REQUIRED_EVENTS) - set(required_events(_with(capabilities.EAGER_CHUNK)))
    assert eager == {"sweep:lazy-chunk-allocation"}
    counted = set(REQUIRED_EVENTS) - set(required_events(NO_GC_FREE))
    assert counted == {"insert:slow-without-gc"}
    assert required_events(_with(capabilities.NO_RAW)) == REQUIRED_EVENTS
