"""The lockstep check: the Hypothesis machine over `runner.Lockstep`, and what becomes of a failure.

`make_lockstep_machine` draws the model machine's moves (with its labels and failure report) and
steps both sides with `Lockstep`; `run_lockstep_check` runs it under a profile's budget. A failing
trace is shrunk (`shrink_lockstep_trace`, each candidate driven afresh by `runner.drive`), printed
as a program with the state diff, and saved for `replay`.

`runner` holds what runs per step and is compiled; this module holds what runs per failure, and
Hypothesis, and is not.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.errors import FlakyFailure
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import ImplAdapter
from externref_harness.isolation.pool import HANG, OutOfTime
from externref_harness.lockstep.runner import (
    DEFAULT_OPTIONS,
    LOCKSTEP_BOUNDS,
    LOCKSTEP_CONFIG,
    AdapterFactory,
    Driven,
    Failure,
    Lockstep,
    LockstepOptions,
    drive,
)
from externref_harness.model import ops
from externref_harness.model.moves import Bounds
from externref_harness.model.observation import Observation
from externref_harness.model.state import Config, State
from externref_harness.model.transition import step as model_step
from externref_harness.report import save_and_format
from externref_harness.search.model_check import (
    CheckOutcome,
    InvariantViolation,
    RunStats,
    draw_move,
    example_failure,
    machine_key,
    misuse_problem,
    record_step,
    search_settings,
)
from externref_harness.search.shrink import ddmin, delete_with_renumbering, simplify_fields


def shrink_lockstep_trace(
    cfg: Config,
    steps: Sequence[ops.Op],
    adapter_factory: AdapterFactory = InProcessImpl,
    options: LockstepOptions = DEFAULT_OPTIONS,
    stop_at: float | None = None,
) -> list[ops.Op]:
    """The shortest-found trace that still fails on the same side, cut at its failing step.

    With `stop_at` (a `time.monotonic()` deadline) no candidate starts after it, and a candidate
    the adapter cuts short (`OutOfTime`) counts as not failing: the best trace found so far is
    kept. Each candidate of a slow implementation can take many step timeouts; the budget, not
    the number of candidates, bounds the shrink. A hang's candidates run with a shorter step
    timeout where the adapter offers one (`ShrinksHangs`: a child process's), and the result is
    confirmed at the full timeout: a step merely slower than the short one is not taken for it."""

    def failure(candidate: Sequence[ops.Op]) -> Failure | None:
        return _failure(cfg, candidate, adapter_factory(), options, stop_at)

    try:
        original = failure(steps)
    except OutOfTime:
        return list(steps)
    if original is None:
        return list(steps)
    out_of_time = False
    # A hang costs each candidate that still hangs a whole step timeout. Its candidates run with a
    # shorter one (adapters in child processes offer it); the result is confirmed at the full
    # timeout below, and shrunk again at the full timeout if it does not hang there.
    quick = HANG in original.problem
    shortened = False

    def fails(candidate: Sequence[ops.Op]) -> bool:
        nonlocal out_of_time, shortened
        if out_of_time:
            return False
        try:
            adapter = adapter_factory()
            if quick and isinstance(adapter, ShrinksHangs):
                adapter.limit_steps_for_shrinking()
                shortened = True
            found = _failure(cfg, candidate, adapter, options, stop_at)
        except OutOfTime:
            out_of_time = True
            return False
        return found is not None and found.side == original.side

    while True:
        shrunk = delete_with_renumbering(cfg, ddmin(steps[: original.step], fails), fails)
        shrunk = delete_with_renumbering(cfg, simplify_fields(shrunk, fails), fails)
        if out_of_time:
            return shrunk
        try:
            final = drive(cfg, shrunk, adapter_factory(), until_first=True, options=options).first
        except OutOfTime:
            return shrunk
        if final is not None and (final.side == original.side or not shortened):
            return shrunk[: final.step]
        assert shortened, "a shrunk trace that failed every candidate check did not fail"
        quick = shortened = False  # a step slower than the short timeout, not a hang: again


@runtime_checkable
class ShrinksHangs(Protocol):
    """An adapter that can give its steps a shorter timeout while a hang is shrunk."""

    def limit_steps_for_shrinking(self) -> None: ...


def _failure(
    cfg: Config,
    candidate: Sequence[ops.Op],
    adapter: ImplAdapter,
    options: LockstepOptions,
    stop_at: float | None,
) -> Failure | None:
    if stop_at is not None and time.monotonic() >= stop_at:
        raise OutOfTime("the time limit ran out while shrinking")
    return drive(cfg, candidate, adapter, until_first=True, options=options).first


# --- the hypothesis machine ------------------------------------------------------------------------


def make_lockstep_machine(
    cfg: Config = LOCKSTEP_CONFIG,
    bounds: Bounds = LOCKSTEP_BOUNDS,
    stats: RunStats | None = None,
    adapter_factory: AdapterFactory = InProcessImpl,
    options: LockstepOptions = DEFAULT_OPTIONS,
    expected_seen: set[str] | None = None,
) -> type[RuleBasedStateMachine]:
    """A fresh machine class bound to one config (and so to at most one mutant, of any layer).

    `expected_seen` collects the expected divergences every example showed."""
    run_stats = stats if stats is not None else RunStats()
    seen = expected_seen if expected_seen is not None else set()

    class LockstepMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.run = Lockstep(cfg, adapter_factory(), options=options)
            self.steps: list[ops.Op] = []
            self.observations: list[Observation] = []
            self.failed = False
            run_stats.examples += 1

        def apply(self, op: ops.Op, expect_misuse: bool = False) -> None:
            before = self.run.state
            check = self.run.step(op)
            self.steps.append(op)
            self.observations.append(check.observation)
            record_step(op, check.observation, run_stats)
            problem = (
                misuse_problem(op, check.observation, expect_misuse)
                or check.model_problem
                or check.impl_problem
            )
            if problem is not None:
                self.fail(problem, before)

        def fail(self, problem: str, before: State) -> None:
            self.failed = True
            raise example_failure(
                "Lockstep check",
                cfg,
                run_stats,
                self.steps,
                self.observations,
                before,
                self.run.state,
                problem,
            )

        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            drawn = draw_move(data, cfg, bounds, self.run.state)
            if drawn is not None:
                self.apply(*drawn)

        def teardown(self) -> None:
            try:
                if not self.failed:
                    for op in self.run.quiesce_ops():
                        self.apply(op)
                    problem = self.run.finish()
                    if problem is not None:
                        self.fail(problem, self.run.state)
            finally:
                seen.update(self.run.expected_seen)
                self.run.close()

    LockstepMachine.__name__ = LockstepMachine.__qualname__ = "LockstepMachine"
    return LockstepMachine


#: Examples per round of a search with a time limit (the limit is checked between rounds).
ROUND_EXAMPLES = 20


def run_lockstep_check(
    cfg: Config = LOCKSTEP_CONFIG,
    bounds: Bounds = LOCKSTEP_BOUNDS,
    hypothesis_settings: settings | None = None,
    save_as: Path | None = None,
    adapter_factory: AdapterFactory = InProcessImpl,
    options: LockstepOptions = DEFAULT_OPTIONS,
    shrink_adapter_factory: AdapterFactory | None = None,
    stop_at: float | None = None,
    stats: RunStats | None = None,
    seed: int | None = None,
) -> CheckOutcome:
    """The lockstep machine under a profile's budget; a failure is shrunk (on
    `shrink_adapter_factory`'s adapters, when given), printed and saved. `stats` (if given) counts
    as it runs.

    With `stop_at` (a `time.monotonic()` deadline) the budget is spent in rounds of
    `ROUND_EXAMPLES`, with the seeds `seed`, `seed + 1`, ... (`seed` None: 0, 1, ...), until the
    budget or the time runs out: Hypothesis cannot stop one run part-way, and each round's seed is
    what makes it reproducible. Without `stop_at`, `seed` (if given) fixes the one run's seed.
    The outcome lists the seeds used."""
    stats = stats if stats is not None else RunStats()
    seen: set[str] = set()
    machine = make_lockstep_machine(cfg, bounds, stats, adapter_factory, options, seen)
    chosen = search_settings(hypothesis_settings, machine_key("lockstep", cfg, bounds))
    rounds = [chosen]
    if stop_at is not None:
        left, rounds = chosen.max_examples, []
        while left > 0:
            rounds.append(settings(chosen, max_examples=min(ROUND_EXAMPLES, left)))
            left -= ROUND_EXAMPLES
    stopped = False
    used: list[int] = []
    try:
        for number, round_settings in enumerate(rounds):
            if stop_at is not None:
                if time.monotonic() > stop_at:
                    stopped = True
                    break
                used.append((seed or 0) + number)
            elif seed is not None:
                used.append(seed)
            if used:
                machine._hypothesis_internal_use_seed = used[-1]
            run_state_machine_as_test(machine, settings=round_settings)
    except OutOfTime:
        stopped = True  # the adapter's budget ran out mid-example: nothing failed
    except InvariantViolation as e:
        shrink_with = shrink_adapter_factory or adapter_factory
        failure = report_lockstep_failure(cfg, e, save_as, shrink_with, options, stop_at)
        return CheckOutcome(
            "lockstep", False, stats, failure, expected_seen=frozenset(seen), seeds=tuple(used)
        )
    except FlakyFailure as group:
        # The implementation failed once and not when Hypothesis replayed the example: a process
        # that serves many examples can carry state between them (a crash at its Nth call).
        first = _first_violation(group)
        if first is None:
            raise
        shrink_with = shrink_adapter_factory or adapter_factory
        failure = report_lockstep_failure(cfg, first, save_as, shrink_with, options, stop_at, flaky=True)
        return CheckOutcome(
            "lockstep", False, stats, failure, expected_seen=frozenset(seen), seeds=tuple(used)
        )
    return CheckOutcome(
        "lockstep", True, stats, stopped_early=stopped, expected_seen=frozenset(seen), seeds=tuple(used)
    )


def _first_violation(group: BaseException) -> InvariantViolation | None:
    """The first `InvariantViolation` inside an exception group (nested groups included)."""
    if isinstance(group, InvariantViolation):
        return group
    for inner in getattr(group, "exceptions", ()):
        found = _first_violation(inner)
        if found is not None:
            return found
    return None


#: Seconds the report of a failure (its final replay, in a fresh child) may take past `stop_at`.
REPORT_GRACE = 15.0


def report_lockstep_failure(
    cfg: Config,
    failure: InvariantViolation,
    save_as: Path | None,
    adapter_factory: AdapterFactory = InProcessImpl,
    options: LockstepOptions = DEFAULT_OPTIONS,
    stop_at: float | None = None,
    flaky: bool = False,
) -> str:
    """Shrink the failing steps, print them with the state diff, and save them for replay.

    With `stop_at`, shrinking stops there (the best trace so far is kept) and the report says so;
    if the final replay cannot run either (the adapter's budget), the model's side of the trace is
    printed and saved. `flaky`: the failure did not recur when Hypothesis replayed it."""
    steps = shrink_lockstep_trace(cfg, failure.steps, adapter_factory, options, stop_at)
    cut = stop_at is not None and time.monotonic() >= stop_at
    try:
        driven = drive(cfg, steps, adapter_factory(), until_first=True, options=options)
        found = driven.first
    except OutOfTime:
        driven, found = model_only(cfg, steps), None
    problem = failure.problem if found is None else found.problem
    teardown = " and the teardown" if found is not None and found.step > len(steps) else ""
    if found is None:
        # Only the machine knew this failure (a misuse expectation, a failure that did not recur):
        # show the steps it ran.
        del driven.steps[len(steps) :], driven.observations[len(steps) :], driven.states[len(steps) + 1 :]
    how = f"shrunk from {len(failure.steps)} to {len(steps)} steps{teardown}"
    if cut:
        how += ", shrinking cut short by the time limit"
    lead = f"Lockstep check of {options.impl_name} failed"
    if flaky:
        lead = (
            f"Lockstep check of {options.impl_name} failed once, flakily (a flaky crash or failure: "
            "it did not happen again when the example was replayed, so the implementation's "
            "process carried state between examples)"
        )
        if found is None:
            problem = f"{problem}\n(the saved trace does not reproduce it on its own)"
    return save_and_format(
        f"{lead} ({cfg.build} build, mutant={cfg.mutant}; {how}): {problem}",
        cfg,
        driven.steps,
        driven.observations,
        driven.states,
        problem,
        save_as,
        replay_args=options.replay_args,
    )


def model_only(cfg: Config, steps: Sequence[ops.Op]) -> Driven:
    """The model's side of `steps` alone (when the implementation cannot be run again)."""
    state = State.initial(cfg)
    out = Driven([], [], [state])
    for op in steps:
        state, obs = model_step(cfg, state, op)
        out.steps.append(op)
        out.observations.append(obs)
        out.states.append(state)
    return out
