"""The lockstep machine on the seed, its projection and raw-memory checks, teardown, and `replay`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from externref_harness import trace as tracefile
from externref_harness.impl import mutants
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import Probe, StepOutcome, op_from_plain, plain_op
from externref_harness.isolation.child import _probe, _Sent
from externref_harness.lockstep.check import make_lockstep_machine, run_lockstep_check
from externref_harness.lockstep.projection import RefMap, project_impl, project_model
from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG, Lockstep, drive, replay
from externref_harness.model import ops
from externref_harness.model.capabilities import OPAQUE_REFS
from externref_harness.model.runtime import CVE_2021_39218
from externref_harness.model.state import Build, Config
from externref_harness.model.transition import run
from externref_harness.search.model_check import REQUIRED_EVENTS, RunStats
from externref_harness.vec import Vec

CI = settings(settings.get_profile("ci"))


@pytest.mark.slow
@pytest.mark.parametrize("build", ["debug", "release"])
def test_the_seed_passes_in_lockstep_and_every_path_is_reached(build: Build) -> None:
    out = run_lockstep_check(replace(LOCKSTEP_CONFIG, build=build), LOCKSTEP_BOUNDS, CI)
    assert out.passed, out.failure
    missing = [e for e in REQUIRED_EVENTS if out.stats.events[e] == 0]
    assert not missing, f"paths never reached in lockstep: {missing}"


@pytest.mark.slow
def test_the_seed_passes_with_the_seeds_chunk_size() -> None:
    cfg = replace(LOCKSTEP_CONFIG, chunk_size=512)
    out = run_lockstep_check(cfg, LOCKSTEP_BOUNDS, settings(CI, max_examples=40))
    assert out.passed, out.failure


# --- one hand-written trace through every kind of observable ------------------------------------

OBSERVABLES = (
    ops.New(8, 8),
    ops.New(32, 16),
    ops.Clone(0),
    ops.Eq(0, 2),
    ops.Cmp(0, 1),
    ops.Cmp(1, 0),
    ops.Deref(1),
    ops.StrongCount(0),
    ops.AsRaw(1),
    ops.InitGlobals(1),
    ops.HostGlobalSet(0, 1),
    ops.TryInsert(2),
    ops.InsertWithoutGc(2),
    ops.Elements(),
    ops.CallWasm((0,)),
    ops.WasmGlobalGet(0, 1),
    ops.WasmCallHost((0, 1), 2),
    ops.StackCanary(),
    ops.BumpCapacityRemaining(),
    ops.NumFilledInBumpChunk(),
    ops.Gc(),
    ops.ReturnToWasm(3),
    ops.WasmReturn(2),
    ops.Drop(5),
)


def test_projections_have_one_shape_and_agree_on_the_seed() -> None:
    run_ = Lockstep(LOCKSTEP_CONFIG, InProcessImpl())
    try:
        for op in OBSERVABLES:
            check = run_.step(op)
            assert check.model_problem is None, (op, check.model_problem)
            assert check.impl_problem is None, (op, check.impl_problem)
    finally:
        run_.close()
    results = [obs for _, obs in run(LOCKSTEP_CONFIG, OBSERVABLES)]
    assert str(results[4].result) == "Ok(False)"  # cmp: the model only knows "not Equal"
    assert str(results[17].result).startswith("Ok(")  # a canary inside Wasm


class Lying(InProcessImpl):
    """The implementation, with one answer changed after the fact."""

    def __init__(self, tamper: Any) -> None:
        super().__init__()
        self.tamper = tamper

    def step(self, op: tuple[Any, ...], embedder_capacity: int | None = None) -> StepOutcome:
        outcome: StepOutcome = self.tamper(op, super().step(op, embedder_capacity))
        return outcome


def _swap_cmp(op: tuple[Any, ...], out: StepOutcome) -> StepOutcome:
    return out._replace(result=("ok", -out.result[1])) if op[0] == "Cmp" else out


def _hide_drops(op: tuple[Any, ...], out: StepOutcome) -> StepOutcome:
    return out._replace(dropped=())


def _forge_misuse(op: tuple[Any, ...], out: StepOutcome) -> StepOutcome:
    return out._replace(result=("misuse", "dropped-handle", "")) if op[0] == "Elements" else out


@pytest.mark.parametrize(
    "tamper,expected",
    [
        (_swap_cmp, "[observed.cmp-order]"),
        (_hide_drops, "observed.dropped"),
        (_forge_misuse, "observed.result"),
    ],
)
def test_the_comparison_fails_when_an_observable_differs(tamper: Any, expected: str) -> None:
    steps = [*OBSERVABLES, ops.Drop(0), ops.Drop(1), ops.Drop(4), ops.Gc()]
    driven = drive(LOCKSTEP_CONFIG, steps, Lying(tamper), until_first=True)
    assert driven.impl_failure is not None
    assert expected in driven.impl_failure.problem


def test_under_opaque_refs_cmp_may_reverse_the_words_order_but_not_change_its_mind() -> None:
    cfg = replace(LOCKSTEP_CONFIG, capabilities=(OPAQUE_REFS,))
    steps = [ops.New(8, 8), ops.New(8, 8), ops.Cmp(0, 1), ops.Cmp(1, 0), ops.Cmp(0, 1)]
    assert drive(cfg, steps, Lying(_swap_cmp), until_first=True).first is None
    flips = iter((1, 1, -1))

    def flip(op: tuple[Any, ...], out: StepOutcome) -> StepOutcome:
        return out._replace(result=("ok", next(flips))) if op[0] == "Cmp" else out

    driven = drive(cfg, [*steps[:3], ops.Cmp(0, 1), ops.Cmp(0, 1)], Lying(flip), until_first=True)
    assert driven.impl_failure is not None and driven.impl_failure.step == 5
    assert (
        "[observed.identity]" in driven.impl_failure.problem
        and "earlier above it" in driven.impl_failure.problem
    )


class SaltedHashes(InProcessImpl):
    """An implementation whose `hash` mixes in something besides the address (a call counter)."""

    calls = 0

    def probe(self) -> Probe:
        probe = super().probe()
        salted = []
        for r, h in probe.hashes:
            SaltedHashes.calls += 1
            salted.append((r, h + SaltedHashes.calls))
        return probe._replace(hashes=tuple(salted))


def test_a_ref_keeps_its_hash() -> None:
    steps = [ops.New(8, 8), ops.Clone(0), ops.Eq(0, 1)]
    assert drive(LOCKSTEP_CONFIG, steps, InProcessImpl(), until_first=True).first is None
    driven = drive(LOCKSTEP_CONFIG, steps, SaltedHashes(), until_first=True)
    assert driven.impl_failure is not None and driven.impl_failure.step == 3
    assert "observed.identity" in driven.impl_failure.problem
    assert "changed from" in driven.impl_failure.problem


def test_raw_memory_is_compared_with_the_model_state() -> None:
    """A ref_count word changed behind the implementation's back is found at the next step."""
    run_ = Lockstep(LOCKSTEP_CONFIG, adapter := InProcessImpl())
    try:
        assert run_.step(ops.New(8, 8)).impl_problem is None
        ((footer, _),) = adapter.world.allocations
        adapter.world.heap.store(footer, 5, "the test scribbles on ref_count")
        problem = run_.step(ops.StrongCount(0)).impl_problem
        assert problem is not None
        assert "the word at footer offset 0 is 5, the model's ref_count is 1" in problem
    finally:
        run_.close()


