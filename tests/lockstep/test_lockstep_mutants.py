"""Every seeded bug is caught by the lockstep machine under the ci profile.

The implementation's own mutants are listed from the catalogue, so a new one cannot be forgotten.
Mutants of the model's shared rules (the embedder protocol, the compiler's stack maps, the
embedder's teardown) run on both sides, so the implementation must fail with them too, in real
memory, without diverging from the model: the checking heap sees what the model's invariants see.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import settings

from externref_harness import trace as tracefile
from externref_harness.catalogue import all_mutants
from externref_harness.lockstep.check import run_lockstep_check
from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG, replay
from externref_harness.model import protocol, runtime
from externref_harness.model.state import Build

CI = settings(settings.get_profile("ci"))
IMPL_MUTANTS = [m.name for m in all_mutants() if m.layer == "impl"]
#: Model mutants of rules both sides share: they reach the implementation as they reach the model.
SHARED_RULE_MUTANTS = [
    protocol.CVE_2021_39216,
    runtime.CVE_2021_39218,
    runtime.CVE_2022_24791,
    runtime.CVE_2022_31146,
    runtime.CVE_2022_23636,
]


def test_there_are_at_least_eight_impl_mutants() -> None:
    assert len(IMPL_MUTANTS) >= 8


@pytest.mark.parametrize("build", ["debug", "release"])
@pytest.mark.parametrize("mutant", IMPL_MUTANTS)
def test_each_impl_mutant_is_caught(mutant: str, build: Build) -> None:
    cfg = replace(LOCKSTEP_CONFIG, build=build, mutant=mutant)
    out = run_lockstep_check(cfg, LOCKSTEP_BOUNDS, CI)
    assert not out.passed, f"{mutant} ({build}) survived {out.stats.examples} examples"
    assert out.failure is not None and "the implementation fails the lockstep checks" in out.failure
    print(f"{mutant} ({build}): caught in example {out.stats.first_failing_example}")


#: Over ten seconds each: left out of the quick loop (`pytest -m "not slow"`).
SLOW_SHARED_RULE_MUTANTS = ("cve-2021-39216", "cve-2021-39218")


@pytest.mark.parametrize(
    "mutant",
    [
        pytest.param(m, marks=pytest.mark.slow) if m in SLOW_SHARED_RULE_MUTANTS else m
        for m in SHARED_RULE_MUTANTS
    ],
)
def test_shared_rule_mutants_reach_the_implementation(mutant: str, tmp_path: Path) -> None:
    cfg = replace(LOCKSTEP_CONFIG, build="release", mutant=mutant)
    saved = tmp_path / "trace.json"
    out = run_lockstep_check(cfg, LOCKSTEP_BOUNDS, CI, saved)
    assert not out.passed
    report = replay(tracefile.Trace(cfg, tracefile.load(saved).steps))
    assert report.model_failure is not None and report.impl_failure is not None, report.describe()
    assert report.impl_failure[0] == report.model_failure[0], report.describe()
    problem = report.impl_failure[1]
    assert "observed" not in problem, f"the implementation diverged instead: {problem}"
    assert "[heap.report]" in problem or "reachable, yet the checking heap says freed" in problem
    print(f"{mutant} (release): caught in example {out.stats.first_failing_example}")


#: Mutants of the model's own code (the proofs' "specs" variants change no code that runs).
MODEL_ONLY_MUTANTS = [
    m.name for m in all_mutants() if m.layer not in ("impl", "specs") and m.name not in SHARED_RULE_MUTANTS
]


@pytest.mark.parametrize("mutant", MODEL_ONLY_MUTANTS)
def test_model_only_mutants_make_the_two_sides_diverge(mutant: str, tmp_path: Path) -> None:
    """The implementation has no switch for these: it must disagree with the buggy model."""
    cfg = replace(LOCKSTEP_CONFIG, mutant=mutant)
    saved = tmp_path / "trace.json"
    out = run_lockstep_check(cfg, LOCKSTEP_BOUNDS, CI, saved)
    assert not out.passed, f"{mutant} survived {out.stats.examples} examples"
    report = replay(tracefile.load(saved))
    assert report.impl_failure is not None, report.describe()
