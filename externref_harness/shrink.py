"""Shrinking failing traces by deleting steps (ddmin), then truncating at the failing step.

Hypothesis's own shrinker re-runs the whole state machine for every candidate and, on this
machine's long stateful examples, spent minutes per failure. Deleting steps from the recorded trace
and replaying it on the model is the same search at a fraction of the cost: each candidate is a
pure replay. A candidate counts only if it fails with the *same* invariant, so the shrunk trace
still shows the bug that was found. Steps that become misuse after a deletion are refused by the
model without changing the state, and are deleted in turn.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from model.observation import Misuse
from model.ops import Op
from model.state import Config, State
from model.transition import step
from specs.invariants import first_violation


@dataclass(frozen=True)
class ModelFailure:
    """The first step (1-based) at which the model breaks an invariant, and which one."""

    step: int
    invariant: str
    message: str

    def __str__(self) -> str:
        return f"step {self.step}: {self.invariant}: {self.message}"


def model_failure(cfg: Config, steps: Sequence[Op]) -> ModelFailure | None:
    state = State.initial(cfg)
    for i, op in enumerate(steps, 1):
        state, _ = step(cfg, state, op)
        found = first_violation(cfg, state)
        if found is not None:
            inv, message = found
            return ModelFailure(i, f"{inv.id} {inv.name}", message)
    return None


def ddmin(steps: Sequence[Op], fails: Callable[[Sequence[Op]], bool]) -> list[Op]:
    """Zeller's delta debugging over the step list: a 1-minimal failing subsequence."""
    current = list(steps)
    n = 2
    while len(current) >= 2:
        chunk = max(1, len(current) // n)
        reduced = False
        for start in range(0, len(current), chunk):
            candidate = current[:start] + current[start + chunk :]
            if candidate and fails(candidate):
                current = candidate
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(n * 2, len(current))
    return current


def shrink_model_trace(cfg: Config, steps: Sequence[Op]) -> list[Op]:
    """The shortest-found trace that fails the same invariant, cut at its failing step."""
    original = model_failure(cfg, steps)
    if original is None:
        return list(steps)

    def fails(candidate: Sequence[Op]) -> bool:
        found = model_failure(cfg, candidate)
        return found is not None and found.invariant == original.invariant

    shrunk = ddmin(steps[: original.step], fails)
    final = model_failure(cfg, shrunk)
    assert final is not None
    return _drop_refused(cfg, shrunk[: final.step], fails)


def _drop_refused(cfg: Config, steps: list[Op], fails: Callable[[Sequence[Op]], bool]) -> list[Op]:
    state = State.initial(cfg)
    kept: list[Op] = []
    for op in steps:
        state, obs = step(cfg, state, op)
        if not isinstance(obs.result, Misuse):
            kept.append(op)
    return kept if fails(kept) else steps
