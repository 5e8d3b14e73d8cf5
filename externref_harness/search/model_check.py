"""The hypothesis state machine over the reference model alone.

Each step picks a kind of move, then one move of that kind (`model.moves`), runs the model and
checks every invariant of `specs/SPEC.md`. Every example ends with a teardown to quiescence so
leaks are caught. Paths taken are labelled with `event()` and counted in `RunStats`.

On a failure the shrunk trace is printed as numbered steps with the state diff at the failing step,
and saved as a JSON trace for `externref-harness replay`.
"""

from __future__ import annotations

import functools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from hypothesis import Phase, Verbosity, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from externref_harness.model.capabilities import EAGER_CHUNK, NO_GC_FREE_INSERT
from externref_harness.model.moves import (
    Bounds,
    misuse_moves,
    moves,
    next_quiesce_op,
    ordered_kinds,
    quiesce_step_bound,
)
from externref_harness.model.observation import Misuse, Observation
from externref_harness.model.ops import Op
from externref_harness.model.state import Config, State
from externref_harness.model.transition import run, step
from externref_harness.report import format_failure, save_and_format
from externref_harness.search.databases import KeyedDatabase
from externref_harness.search.path_labels import MISUSE, step_labels
from externref_harness.search.shrink import model_failure, shrink_model_trace
from externref_harness.search.space import MACHINE_BOUNDS, MACHINE_CONFIG
from externref_harness.specs.invariants import first_violation

#: Paths every CI run must reach (upstream's fuzzer never reached the stack-map scan).
REQUIRED_EVENTS = (
    "gc:no-canary",
    "gc:canary-found",
    "gc:canary-not-found",
    "gc:wasm-frame",
    "gc:nested-wasm-frame",
    "gc:stack-map-root",
    "gc:wasm-frame-without-stack-map",
    "gc:unwinder-stopped",
    "sweep:lazy-chunk-allocation",
    "insert:gc-and-insert-slow",
    "insert:slow-without-gc",
    "hashset:duplicate-dropped",
    "try_insert:chunk-full",
    "values-dropped",
    "misuse",
)
#: Required paths a capability makes unreachable: the seed's code that runs them is not the
#: implementation's (`sweep` never allocates an eager chunk; nothing calls `insert_without_gc`).
UNREACHABLE_BY: dict[str, tuple[str, ...]] = {
    EAGER_CHUNK: ("sweep:lazy-chunk-allocation",),
    NO_GC_FREE_INSERT: ("insert:slow-without-gc",),
}


def required_events(cfg: Config) -> tuple[str, ...]:
    """The paths a run of `cfg` must reach: `REQUIRED_EVENTS` less what its capabilities rule out."""
    if not cfg.capabilities:
        return REQUIRED_EVENTS
    gone = {e for name in cfg.capabilities for e in UNREACHABLE_BY.get(name, ())}
    return tuple(e for e in REQUIRED_EVENTS if e not in gone)
T = TypeVar("T")

#: How many times more often than others a driver picks these kinds: the moves that lead to a
#: GC with Wasm frames on the stack (calls into and out of Wasm, returns, scalar spills, and the
#: GC itself), and the inserts; the observers and the other kinds weigh 1. (Raised from 2-3 for
#: the calls and the GC: `benchmarks/detection.py` measured CVE-2021-39218 caught in 8 of 20
#: random dev runs before, 13 of 20 after, at 100 examples.)
KIND_WEIGHTS = {
    "gc": 6, "call_wasm": 6, "wasm_call_host": 5, "wasm_call_wasm": 5, "new": 4, "wasm_scalar": 4,
    "return_to_wasm": 3, "wasm_return": 3, "wasm_move": 2, "insert_with_gc": 2, "insert_without_gc": 2,
    "try_insert": 2, "clone": 2,
}  # fmt: skip


