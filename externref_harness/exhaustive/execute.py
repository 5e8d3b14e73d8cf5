"""Every transition of a plan executed on the implementation, in lockstep with the model.

A run is one `Lockstep` from the initial state. It follows the tree path to a class whose moves
are not all covered yet, takes an uncovered move there, and goes on from the class that move
reached while there is something to cover nearby:

    root ──path(c)──▶ x_c ──uncovered──▶ y ──uncovered──▶ z ──covered──▶ ·──covered──▶ w ──uncovered──▶ …
                                                          (a walk of at most WALK_RADIUS moves to the
                                                           nearest class with uncovered moves; else stop)

The states a run reaches after the first step need not be the plan's concrete states of their
classes (a clone then its drop leaves a tombstone: same class, other handle numbers).
`corresponding_move` makes the plan's move i of class d from such a state: the move at the same
index, checked to be of the same kind and to lead to the class the plan's move i leads to, or
the run stops there. A covered transition is therefore always a move, executed and compared, from
a state of its class to a state of its target class.

A run is planned on the model alone before it starts (`_plan_chain`: the path, the uncovered
moves, the walks, each chosen as the moves before it leave the coverage), so all its steps go to
the implementation's process as one batch and are compared in order as their replies come back;
its moves are counted covered when planned and taken back if the run fails before them. Classes
are started in breadth-first order; a divergence's trace (the run's steps up to the failing one)
is shrunk and saved like any lockstep failure (`lockstep.runner.report_lockstep_failure`),
`replay`-able. Every step is one lockstep step with every check a lockstep step has (projections,
the memory checks, the checking heap's reports). A run's end state is torn down (quiescence, also
one batch, then the checking heap's leak check) when no run ended in its class before, so each
class reached as an end state has the teardown's checks once.

The cost is the steps of the runs (`Stats.steps`): at `--refs 1`, 3.4 per transition, where
runs that went on only from exact concrete states took 7.5.
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
from externref_harness.model.state import State
from externref_harness.model.transition import step
from externref_harness.search.model_check import misuse_problem

#: How far a run walks through covered moves to reach a class with uncovered ones, instead of
#: ending (a new run's tree path is about as long as the class is deep).
WALK_RADIUS = 4
#: ... and gives up looking once it has seen this many classes (the search is Python, per run).
WALK_SEARCH_LIMIT = 300
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
        self.offset = plan.offsets
        self.done = bytearray(plan.transitions)
        #: The lowest move index of each class that may still be uncovered.
        self.cursor = [0] * plan.classes
        #: How many moves of each class are not covered yet.
        self.left = list(plan.moves)
        self.covered = 0

    def mark(self, c: int, move: int) -> bool:
        """Count the move as covered; whether it was not already."""
        i = self.offset[c] + move
        if self.done[i]:
            return False
        self.done[i] = 1
        self.covered += 1
        self.left[c] -= 1
        return True

    def unmark(self, c: int, move: int) -> None:
        i = self.offset[c] + move
        if self.done[i]:
            self.done[i] = 0
            self.covered -= 1
            self.left[c] += 1
            self.cursor[c] = min(self.cursor[c], move)

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
    """One lockstep run: the tree path to class `c`, then uncovered moves (and short walks to
    them) as far as they go, planned on the model and executed in one batch."""
    search = plan.search
    path = plan.path(c)
    # Counted as covered as they are planned, so that the chain and the next run's plan go
    # elsewhere; a run that fails or runs out of time takes back those from the step that did not
    # pass on.
    marked = [i for i, (at, move) in enumerate(path) if coverage.mark(at, move)]
    chain, state = _plan_chain(plan, coverage, c)
    marked += [len(path) + i for i, (_, _, _, new) in enumerate(chain) if new]
    taken = [*path, *((at, move) for at, move, _, _ in chain)]
    run_ops = [*plan.ops_to(c), *(op for _, _, op, _ in chain)]
    run = Lockstep(search.cfg, adapter_factory(), options=options)
    steps: list[Op] = []
    passed = 0
    stats.runs += 1
    try:
        # Every step is known before the run starts: they go to the implementation's process in
        # one batch (`Lockstep.step`'s `following`), each still checked in order as it comes back.
        for i, op in enumerate(run_ops):
            check = run.step(op, run_ops[i + 1 :])
            steps.append(op)
            stats.steps += 1
            _raise_on(check, op, steps)
            passed += 1
        if run.state != state:
            raise AssertionError(f"a run from class {c} did not reach the state it was planned to")
        end = search.fingerprint(search.key(state))
        if end not in torn_down and run.state.panic is None:
            torn_down.add(end)
            _teardown(run, steps, stats)
    except BaseException:
        for i in marked:
            if i >= passed:
                coverage.unmark(*taken[i])
        raise
    finally:
        run.close()


def _plan_chain(
    plan: Plan, coverage: _Coverage, c: int
) -> tuple[list[tuple[int, int, Op, bool]], State]:
    """From class `c`'s concrete state: the (class, move, op, newly covered) steps of uncovered
    moves, each from the class the last one reached, and of walks through covered moves to a class
    with uncovered ones (at most `WALK_RADIUS` moves); and the state they end in. Planned on the
    model alone; the moves it takes are counted as covered (`_one_run` takes back those of a run
    that does not pass)."""
    search = plan.search
    state = plan.states[c]
    out: list[tuple[int, int, Op, bool]] = []

    def take(at: int, move: int, op: Op) -> int:
        nonlocal state
        state = step(search.cfg, state, op)[0]
        landed = plan.index.get(search.fingerprint(search.key(state)))
        if landed != plan.target(at, move):
            raise AssertionError(f"move {move} of class {at} did not reach its class")
        out.append((at, move, op, coverage.mark(at, move)))
        return landed

    while coverage.next_uncovered(c) is not None:
        move = _next_move(plan, coverage, c)
        op = corresponding_move(plan, c, move, state)
        if op is None:
            break  # not the class's state, nor one whose moves correspond to it: a new run
        c = take(c, move, op)
        if coverage.next_uncovered(c) is not None:
            continue
        # Every move of this class is covered: walk (covered moves) to a nearby class with
        # uncovered ones, when one is closer than a new run's tree path would be.
        way = _way_to_uncovered(plan, coverage, c, WALK_RADIUS)
        if way is None:
            break
        for at, move in way:
            op = corresponding_move(plan, at, move, state)
            if op is None:
                return out, state
            c = take(at, move, op)
    return out, state


def _way_to_uncovered(plan: Plan, coverage: _Coverage, c: int, radius: int) -> list[tuple[int, int]] | None:
    """The (class, move) steps of a shortest way, at most `radius` moves, from class `c` to a class
    with an uncovered move; None if there is none that close."""
    targets, offsets, moves, left = plan.targets, plan.offsets, plan.moves, coverage.left
    came: dict[int, tuple[int, int]] = {c: (c, -1)}
    level = [c]
    for _ in range(radius):
        if len(came) > WALK_SEARCH_LIMIT:
            return None  # nothing uncovered near a well-covered region: a new run is cheaper
        grown: list[int] = []
        for at in level:
            base = offsets[at]
            for move, to in enumerate(targets[base : base + moves[at]]):
                if to in came:
                    continue
                came[to] = (at, move)
                if left[to]:
                    way = []
                    while to != c:
                        at, move = came[to]
                        way.append((at, move))
                        to = at
                    way.reverse()
                    return way
                grown.append(to)
        level = grown
    return None


def _next_move(plan: Plan, coverage: _Coverage, c: int) -> int:
    """An uncovered move of class `c`: one into a class with uncovered moves of its own if there
    is one (the run goes on there), else the first."""
    first = coverage.next_uncovered(c)
    assert first is not None
    base = coverage.offset[c]
    for move in range(first, plan.moves[c]):
        if not coverage.done[base + move] and coverage.left[plan.target(c, move)]:
            return move
    return first


def corresponding_move(plan: Plan, c: int, move: int, state: State) -> Op | None:
    """Move `move` of class `c` as made from `state`, a concrete state of class `c`; None when it
    cannot be told which of `state`'s moves that is.

    The plan's moves of `c` are those of its concrete state `plan.states[c]`. Another state of the
    class differs from it by the symmetry (`explore.symmetry`): renamed refs, tombstones, chunk
    order, dead stack maps. `flat_moves` enumerates moves in an order those do not change (live
    handles and raw pointers in order, slots by position), so the move at the same index is the
    corresponding one. That is checked, not assumed: `state` must have as many moves, the move
    must be of the same kind, and it must lead to the class the plan's move leads to; otherwise
    the run stops there and a new one reaches the class by its tree path."""
    search = plan.search
    if state is plan.states[c] or state == plan.states[c]:
        return plan.ops[c][move]
    moves = search.moves(state)
    if len(moves) != plan.moves[c]:
        return None
    op = moves[move]
    if type(op) is not type(plan.ops[c][move]):
        return None
    successor = step(search.cfg, state, op)[0]
    if plan.index.get(search.fingerprint(search.key(successor))) != plan.target(c, move):
        return None
    return op


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
    quiesce = run.quiesce_ops()
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
