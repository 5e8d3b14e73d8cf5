"""The conformance gate: an implementation held to the seed, in its own process, with a verdict.

    gate PATH.so
      1. describe   the library is loaded and validated in a child (`child --describe`)
      2. corpus     every shipped corpus trace, in lockstep, with the model's expected observations
      3. search     the Hypothesis lockstep search, the implementation in a child process; or,
                    with --exhaustive, every transition of a bounded model graph (`exhaustive`)
      4. threads    the parallel reference-counting check (when it is available), unless skipped
                    (or the library declares `single-threaded`)

A library's declared capabilities (`model.capabilities`) are run as what they are: the model, the
generators and the checks each apply the capability's rule. At the strict level each is also a
`seed.<capability>` case of the describe phase that fails, since the seed made the other choice;
what a capability leaves out of the run is a line of `not_checked` (`NOT_APPLIED_BY`).

Each case gets a status: `pass`, `fail`, `expected-fail` (only divergences the expectations file
lists) or `skip`. Each failing check is named and has a level (`memory_checks.CHECKS`): `strict`
holds the implementation to the seed exactly, `conformant` to what any correct implementation of
this design must do. A crash or a hang of the implementation is a failing step of the case it
happened in, with a shrunk, saved trace; the gate itself goes on.

`--time-limit` is a `Budget` for the whole run, every phase and shrinking included: what it cuts
short is a `skip` row or a figure of its case, and a line of `GateReport.cut_short`.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from externref_harness.gate import threads
from externref_harness.gate.cases import LEVELS, CaseResult, GateOptions, GateReport, Status
from externref_harness.isolation.describe import DESCRIBE_TIMEOUT, child_env, describe_library
from externref_harness.isolation.pool import ChildPool, OutOfTime, replay_args
from externref_harness.isolation.process import Limits
from externref_harness.lockstep.check import REPORT_GRACE, run_lockstep_check
from externref_harness.lockstep.memory_checks import CHECKS, STRICT, checks_ruled_out
from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG, LockstepOptions
from externref_harness.lockstep.targets import Target, bounds_for, isolated_target
from externref_harness.model import capabilities
from externref_harness.model.state import SEED_CHUNK_SIZE, Build
from externref_harness.native.library import Description


def _timed(run: Callable[[], CaseResult]) -> CaseResult:
    started = time.perf_counter()
    result = run()
    result.seconds = time.perf_counter() - started
    return result


#: CPU seconds a child may use beyond `--time-limit` (its start-up, the failure's report).
CPU_MARGIN = 60
#: The share of `--time-limit` kept for the parallel check (at most its own time limit).
THREADS_SHARE = 0.25


@dataclass(frozen=True)
class Budget:
    """When each phase must end, from `--time-limit` (None: no limit, the profile's budget alone).

        start ── describe, corpus, search (with its shrink) ──▶ lockstep_end ── threads ──▶ end
                                                 the failure's report: REPORT_GRACE past lockstep_end

    Every read from a child is bounded by the phase's end (`ChildPool.deadline`), so a library
    that stops itself, pauses or runs slowly cannot stretch a phase past it; the gate's whole run
    ends within the limit plus a fixed margin (the report's grace and the children's start-up)."""

    limit: float | None
    lockstep_end: float | None
    threads_seconds: float

    @staticmethod
    def of(opts: GateOptions, started: float) -> Budget:
        if opts.time_limit is None:
            return Budget(None, None, threads.TIME_LIMIT)
        share = min(threads.TIME_LIMIT, opts.time_limit * THREADS_SHARE) if opts.threads else 0.0
        return Budget(opts.time_limit, started + opts.time_limit - share, share)

    def left(self) -> float | None:
        return None if self.lockstep_end is None else max(0.0, self.lockstep_end - time.monotonic())


def run_gate(opts: GateOptions, progress: Callable[[str], None] = lambda _: None) -> GateReport:
    started = time.perf_counter()
    budget = Budget.of(opts, time.monotonic())
    env = child_env(opts.library)
    left = budget.left()
    description = describe_library(
        opts.library, env, DESCRIBE_TIMEOUT if left is None else min(DESCRIBE_TIMEOUT, max(left, 1.0))
    )
    report = GateReport(opts.library, opts.level, description)
    levels = LEVELS[opts.level]
    options = LockstepOptions(
        levels=levels,
        expected=opts.expectations.names,
        impl_name=f"{description.name} {description.version}",
        replay_args=replay_args(opts.library, opts.step_timeout),
    )
    # With a budget, a child may also spend no more CPU time than the whole run may take.
    limits = Limits() if opts.time_limit is None else Limits(cpu_seconds=int(opts.time_limit) + CPU_MARGIN)
    pool = ChildPool(opts.library, opts.step_timeout, env, limits, deadline=budget.lockstep_end)
    try:
        target = isolated_target(opts.library, description, pool)
        report.cases += _describe_cases(description, opts)
        progress("corpus")
        corpus_cases, report.not_checked = _corpus_cases(target, options, pool, report)
        report.cases += corpus_cases
        if opts.exhaustive is not None:
            progress("exhaustive")
            report.cases.append(
                _timed(lambda: _exhaustive_case(target, options, opts, pool, budget, report, progress))
            )
        else:
            seed = search_seed(opts)
            progress("search" if seed is None else f"search (seed {seed})")
            report.cases.append(
                _timed(lambda: _search_case(target, options, opts, pool, budget, report, seed))
            )
    finally:
        pool.close()
    if opts.threads and capabilities.SINGLE_THREADED in description.capabilities:
        report.cases.append(CaseResult("threads", "parallel", "skip", SINGLE_THREADED_SKIP))
    elif opts.threads:
        progress("threads")
        report.cases.append(_timed(lambda: _threads_case(opts, budget, env, report)))
    report.not_checked += not_applied(description, opts)
    report.not_checked += [f"cut short by --time-limit: {line}" for line in report.cut_short]
    seen = frozenset().union(*(c.expected_seen for c in report.cases))
    report.stale = sorted(opts.expectations.names - seen)
    report.seconds = time.perf_counter() - started
    return report


SINGLE_THREADED_SKIP = "not run: the library declares single-threaded (its counts are not atomic)"

#: What each capability leaves out of a run, one line each (every other check applies as to the
#: seed). A capability without a line here leaves nothing out.
NOT_APPLIED_BY: dict[str, str] = {
    capabilities.EAGER_CHUNK: "the seed's lazy chunk allocation by the first sweep is not exercised",
    capabilities.NO_GC_FREE_INSERT: (
        "InsertWithoutGc, InsertMany(gc=False), BumpCapacityRemaining and SetGcOkay are not "
        "generated; arguments go in by the counted protocol (model.protocol.move_refs_counted), not "
        "the seed's pre-GC; the gc_okay assertion probe (assert.fires, assert.state-kept on a Gc "
        "while gc_okay is false) never runs"
    ),
    capabilities.CANARY_GUARD: (
        "StackCanary is not generated, and observed.canary compares the scope the host entered "
        "(the library has no getter): the canary is judged by what each GC sweeps"
    ),
    capabilities.SINGLE_THREADED: "threads: the parallel check did not run (counts are not atomic)",
    capabilities.NO_RAW: "IntoRaw, FromRaw and CloneFromRaw are not generated",
    capabilities.CAPACITY_SLOTS: (
        "observed.bump-capacity-bytes: bump_capacity_remaining is compared in slots"
    ),
    capabilities.NO_STRONG_COUNT: (
        "StrongCount is not generated: counts are judged through drops and leaks alone"
    ),
}


def not_applied(description: Description, opts: GateOptions) -> list[str]:
    """The checks that did not apply to this run (what a limit cut short is `GateReport.cut_short`)."""
    notes = [
        f"capability {name}: {NOT_APPLIED_BY[name]}"
        for name in description.capabilities
        if name in NOT_APPLIED_BY
    ]
    if description.capabilities:
        notes.append(
            "corpus: the files' expected observations are the seed's; with capabilities each trace "
            "is held to the lockstep with the model run under them"
        )
    if STRICT not in LEVELS[opts.level]:
        # Of the seed.<capability> cases, only those of the declared capabilities exist here.
        undeclared = {f"seed.{name}" for name in capabilities.NAMES if name not in description.capabilities}
        strict = sorted(name for name, level in CHECKS.items() if level == STRICT and name not in undeclared)
        notes.append(f"level {opts.level}: the strict checks were not applied ({', '.join(strict)})")
    missing = [
        f"xr_table_{name} (its {op} results were not compared)"
        for name, op, has in (
            ("num_filled_in_bump_chunk", "NumFilledInBumpChunk", description.has_num_filled),
            ("elements", "Elements", description.has_elements),
        )
        if not has
    ]
    if missing:
        notes.append(f"optional functions the library lacks: {'; '.join(missing)}")
    grouped: dict[tuple[str, str], list[str]] = {}
    for r in checks_ruled_out(description.capabilities):
        grouped.setdefault((r.capability, r.reason), []).append(r.check)
    for (capability, reason), names in grouped.items():
        notes.append(f"ruled out by {capability}: {', '.join(names)} ({reason})")
    if not opts.threads and capabilities.SINGLE_THREADED not in description.capabilities:
        notes.append("threads: the parallel check did not run (--no-threads)")
    if opts.exhaustive is not None:
        notes.append(
            "search: the Hypothesis search did not run (--exhaustive covered the bounded space "
            "instead; states beyond its bounds were not checked)"
        )
    return notes


def _describe_cases(description: Description, opts: GateOptions) -> list[CaseResult]:
    """What the library says of itself, against the seed: its chunk is the seed's 512 slots, and
    each capability it declares (`seed.<capability>`) is a choice the seed did not make."""
    strict = STRICT in LEVELS[opts.level]
    chunk = description.chunk_size
    out = [
        _seed_case(
            "seed.chunk-size",
            chunk == SEED_CHUNK_SIZE or not strict,
            f"chunk of {chunk} slots",
            f"a chunk of {chunk} slots, the seed's CHUNK_SIZE is {SEED_CHUNK_SIZE}",
            opts,
        )
    ]
    for capability in capabilities.CAPABILITIES:
        if capability.name in description.capabilities:
            out.append(
                _seed_case(
                    f"seed.{capability.name}",
                    not strict,
                    f"declared: {capability.differs} (held to its own rule at this level)",
                    f"declares {capability.name}: {capability.differs}; the seed does not",
                    opts,
                )
            )
    return out


def _seed_case(name: str, passed: bool, passing: str, failing: str, opts: GateOptions) -> CaseResult:
    """One describe case: a pass, else a one-line failure naming its check (expectable)."""
    if passed:
        return CaseResult("describe", name, "pass", passing)
    text = f"[{name}] {failing}"
    if name in opts.expectations.names:
        return CaseResult("describe", name, "expected-fail", text, expected_seen=frozenset({name}))
    return CaseResult("describe", name, "fail", text)


def _status(passed: bool, expected_seen: frozenset[str]) -> Status:
    if not passed:
        return "fail"
    return "expected-fail" if expected_seen else "pass"


def _corpus_cases(
    target: Target, options: LockstepOptions, pool: ChildPool, report: GateReport
) -> tuple[list[CaseResult], list[str]]:
    """Every shipped corpus trace of the library's build, in a child, against its expectations; and
    what the corpus did not check.

    A library with a fixed chunk runs a trace written for another chunk at its own when the trace
    runs at any chunk size (`CorpusTrace.runs_at`). A trace it cannot run is a skipped case, unless
    another version of its scenario ran: then it did not apply, and the notes say so. A trace the
    `--time-limit` left no time for is skipped too, and `report.cut_short` says so.
    """
    from externref_harness.corpus.run import cannot_run, load_corpus, run_config, run_corpus_trace

    assert target.description is not None
    build: Build = "debug" if target.description.debug else "release"
    traces = load_corpus(build=build)
    runnable = {t.scenario_name for t in traces if cannot_run(target, t) is None}
    out: list[CaseResult] = []
    not_applicable: list[str] = []
    not_run: list[str] = []
    for trace in traces:
        started = time.perf_counter()
        reason = cannot_run(target, trace)
        if reason is not None:
            if trace.scenario_name in runnable:
                not_applicable.append(trace.id)
            else:
                out.append(CaseResult("corpus", trace.id, "skip", reason))
            continue
        if pool.out_of_time():
            not_run.append(trace.id)
            out.append(CaseResult("corpus", trace.id, "skip", "not run: the --time-limit ran out"))
            continue
        cfg = run_config(target, trace)
        try:
            result = run_corpus_trace(
                trace, pool.adapter(), options, chunk_size=cfg.chunk_size, capabilities=cfg.capabilities
            )
        except OutOfTime:
            not_run.append(trace.id)
            out.append(CaseResult("corpus", trace.id, "skip", "cut short: the --time-limit ran out"))
            continue
        seen = frozenset(result.expected_seen)
        detail = "" if result.passed else f"step {result.step}: {result.problem}"
        if cfg.chunk_size != trace.config.chunk_size:
            detail = f"at the library's chunk of {cfg.chunk_size} slots" + (f"; {detail}" if detail else "")
        if result.left_out:
            left = f"{len(result.left_out)} observer step(s) it lacks left out: {', '.join(result.left_out)}"
            detail = left + (f"; {detail}" if detail else "")
        case = CaseResult("corpus", result.name, _status(result.passed, seen), detail, expected_seen=seen)
        case.seconds = time.perf_counter() - started
        out.append(case)
    if not_run:
        report.cut_short.append(f"corpus: {len(not_run)} traces not run (the time limit ran out)")
    notes = []
    skipped = [c for c in out if c.status == "skip" and c.name not in not_run]
    if skipped:
        notes.append(
            f"corpus: {len(skipped)} trace(s) skipped, no version of their scenario runs here: "
            f"{skipped[0].detail}"
        )
    if not_applicable:
        notes.append(
            f"corpus: {len(not_applicable)} trace(s) did not apply, their scenarios ran in another "
            f"version at the library's chunk size: {', '.join(not_applicable)}"
        )
    return out, notes


def search_seed(opts: GateOptions) -> int | None:
    """The search's first seed: `--seed`; else, when a time limit splits the search into rounds
    (each needs a seed), 0 under a derandomized profile (`ci`) and a random one otherwise (`dev`
    is random); else None (one run, Hypothesis's own seed)."""
    if opts.seed is not None:
        return opts.seed
    if opts.time_limit is None:
        return None
    derandomized = opts.hypothesis_settings is not None and opts.hypothesis_settings.derandomize
    return 0 if derandomized else random.SystemRandom().getrandbits(32)


def _search_case(
    target: Target,
    options: LockstepOptions,
    opts: GateOptions,
    pool: ChildPool,
    budget: Budget,
    report: GateReport,
    seed: int | None,
) -> CaseResult:
    cfg = target.config(LOCKSTEP_CONFIG, None, opts.chunk_size)
    save_as = opts.failures / f"gate-{opts.library.stem}-{opts.level}.json"
    stop_at = _lockstep_deadline(pool, budget)
    out = run_lockstep_check(
        cfg,
        bounds_for(cfg, LOCKSTEP_BOUNDS, target.description),
        opts.hypothesis_settings,
        save_as,
        pool.adapter,
        options,
        shrink_adapter_factory=lambda: pool.adapter(fresh=True),
        stop_at=stop_at,
        seed=seed,
    )
    figures = f"{out.stats.examples} examples, {out.stats.steps} steps, chunk {cfg.chunk_size}"
    if out.seeds:
        last = f"-{out.seeds[-1]}" if len(out.seeds) > 1 else ""
        figures += f", seed{'s' if last else ''} {out.seeds[0]}{last}"
    if out.stopped_early:
        figures += f", stopped at the {opts.time_limit:g} s limit"
        of = "" if opts.hypothesis_settings is None else f" of {opts.hypothesis_settings.max_examples}"
        report.cut_short.append(f"search: stopped by the time limit after {out.stats.examples}{of} examples")
    if out.failure is not None and "shrinking cut short by the time limit" in out.failure:
        report.cut_short.append("search: shrinking the failure (the trace saved is the best found)")
    passed, seen = out.passed, out.expected_seen
    return _lockstep_result("search", "lockstep", passed, figures, out.failure, save_as, seen)


def _exhaustive_case(
    target: Target,
    options: LockstepOptions,
    opts: GateOptions,
    pool: ChildPool,
    budget: Budget,
    report: GateReport,
    progress: Callable[[str], None],
) -> CaseResult:
    """Every transition of the bounded model graph, in the pool's children (`exhaustive`); its
    figures go to `progress` as it goes (a run at the default bounds takes minutes)."""
    from externref_harness.exhaustive.check import exhaustive_check

    assert opts.exhaustive is not None
    save_as = opts.failures / f"gate-{opts.library.stem}-{opts.level}-exhaustive.json"
    stop_at = _lockstep_deadline(pool, budget)
    result = exhaustive_check(
        target,
        opts.exhaustive,
        options=options,
        save_as=save_as,
        shrink_factory=lambda: pool.adapter(fresh=True),
        stop_at=stop_at,
        progress=lambda stats: progress(f"exhaustive: {stats.describe()}"),
    )
    figures = result.figures()
    if result.outcome.stopped is not None:
        left = result.outcome.plan.transitions - result.outcome.stats.covered
        report.cut_short.append(f"exhaustive: {left:,} transitions not covered (the time limit ran out)")
    return _lockstep_result("exhaustive", "transitions", result.passed, figures, result.failure, save_as)


def _lockstep_deadline(pool: ChildPool, budget: Budget) -> float | None:
    """When the lockstep phase ends (None: no time limit); a failure's final replay and report
    get a fixed grace past it in the pool's children."""
    stop_at = budget.lockstep_end
    if stop_at is not None:
        pool.set_deadline(stop_at + REPORT_GRACE)
    return stop_at


def _lockstep_result(
    name: str,
    kind: str,
    passed: bool,
    figures: str,
    failure: str | None,
    save_as: Path,
    expected_seen: Iterable[str] = (),
) -> CaseResult:
    """A lockstep case's verdict: its figures, and on a failure what failed and the saved trace."""
    seen = frozenset(expected_seen)
    if passed:
        return CaseResult(name, kind, _status(True, seen), figures, expected_seen=seen)
    return CaseResult(name, kind, "fail", f"{figures}\n{failure}", trace=save_as, expected_seen=seen)


def _threads_case(
    opts: GateOptions, budget: Budget, env: dict[str, str] | None, report: GateReport
) -> CaseResult:
    if budget.limit is not None and budget.threads_seconds < 1.0:
        report.cut_short.append("threads: not run (no time left in the --time-limit)")
        return CaseResult("threads", "parallel", "skip", "not run: no time left in the --time-limit")
    return threads.gate_case(opts, budget.threads_seconds, env)
