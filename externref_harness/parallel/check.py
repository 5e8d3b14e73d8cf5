"""The parallel check: many small parallel programs on real threads, each history judged.

    seeded generator ──▶ ParallelProgram ──▶ driver: `repeats` histories per call, perturbed ──┐
                              │  plan_of (the model)        cheap verdicts, signatures (C)     │
                              ▼                                                                ▼
                        memo: signature ──▶ passed      ◀── new signatures, the failing history
                                   ▲                         judged in Python (check_history)
                                   └───── shrink: a thread fewer, an op fewer, rerun ◀── fails

Each program runs `repeats` times in one call of the driver, its threads' start spread over a few
schedules and jittered (`Perturbation`): a race window a few instructions wide is met by running
the same short history often, each time slightly differently aligned. The driver takes the cheap
verdicts itself and sends back only a history that fails one, and the first history of each
signature not yet judged; Python judges those in full (`check_history`: the same verdict as every
history had before), and a signature judged to pass is passed back as known.

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
from dataclasses import dataclass, field, replace
from pathlib import Path

from externref_harness.model.state import Config
from externref_harness.native.library import NativeLibrary
from externref_harness.parallel.linearizability import Verdict, calls_of, check_history, plan_of
from externref_harness.parallel.program import (
    ParallelProgram,
    ParallelTrace,
    Shape,
    generate,
    omitted_kinds,
    save_trace,
    smaller,
)
from externref_harness.parallel.run import (
    SIGNATURE_OPS,
    SIGNATURE_SLOTS,
    XT_NOT_RUN,
    Batch,
    History,
    Perturbation,
    Plan,
    Runner,
)


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
    shrink_runs: int = 1000
    shrink_time: float = 5.0
    replay_runs: int = 1000
    #: Histories of each program per call of the driver (the same short history repeated), at most
    #: `batch_seconds` of them.
    repeats: int = 1024
    batch_seconds: float = 0.05
    #: The perturbation of the threads' start (see `Perturbation`).
    schedules: int = 8
    spread: int = 100
    jitter: int = 30
    pin: bool = True

    @property
    def perturbation(self) -> Perturbation:
        return Perturbation(self.schedules, self.spread, self.jitter, self.pin, self.batch_seconds)


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
    #: The perturbation used, in words (with whether the threads were pinned).
    perturbation: str = ""
    #: Histories judged in Python (the first of each signature, and failing ones).
    judged: int = 0

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
    return Config(
        chunk_size=desc.chunk_size, build="debug" if desc.debug else "release", capabilities=desc.capabilities
    )


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


class Judge:
    """Batches of one program, judged: the driver's cheap verdicts, then each signature not judged
    before. Invariant relied on: histories with one signature get one verdict (see
    `linearizability`), so a signature judged to pass passes every history that has it.

    A new signature whose results (its `strong_count` answers and droppers) are those of one judged
    before differs only in which calls real time ordered; if an order that explained those results
    respects the new real-time order too, it explains the new history (the model's answers depend
    on the order and the results, not on the stamps), and the model need not run again."""

    def __init__(self, runner: Runner, program: ParallelProgram, cfg: Config) -> None:
        self.runner, self.program, self.cfg = runner, program, cfg
        self.plan: Plan = plan_of(program, cfg)
        #: Signatures judged to pass -> histories seen with them.
        self.passed: dict[bytes, int] = {}
        #: Histories judged by the model (the first of each signature no known order explains).
        self.judged = 0
        steps = list(program.steps())
        self._parallel = [i for i, (phase, _, _) in enumerate(steps) if phase == "parallel"]
        n_values = sum(1 for s in program.prefix if s.kind == "New")
        #: Bytes of a signature before its real-time bits (see the driver's `signature`).
        self._head = 8 * (len(self._parallel) + n_values)
        self._signable = len(self._parallel) <= SIGNATURE_OPS
        #: Results part -> for each order that explained them, the real-time bits it violates.
        self._orders: dict[bytes, list[int]] = {}

    def known(self) -> list[bytes]:
        """The signatures the driver should only count: the most frequent ones it has room for."""
        ranked = sorted(self.passed, key=self.passed.__getitem__, reverse=True)
        return ranked[: SIGNATURE_SLOTS // 2]

    def _violations(self, linearization: list[int]) -> int:
        """The real-time bits (pairs a, b: a responded before b was invoked) this order breaks."""
        rank = {step: k for k, step in enumerate(linearization)}
        ranks = [rank[i] for i in self._parallel]
        n = len(ranks)
        return sum(1 << (a * n + b) for a in range(n) for b in range(n) if ranks[a] > ranks[b])

    def _explained(self, signature: bytes) -> bool:
        if not self._signable:
            return False
        bits = int.from_bytes(signature[self._head :], "little")
        return any(bits & broken == 0 for broken in self._orders.get(signature[: self._head], ()))

    def _judge(self, signature: bytes, history: History) -> Verdict | None:
        """None if the signature passes, else the failing verdict."""
        if signature in self.passed or self._explained(signature):
            return None
        verdict = check_history(self.program, history, self.cfg)
        self.judged += 1
        if not verdict.passed:
            return verdict
        if self._signable and verdict.linearization is not None:
            head = signature[: self._head]
            self._orders.setdefault(head, []).append(self._violations(verdict.linearization))
        return None

    def batch(
        self, histories: int, stop_at_failure: bool = True
    ) -> tuple[Batch, tuple[History, Verdict, int] | None, int]:
        """One batch: what it did, its first failing history (with its verdict and index in the
        batch), and how many of its histories failed."""
        known = self.known()
        out = self.runner.run_batch(self.program, self.plan, histories, known, stop_at_failure)
        for sig, n in zip(known, out.known_counts, strict=True):
            self.passed[sig] += n
        failing = None
        failures = out.cheap_failures
        if out.failing is not None:
            verdict = check_history(self.program, out.failing, self.cfg)
            self.judged += 1
            if verdict.passed:
                raise RuntimeError(f"the driver failed a history the model explains: {out.why}")
            failing = (out.failing, verdict, out.failing_index)
        for signed in out.new:
            failed = self._judge(signed.signature, signed.history)
            if failed is None:
                self.passed[signed.signature] = self.passed.get(signed.signature, 0) + signed.count
                continue
            failures += signed.count
            if failing is None or signed.first_index < failing[2]:
                failing = (signed.history, failed, signed.first_index)
        return out, failing, failures


def fails_within(
    runner: Runner, program: ParallelProgram, cfg: Config, runs: int, deadline: float | None = None
) -> tuple[History, Verdict] | None:
    """A failing history within `runs` histories of `program` (and before `deadline` on
    `time.perf_counter`), or None."""
    judge = Judge(runner, program, cfg)
    done = 0
    while done < runs and (deadline is None or time.perf_counter() < deadline):
        out, failing, _ = judge.batch(runs - done)
        if failing is not None:
            return failing[0], failing[1]
        done += max(out.run, 1)
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
            found = fails_within(runner, candidate, cfg, opts.shrink_runs, deadline)
            if found is not None:
                program, failing, improved = candidate, found, True
                break
    return program, failing


def failure_rate(
    runner: Runner, program: ParallelProgram, cfg: Config, runs: int
) -> tuple[int, Verdict | None]:
    """How many of `runs` histories of `program` (run in batches, perturbed) fail, and the first
    failing verdict."""
    judge = Judge(runner, program, cfg)
    failures, first, done = 0, None, 0
    while done < runs:
        out, failing, failed = judge.batch(runs - done, stop_at_failure=False)
        failures += failed
        if failing is not None and first is None:
            first = failing[1]
        done += max(out.run, 1)
    return failures, first


#: How many times the histories (and the batch's time) a program gets when two of its threads may
#: each run a value's last drop: the race that frees twice or too early, and whose window (between
#: a decrement and the decision to free) is a few instructions wide.
CONTENDED_FREE_WEIGHT = 32


def contended_free(program: ParallelProgram, plan: Plan) -> bool:
    """Whether calls of two different threads may each be the one that drops some value."""
    threads: dict[int, set[int]] = {}
    for (phase, thread, _), value in zip(program.steps(), plan.may_drop, strict=True):
        if phase == "parallel" and value >= 0:
            threads.setdefault(value, set()).add(thread)
    return any(len(t) > 1 for t in threads.values())


def run_parallel_check(
    library: NativeLibrary,
    opts: ParallelOptions,
    on_program: Callable[[ParallelProgram], None] | None = None,
) -> ParallelOutcome:
    """Histories until a failure, the budget or the time limit; a failure shrunk, measured, saved.
    `on_program` is called before every batch of a program (`parallel.child` reports it)."""
    seed = opts.seed if opts.seed is not None else random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    base = opts.perturbation
    runner = Runner(library, on_program, base, seed)
    cfg = model_config(library)
    started = time.perf_counter()
    n = overlapping = judged = pinned = 0
    while n < opts.histories and time.perf_counter() - started < opts.time_limit:
        program = generate(rng, opts.shape, omitted_kinds(library.description.capabilities))
        judge = Judge(runner, program, cfg)
        weight = CONTENDED_FREE_WEIGHT if contended_free(program, judge.plan) else 1
        runner.perturbation = replace(base, batch_seconds=base.batch_seconds * weight)
        out, failing, _ = judge.batch(max(1, min(opts.repeats * weight, opts.histories - n)))
        judged += judge.judged
        overlapping += out.overlapped
        pinned += out.run if out.pinned else 0
        if failing is None:
            n += out.run
            continue
        history, verdict, index = failing
        n += index + 1
        detected = time.perf_counter() - started
        original = program
        runner.perturbation = base
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
        return ParallelOutcome(
            False, n, seconds, detected, report, program, saved, seed, overlapping,
            opts.perturbation.describe(pinned / max(n, 1)), judged,
        )  # fmt: skip
    return ParallelOutcome(
        True, n, time.perf_counter() - started, seed=seed, overlapping=overlapping,
        perturbation=opts.perturbation.describe(pinned / max(n, 1)), judged=judged,
    )  # fmt: skip


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
