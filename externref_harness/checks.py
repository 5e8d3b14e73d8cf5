"""The checks `externref-harness check` runs, in order. Each layer registers its own here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from hypothesis import settings

from externref_harness.model.mutants import model_mutant_names
from externref_harness.model.state import Build, Config
from externref_harness.model_check import (
    MACHINE_BOUNDS,
    MACHINE_CONFIG,
    REQUIRED_EVENTS,
    RunStats,
    run_model_check,
)
from externref_harness.search_targets import FuzzTarget, lockstep_target, model_target
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
    #: What `externref-harness fuzz` searches for this check (None: it is not a search).
    target: Callable[[CheckOptions], FuzzTarget] | None = None


def _model_config(opts: CheckOptions) -> Config:
    """The model machine's config: a seeded bug of another layer leaves the model as it is."""
    mutant = opts.mutant if opts.mutant in model_mutant_names() else None
    return replace(MACHINE_CONFIG, build=opts.build, mutant=mutant)


def _model(opts: CheckOptions) -> CheckResult:
    cfg = _model_config(opts)
    mutant = cfg.mutant
    save_as = opts.failures / f"model-{mutant or 'seed'}-{opts.build}.json"
    out = run_model_check(cfg, MACHINE_BOUNDS, opts.hypothesis_settings, save_as)
    return CheckResult("model state machine", out.passed, _machine_figures(out.stats), out.failure)


def _machine_figures(stats: RunStats) -> dict[str, str]:
    """Examples, steps, and how many of the required paths the run reached."""
    covered = sum(1 for e in REQUIRED_EVENTS if stats.events[e])
    return {
        "examples": str(stats.examples),
        "steps": str(stats.steps),
        "paths": f"{covered}/{len(REQUIRED_EVENTS)}",
    }


def _lockstep(opts: CheckOptions) -> CheckResult:
    """The ctypes implementation against the model; a mutant of any layer applies (the model
    ignores the implementation's)."""
    from externref_harness.lockstep import LOCKSTEP_BOUNDS, run_lockstep_check

    cfg = _lockstep_config(opts)
    save_as = opts.failures / f"lockstep-{opts.mutant or 'seed'}-{opts.build}.json"
    out = run_lockstep_check(cfg, LOCKSTEP_BOUNDS, opts.hypothesis_settings, save_as)
    return CheckResult("lockstep model vs ctypes impl", out.passed, _machine_figures(out.stats), out.failure)


def _lockstep_config(opts: CheckOptions) -> Config:
    from externref_harness.lockstep import LOCKSTEP_CONFIG

    return replace(LOCKSTEP_CONFIG, build=opts.build, mutant=opts.mutant)


def _lockstep_target(opts: CheckOptions) -> FuzzTarget:
    from externref_harness.lockstep import LOCKSTEP_BOUNDS

    return lockstep_target(_lockstep_config(opts), LOCKSTEP_BOUNDS)


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
    Check(
        "model",
        _model,
        lambda mutant: mutant in model_mutant_names(),
        lambda opts: model_target(_model_config(opts), MACHINE_BOUNDS),
    ),
    Check("lockstep", _lockstep, _lockstep_exercises, _lockstep_target),
    Check("proofs", _proofs, _proofs_exercise),
]
