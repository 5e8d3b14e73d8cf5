"""The checks `externref-harness check` runs, in order. Each layer registers its own here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import settings

from externref_harness.errors import UsageError
from externref_harness.model.mutants import model_mutant_names
from externref_harness.model.state import Build
from externref_harness.model_check import (
    MACHINE_BOUNDS,
    MACHINE_CONFIG,
    REQUIRED_EVENTS,
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
    #: A native library behind the C ABI to check instead of the Python port.
    impl: Path | None = None
    #: The chunk size of the lockstep run (None: the machine's small chunk, or the library's own).
    chunk_size: int | None = None
    #: `--build` was given explicitly (a native library's own build is used otherwise).
    build_given: bool = False


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
    #: Whether it checks an implementation (and so runs against `--impl`); the others check the
    #: harness's own model and proofs.
    checks_impl: bool = False
    #: Whether it runs only against `--impl` (the parallel check: the Python port is not
    #: thread-safe by design, so there is nothing to run without a native library).
    needs_impl: bool = False


def _model(opts: CheckOptions) -> CheckResult:
    from dataclasses import replace

    mutant = opts.mutant if opts.mutant in model_mutant_names() else None
    cfg = replace(MACHINE_CONFIG, build=opts.build, mutant=mutant)
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
    """An implementation (the Python port, or `--impl`) against the model; a mutant of any layer
    applies (the model ignores the implementation's)."""
    from dataclasses import replace

    from externref_harness.lockstep import (
        LOCKSTEP_BOUNDS,
        LOCKSTEP_CONFIG,
        LockstepOptions,
        run_lockstep_check,
    )
    from externref_harness.targets import bounds_for, target

    chosen = target(opts.impl)
    build = opts.build if opts.build_given or opts.impl is None else None
    cfg = replace(chosen.config(LOCKSTEP_CONFIG, build, opts.chunk_size), mutant=opts.mutant)
    label = "seed" if opts.impl is None else opts.impl.stem
    save_as = (
        opts.failures / f"lockstep-{label}-{opts.mutant or 'seed'}-{cfg.build}-chunk{cfg.chunk_size}.json"
    )
    out = run_lockstep_check(
        cfg,
        bounds_for(cfg, LOCKSTEP_BOUNDS),
        opts.hypothesis_settings,
        save_as,
        chosen.adapter_factory,
        LockstepOptions(
            impl_name=chosen.name,
            replay_args="" if opts.impl is None else f"--impl {opts.impl}",
        ),
    )
    figures = {**_machine_figures(out.stats), "chunk": str(cfg.chunk_size)}
    return CheckResult(f"lockstep model vs {chosen.name}", out.passed, figures, out.failure)


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


#: Histories of the parallel check per example of the Hypothesis profile's budget.
HISTORIES_PER_EXAMPLE = 10
#: The parallel check's time limit, seconds.
THREADS_TIME_LIMIT = 10.0


def _threads(opts: CheckOptions) -> CheckResult:
    """Small parallel programs on real threads against `--impl` (in a child process), each history
    checked for linearizability against the model (derandomized profiles use seed 0)."""
    from externref_harness.native.backend import open_library
    from externref_harness.parallel_check import ParallelOptions
    from externref_harness.parallel_child import run_isolated

    if opts.impl is None:
        raise UsageError("the parallel check runs a native library: give --impl PATH.so")
    library = open_library(opts.impl)
    seed = 0 if opts.hypothesis_settings.derandomize else None
    # In a child process: a crash or a hang on several threads is this check's failure.
    out = run_isolated(
        opts.impl,
        ParallelOptions(
            histories=opts.hypothesis_settings.max_examples * HISTORIES_PER_EXAMPLE,
            time_limit=THREADS_TIME_LIMIT,
            seed=seed,
            save_as=opts.failures / f"threads-{opts.impl.stem}.json",
        ),
    )
    figures = {
        "histories": str(out.histories),
        "histories/s": f"{out.histories_per_s:.0f}",
        # How many histories really ran calls of two threads at once (0%: the run was sequential).
        "overlapping": f"{100 * out.overlapping / max(out.histories, 1):.0f}%",
    }
    if out.seed is not None:
        figures["seed"] = str(out.seed)
    if out.detected_after is not None:
        figures["detected after"] = f"{out.detected_after:.2f}s"
    return CheckResult(f"parallel threads vs {library.description.name}", out.passed, figures, out.failure)


def _lockstep_exercises(mutant: str) -> bool:
    from externref_harness.catalogue import find

    return find(mutant).layer in ("model", "protocol", "impl")


def _proofs_exercise(mutant: str) -> bool:
    from externref_harness.proofs import covers

    return covers(mutant)


CHECKS: list[Check] = [
    Check("model", _model, lambda mutant: mutant in model_mutant_names()),
    Check("lockstep", _lockstep, _lockstep_exercises, checks_impl=True),
    Check("proofs", _proofs, _proofs_exercise),
    # The C bugs it catches are compiled into the library (`reference --bug`), not --mutant.
    Check("threads", _threads, lambda mutant: False, checks_impl=True, needs_impl=True),
]
