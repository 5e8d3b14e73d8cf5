"""Shrinking failing traces by deleting steps (ddmin, then one step at a time with renumbering),
simplifying the fields of the steps left, then truncating at the failing step.

Hypothesis's own shrinker re-runs the whole state machine for every candidate and, on this
machine's long stateful examples, spent minutes per failure. Deleting steps from the recorded trace
and replaying it on the model is the same search at a fraction of the cost: each candidate is a
pure replay. A candidate counts only if it fails with the *same* invariant, so the shrunk trace
still shows the bug that was found. Steps that become misuse after a deletion are refused by the
model without changing the state, and are deleted in turn.

Plain deletion cannot remove a step that creates a host handle (or raw pointer) when later steps
name handles by index: every later index would point one slot off. The last pass deletes such a
step and renumbers the later references (`model.ops.HANDLE_FIELDS`), so a trace keeps only the
allocations its failure needs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from externref_harness.model.moves import renamed_indices
from externref_harness.model.observation import Misuse
from externref_harness.model.ops import HANDLE_FIELDS, RAW_FIELDS, Op
from externref_harness.model.state import Config, State
from externref_harness.model.transition import step
from externref_harness.specs.invariants import first_violation


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

    shrunk = delete_with_renumbering(cfg, ddmin(steps[: original.step], fails), fails)
    shrunk = delete_with_renumbering(cfg, simplify_fields(shrunk, fails), fails)
    final = model_failure(cfg, shrunk)
    assert final is not None
    return _drop_refused(cfg, shrunk[: final.step], fails)


def _created(cfg: Config, steps: Sequence[Op]) -> list[tuple[int, int, int, int]]:
    """For each step: (handles before, handles after, raws before, raws after)."""
    state = State.initial(cfg)
    out = []
    for op in steps:
        before = (len(state.handles), len(state.raws))
        state, _ = step(cfg, state, op)
        out.append((before[0], len(state.handles), before[1], len(state.raws)))
    return out


def _renumber(op: Op, fields: tuple[str, ...], first: int, removed: int) -> Op | None:
    """`op` with indices at or past `first + removed` moved down; None if it named a removed one."""

    def moved(v: int) -> int | None:
        if v < first:
            return v
        return None if v < first + removed else v - removed

    changes = renamed_indices(op, fields, moved)
    if changes is None:
        return None
    return dataclasses.replace(op, **changes) if changes else op


def without_step(cfg: Config, steps: Sequence[Op], i: int) -> list[Op] | None:
    """`steps` without step `i`, later handle and raw indices renumbered; None if they used it."""
    h0, h1, r0, r1 = _created(cfg, steps[: i + 1])[i]
    out = list(steps[:i])
    for op in steps[i + 1 :]:
        renumbered: Op | None = op
        if h1 > h0:
            renumbered = _renumber(op, HANDLE_FIELDS.get(type(op), ()), h0, h1 - h0)
        if renumbered is not None and r1 > r0:
            renumbered = _renumber(renumbered, RAW_FIELDS.get(type(op), ()), r0, r1 - r0)
        if renumbered is None:
            return None
        out.append(renumbered)
    return out


def delete_with_renumbering(
    cfg: Config, steps: Sequence[Op], fails: Callable[[Sequence[Op]], bool]
) -> list[Op]:
    """Delete single steps, youngest first, renumbering later references, until none can go."""
    current = list(steps)
    changed = True
    while changed:
        changed = False
        for i in reversed(range(len(current))):
            candidate = without_step(cfg, current, i)
            if candidate is not None and fails(candidate):
                current = candidate
                changed = True
                break
    return current


def _simpler_values(value: object) -> Sequence[object]:
    """Simpler values of one field, simplest first: a tuple without one of its items (an empty
    one first), an integer moved toward 0. Booleans and None are left as they are."""
    if isinstance(value, tuple):
        simpler: list[object] = [()] if len(value) > 1 else []
        return simpler + [value[:i] + value[i + 1 :] for i in range(len(value))]
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return sorted({0, 1, value // 2} - {value})
    return []


def simplify_fields(steps: Sequence[Op], fails: Callable[[Sequence[Op]], bool]) -> list[Op]:
    """Simplify each step's fields while the trace still fails: a call's arguments dropped, a slot
    or a size moved toward 0. Deletion alone leaves whatever values the search drew, so one bug
    shrinks to traces that differ only in them (`WasmCallHost(args=(0, 2), ret_slot=1)` and
    `WasmCallHost(args=(0,), ret_slot=2)`); simplified, they meet in one trace, read and
    deduplicated as one. A candidate the op refuses to build is skipped."""
    current = list(steps)
    changed = True
    while changed:
        changed = False
        for i, op in enumerate(current):
            for field in dataclasses.fields(op):
                for value in _simpler_values(getattr(op, field.name)):
                    try:
                        simpler = dataclasses.replace(op, **{field.name: value})
                    except (TypeError, ValueError):
                        continue
                    candidate = [*current[:i], simpler, *current[i + 1 :]]
                    if fails(candidate):
                        current, op, changed = candidate, simpler, True
                        break
    return current


def _drop_refused(cfg: Config, steps: list[Op], fails: Callable[[Sequence[Op]], bool]) -> list[Op]:
    state = State.initial(cfg)
    kept: list[Op] = []
    for op in steps:
        state, obs = step(cfg, state, op)
        if not isinstance(obs.result, Misuse):
            kept.append(op)
    return kept if fails(kept) else steps