def test_faults_of_both_sides_correspond() -> None:
    """CVE-2021-39218 in a release build: a scalar taken for a ref. The model records a wild-pointer
    fault; the checking heap refuses the increment and reports it; the projections agree."""
    cfg = replace(LOCKSTEP_CONFIG, build="release", mutant=CVE_2021_39218)
    steps = [
        ops.New(8, 8),
        ops.CallWasm((0,)),
        ops.WasmCallHost((), 1),  # safepoint with slot 0 in its map
        ops.ReturnToWasm(None),
        ops.WasmScalar(0),
        ops.WasmCallHost((), 1),  # no live refs: no map, the buggy lookup falls back
        ops.Gc(),
    ]
    run_ = Lockstep(cfg, adapter := _Recording())
    try:
        for op in steps:
            check = run_.step(op)
        assert check.model_problem is not None and "wild-pointer" in check.model_problem
        assert check.impl_problem is not None
        assert "wild-access at 0xbad5ca1a12f0001 during increment ref_count" in check.impl_problem
        assert "observed.faults" not in check.impl_problem
        (before, _), (after, obs) = run(cfg, steps)[-2:]
        model_view = project_model(steps[-1], obs, before, after)
        impl_view = project_impl(steps[-1], adapter.last, adapter.probe(), run_.refs)
        assert model_view == impl_view
        assert impl_view.faults == ("wild-pointer",)
    finally:
        run_.close()


class _Recording(InProcessImpl):
    last: StepOutcome

    def step(self, op: tuple[Any, ...], embedder_capacity: int | None = None) -> StepOutcome:
        self.last = super().step(op, embedder_capacity)
        return self.last


# --- teardown ------------------------------------------------------------------------------------


class Counting(InProcessImpl):
    finished = 0

    def finish(self) -> tuple[tuple[str, int, str, str], ...]:
        Counting.finished += 1
        return super().finish()


def test_every_example_ends_with_the_teardown_leak_check() -> None:
    stats = RunStats()
    Counting.finished = 0
    machine = make_lockstep_machine(stats=stats, adapter_factory=Counting)
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(machine, settings=settings(CI, max_examples=15))
    assert stats.examples > 0
    assert Counting.finished == stats.examples


