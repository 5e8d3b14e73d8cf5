"""What one check searches in a campaign: its state machine, its shrinker, and a stored trace's replay.

A campaign (`externref-harness fuzz`) runs a check's machine in many short searches and handles
each failure itself: it shrinks it once with the project's shrinker, names it by its invariant and
shrunk steps (`Found.fingerprint`), and replays shrunk traces other workers stored. A target is
everything it needs for one check, built with the same config as `check` builds, so both share
example-database keys (`model_check.machine_key`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hypothesis.stateful import RuleBasedStateMachine

from externref_harness import trace as tracefile
from externref_harness.model.moves import Bounds
from externref_harness.model.ops import Op
from externref_harness.model.state import Config, State
from externref_harness.search.model_check import InvariantViolation, RunStats, machine_key

if TYPE_CHECKING:
    from externref_harness.lockstep.runner import AdapterFactory, LockstepOptions


@dataclass(frozen=True)
class Found:
    """A shrunk failure: which check, which invariant (or side), and the shrunk trace."""

    check: str
    invariant: str
    trace: tracefile.Trace
    #: How many steps the failing example had before shrinking.
    original_steps: int = 0

    @property
    def fingerprint(self) -> str:
        """Same invariant and same shrunk trace: the same failure, whoever found it, wherever."""
        ident = {
            "check": self.check,
            "invariant": self.invariant,
            "config": tracefile.config_json(self.trace.config),
            "steps": [op.to_json() for op in self.trace.steps],
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def to_bytes(self) -> bytes:
        """The canonical form stored in the example database (equal failures, equal bytes)."""
        obj = {"check": self.check, "invariant": self.invariant, "trace": self.trace.to_json()}
        return json.dumps(obj, sort_keys=True).encode()

    @staticmethod
    def from_bytes(raw: bytes) -> Found | None:
        """A stored failure, or None for an entry this version cannot read."""
        try:
            obj = json.loads(raw)
            return Found(str(obj["check"]), str(obj["invariant"]), tracefile.Trace.from_json(obj["trace"]))
        except (ValueError, KeyError, TypeError, tracefile.TraceFormatError):
            return None


@dataclass(frozen=True)
class FuzzTarget:
    name: str
    config: Config
    bounds: Bounds
    #: A fresh machine class counting into the given stats.
    make_machine: Callable[[RunStats], type[RuleBasedStateMachine]]
    #: The failing example shrunk once, with its invariant.
    shrink: Callable[[InvariantViolation], Found]
    #: The invariant a stored trace still breaks here, or None if it passes.
    replay: Callable[[Sequence[Op]], str | None]
    #: Ends what the target holds (a native library's child processes).
    close: Callable[[], None] = lambda: None

    @property
    def machine_key(self) -> bytes:
        """Where Hypothesis's own examples of this machine live (as `check` keeps them)."""
        return machine_key(self.name, self.config, self.bounds)

    @property
    def failures_key(self) -> bytes:
        """Where this target's shrunk failures live in the example database (beside Hypothesis's
        own examples of the same machine)."""
        digest = hashlib.sha256(self.machine_key).hexdigest()
        return f"externref-harness-failures:{digest}".encode()


def _first_part(problem: str) -> str:
    """`I1 no reachable ref is freed` of `I1 no reachable ref is freed: refs [0] were freed`."""
    return problem.split(":", 1)[0].strip()


def misuse_failure(cfg: Config, bounds: Bounds, steps: Sequence[Op]) -> str | None:
    """The machines' own check, for a trace without the draws that made it: a step the moves of
    its state call well-formed must not be refused, and misuse must be. (Without it, a stored
    failure of that kind would replay as passing and be dropped.)"""
    from externref_harness.model.moves import misuse_moves, moves
    from externref_harness.model.transition import step
    from externref_harness.search.model_check import misuse_problem

    state = State.initial(cfg)
    for op in steps:
        well_formed = any(op in group for group in moves(cfg, bounds, state).values())
        expect_misuse = not well_formed and op in misuse_moves(cfg, state)
        state, obs = step(cfg, state, op)
        problem = misuse_problem(op, obs, expect_misuse)
        if problem is not None and (well_formed or expect_misuse):
            return _first_part(problem)
    return None


