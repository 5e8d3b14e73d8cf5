"""The observable projection: what one step shows, computed the same way for both sides.

`project_model` reads it off the model's observation and states, `project_impl` off the
implementation's plain-data outcome and probe; the lockstep compares the two (`projection_diff`).
Refs are model ids on one side and ref words on the other (footer addresses, or handles under
`opaque-refs`); `RefMap` pairs them in allocation order. Nothing here peeks at an implementation's
internals. What `eq`, `cmp` and `hash` must answer is `identity.py`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator
from typing import Any, NamedTuple, Protocol

from externref_harness.impl import heap as checking_heap
from externref_harness.impl.interface import StepOutcome, record
from externref_harness.model import ops
from externref_harness.model.observation import Err, Misuse, Observation, Ok, Panic
from externref_harness.model.runtime import FAULT_DOUBLE_DROP, FAULT_USE_AFTER_FREE, FAULT_WILD_POINTER
from externref_harness.model.state import STACK_TOP, State


class RefMap:
    """Model ref ids <-> ref words (and value addresses), paired in allocation order.

    A word names the latest ref allocated with it: footer addresses are never reused during a run
    (the checking heap quarantines freed blocks), but a handle (`opaque-refs`) may be given out
    again once its ref is freed, and a value kept outside the hooks may reuse a dead value's
    address. Giving out a live ref's word again is `refs.distinct`'s failure
    (`memory_checks.new_ref_problems`), checked before the new pair is added."""

    def __init__(self) -> None:
        self.footers: list[int] = []
        self._by_footer: dict[int, int] = {}
        self._by_value: dict[int, int] = {}
        #: How many times `add` gave a known word to another ref: a word's meaning changes only then.
        self.remapped = 0

    def add(self, footer: int, value: int) -> None:
        r = len(self.footers)
        if footer in self._by_footer:
            self.remapped += 1
        self.footers.append(footer)
        self._by_footer[footer] = r
        self._by_value[value] = r

    def ref(self, footer: int) -> int | str:
        """The model id of a ref word; an unknown word reads as `?0x...`."""
        r = self._by_footer.get(footer)
        return f"?{footer:#x}" if r is None else r

    def value(self, address: int) -> int | str:
        r = self._by_value.get(address)
        return f"?{address:#x}" if r is None else r

    def slot(self, word: int) -> int | str | None:
        """A pointer-sized word that holds an `Option<VMExternRef>`."""
        return None if word == 0 else self.ref(word)


# --- the observable projection -------------------------------------------------------------------


class Projection(NamedTuple):
    """What one step shows, the same plain shape for both sides. A NamedTuple, not a frozen
    dataclass: two are made every step, and compiled a frozen dataclass's `__init__` costs twice
    a NamedTuple's (it sets each field through `object.__setattr__`)."""

    #: `("ok", value)`, `("err", kind)`, `("misuse", kind)` or `("panic",)`; refs as model ids.
    result: tuple[Any, ...]
    #: Model ids of the values whose destructor ran in this step.
    dropped: tuple[Any, ...]
    #: The stack canary as bytes below the top of the stack (None: no canary).
    canary: int | None
    #: Memory faults of the step, as `model.runtime` FAULT_* kinds.
    faults: tuple[str, ...]


#: The projection's fields, in order: what a step's comparison goes through, name by name.
FIELDS: tuple[str, ...] = Projection._fields


def _sorted_ids(ids: Iterator[int | str]) -> tuple[int | str, ...]:
    return tuple(sorted(ids, key=lambda r: (1, 0, r) if isinstance(r, str) else (0, r, "")))


def _dropped_ids(
    ids: Collection[int], named: Callable[[int], int | str] | None = None
) -> tuple[int | str, ...]:
    """`ids` (each `named`, if given) in `_sorted_ids`' order. Most steps drop nothing, and a drop
    mostly drops one: neither is sorted (two of each step's projections, one per side)."""
    if not ids:
        return ()
    if len(ids) == 1:
        (only,) = ids
        return (only if named is None else named(only),)
    return _sorted_ids(iter(ids) if named is None else (named(i) for i in ids))


def project_model(op: ops.Op, obs: Observation, before: State, after: State) -> Projection:
    result = obs.result
    if isinstance(result, Panic):
        # A panicking step keeps the pre-step state: no canary or fault of its own to compare.
        return record(Projection, (("panic",), _dropped_ids(obs.dropped), None, ()))
    if isinstance(result, Ok):
        value = result.value
        if isinstance(op, ops.StackCanary) and value is not None:
            value = STACK_TOP - value
        shown: tuple[Any, ...] = ("ok", value)
    elif isinstance(result, Err):
        shown = ("err", result.kind)
    else:
        assert isinstance(result, Misuse)
        shown = ("misuse", result.kind)
    canary = after.table.stack_canary
    new_faults = after.faults[len(before.faults) :]
    faults = tuple(sorted([f.split(":", 1)[0] for f in new_faults])) if new_faults else ()
    return record(
        Projection,
        (shown, _dropped_ids(obs.dropped), None if canary is None else STACK_TOP - canary, faults),
    )


def model_fault_of(report: tuple[str, int, str, str]) -> str:
    """The model's FAULT_* kind for a checking-heap report (its own kind when the model has none)."""
    kind, _, access, _ = report
    if kind in (checking_heap.WILD_ACCESS, checking_heap.BUFFER_OVERFLOW, checking_heap.INVALID_FREE):
        return FAULT_WILD_POINTER
    if kind == checking_heap.USE_AFTER_FREE:
        return FAULT_DOUBLE_DROP if access == checking_heap.DECREMENT else FAULT_USE_AFTER_FREE
    if kind == checking_heap.DOUBLE_FREE:
        return FAULT_DOUBLE_DROP
    return kind


class StackFacts(Protocol):
    """What of the implementation's memory a projection reads: a `Probe` after a step, or a
    replayed step's `Replayed`."""

    @property
    def stack_top(self) -> int: ...
    @property
    def canary(self) -> int | None: ...


def project_impl(op: ops.Op, outcome: StepOutcome, probe: StackFacts, refs: RefMap) -> Projection:
    dropped = _dropped_ids(outcome.dropped, refs.value)
    status = outcome.result[0]
    if status == "panic":
        return record(Projection, (("panic",), dropped, None, ()))
    if status == "ok":
        value = outcome.result[1]
        if isinstance(op, ops.StackCanary) and value is not None:
            value = probe.stack_top - value
        elif isinstance(op, ops.Elements):
            value = _sorted_ids(refs.ref(a) for a in value)
        elif isinstance(op, ops.Deref):
            value = ("unreadable",) if value is None else (refs.value(value[0]), *value[1:])
        elif isinstance(op, ops.Cmp):
            value = value == 0
        shown: tuple[Any, ...] = ("ok", value)
    else:
        shown = (status, outcome.result[1])
    return record(
        Projection,
        (
            shown,
            dropped,
            None if probe.canary is None else probe.stack_top - probe.canary,
            tuple(sorted([model_fault_of(r) for r in outcome.reports])) if outcome.reports else (),
        ),
    )


def projection_diff(model: Projection, impl: Projection) -> list[str]:
    return [
        f"{name}: model {getattr(model, name)!r}, impl {getattr(impl, name)!r}"
        for name in FIELDS
        if getattr(model, name) != getattr(impl, name)
    ]

