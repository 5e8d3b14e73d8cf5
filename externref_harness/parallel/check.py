"""The parallel check: many small parallel programs on real threads, each history judged.

    seeded generator ──▶ ParallelProgram ──▶ driver (C threads, C heap) ──▶ History ──▶ Verdict
                                   ▲                                                    │ fails
                                   └───── shrink: a thread fewer, an op fewer, rerun ◀───┘

Interleavings are not reproducible, so a failing program is shrunk by rerunning each smaller
candidate up to `shrink_runs` times (a candidate that fails in one of them is kept), then rerun
`replay_runs` times to measure how often it fails, and saved as a parallel trace that
`externref-harness replay TRACE --impl PATH.so --runs N` reruns. Generation is seeded: `seed`
fixes the programs (the interleavings stay the machine's), and CI uses seed 0.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from externref_harness.model.state import Config
from externref_harness.native.library import NativeLibrary
from externref_harness.parallel.linearizability import Verdict, calls_of, check_history
from externref_harness.parallel.program import (
    ParallelProgram,
    ParallelTrace,
    Shape,
    generate,
    save_trace,
    smaller,
)
from externref_harness.parallel.run import XT_NOT_RUN, History, Runner


@dataclass(frozen=True)
class ParallelOptions:
    #: Stop after this many histories, or after `time_limit` seconds, whichever comes first.
    histories: int = 3000
    time_limit: float = 10.0
    #: The generator's seed (None: a fresh one each run; CI: 0).
    seed: int | None = None
    #: Histories in which calls of two threads overlapped in time.
    overlapping: int = 0
    shape: Shape = field(default_factory=Shape)
    save_as: Path | None = None
    shrink_runs: int = 100
    shrink_time: float = 5.0
    replay_runs: int = 200


@dataclass
class ParallelOutcome:
    passed: bool
    histories: int
    seconds: float
    #: Seconds until the first failing history (None: none failed).
    detected_after: float | None = None
    failure: str | None = None
    program: ParallelProgram | None = None
    trace: Path | None = None
    #: The generator's seed (None: the run ended before one was reported, as when it crashed).
    seed: int | None = None
    #: Histories in which calls of two threads overlapped in time.
    overlapping: int = 0

    @property
    def histories_per_s(self) -> float:
        """Histories run and judged per second, up to the first failure (not the shrinking)."""
        searched = self.seconds if self.detected_after is None else self.detected_after
        return self.histories / searched if searched > 0 else 0.0


def default_seed() -> int | None:
    """Derandomized under CI (seed 0), random otherwise."""
    return 0 if os.environ.get("CI") else None


def model_config(library: NativeLibrary) -> Config:
    desc = library.description
    return Config(chunk_size=desc.chunk_size, build="debug" if desc.debug else "release")


def overlapped(program: ParallelProgram, history: History) -> bool:
    """Whether two calls of different threads ran at the same time in this history (their
    [invocation, response] intervals intersect): the measure that the run was really parallel."""
    spans = [
        (thread, r.inv, r.resp)
        for (phase, thread, _), r in zip(program.steps(), history.results, strict=True)
        if phase == "parallel" and r.inv >= 0
    ]
    return any(t != u and a < d and c < b for t, a, b in spans for u, c, d in spans)


def run_once(runner: Runner, program: ParallelProgram, cfg: Config) -> tuple[History, Verdict]:
    history = runner.run(program)
    return history, check_history(program, history, cfg)


#: Failing reruns a shrinking candidate needs to be kept. One: a rarer but smaller race is the more
#: readable counterexample, and its failure rate is measured and reported afterwards.
SHRINK_FAILURES = 1


def fails_within(
    runner: Runner, program: ParallelProgram, cfg: Config, runs: int, needed: int = 1
) -> tuple[History, Verdict] | None:
    """The `needed`-th failing run of at most `runs`, or None if fewer failed."""
    seen = 0
    for _ in range(runs):
        history, verdict = run_once(runner, program, cfg)
        if not verdict.passed:
            seen += 1
            if seen >= needed:
                return history, verdict
    return None


def shrink(
    runner: Runner,
    program: ParallelProgram,
    cfg: Config,
    failing: tuple[History, Verdict],
    opts: ParallelOptions,
) -> tuple[ParallelProgram, tuple[History, Verdict]]:
    """Greedy: take the first smaller candidate that still fails, until none does or time is up."""
    deadline = time.perf_counter() + opts.shrink_time
    improved = True
    while improved and time.perf_counter() < deadline:
        improved = False
        for candidate in smaller(program):
            if time.perf_counter() >= deadline:
                break
            found = fails_within(runner, candidate, cfg, opts.shrink_runs, SHRINK_FAILURES)
            if found is not None:
                program, failing, improved = candidate, found, True
                break
    return program, failing


def failure_rate(
    runner: Runner, program: ParallelProgram, cfg: Config, runs: int
) -> tuple[int, Verdict | None]:
    """How many of `runs` reruns fail, and the first failing verdict."""
    failures, first = 0, None
    for _ in range(runs):
        _, verdict = run_once(runner, program, cfg)
        if not verdict.passed:
            failures += 1
            first = first or verdict
    return failures, first


def run_parallel_check(
    library: NativeLibrary,
    opts: ParallelOptions,
    on_program: Callable[[ParallelProgram], None] | None = None,
) -> ParallelOutcome:
    """Histories until a failure, the budget or the time limit; a failure shrunk, measured, saved.
    `on_program` is called before every run of a program (`parallel.child` reports it)."""
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    runner = Runner(library, on_program)
    cfg = model_config(library)
    started = time.perf_counter()
    n = overlapping = 0
    while n < opts.histories and time.perf_counter() - started < opts.time_limit:
        program = generate(rng, opts.shape)
        history, verdict = run_once(runner, program, cfg)
        n += 1
        overlapping += overlapped(program, history)
        if verdict.passed:
            continue
        detected = time.perf_counter() - started
        original = program
        program, (history, verdict) = shrink(runner, program, cfg, (history, verdict), opts)
        failures, _ = failure_rate(runner, program, cfg, opts.replay_runs)
        trace = ParallelTrace(
            program, str(library.path), "; ".join(verdict.problems), opts.replay_runs, failures
        )
        saved = save_trace(trace, opts.save_as) if opts.save_as is not None else None
        report = describe_failure(
            library, program, history, verdict, n, detected, original, failures, opts.replay_runs, saved
        )
        seconds = time.perf_counter() - started
        return ParallelOutcome(False, n, seconds, detected, report, program, saved, seed, overlapping)
    return ParallelOutcome(True, n, time.perf_counter() - started, seed=seed, overlapping=overlapping)


# ---- reading a failure ----------------------------------------------------------------------------


def format_program(program: ParallelProgram) -> str:
    rows = [("prefix (main)", program.prefix)]
    rows += [(f"thread {t}", ops) for t, ops in enumerate(program.threads, 1)]
    rows.append(("epilogue (main)", program.epilogue))
    lines = [f"  {name:<16} {'; '.join(map(str, ops)) or '(nothing)'}" for name, ops in rows]
    given = ", ".join(f"r{r} to thread {t}" for r, t in program.owners) or "nothing"
    lines.insert(1, f"  {'given':<16} {given} (the other prefix registers are shared, borrowed)")
    return "\n".join(lines)


def format_history(program: ParallelProgram, history: History) -> str:
    """The threads' calls with their clock stamps, results and drops, ordered by invocation."""
    calls, _ = calls_of(program, history)
    lines = []
    for c in sorted((c for c in calls if c.phase == "parallel"), key=lambda c: c.result.inv):
        r = c.result
        if r.status == XT_NOT_RUN:
            lines.append(f"  {c.label():<34} never ran (its thread panicked first)")
            continue
        shown = "" if c.step.kind == "Drop" else f" {r.value:#x}" if r.value > 4096 else f" {r.value}"
        status = {0: "Ok", 1: "Err", 2: "PANIC"}.get(r.status, str(r.status))
        dropped = ", ".join(f"value {v}" + (f" x{k}" if k > 1 else "") for v, k in c.dropped)
        extra = f", dropped {dropped}" if dropped else ""
        if r.message:
            extra += f" ({r.message})"
        lines.append(f"  {c.label():<34} [{r.inv:>3}, {r.resp:>3}]  {status}{shown}{extra}")
    return "\n".join(lines)


