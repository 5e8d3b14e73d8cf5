"""The z3 encoding is the model's gc: on random reachable model states (the seed, and the seeded
bugs that touch gc, in both builds) the encoding with the state plugged in agrees with the model's
`gc` on every outcome, and its restated invariants agree with `specs.invariants`."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace

import pytest
import z3
from hypothesis import event, given, settings
from hypothesis import strategies as st

from externref_harness.model import ops
from externref_harness.model.moves import moves, ordered_kinds
from externref_harness.model.protocol import CVE_2021_39216
from externref_harness.model.runtime import (
    CVE_2021_39218,
    CVE_2022_24791,
    CVE_2022_31146,
    FAULT_DOUBLE_DROP,
    FAULT_USE_AFTER_FREE,
    FAULT_WILD_POINTER,
    HASHSET_DUPLICATE_LEAKS,
    PRECISE_ROOT_UNCOUNTED,
    SWEEP_WITHOUT_CANARY,
    DebugAssertion,
)
from externref_harness.model.state import Build, Config, HostFrame, State
from externref_harness.model.transition import step
from externref_harness.model.world import Machine
from externref_harness.search.space import MACHINE_BOUNDS, MACHINE_CONFIG
from externref_harness.specs import invariants
from externref_harness.specs.counterexamples import find_counterexample, replay_on_model, scenario_trace
from externref_harness.specs.mutants import DROP_ROOTS_IN_TABLE
from externref_harness.specs.sweep_encoding import Bounds, GcOutcome, GcState, Switches, evaluate, gc
from externref_harness.specs.sweep_proofs import PROPERTIES, SEEDED, VARIANTS, assumptions

BUILDS: tuple[Build, ...] = ("debug", "release")
MUTANTS = (
    None,
    SWEEP_WITHOUT_CANARY,
    PRECISE_ROOT_UNCOUNTED,
    HASHSET_DUPLICATE_LEAKS,
    CVE_2022_31146,
    CVE_2022_24791,
    CVE_2021_39218,
    CVE_2021_39216,
)


class _RecordingMachine(Machine):
    """The model's own `Machine`, noting whether `sweep` ran."""

    swept = False

    def sweep(self) -> None:
        self.swept = True
        super().sweep()


@dataclass(frozen=True)
class ModelGc:
    after: State
    swept: bool


def model_gc(cfg: Config, state: State) -> ModelGc:
    """`model.transition.step(cfg, state, Gc())`, plus whether it swept."""
    after, _ = step(cfg, state, ops.Gc())
    machine = _RecordingMachine(cfg, state)
    try:
        machine.apply(ops.Gc())
        recorded = machine.freeze()
    except DebugAssertion:
        recorded = state
    assert (recorded.heap, recorded.table) == (after.heap, after.table)
    return ModelGc(after, machine.swept)


def _holds(term: z3.ExprRef) -> bool:
    value = z3.simplify(term)
    assert z3.is_true(value) or z3.is_false(value), value
    return bool(z3.is_true(value))


def cross_check(cfg: Config, state: State, switches: Switches | None = None) -> GcOutcome:
    """Compare the encoding's gc (with `cfg`'s switches unless told) with the model's on `state`;
    return the encoding's outcome."""
    s = GcState.from_model(cfg, state)
    result = gc(s, switches or Switches.of(cfg))
    out = evaluate(result)
    model = model_gc(cfg, state)
    after, n = model.after, len(state.heap)
    new_faults = after.faults[len(state.faults) :]
    assert out.panicked == (after.panic is not None)
    assert out.swept == model.swept
    assert out.freed[:n] == tuple(b.freed for b in after.heap)
    assert out.ref_counts[:n] == tuple(b.ref_count for b in after.heap)
    assert out.over_approximated_stack_roots == after.table.over_approximated_stack_roots
    assert out.precise_stack_roots == after.table.precise_stack_roots
    assert out.chunk == after.table.chunk and out.next == after.table.next
    assert out.use_after_free == sum(f.startswith(FAULT_USE_AFTER_FREE) for f in new_faults)
    assert out.double_drop == sum(f.startswith(FAULT_DOUBLE_DROP) for f in new_faults)
    assert out.wild_pointer == sum(f.startswith(FAULT_WILD_POINTER) for f in new_faults)

    # The restated invariants mean what `specs.invariants` means, before and after gc.
    held = {a.id: _holds(a.formula) for a in assumptions(s, VARIANTS[None])}
    ok = {i.id: i.check(cfg, state) is None for i in invariants.INVARIANTS}
    assert held["I2"] == ok["I2"] and held["I6"] == ok["I6"] and held["I8"] == ok["I8"]
    assert ok["I1"] <= held["I1"] and (held["I1"] and held["I8"]) <= ok["I1"]
    assert ok["I7"] <= held["I7"] and held["W"]
    props = {p.id: _holds(p.formula(s, result)) for p in PROPERTIES}
    assert props["B"] == (invariants.i2_exact_refcounts(cfg, after) is None)
    assert props["D"] == (after.panic is None and not new_faults)
    if cfg.mutant is None:
        # Reachable seed states meet every assumption, so every property holds on them.
        assert all(held.values()), held
        assert all(props.values()), props
    return out


