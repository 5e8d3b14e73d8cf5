"""The checks `externref-harness check` runs, in order. Each layer registers its own here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import settings

from externref_harness.model.mutants import model_mutant_names
from externref_harness.model.state import Build
from externref_harness.model_check import (
    MACHINE_BOUNDS,
    MACHINE_CONFIG,
    REQUIRED_EVENTS,
    CheckOutcome,
    RunStats,
    run_model_check,
)
from externref_harness.trace import failures_dir


@dataclass(frozen=True)
class CheckOptions:
    hypothesis_settings: settings
    build: Build = "debug"
    mutant: str | None = None
    failures: Path = field(default_factory=failures_dir)


@dataclass
class CheckResult:
    name: str
    passed: bool
    #: Short figures for the summary table, e.g. {"steps": "12836", "paths": "15/15"}.
    figures: dict[str, str]
    failure: str | None = None


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[CheckOptions], CheckResult]
    #: Whether a seeded bug changes what this check runs (others run the seed as it is).
    exercises: Callable[[str], bool]


def _model(opts: CheckOptions) -> CheckResult:
    from dataclasses import replace

    mutant = opts.mutant if opts.mutant in model_mutant_names() else None
    cfg = replace(MACHINE_CONFIG, build=opts.build, mutant=mutant)
    save_as = opts.failures / f"model-{mutant or 'seed'}-{opts.build}.json"
    out = run_model_check(cfg, MACHINE_BOUNDS, opts.hypothesis_settings, save_as)
    return _machine_result("model state machine", out)


def _machine_figures(stats: RunStats) -> dict[str, str]:
    """Examples, steps, and how many of the required paths the run reached."""
    covered = len(REQUIRED_EVENTS) - len(missing_paths(stats))
    return {
        "examples": str(stats.examples),
        "steps": str(stats.steps),
        "paths": f"{covered}/{len(REQUIRED_EVENTS)}",
    }


def missing_paths(stats: RunStats) -> list[str]:
    """The required paths (`REQUIRED_EVENTS`) a run never reached."""
    return [e for e in REQUIRED_EVENTS if not stats.events[e]]


def _machine_result(name: str, out: CheckOutcome) -> CheckResult:
    """A machine's verdict: it fails on a failing example, and also when it passed without
    reaching every required path (a run that never reached the stack-map scan proves nothing)."""
    figures = _machine_figures(out.stats)
    missing = missing_paths(out.stats)
    if out.passed and missing:
        n = out.stats.examples
        failure = (
            f"required paths never reached in {n} example{'' if n == 1 else 's'} "
            f"({figures['paths']}): {', '.join(missing)}; raise the budget (--max-examples, "
            "--hypothesis-profile) or make the moves reach them"
        )
        return CheckResult(name, False, figures, failure)
    return CheckResult(name, out.passed, figures, out.failure)


def _lockstep(opts: CheckOptions) -> CheckResult:
    """The ctypes implementation against the model; a mutant of any layer applies (the model
    ignores the implementation's)."""
    from dataclasses import replace

    from externref_harness.lockstep import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG, run_lockstep_check

    cfg = replace(LOCKSTEP_CONFIG, build=opts.build, mutant=opts.mutant)
    save_as = opts.failures / f"lockstep-{opts.mutant or 'seed'}-{opts.build}.json"
    out = run_lockstep_check(cfg, LOCKSTEP_BOUNDS, opts.hypothesis_settings, save_as)
    return _machine_result("lockstep model vs ctypes impl", out)


def _proofs(opts: CheckOptions) -> CheckResult:
    """`externref-harness prove` for this build, stopping at the first property not proven (a
    failed cut of the bounded proof only means the properties are decided without it)."""
    from externref_harness.proofs import DEFAULT_BOUNDS, ProofOptions, run_proofs

    proof_opts = ProofOptions(opts.mutant, DEFAULT_BOUNDS, debug_builds=(opts.build == "debug",))
    proven = 0
    for verdict in run_proofs(proof_opts):
        if not verdict.proven and not verdict.lemma:
            failure = f"{verdict.name}: {verdict.status}: {verdict.detail}"
            return CheckResult("z3 proofs", False, {"proven": str(proven)}, failure)
        proven += verdict.proven
    figures = {"proven": str(proven), "bounds": str(DEFAULT_BOUNDS).split(" = ")[1]}
    return CheckResult("z3 proofs", True, figures)


def _lockstep_exercises(mutant: str) -> bool:
    from externref_harness.catalogue import find

    return find(mutant).layer in ("model", "protocol", "impl")


def _proofs_exercise(mutant: str) -> bool:
    from externref_harness.proofs import covers

    return covers(mutant)


CHECKS: list[Check] = [
    Check("model", _model, lambda mutant: mutant in model_mutant_names()),
    Check("lockstep", _lockstep, _lockstep_exercises),
    Check("proofs", _proofs, _proofs_exercise),
]