def describe_failure(
    library: NativeLibrary,
    program: ParallelProgram,
    history: History,
    verdict: Verdict,
    histories: int,
    detected: float,
    original: ParallelProgram,
    failures: int,
    runs: int,
    saved: Path | None,
) -> str:
    desc = library.description
    build = "debug" if desc.debug else "release"
    lines = [
        f"Parallel check failed on {desc.name} {desc.version} ({build} build) at history {histories} "
        f"({detected:.2f} s); shrunk from {original.n_threads} threads / {original.n_ops} ops to "
        f"{program.n_threads} threads / {program.n_ops} ops; it fails in {failures} of {runs} reruns"
        + (" (a rare interleaving: replay it with more --runs)." if failures * 20 < runs else "."),
        "",
        "Program:",
        format_program(program),
        "",
        "One failing run (thread: call [invoked, responded] on the global clock -> result):",
        format_history(program, history),
        "",
        "Problems:",
        *(f"  - {p}" for p in verdict.problems),
    ]
    if saved is not None:
        lines += [
            "",
            f"Saved for replay: externref-harness replay {saved} --impl {library.path} --runs {runs}",
        ]
    return "\n".join(lines)


def describe_run(program: ParallelProgram, history: History, verdict: Verdict) -> str:
    """A failing run and its problems, as `replay` prints it."""
    return "\n".join(
        [
            "One failing run (thread: call [invoked, responded] on the global clock -> result):",
            format_history(program, history),
            "Problems:",
            *(f"  - {p}" for p in verdict.problems),
        ]
    )