@dataclass
class RunStats:
    examples: int = 0
    steps: int = 0
    events: Counter[str] = field(default_factory=Counter)
    #: The example (1-based) in which the first failure showed, before any shrinking.
    first_failing_example: int | None = None


class InvariantViolation(AssertionError):
    """A failing example, with its (unshrunk) steps so the driver can shrink and save them."""

    def __init__(self, message: str, steps: tuple[Op, ...] = (), problem: str = "") -> None:
        super().__init__(message)
        self.steps = steps
        self.problem = problem


def example_failure(
    what: str,
    cfg: Config,
    stats: RunStats,
    steps: Sequence[Op],
    observations: Sequence[Observation],
    before: State,
    after: State,
    problem: str,
) -> InvariantViolation:
    """A machine's failing example (shared by every machine): counted, printed, steps kept."""
    if stats.first_failing_example is None:
        stats.first_failing_example = stats.examples
    title = f"{what} failed ({cfg.build} build, mutant={cfg.mutant}): {problem}"
    return InvariantViolation(
        format_failure(title, steps, observations, before, after), tuple(steps), problem
    )


def record_step(op: Op, obs: Observation, stats: RunStats) -> None:
    """Count one step and label the paths it took (shared by every machine over the model)."""
    stats.steps += 1
    for label in step_labels(op, obs):
        event(label)
        stats.events[label] += 1


def misuse_problem(op: Op, obs: Observation, expect_misuse: bool) -> str | None:
    """Misuse must be refused, and a well-formed move must not be."""
    if expect_misuse and not isinstance(obs.result, Misuse):
        return f"misuse {op} was not refused: {obs}"
    if isinstance(obs.result, Misuse) and not expect_misuse:
        return f"a well-formed move was refused: {obs}"
    return None


def draw_move(
    data: st.DataObject, cfg: Config, bounds: Bounds, state: State
) -> tuple[Op, bool] | None:
    """A kind first, then one move of that kind; the flag says the move is misuse."""
    groups = moves(cfg, bounds, state)
    misuse = misuse_moves(cfg, state)
    kinds = ordered_kinds(groups) + ([MISUSE] if misuse else [])
    if not kinds:
        return None
    weighted = tuple(k for k in kinds for _ in range(KIND_WEIGHTS.get(k, 1)))
    kind = data.draw(_choice(weighted), label="kind")
    options = misuse if kind == MISUSE else groups[kind]
    return data.draw(_choice(tuple(options)), label="op"), kind == MISUSE


@functools.lru_cache(maxsize=8192)
def _choice(options: tuple[T, ...]) -> st.SearchStrategy[T]:
    """`sampled_from`, built once per distinct option list (building and validating a strategy
    on every draw cost more than the model step itself)."""
    return st.sampled_from(options)


def make_model_machine(
    cfg: Config = MACHINE_CONFIG,
    bounds: Bounds = MACHINE_BOUNDS,
    stats: RunStats | None = None,
) -> type[RuleBasedStateMachine]:
    """A fresh machine class bound to one config (and so to at most one mutant)."""
    run_stats = stats if stats is not None else RunStats()

    class ModelMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.state = State.initial(cfg)
            self.steps: list[Op] = []
            self.observations: list[Observation] = []
            self.failed = False
            run_stats.examples += 1

        def apply(self, op: Op, expect_misuse: bool = False) -> None:
            before = self.state
            self.state, obs = step(cfg, before, op)
            self.steps.append(op)
            self.observations.append(obs)
            record_step(op, obs, run_stats)
            problem = misuse_problem(op, obs, expect_misuse)
            violation = first_violation(cfg, self.state)
            if violation is not None:
                inv, message = violation
                problem = f"{inv.id} {inv.name}: {message}"
            if problem is not None:
                self.fail(problem, before)

        def fail(self, problem: str, before: State) -> None:
            self.failed = True
            raise example_failure(
                "Model check", cfg, run_stats, self.steps, self.observations, before, self.state, problem
            )

        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            drawn = draw_move(data, cfg, bounds, self.state)
            if drawn is not None:
                self.apply(*drawn)

        def teardown(self) -> None:
            if self.failed:
                return
            bound = quiesce_step_bound(self.state)
            for _ in range(bound):
                op = next_quiesce_op(self.state)
                if op is None:
                    return
                self.apply(op)
            if next_quiesce_op(self.state) is not None:
                self.fail(f"the teardown gave up: {bound} steps did not reach quiescence", self.state)

    ModelMachine.__name__ = ModelMachine.__qualname__ = "ModelMachine"
    return ModelMachine