class Leaking(InProcessImpl):
    """An implementation that loses one block of the checking heap."""

    def start(self, config: Any) -> None:
        super().start(config)
        self.world.heap.alloc(16, 8, "forgotten")


def test_a_leak_fails_the_teardown_of_the_machine_and_of_replay(tmp_path: Path) -> None:
    out = run_lockstep_check(
        LOCKSTEP_CONFIG, LOCKSTEP_BOUNDS, settings(CI, max_examples=5), tmp_path / "t.json", Leaking
    )
    assert not out.passed and out.failure is not None
    assert "leak at" in out.failure and "forgotten block of 16 bytes never freed" in out.failure
    report = replay(tracefile.Trace(LOCKSTEP_CONFIG, (ops.New(8, 8),)), Leaking())
    assert report.model_failure is None
    assert report.impl_failure is not None and report.impl_failure[0] == 2
    assert "teardown" in report.describe()


# --- replay --------------------------------------------------------------------------------------


def test_replay_of_a_seed_trace_finds_nothing() -> None:
    report = replay(tracefile.Trace(LOCKSTEP_CONFIG, OBSERVABLES))
    assert (report.steps, report.model_failure, report.impl_failure) == (len(OBSERVABLES), None, None)
    assert "model: ok" in report.describe() and "implementation: ok" in report.describe()


def test_replay_of_an_impl_mutant_fails_only_the_implementation() -> None:
    cfg = replace(LOCKSTEP_CONFIG, build="release", mutant=mutants.EARLY_FREE)
    report = replay(tracefile.Trace(cfg, (ops.New(8, 8), ops.Clone(0), ops.Drop(1), ops.StrongCount(0))))
    assert report.model_failure is None
    assert report.impl_failure is not None and report.impl_failure[0] == 3
    assert "reachable, yet the checking heap says freed" in report.impl_failure[1]


@pytest.mark.slow
def test_a_shrunk_failure_prints_numbered_steps_and_replays(tmp_path: Path) -> None:
    cfg = replace(LOCKSTEP_CONFIG, mutant=mutants.STACK_MAP_OFFSET)
    saved = tmp_path / "failure.json"
    out = run_lockstep_check(cfg, LOCKSTEP_BOUNDS, CI, saved)
    assert not out.passed and out.failure is not None
    assert "Steps:" in out.failure and ">>" in out.failure and "State diff at step" in out.failure
    assert f"externref-harness replay {saved}" in out.failure
    trace = tracefile.load(saved)
    assert trace.config.mutant == mutants.STACK_MAP_OFFSET
    report = replay(trace)
    assert report.impl_failure is not None and report.impl_failure[0] == len(trace.steps)
    assert replay(replace(trace, config=replace(trace.config, mutant=None))).impl_failure is None


# --- the adapter passes plain data only -----------------------------------------------------------


def _plain(value: object) -> bool:
    if value is None or isinstance(value, bool | int | str | bytes):
        return True
    if isinstance(value, tuple):
        return all(_plain(v) for v in value)
    return False


def test_the_adapter_interface_is_plain_data() -> None:
    for op in OBSERVABLES:
        assert _plain(plain_op(op)) and op_from_plain(plain_op(op)) == op
    adapter = InProcessImpl()
    adapter.start({"chunk_size": 2, "build": "debug", "slots": 3, "n_globals": 2, "mutant": None})
    try:
        for op in OBSERVABLES:
            outcome = adapter.step(plain_op(op))
            assert _plain(tuple(outcome)), outcome
        probe: Probe = adapter.probe()
        # Its two heap-sized parts are persistent vectors of plain data (`Probe`), and what
        # crosses to another process is its frame: plain data throughout.
        assert isinstance(probe.refs, Vec) and isinstance(probe.handles, Vec)
        parts = (*probe[:3], probe.refs.as_tuple(), probe.handles.as_tuple(), *probe[5:])
        assert _plain(parts), probe
        frame, n_refs, changed = _probe(adapter, _Sent())
        assert _plain(tuple(frame)) and _plain(tuple(changed)), frame
        assert n_refs == len(changed) == len(probe.refs) and frame.n_handles == len(probe.handles)
        assert [word for _, word in frame.changed_handles] == list(probe.handles)  # all new
    finally:
        adapter.close()


def test_refs_map_both_ways() -> None:
    refs = RefMap()
    refs.add(0x1008, 0x1000)
    refs.add(0x2018, 0x2000)
    assert (refs.ref(0x2018), refs.value(0x1000), refs.slot(0)) == (1, 0, None)
    assert refs.ref(0x3000) == "?0x3000"


def test_config_round_trips_through_plain_data() -> None:
    cfg = Config(chunk_size=4, build="release", slots=2, n_globals=1, mutant=mutants.EARLY_FREE)
    adapter = InProcessImpl()
    from externref_harness.impl.interface import plain_config

    adapter.start(plain_config(cfg))
    try:
        assert adapter.world.cfg == cfg
    finally:
        adapter.close()
