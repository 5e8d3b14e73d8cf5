"""Every seeded bug's counterexample becomes a trace of real operations that fails on the model and
on the implementation, and passes on both without the bug."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from externref_harness import trace as tracefile
from externref_harness.checks.proofs import IMPL_COUNTERPART, SHARED
from externref_harness.lockstep import runner as lockstep
from externref_harness.model import ops
from externref_harness.model.protocol import CVE_2021_39216
from externref_harness.model.runtime import FAULT_USE_AFTER_FREE
from externref_harness.specs.counterexamples import (
    Counterexample,
    assumptions_on_model_state,
    find_counterexample,
    property_on_model_state,
    replay_on_model,
    scenario_trace,
)
from externref_harness.specs.mutants import DROP_ROOTS_IN_TABLE
from externref_harness.specs.sweep_encoding import Bounds
from externref_harness.specs.sweep_proofs import SEEDED, VARIANTS

BOUNDS = Bounds(4, 3, 3, 3)


def counterexample(mutant: str, debug: bool) -> Counterexample:
    variant = VARIANTS[mutant]
    assert variant.breaks is not None
    cex = find_counterexample(BOUNDS, variant, debug, variant.breaks)
    assert cex is not None, mutant
    return cex


@pytest.mark.parametrize("mutant", SEEDED)
@pytest.mark.parametrize("debug", [True, False])
def test_the_counterexample_trace_fails_on_the_model_and_not_without_the_bug(
    mutant: str, debug: bool
) -> None:
    cex = counterexample(mutant, debug)
    trace = scenario_trace(cex)
    assert isinstance(trace.steps[-1], ops.Gc)
    replayed = replay_on_model(trace)
    assert replayed.first_failure is not None, cex.describe()
    seed = replay_on_model(replace(trace, config=replace(trace.config, mutant=None)))
    assert seed.first_failure is None, seed.describe()

    # The state before the final Gc is a counterexample of the same property in the encoding.
    variant = VARIANTS[mutant]
    assert variant.breaks is not None
    assert not property_on_model_state(trace.config, replayed.before_gc, variant, variant.breaks)
    held = assumptions_on_model_state(trace.config, replayed.before_gc, variant)
    assert all(held.values()), held

    if mutant == DROP_ROOTS_IN_TABLE:
        # The protocol bug breaks I8 (and I1) when the arguments move in; Gc then meets the
        # dangling root: a debug assertion, or a count bumped in freed memory.
        assert trace.config.mutant == CVE_2021_39216
        assert isinstance(trace.steps[replayed.first_failure[0] - 1], ops.CallWasm)
        assert not assumptions_on_model_state(trace.config, replayed.before_gc, VARIANTS[None])["I8"]
        if debug:
            assert replayed.after_gc.panic is not None
        else:
            assert any(f.startswith(FAULT_USE_AFTER_FREE) for f in replayed.after_gc.faults)
    else:
        assert replayed.first_failure[0] == len(trace.steps)
        expected = "I2" if variant.breaks == "B" else "I1"
        assert replayed.first_failure[1].startswith(expected)


@pytest.mark.parametrize("mutant", SEEDED)
@pytest.mark.parametrize("debug", [True, False])
def test_the_counterexample_trace_fails_on_the_implementation(mutant: str, debug: bool) -> None:
    trace = scenario_trace(counterexample(mutant, debug))
    report = lockstep.replay(trace)
    assert report.model_failure is not None and report.impl_failure is not None, report.describe()
    seed = lockstep.replay(replace(trace, config=replace(trace.config, mutant=None)))
    assert seed.model_failure is None and seed.impl_failure is None, seed.describe()
    if trace.config.mutant in SHARED:
        # The implementation runs the same compiler and protocol: its checking heap sees the free.
        assert "checking heap says freed" in report.impl_failure[1]


@pytest.mark.parametrize("mutant", sorted(IMPL_COUNTERPART))
def test_the_implementations_own_copy_of_the_bug_fails_the_same_trace(mutant: str) -> None:
    trace = scenario_trace(counterexample(mutant, debug=True))
    own = replace(trace, config=replace(trace.config, mutant=IMPL_COUNTERPART[mutant]))
    report = lockstep.replay(own)
    assert report.model_failure is None
    assert report.impl_failure is not None and "checking heap says freed" in report.impl_failure[1]


def test_a_counterexample_trace_round_trips_through_a_file(tmp_path: Path) -> None:
    trace = scenario_trace(counterexample("cve-2022-31146", debug=True))
    loaded = tracefile.load(tracefile.save(trace, tmp_path / "cex.json"))
    assert loaded == trace
    assert replay_on_model(loaded).first_failure == replay_on_model(trace).first_failure
