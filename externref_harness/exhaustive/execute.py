"""Every transition of a plan executed on the implementation, in lockstep with the model.

A run is one `Lockstep` from the initial state along the moves `exhaustive.chain.plan_chain`
chose: the tree path to a class whose moves are not all covered yet, uncovered moves from there,
and short walks through covered moves to the next class with some. A covered transition is
always a move, executed and compared, from a state of its class to a state of its target class
(`chain.corresponding_move`).

A run is planned on the model alone before it starts (`plan_chain`: the path, the uncovered
moves, the walks, each chosen as the moves before it leave the coverage; whether its end state is
torn down), so all its steps go to the implementation's process as one batch, its teardown's
steps and `finish` behind them, and are compared in order as their replies come back; its moves
are counted covered when planned and taken back if the run fails before them. Once a run's
replay is checked and everything it will send is sent, it closes ahead and the next run is sent
behind it, so the implementation's process runs on while this one checks:

    child:   [start₁ replay₁ batch₁ finish₁ close₁][start₂ replay₂ batch₂ close₂][start₃ ...
    parent:   plan₂  check replay₁ ─send₂─▶ check batch₁, finish₁ │ plan₃ check replay₂ ─send₃─▶ ...

Classes are started in breadth-first order; a divergence's trace (the run's steps up to the failing one)
is shrunk and saved like any lockstep failure (`lockstep.check.report_lockstep_failure`),
`replay`-able. Every step that covers a transition is one lockstep step with every check a
lockstep step has (projections, the memory checks, the checking heap's reports). The tree path
that starts a run reaches its class again along transitions an earlier run has passed: it is
replayed in the implementation's process (`Lockstep.replay`: each step's outcome checked as it
comes back, the memory checks once at its end), the way to each run's start at a fraction of a
checked step's cost. A run's end state is torn down (quiescence, then the checking heap's
leak check) when no run planned before it ends in its class, so each class reached as an end
state has the teardown's checks once.

The cost is the steps of the runs (`Stats.steps`): at `--refs 1`, 3.4 per transition, where
runs that went on only from exact concrete states took 7.5.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

from externref_harness.exhaustive.chain import Coverage, plan_chain
from externref_harness.exhaustive.plan import Plan
from externref_harness.isolation.pool import OutOfTime
from externref_harness.lockstep.runner import (
    DEFAULT_OPTIONS,
    AdapterFactory,
    Lockstep,
    LockstepOptions,
    ModelSteps,
    ReplaySent,
    StepCheck,
)
from externref_harness.model.observation import Observation
from externref_harness.model.ops import Op
from externref_harness.model.state import State
from externref_harness.search.model_check import misuse_problem

#: Why an incomplete run stopped.
TIME_LIMIT = "time limit"
#: Seconds between two progress reports (`run_exhaustive`'s `progress`).
PROGRESS_EVERY = 10.0


@dataclass
class Stats:
    """What an exhaustive run has done so far (also handed to progress hooks)."""

    transitions: int
    covered: int = 0
    runs: int = 0
    steps: int = 0
    #: Of `steps`, those that reached a run's start again (`Lockstep.replay`).
    replayed: int = 0
    #: Of `replayed`, those whose reply repeated one already checked from the same lockstep state
    #: (`ModelSteps`: not decoded or checked again).
    known: int = 0
    teardowns: int = 0
    #: Of `runs`, those sent to the implementation's process behind the run before while that one
    #: was still being checked (`Lockstep.close_ahead`).
    behind: int = 0
    elapsed: float = 0.0

    def describe(self) -> str:
        """One progress line: coverage and cost so far. No time left is guessed: the rate falls as
        the runs reach deeper classes (at the default bounds, from 3,500 transitions a second in
        the first 10 s to about 1,200 at the middle and 400 at the end), so the rate so far would
        promise too little."""
        return (
            f"{self.covered:,} of {self.transitions:,} transitions, {self.runs:,} runs, "
            f"{self.steps:,} steps ({self.replayed:,} replayed), {self.elapsed:.0f}s"
        )


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


def run_exhaustive(
    plan: Plan,
    adapter_factory: AdapterFactory,
    options: LockstepOptions = DEFAULT_OPTIONS,
    stop_at: float | None = None,
    progress: ProgressHook | None = None,
    every: float | None = None,
) -> Outcome:
    """Cover every transition of `plan` on the implementation; stop at the first divergence, at
    `stop_at` (a `time.monotonic()` instant), or when the pool's budget runs out (`OutOfTime`).
    `progress` is given the figures every `every` seconds (`PROGRESS_EVERY`).

    Runs overlap in two ways. Each run is planned while the run before it is under way in the
    implementation's process: planning is the model's alone, and a run's moves are counted
    covered when it is planned, so the order of the runs and their moves is the same as if each
    were planned when it starts. And a run all of whose requests are sent once its replay is
    checked (its steps and its teardown's fit one batch) is closed ahead (`Lockstep.close_ahead`,
    its teardown's `finish` sent first): the
    next run is sent behind it at once, so the implementation's process goes on to it while this
    process checks the rest of the run before. A planned run that does not pass takes its moves
    back; a run sent behind one that fails is closed unread."""
    every = PROGRESS_EVERY if every is None else every
    started = time.monotonic()
    stats = Stats(plan.transitions)
    coverage = Coverage(plan)
    planner = _Planner(plan, coverage)
    #: The model's side of the tree paths' replayed steps, computed once for all runs.
    kept = ModelSteps(plan.search.cfg)
    next_report = started + every

    def send(planned: _Run) -> _Sent:
        return _send_run(plan, planned, adapter_factory, options, kept)

    #: The run planned while the one being checked runs (at most one; None: there is no other),
    #: and the same run sent behind it if that one was closed ahead.
    ahead: list[_Run | None] = []
    behind: list[_Sent] = []

    def plan_next() -> None:
        ahead.append(planner.next())

    def send_behind(sent: _Sent, remaining: int) -> None:
        nxt = ahead[0] if ahead else None
        run = sent.run
        all_sent = run.steps_under_way == remaining
        if nxt is not None and all_sent and run.close_ahead(finish=sent.planned.teardown):
            behind.append(send(nxt))
            stats.behind += 1

    first = planner.next()
    current = None if first is None else send(first)
    try:
        while current is not None:
            now = time.monotonic()
            if stop_at is not None and now >= stop_at:
                current.run.close()
                current.planned.unplan(coverage, 0)
                return _done(plan, stats, coverage, started, stopped=TIME_LIMIT)
            if progress is not None and now >= next_report:
                next_report = now + every
                progress(_snapshot(stats, coverage, started))
            ahead.clear()
            behind.clear()
            try:
                _check_run(current, coverage, stats, plan_next, send_behind)
            except BaseException:
                for sent in behind:
                    sent.run.close()  # never read: its child is retired
                for run in ahead:
                    if run is not None:
                        run.unplan(coverage, 0)
                raise
            finally:
                stats.known = kept.known_replies
            if behind:
                current = behind[0]
            else:
                nxt = ahead[0] if ahead else planner.next()
                current = None if nxt is None else send(nxt)
    except _Failed as e:
        return _done(plan, stats, coverage, started, divergence=e.divergence)
    except OutOfTime:
        return _done(plan, stats, coverage, started, stopped=TIME_LIMIT)
    return _done(plan, stats, coverage, started)


def _snapshot(stats: Stats, coverage: Coverage, started: float) -> Stats:
    stats.covered = coverage.covered
    stats.elapsed = time.monotonic() - started
    return dataclasses.replace(stats)


def _done(
    plan: Plan,
    stats: Stats,
    coverage: Coverage,
    started: float,
    divergence: Divergence | None = None,
    stopped: str | None = None,
) -> Outcome:
    return Outcome(plan, _snapshot(stats, coverage, started), divergence, stopped)


@dataclass(frozen=True)
class _Run:
    """A run planned on the model: its class, its (class, move) steps and their operations, the
    state they end in, and which of them it is the first to cover (indices into `taken`)."""

    c: int
    taken: list[tuple[int, int]]
    ops: list[Op]
    state: State
    marked: list[int]
    #: How many steps of the tree path come before its first newly covered one (replayed).
    known: int
    #: Its end state is torn down (quiescence, then the leak check): no run planned before it
    #: ended in that class.
    teardown: bool
    #: The model's steps planning took after the tree path, from class `c`'s concrete state:
    #: `(op, after, observation)` (`Lockstep.foresee`).
    foreseen: list[tuple[Op, State, Observation]]

    def unplan(self, coverage: Coverage, passed: int) -> None:
        """Take back the moves this run was to cover from its step `passed` on."""
        for i in self.marked:
            if i >= passed:
                coverage.unmark(*self.taken[i])


class _Planner:
    """The runs in the order they are made: classes breadth-first, each while it has uncovered
    moves."""

    def __init__(self, plan: Plan, coverage: Coverage) -> None:
        self.plan = plan
        self.coverage = coverage
        self.c = 0
        #: The end classes of the runs planned to be torn down (fingerprints).
        self.torn_down: set[int] = set()

    def next(self) -> _Run | None:
        plan, coverage = self.plan, self.coverage
        while self.c < plan.classes and coverage.next_uncovered(self.c) is None:
            self.c += 1
        if self.c == plan.classes:
            return None
        c = self.c
        path = plan.path(c)
        # Counted as covered as they are planned, so that the chain and the next run's plan go
        # elsewhere; a run that fails or runs out of time takes back those from the step that
        # did not pass on (`_Run.unplan`).
        marked = [i for i, (at, move) in enumerate(path) if coverage.mark(at, move)]
        chain, state = plan_chain(plan, coverage, c)
        marked += [len(path) + i for i, (_, _, _, new, _, _) in enumerate(chain) if new]
        taken = [*path, *((at, move) for at, move, _, _, _, _ in chain)]
        run_ops = [*plan.ops_to(c), *(op for _, _, op, _, _, _ in chain)]
        foreseen = [(op, after, observed) for _, _, op, _, after, observed in chain]
        end = plan.search.fingerprint(plan.search.key(state))
        teardown = end not in self.torn_down and state.panic is None
        if teardown:
            self.torn_down.add(end)
        return _Run(c, taken, run_ops, state, marked, min([*marked, len(path)]), teardown, foreseen)


@dataclass(frozen=True)
class _Sent:
    """A run whose lockstep is started and whose replay (with the first batch behind it) is sent
    to the implementation's process; nothing of it read yet."""

    planned: _Run
    run: Lockstep
    #: None: nothing to replay (its first step covers a move), every step goes by `Lockstep.step`.
    replay: ReplaySent | None
    #: The steps after the replay: the run's own, then its teardown's (`quiesce`), in one list
    #: (`Lockstep.step`'s `following`: they go in batches, the first behind the replay).
    tail: list[Op]
    quiesce: int


def _send_run(
    plan: Plan, planned: _Run, adapter_factory: AdapterFactory, options: LockstepOptions, kept: ModelSteps
) -> _Sent:
    """Start a run's lockstep and send its tree path's steps up to its first uncovered one, each
    executed and checked by an earlier run (the classes are started in breadth-first order), to
    be replayed (`Lockstep.replay`) with the first batch of the others behind them."""
    run = Lockstep(plan.search.cfg, adapter_factory(), options=options, model_steps=kept)
    try:
        run.foresee(plan.states[planned.c], planned.foreseen)
        known = planned.known
        quiesce = run.quiesce_ops(planned.state) if planned.teardown else []
        tail = [*planned.ops[known:], *quiesce]
        return _Sent(planned, run, run.send_replay(planned.ops[:known], tail), tail, len(quiesce))
    except BaseException:
        run.close()
        raise


def _check_run(
    sent: _Sent,
    coverage: Coverage,
    stats: Stats,
    meanwhile: Callable[[], object],
    replayed: Callable[[_Sent, int], object],
) -> None:
    """One lockstep run, sent by `_send_run`: the tree path's replayed steps, then uncovered moves
    (and short walks to them) as far as they go, planned on the model and executed in batches.
    `meanwhile` is called once before anything is read (the implementation's process runs the
    replay meanwhile); `replayed` once the replay is checked and passed, with the run and the
    number of its steps (the teardown's included) still to be stepped (whether they are all under
    way already)."""
    planned, run, tail = sent.planned, sent.run, sent.tail
    run_ops = planned.ops
    steps: list[Op] = []
    passed = 0
    stats.runs += 1
    try:
        meanwhile()
        if sent.replay is not None:
            for check in run.check_replay(sent.replay):
                op = run_ops[passed]
                steps.append(op)
                stats.steps += 1
                stats.replayed += 1
                _raise_on(check, op, steps)
                passed += 1
        # A replay ends before a step the model panics on (`Lockstep.replay`): that step and
        # those after it are stepped, in front of the tail (which then was not sent behind it).
        rest = tail if passed == planned.known else [*run_ops[passed : planned.known], *tail]
        replayed(sent, len(rest))
        # Every other step is known before it runs too: they go to the implementation's process
        # in batches (`Lockstep.step`'s `following`), each checked in order as it comes back.
        stepped = len(rest) - sent.quiesce
        for i in range(stepped):
            op = rest[i]
            check = run.step(op, rest[i + 1 :])
            steps.append(op)
            stats.steps += 1
            _raise_on(check, op, steps)
            passed += 1
        if run.state != planned.state:
            raise AssertionError(f"a run from class {planned.c} did not reach the state it was planned to")
        if planned.teardown:
            _teardown(run, steps, stats, rest[stepped:])
    except BaseException:
        planned.unplan(coverage, passed)
        raise
    finally:
        run.close()


def _raise_on(check: StepCheck, op: Op, steps: list[Op], at_teardown: bool = False) -> None:
    model = misuse_problem(op, check.observation, expect_misuse=False) or check.model_problem
    if model is not None:
        raise _Failed(Divergence(tuple(steps), model, "model", at_teardown))
    if check.impl_problem is not None:
        raise _Failed(Divergence(tuple(steps), check.impl_problem, "implementation", at_teardown))


def _teardown(run: Lockstep, steps: list[Op], stats: Stats, quiesce: list[Op]) -> None:
    """Quiescence (`quiesce`, worked out when the run was sent: each step checked), then the
    checking heap's leak check. The saved trace is the run's own steps: `drive` (replay,
    shrinking) runs the same teardown after them."""
    stats.teardowns += 1
    run_steps = tuple(steps)
    for i, op in enumerate(quiesce):
        check = run.step(op, quiesce[i + 1 :])
        stats.steps += 1
        try:
            _raise_on(check, op, list(run_steps), at_teardown=True)
        except _Failed as e:
            raise _Failed(Divergence(run_steps, e.divergence.problem, e.divergence.side, True)) from None
    problem = run.finish()
    if problem is not None:
        raise _Failed(Divergence(run_steps, problem, "implementation", True))
