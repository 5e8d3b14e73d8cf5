"""Every seeded model (and protocol) bug is caught by the model state machine under the CI profile."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import settings

from externref_harness import trace as tracefile
from externref_harness.model.mutants import MODEL_MUTANTS, Mutant
from externref_harness.model.state import Build
from externref_harness.search.model_check import run_model_check
from externref_harness.search.shrink import model_failure
from externref_harness.search.space import MACHINE_BOUNDS, MACHINE_CONFIG

#: (build, mutant) cases over ten seconds: left out of the quick loop (`pytest -m "not slow"`).
SLOW = {
    ("release", "cve-2021-39216"),
    ("debug", "cve-2021-39218"),
    ("release", "cve-2021-39218"),
    ("debug", "sweep-without-canary"),
    ("release", "hashset-duplicate-leaks"),
}


CI = settings.get_profile("ci")
#: The deepest mechanism (a safepoint with a map, then one without live refs falling back to it, a
#: scalar in a mapped slot, then a GC) needs more than the profile's 300 examples in some orders of
#: a parallel test run; alone it is caught at example 147.
BUDGET = {("release", "cve-2021-39218"): 600}


@pytest.mark.parametrize(
    ("build", "mutant"),
    [
        pytest.param(b, m, id=f"{b}-{m.name}", marks=[pytest.mark.slow] if (b, m.name) in SLOW else [])
        for b in ("debug", "release")
        for m in MODEL_MUTANTS
    ],
)
def test_state_machine_catches_model_mutant(mutant: Mutant, build: Build, tmp_path: Path) -> None:
    cfg = replace(MACHINE_CONFIG, build=build, mutant=mutant.name)
    saved = tmp_path / "failure.json"
    out = run_model_check(
        cfg, MACHINE_BOUNDS, settings(CI, max_examples=BUDGET.get((build, mutant.name), 300)), saved
    )
    assert not out.passed, f"{mutant.name} ({build}) was not caught"
    assert out.failure is not None and "Steps:" in out.failure
    print(f"\n{mutant.name} ({build}): first failing example {out.stats.first_failing_example}")
    print(out.failure)

    # The saved, shrunk trace replays to the same failure: the same invariant, at its last step.
    trace = tracefile.load(saved)
    assert trace.config == cfg
    replayed = model_failure(cfg, trace.steps)
    assert replayed is not None, "the saved trace does not reproduce the failure"
    assert replayed.step == len(trace.steps)
    assert trace.note.startswith(f"step {replayed.step}: {replayed.invariant}:"), trace.note
