"""The checks `externref-harness check` runs, in order. Each layer registers its own here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis import settings

from externref_harness.checks.fuzz_targets import FuzzTarget, lockstep_target, model_target
from externref_harness.errors import UsageError
from externref_harness.model.mutants import model_mutant_names
from externref_harness.model.state import Build, Config
from externref_harness.search.model_check import (
    REQUIRED_EVENTS,
    CheckOutcome,
    RunStats,
    required_events,
    run_model_check,
)
from externref_harness.search.space import MACHINE_BOUNDS, MACHINE_CONFIG
from externref_harness.trace import failures_dir

if TYPE_CHECKING:
    from externref_harness.lockstep.runner import AdapterFactory
    from externref_harness.lockstep.targets import Target


@dataclass
class Live:
    """What the running check has done so far, read by the progress lines of `check`."""

    stats: RunStats | None = None
    proofs_done: int | None = None

    def describe(self) -> str:
        if self.stats is not None:
            return f"{self.stats.examples} examples, {self.stats.steps} steps"
        if self.proofs_done is not None:
            return f"{self.proofs_done} properties decided"
        return "starting"


@dataclass(frozen=True)
class CheckOptions:
    hypothesis_settings: settings
    build: Build = "debug"
    mutant: str | None = None
    #: Where a failing trace is saved (None: not saved).
    failures: Path | None = field(default_factory=failures_dir)
    live: Live = field(default_factory=Live)
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
    #: The saved failing trace, if any.
    trace: Path | None = None
    #: The example (1-based) in which the failure first showed, for the machines.
    examples_needed: int | None = None


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[CheckOptions], CheckResult]
    #: Whether a seeded bug changes what this check runs (others run the seed as it is).
    exercises: Callable[[str], bool]
    #: The first word of the name its failing trace is saved under (None: it saves none).
    saves_as: str | None = None
    #: Whether it checks an implementation (and so runs against `--impl`); the others check the
    #: harness's own model and proofs.
    checks_impl: bool = False
    #: Whether it runs only against `--impl` (the parallel check: the Python port is not
    #: thread-safe by design, so there is nothing to run without a native library).
    needs_impl: bool = False
    #: What `externref-harness fuzz` searches for this check (None: it is not a search).
    target: Callable[[CheckOptions], FuzzTarget] | None = None

    def trace_name(self, mutant: str | None, build: str) -> str | None:
        """The file name of this check's failing trace in the failures directory."""
        return None if self.saves_as is None else trace_name(self.saves_as, mutant, build)


def trace_name(prefix: str, mutant: str | None, build: str) -> str:
    return f"{prefix}-{mutant or 'seed'}-{build}.json"


def _saved(opts: CheckOptions, name: str) -> Path | None:
    return None if opts.failures is None else opts.failures / name


def _model_config(opts: CheckOptions) -> Config:
    """The model machine's config: a seeded bug of another layer leaves the model as it is."""
    mutant = opts.mutant if opts.mutant in model_mutant_names() else None
    return replace(MACHINE_CONFIG, build=opts.build, mutant=mutant)


def _model(opts: CheckOptions) -> CheckResult:
    cfg = _model_config(opts)
    mutant = cfg.mutant
    save_as = _saved(opts, trace_name("model", mutant, opts.build))
    stats = opts.live.stats = RunStats()
    out = run_model_check(cfg, MACHINE_BOUNDS, opts.hypothesis_settings, save_as, stats)
    return _machine_result("model state machine", out, save_as, opts.mutant, REQUIRED_EVENTS)




def _machine_figures(stats: RunStats, required: tuple[str, ...] = REQUIRED_EVENTS) -> dict[str, str]:
    """Examples, steps, and how many of the required paths the run reached."""
    covered = len(required) - len(missing_paths(stats, required))
    return {
        "examples": str(stats.examples),
        "steps": str(stats.steps),
        "paths": f"{covered}/{len(required)}",
    }


def missing_paths(stats: RunStats, required: tuple[str, ...] = REQUIRED_EVENTS) -> list[str]:
    """The required paths (`REQUIRED_EVENTS`, or a capability's fewer: `required_events`) a run
    never reached."""
    return [e for e in required if not stats.events[e]]