def _label(out: GcOutcome) -> str:
    if out.panicked:
        return "panicked"
    if out.use_after_free + out.double_drop + out.wild_pointer:
        return "faulted"
    if not out.swept:
        return "canary not found"
    return "found" if out.found_canary else "swept without walking"


def _gc_states(cfg: Config, choose: random.Random | st.DataObject, steps: int) -> list[State]:
    """Random well-formed moves from `State.initial`; the states where a host may call `gc`."""
    state, found = State.initial(cfg), []
    for _ in range(steps):
        groups = moves(cfg, MACHINE_BOUNDS, state)
        if not groups:
            break
        kinds = ordered_kinds(groups)
        if isinstance(choose, random.Random):
            op = choose.choice(groups[choose.choice(kinds)])
        else:
            op = choose.draw(st.sampled_from(groups[choose.draw(st.sampled_from(kinds))]))
        state, _ = step(cfg, state, op)
        if isinstance(state.frames[-1], HostFrame) and "gc" in moves(cfg, MACHINE_BOUNDS, state):
            found.append(state)
    return found


@pytest.mark.slow
@settings(max_examples=max(1, settings().max_examples // 3))
@given(
    data=st.data(),
    mutant=st.sampled_from(MUTANTS),
    build=st.sampled_from(BUILDS),
)
def test_encoding_agrees_with_the_model_gc_on_reachable_states(
    data: st.DataObject, mutant: str | None, build: Build
) -> None:
    cfg = replace(MACHINE_CONFIG, mutant=mutant, build=build)
    for state in _gc_states(cfg, data, 25)[-2:]:
        event(_label(cross_check(cfg, state)))


@pytest.mark.slow
def test_the_cross_check_reaches_every_kind_of_gc() -> None:
    """The comparison is not vacuous: random walks reach sweeps after a walk, unfound canaries and
    sweeps without one."""
    rng = random.Random(4)
    seen: Counter[str] = Counter()
    for mutant in MUTANTS:
        for build in BUILDS:
            cfg = replace(MACHINE_CONFIG, mutant=mutant, build=build)
            for _ in range(4):
                for state in _gc_states(cfg, rng, 30)[-2:]:
                    seen[_label(cross_check(cfg, state))] += 1
    assert {"canary not found", "found", "swept without walking"} <= set(seen), seen


@pytest.mark.parametrize("mutant", SEEDED)
@pytest.mark.parametrize("debug", [True, False])
def test_the_encoding_agrees_on_every_counterexample_scenario(mutant: str, debug: bool) -> None:
    """The states the counterexample traces reach before their final `Gc` (among them a dangling
    stack root: a panic in debug builds, a use-after-free in release ones)."""
    variant = VARIANTS[mutant]
    assert variant.breaks is not None
    cex = find_counterexample(Bounds(4, 3, 3, 3), variant, debug, variant.breaks)
    assert cex is not None
    trace = scenario_trace(cex)
    out = cross_check(trace.config, replay_on_model(trace).before_gc)
    if mutant == DROP_ROOTS_IN_TABLE:
        assert _label(out) == ("panicked" if debug else "faulted")


@pytest.mark.parametrize("mutant", [SWEEP_WITHOUT_CANARY, PRECISE_ROOT_UNCOUNTED, HASHSET_DUPLICATE_LEAKS])
def test_the_cross_check_fails_when_the_encoding_misses_the_models_bug(mutant: str) -> None:
    """The comparison has teeth: the encoding of the seed against the model with a seeded bug."""
    variant = VARIANTS[mutant]
    assert variant.breaks is not None
    cex = find_counterexample(Bounds(4, 3, 3, 3), variant, True, variant.breaks)
    assert cex is not None
    trace = scenario_trace(cex)
    with pytest.raises(AssertionError):
        cross_check(trace.config, replay_on_model(trace).before_gc, Switches(debug=True, mutant=None))