def model_target(cfg: Config, bounds: Bounds) -> FuzzTarget:
    from externref_harness.search.model_check import make_model_machine
    from externref_harness.search.shrink import model_failure, shrink_model_trace

    def shrink(failure: InvariantViolation) -> Found:
        steps = shrink_model_trace(cfg, failure.steps)
        found = model_failure(cfg, steps)
        invariant = found.invariant if found is not None else _first_part(failure.problem)
        problem = str(found) if found is not None else failure.problem
        return Found("model", invariant, tracefile.Trace(cfg, tuple(steps), problem), len(failure.steps))

    def replay(steps: Sequence[Op]) -> str | None:
        found = model_failure(cfg, steps)
        return misuse_failure(cfg, bounds, steps) if found is None else found.invariant

    return FuzzTarget(
        "model", cfg, bounds, lambda stats: make_model_machine(cfg, bounds, stats), shrink, replay
    )


def lockstep_target(
    cfg: Config,
    bounds: Bounds,
    adapters: AdapterFactory | None = None,
    fresh_adapters: AdapterFactory | None = None,
    options: LockstepOptions | None = None,
    close: Callable[[], None] = lambda: None,
) -> FuzzTarget:
    """The lockstep machine on the in-process ctypes implementation, or on `adapters` (a native
    library's children: `native_lockstep_target`), shrinking and replaying on `fresh_adapters`."""
    from externref_harness.impl.adapter import InProcessImpl
    from externref_harness.lockstep.check import make_lockstep_machine, shrink_lockstep_trace
    from externref_harness.lockstep.runner import DEFAULT_OPTIONS, MODEL, drive

    make = adapters or InProcessImpl
    fresh = fresh_adapters or make
    opts = options or DEFAULT_OPTIONS

    def invariant_of(side: str, problem: str) -> str:
        # The implementation's messages carry addresses; its side is what stays the same.
        return _first_part(problem) if side == MODEL else "the implementation fails the lockstep checks"

    def shrink(failure: InvariantViolation) -> Found:
        steps = shrink_lockstep_trace(cfg, failure.steps, fresh, opts)
        first = drive(cfg, steps, fresh(), until_first=True, options=opts).first
        if first is None:
            invariant, problem = _first_part(failure.problem), failure.problem
        else:
            invariant, problem = invariant_of(first.side, first.problem), first.problem
        return Found("lockstep", invariant, tracefile.Trace(cfg, tuple(steps), problem), len(failure.steps))

    def replay(steps: Sequence[Op]) -> str | None:
        first = drive(cfg, steps, fresh(), until_first=True, options=opts).first
        return (
            misuse_failure(cfg, bounds, steps) if first is None else invariant_of(first.side, first.problem)
        )

    return FuzzTarget(
        "lockstep",
        cfg,
        bounds,
        lambda stats: make_lockstep_machine(cfg, bounds, stats, make, opts),
        shrink,
        replay,
        close,
    )


def native_lockstep_target(impl: Path, base: Config, base_bounds: Bounds, step_timeout: float) -> FuzzTarget:
    """The lockstep machine against a native library, only ever loaded in confined children of
    one pool (described in one first; a bad library: `UsageError`), at the config and bounds
    `check --impl` uses, so both share example-database keys. Its `close` ends the children."""
    from dataclasses import replace

    from externref_harness.isolation.pool import replay_args
    from externref_harness.lockstep.runner import LockstepOptions
    from externref_harness.lockstep.targets import bounds_for, open_isolated

    target, pool = open_isolated(impl, step_timeout)
    cfg = replace(target.config(base, None, None), mutant=base.mutant)
    options = LockstepOptions(impl_name=target.name, replay_args=replay_args(impl, step_timeout))
    return lockstep_target(
        cfg,
        bounds_for(cfg, base_bounds, target.description),
        pool.adapter,
        lambda: pool.adapter(fresh=True),
        options,
        pool.close,
    )
