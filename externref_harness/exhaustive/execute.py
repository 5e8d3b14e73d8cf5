"""Every transition of a plan executed on the implementation, in lockstep with the model.

A run is one `Lockstep` from the initial state: it follows the tree path to a class whose moves are
not all covered yet, takes the next uncovered move there, and, while that move is a tree edge into
a class with uncovered moves of its own, goes on from there (its concrete state is exactly the one
the plan expanded, so the next move is one of the plan's transitions too); so does a non-tree move
that lands on exactly the concrete state of its class (a GC of a quiescent state, a drop that
undoes a clone), about a quarter of them in the default bounds:

    root ──path(c)──▶ x_c ──move i (uncovered)──▶ x_d ──move j (uncovered)──▶ y ≠ x_class(y)  (stop)

Classes are taken in breadth-first order, so a divergence is met at the shallowest class first; its
trace (the run's steps up to the failing one) is then shrunk and saved like any lockstep failure
(`lockstep.runner.report_lockstep_failure`), `replay`-able. Every step of a run is one lockstep
step, with every check a lockstep step has (projections, the memory checks, the checking heap's
reports); a transition counts as covered once a run has executed and compared it. A run's end
state is torn down (quiescence, then the checking heap's leak check) when no run ended in its class
before, so each class reached as an end state has the teardown's checks once.

The cost is the steps of the runs: about the plan's non-tree transitions times the mean depth
(`Stats.steps`); whatever makes a lockstep step cheaper makes this cheaper by as much.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from externref_harness.exhaustive.plan import Plan
from externref_harness.isolation.pool import OutOfTime
from externref_harness.lockstep.runner import (
    DEFAULT_OPTIONS,
    AdapterFactory,
    Lockstep,
    LockstepOptions,
    StepCheck,
)
from externref_harness.model.ops import Op
from externref_harness.search.model_check import misuse_problem

#: Why an incomplete run stopped.
TIME_LIMIT = "time limit"


@dataclass
class Stats:
    """What an exhaustive run has done so far (also handed to progress hooks)."""

    transitions: int
    covered: int = 0
    runs: int = 0
    steps: int = 0
    teardowns: int = 0
    elapsed: float = 0.0


@dataclass(frozen=True)
class Divergence:
    """The first failure: the run's steps up to the failing one (all of them: the teardown)."""

    steps: tuple[Op, ...]
    problem: str
    #: "model" or "implementation".
    side: str
    at_teardown: bool


@dataclass(frozen=True)
class Outcome:
    plan: Plan
    stats: Stats
    divergence: Divergence | None = None
    #: Why it stopped before covering every transition (None: it did not stop early).
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        return self.divergence is None and self.stats.covered == self.plan.transitions


ProgressHook = Callable[[Stats], None]


class _Failed(Exception):
    def __init__(self, divergence: Divergence) -> None:
        super().__init__(divergence.problem)
        self.divergence = divergence


class _Coverage:
    """Which transitions are covered: one byte per (class, move), offsets per class."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.offset = [0] * (plan.classes + 1)
        for c in range(plan.classes):
            self.offset[c + 1] = self.offset[c] + plan.moves[c]
        self.done = bytearray(self.offset[-1])
        #: The lowest move index of each class that may still be uncovered.
        self.cursor = [0] * plan.classes
        self.covered = 0

    def mark(self, c: int, move: int) -> None:
        i = self.offset[c] + move
        if not self.done[i]:
            self.done[i] = 1
            self.covered += 1

    def next_uncovered(self, c: int) -> int | None:
        base, n = self.offset[c], self.plan.moves[c]
        i = self.cursor[c]
        while i < n and self.done[base + i]:
            i += 1
        self.cursor[c] = i
        return i if i < n else None


def run_exhaustive(
    plan: Plan,
    adapter_factory: AdapterFactory,
    options: LockstepOptions = DEFAULT_OPTIONS,
    stop_at: float | None = None,
    progress: ProgressHook | None = None,
    every: float = 10.0,
) -> Outcome:
    """Cover every transition of `plan` on the implementation; stop at the first divergence, at
    `stop_at` (a `time.monotonic()` instant), or when the pool's budget runs out (`OutOfTime`)."""
    started = time.monotonic()
    stats = Stats(plan.transitions)
    coverage = _Coverage(plan)
    torn_down: set[int] = set()
    next_report = started + every
    try:
        for c in range(plan.classes):
            while coverage.next_uncovered(c) is not None:
                now = time.monotonic()
                if stop_at is not None and now >= stop_at:
                    return _done(plan, stats, coverage, started, stopped=TIME_LIMIT)
                if progress is not None and now >= next_report:
                    next_report = now + every
                    progress(_snapshot(stats, coverage, started))
                _one_run(plan, c, adapter_factory, options, coverage, torn_down, stats)
    except _Failed as e:
        return _done(plan, stats, coverage, started, divergence=e.divergence)
    except OutOfTime:
        return _done(plan, stats, coverage, started, stopped=TIME_LIMIT)
    return _done(plan, stats, coverage, started)