def _machine_result(
    name: str, out: CheckOutcome, save_as: Path | None, mutant: str | None, required: tuple[str, ...]
) -> CheckResult:
    """A machine's verdict: it fails on a failing example, and on the seed also when it passed
    without reaching every required path (a run that never reached the stack-map scan proves
    nothing). With a seeded bug a pass already says "missed", and a failure must mean "caught"."""
    figures = _machine_figures(out.stats, required)
    missing = missing_paths(out.stats, required)
    if out.passed and missing and mutant is None:
        n = out.stats.examples
        failure = (
            f"required paths never reached in {n} example{'' if n == 1 else 's'} "
            f"({figures['paths']}): {', '.join(missing)}; raise the budget (--max-examples, "
            "--hypothesis-profile) or make the moves reach them"
        )
        return CheckResult(name, False, figures, failure)
    return CheckResult(
        name,
        out.passed,
        figures,
        out.failure,
        None if out.passed else save_as,
        out.stats.first_failing_example,
    )


def _corpus(opts: CheckOptions) -> CheckResult:
    """The shipped corpus's expectations on the model, both builds. The embedder protocol
    (`model/protocol.py`) runs on both sides of the lockstep, so a change to it is invisible there;
    the corpus recorded what it did. With a model or protocol bug on, the row must fail: the traces
    whose `catches` name it observe otherwise."""
    from externref_harness.corpus.run import load_corpus, run_on_model

    mutant = opts.mutant if opts.mutant in model_mutant_names() else None
    traces = load_corpus()
    failing = [r for r in (run_on_model(t, mutant) for t in traces) if not r.passed]
    steps = sum(len(t.steps) for t in traces)
    figures = {"traces": str(len(traces)), "steps": str(steps), "failing": str(len(failing))}
    if not failing:
        return CheckResult("corpus expectations on the model", True, figures)
    shown = "\n".join(f"{r.name}: step {r.step}: {r.problem}" for r in failing[:5])
    more = f"\n... and {len(failing) - 5} more" if len(failing) > 5 else ""
    failure = f"{len(failing)} of {len(traces)} corpus traces fail on the model:\n{shown}{more}"
    return CheckResult("corpus expectations on the model", False, figures, failure)


def _lockstep(opts: CheckOptions) -> CheckResult:
    """An implementation (the Python port, or `--impl`) against the model; a mutant of any layer
    applies (the model ignores the implementation's)."""
    from externref_harness.lockstep.targets import PYTHON, open_isolated

    # A native library runs in confined children (a crash or a hang is a failing step; shrinking
    # gives each candidate a fresh child), never in this process.
    chosen, pool = (PYTHON, None) if opts.impl is None else open_isolated(opts.impl)
    try:
        return _lockstep_on(opts, chosen, None if pool is None else lambda: pool.adapter(fresh=True))
    finally:
        if pool is not None:
            pool.close()


def _lockstep_on(opts: CheckOptions, chosen: Target, shrink_adapters: AdapterFactory | None) -> CheckResult:
    from externref_harness.lockstep.check import run_lockstep_check
    from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG, LockstepOptions
    from externref_harness.lockstep.targets import bounds_for

    build = opts.build if opts.build_given or opts.impl is None else None
    cfg = replace(chosen.config(LOCKSTEP_CONFIG, build, opts.chunk_size), mutant=opts.mutant)
    save_as = _saved(opts, lockstep_trace_name(opts.impl, opts.mutant, cfg.build, opts.chunk_size))
    stats = opts.live.stats = RunStats()
    options = LockstepOptions(
        impl_name=chosen.name, replay_args="" if opts.impl is None else f"--impl {opts.impl}"
    )
    out = run_lockstep_check(
        cfg,
        bounds_for(cfg, LOCKSTEP_BOUNDS, chosen.description),
        opts.hypothesis_settings,
        save_as,
        chosen.adapter_factory,
        options,
        shrink_adapter_factory=shrink_adapters,
        stats=stats,
    )
    required = required_events(cfg)
    result = _machine_result(f"lockstep model vs {chosen.name}", out, save_as, opts.mutant, required)
    if len(required) < len(REQUIRED_EVENTS):
        # Paths the library's capabilities rule out (a pass says what did not run).
        left_out = [e for e in REQUIRED_EVENTS if e not in required]
        result.figures["not required"] = f"{', '.join(left_out)} (capabilities)"
    result.figures["chunk"] = str(cfg.chunk_size)
    return result


def lockstep_trace_name(impl: Path | None, mutant: str | None, build: str, chunk_size: int | None) -> str:
    """The lockstep's failing trace: per implementation and chunk size when they are not the default."""
    prefix = "lockstep" if impl is None else f"lockstep-{impl.stem}"
    if chunk_size is not None:
        prefix += f"-chunk{chunk_size}"
    return trace_name(prefix, mutant, build)


