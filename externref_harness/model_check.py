"""The hypothesis state machine over the reference model alone.

Each step picks a kind of move, then one move of that kind (`model.moves`), runs the model and
checks every invariant of `specs/SPEC.md`. Every example ends with a teardown to quiescence so
leaks are caught. Paths taken are labelled with `event()` and counted in `RunStats`.

On a failure the shrunk trace is printed as numbered steps with the state diff at the failing step,
and saved as a JSON trace for `externref-harness replay`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import Verbosity, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from externref_harness import trace as tracefile
from externref_harness.report import format_failure
from model.moves import Bounds, misuse_moves, moves, next_quiesce_op, ordered_kinds
from model.observation import Misuse, Observation
from model.ops import Op
from model.state import Config, State
from model.transition import step
from specs.invariants import first_violation

#: Configuration of the model-only machine: tiny chunk, so every slow path is near.
MACHINE_CONFIG = Config(chunk_size=2, slots=3, n_globals=2)
MACHINE_BOUNDS = Bounds(
    refs=6,
    handles=4,
    raws=2,
    frames=3,
    args=3,
    layouts=((8, 8), (16, 8), (0, 1), (1, 1), (24, 8), (32, 16)),
)

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
MISUSE = "misuse"


@dataclass
class RunStats:
    examples: int = 0
    steps: int = 0
    events: Counter[str] = field(default_factory=Counter)


class InvariantViolation(AssertionError):
    pass


def _labels(op: Op, obs: Observation) -> list[str]:
    labels = [f"op:{op.TAG}", *dict.fromkeys(obs.events)]
    if obs.dropped:
        labels.append("values-dropped")
    if str(obs.result) == "Err(chunk-full)":
        labels.append("try_insert:chunk-full")
    if isinstance(obs.result, Misuse):
        labels.append(MISUSE)
    return labels


def make_model_machine(
    cfg: Config = MACHINE_CONFIG,
    bounds: Bounds = MACHINE_BOUNDS,
    stats: RunStats | None = None,
    save_as: Path | None = None,
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
            run_stats.steps += 1
            for label in _labels(op, obs):
                event(label)
                run_stats.events[label] += 1
            problem = None
            if expect_misuse and not isinstance(obs.result, Misuse):
                problem = f"misuse {op} was not refused: {obs}"
            elif isinstance(obs.result, Misuse) and not expect_misuse:
                problem = f"a well-formed move was refused: {obs}"
            violation = first_violation(cfg, self.state)
            if violation is not None:
                inv, message = violation
                problem = f"{inv.id} {inv.name}: {message}"
            if problem is not None:
                self.fail(problem, before)

        def fail(self, problem: str, before: State) -> None:
            self.failed = True
            saved = None
            if save_as is not None:
                tracefile.save(tracefile.Trace(cfg, tuple(self.steps), problem), save_as)
                saved = str(save_as)
            raise InvariantViolation(
                format_failure(
                    f"Model check failed ({cfg.build} build, mutant={cfg.mutant}): {problem}",
                    self.steps,
                    self.observations,
                    before,
                    self.state,
                    saved,
                )
            )

        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            groups = moves(cfg, bounds, self.state)
            misuse = misuse_moves(cfg, self.state)
            kinds = ordered_kinds(groups) + ([MISUSE] if misuse else [])
            if not kinds:
                return
            kind = data.draw(st.sampled_from(kinds), label="kind")
            options = misuse if kind == MISUSE else groups[kind]
            op = data.draw(st.sampled_from(options), label="op")
            self.apply(op, expect_misuse=kind == MISUSE)

        def teardown(self) -> None:
            if self.failed:
                return
            for _ in range(200):
                op = next_quiesce_op(self.state)
                if op is None:
                    return
                self.apply(op)

    ModelMachine.__name__ = ModelMachine.__qualname__ = "ModelMachine"
    return ModelMachine


@dataclass
class CheckOutcome:
    name: str
    passed: bool
    stats: RunStats
    failure: str | None = None


def run_model_check(
    cfg: Config = MACHINE_CONFIG,
    bounds: Bounds = MACHINE_BOUNDS,
    hypothesis_settings: settings | None = None,
    save_as: Path | None = None,
) -> CheckOutcome:
    stats = RunStats()
    machine = make_model_machine(cfg, bounds, stats, save_as)
    quiet = settings(
        hypothesis_settings or settings(), report_multiple_bugs=False, verbosity=Verbosity.quiet
    )
    try:
        run_state_machine_as_test(machine, settings=quiet)
    except InvariantViolation as e:
        return CheckOutcome("model", False, stats, str(e))
    return CheckOutcome("model", True, stats)