def _snapshot(stats: Stats, coverage: _Coverage, started: float) -> Stats:
    stats.covered = coverage.covered
    stats.elapsed = time.monotonic() - started
    return Stats(stats.transitions, stats.covered, stats.runs, stats.steps, stats.teardowns, stats.elapsed)


def _done(
    plan: Plan,
    stats: Stats,
    coverage: _Coverage,
    started: float,
    divergence: Divergence | None = None,
    stopped: str | None = None,
) -> Outcome:
    return Outcome(plan, _snapshot(stats, coverage, started), divergence, stopped)


def _one_run(
    plan: Plan,
    c: int,
    adapter_factory: AdapterFactory,
    options: LockstepOptions,
    coverage: _Coverage,
    torn_down: set[int],
    stats: Stats,
) -> None:
    """One lockstep run: the tree path to class `c`, then uncovered moves down the tree."""
    search = plan.search
    run = Lockstep(search.cfg, adapter_factory(), options=options)
    steps: list[Op] = []
    stats.runs += 1

    def take(at: int, move: int, following: list[Op] | None = None) -> None:
        op = search.moves(run.state)[move]
        check = run.step(op, following or ())
        steps.append(op)
        stats.steps += 1
        _raise_on(check, op, steps)
        coverage.mark(at, move)

    try:
        # The tree path is known before it runs: its steps go to the implementation's process in
        # batches (`Lockstep.step`'s `following`), each still checked in order as it comes back.
        path_ops = plan.ops_to(c)
        for i, (at, move) in enumerate(plan.path(c)):
            take(at, move, path_ops[i + 1 :])
        if search.fingerprint(search.key(run.state)) != plan.fingerprints[c]:
            raise AssertionError(f"the tree path to class {c} does not reach its class")
        while True:
            uncovered = coverage.next_uncovered(c)
            assert uncovered is not None
            move = uncovered
            take(c, move)
            end = search.fingerprint(search.key(run.state))
            child = plan.children[c].get(move)
            if child is None:
                # A non-tree edge that lands exactly on its class's concrete state goes on too.
                landed = plan.index[end]
                child = landed if plan.states[landed] == run.state else None
            if child is None or coverage.next_uncovered(child) is None:
                break
            c = child
        if end not in torn_down and run.state.panic is None:
            torn_down.add(end)
            _teardown(run, steps, stats)
    finally:
        run.close()


def _raise_on(check: StepCheck, op: Op, steps: list[Op], at_teardown: bool = False) -> None:
    model = misuse_problem(op, check.observation, expect_misuse=False) or check.model_problem
    if model is not None:
        raise _Failed(Divergence(tuple(steps), model, "model", at_teardown))
    if check.impl_problem is not None:
        raise _Failed(Divergence(tuple(steps), check.impl_problem, "implementation", at_teardown))


def _teardown(run: Lockstep, steps: list[Op], stats: Stats) -> None:
    """Quiescence (each step checked), then the checking heap's leak check. The saved trace is the
    run's own steps: `drive` (replay, shrinking) runs the same teardown after them."""
    stats.teardowns += 1
    run_steps = tuple(steps)
    for op in run.quiesce_ops():
        check = run.step(op)
        stats.steps += 1
        try:
            _raise_on(check, op, list(run_steps), at_teardown=True)
        except _Failed as e:
            raise _Failed(Divergence(run_steps, e.divergence.problem, e.divergence.side, True)) from None
    problem = run.finish()
    if problem is not None:
        raise _Failed(Divergence(run_steps, problem, "implementation", True))