def machine_key(name: str, cfg: Config, bounds: Bounds) -> bytes:
    """What names one machine's examples in an example database: the check, its config (mutant
    and build included) and its bounds. `check` and `fuzz` build the same key for the same machine,
    so either replays what the other stored, and examples of one mutant never replay on another.

    (Hypothesis keys a state machine's examples by a digest of its class, the same for every
    config here, so without this every mutant would share, and clear out, one set of examples.
    The key goes on the database, not the class: the class's digest also seeds derandomized runs.)
    """
    return f"externref-harness/{name}/{cfg!r}/{bounds!r}".encode()


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    stats: RunStats
    failure: str | None = None
    #: The search stopped at its time limit before the profile's budget was spent.
    stopped_early: bool = False
    #: Expected divergences (an expectations file) that the run showed.
    expected_seen: frozenset[str] = frozenset()
    #: The Hypothesis seeds the search ran with, in order (empty: Hypothesis chose its own).
    seeds: tuple[int, ...] = ()


def run_model_check(
    cfg: Config = MACHINE_CONFIG,
    bounds: Bounds = MACHINE_BOUNDS,
    hypothesis_settings: settings | None = None,
    save_as: Path | None = None,
    stats: RunStats | None = None,
) -> CheckOutcome:
    """The model machine under a profile's budget; `stats` (if given) counts as it runs."""
    stats = stats if stats is not None else RunStats()
    machine = make_model_machine(cfg, bounds, stats)
    try:
        chosen = search_settings(hypothesis_settings, machine_key("model", cfg, bounds))
        run_state_machine_as_test(machine, settings=chosen)
    except InvariantViolation as e:
        return CheckOutcome("model", False, stats, report_model_failure(cfg, e, save_as))
    return CheckOutcome("model", True, stats)


def search_settings(base: settings | None, key: bytes | None = None) -> settings:
    """The profile's budget for the search, with Hypothesis's own shrinking replaced by ours, and
    its example database (if any) kept under the machine's `key` (`machine_key`).

    `shrink.shrink_model_trace` shrinks a failing trace by pure replays (seconds, where the
    re-run-everything shrinker took minutes per failure), and it runs on every failure found here.
    """
    chosen = settings(
        base or settings(),
        report_multiple_bugs=False,
        verbosity=Verbosity.quiet,
        phases=[Phase.explicit, Phase.reuse, Phase.generate],
    )
    if key is not None and chosen.database is not None:
        chosen = settings(chosen, database=KeyedDatabase(chosen.database, key))
    return chosen


def report_model_failure(cfg: Config, failure: InvariantViolation, save_as: Path | None) -> str:
    """Shrink the failing steps, print them with the state diff, and save them for replay."""
    steps = shrink_model_trace(cfg, failure.steps)
    found = model_failure(cfg, steps)
    problem = str(found) if found is not None else failure.problem
    results = run(cfg, steps)
    observations = [obs for _, obs in results]
    states = [State.initial(cfg), *(s for s, _ in results)]
    return save_and_format(
        f"Model check failed ({cfg.build} build, mutant={cfg.mutant}): {problem}"
        f" (shrunk from {len(failure.steps)} to {len(steps)} steps)",
        cfg,
        steps,
        observations,
        states,
        problem,
        save_as,
    )