def _lockstep_config(opts: CheckOptions) -> Config:
    from externref_harness.lockstep.runner import LOCKSTEP_CONFIG

    return replace(LOCKSTEP_CONFIG, build=opts.build, mutant=opts.mutant)


def _lockstep_target(opts: CheckOptions) -> FuzzTarget:
    from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS

    return lockstep_target(_lockstep_config(opts), LOCKSTEP_BOUNDS)


def _proofs(opts: CheckOptions) -> CheckResult:
    """`externref-harness prove` for this build, stopping at the first property not proven (a
    failed cut of the bounded proof only means the properties are decided without it)."""
    from externref_harness.checks.proofs import DEFAULT_BOUNDS, ProofOptions, run_proofs

    proof_opts = ProofOptions(opts.mutant, DEFAULT_BOUNDS, debug_builds=(opts.build == "debug",))
    proven = 0
    opts.live.stats, opts.live.proofs_done = None, 0
    for verdict in run_proofs(proof_opts):
        opts.live.proofs_done += 1
        if not verdict.proven and not verdict.lemma:
            failure = f"{verdict.name}: {verdict.status}: {verdict.detail}"
            return CheckResult("z3 proofs", False, {"proven": str(proven)}, failure)
        proven += verdict.proven
    figures = {"proven": str(proven), "bounds": str(DEFAULT_BOUNDS).split(" = ")[1]}
    return CheckResult("z3 proofs", True, figures)


#: Histories of the parallel check per example of the Hypothesis profile's budget (the driver runs
#: each program up to 1024 times: `ci`'s 300 examples are about 300 programs, or the time limit).
HISTORIES_PER_EXAMPLE = 1000
#: The parallel check's time limit, seconds.
THREADS_TIME_LIMIT = 10.0


def _threads(opts: CheckOptions) -> CheckResult:
    """Small parallel programs on real threads against `--impl` (in a child process), each history
    checked for linearizability against the model (derandomized profiles use seed 0)."""
    from externref_harness.isolation.describe import child_env, describe_library
    from externref_harness.model.capabilities import SINGLE_THREADED
    from externref_harness.parallel.check import ParallelOptions
    from externref_harness.parallel.child import run_isolated

    if opts.impl is None:
        raise UsageError("the parallel check runs a native library: give --impl PATH.so")
    env = child_env(opts.impl)
    description = describe_library(opts.impl, env)  # in a child: this process never loads it
    if SINGLE_THREADED in description.capabilities:
        # Its counts are not atomic by declaration: nothing it promises is run on several threads.
        reason = "the library declares single-threaded (its counts are not atomic)"
        return CheckResult(f"parallel threads vs {description.name}", True, {"not run": reason})
    seed = 0 if opts.hypothesis_settings.derandomize else None
    # In a child process: a crash or a hang on several threads is this check's failure.
    out = run_isolated(
        opts.impl,
        ParallelOptions(
            histories=opts.hypothesis_settings.max_examples * HISTORIES_PER_EXAMPLE,
            time_limit=THREADS_TIME_LIMIT,
            seed=seed,
            save_as=_saved(opts, f"threads-{opts.impl.stem}.json"),
        ),
        env=env,
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
    name = f"parallel threads vs {description.name}"
    return CheckResult(name, out.passed, figures, out.failure, None if out.passed else out.trace)


def _lockstep_exercises(mutant: str) -> bool:
    from externref_harness.catalogue import find

    return find(mutant).layer in ("model", "protocol", "impl")


def _proofs_exercise(mutant: str) -> bool:
    from externref_harness.checks.proofs import covers

    return covers(mutant)


CHECKS: list[Check] = [
    Check(
        "model",
        _model,
        lambda mutant: mutant in model_mutant_names(),
        "model",
        target=lambda opts: model_target(_model_config(opts), MACHINE_BOUNDS),
    ),
    # Fast and before the searches: it catches a change to the shared protocol the lockstep cannot.
    Check("corpus", _corpus, lambda mutant: mutant in model_mutant_names()),
    Check("lockstep", _lockstep, _lockstep_exercises, "lockstep", checks_impl=True, target=_lockstep_target),
    Check("proofs", _proofs, _proofs_exercise),
    # The C bugs it catches are compiled into the library (`reference --bug`), not --mutant.
    Check("threads", _threads, lambda mutant: False, checks_impl=True, needs_impl=True),
]
