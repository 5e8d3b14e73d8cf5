"""What every proof in `specs/` returns, and the one way they ask z3.

A property is proven when `premises ∧ ¬conclusion` is unsatisfiable. When it is satisfiable, z3's
model is the counterexample; when z3 gives up (timeout, incompleteness) the verdict is `unknown`,
never `proven`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import z3

Status = Literal["proven", "counterexample", "unknown"]

#: Default budget of one solver call, in milliseconds.
DEFAULT_TIMEOUT_MS = 60_000


@dataclass(frozen=True)
class Verdict:
    """One property's outcome. `detail` holds the counterexample's values or why it is unknown."""

    name: str
    status: Status
    seconds: float
    detail: str = ""
    #: The assumptions (invariant ids and named preconditions) the property was proven under.
    assumptions: tuple[str, ...] = ()
    #: An auxiliary lemma (the bounded proof's cuts), not a property of the issue.
    lemma: bool = False

    @property
    def proven(self) -> bool:
        return self.status == "proven"


@dataclass(frozen=True)
class Outcome:
    status: Status
    seconds: float
    model: z3.ModelRef | None = None
    reason: str = ""

    @property
    def proven(self) -> bool:
        return self.status == "proven"


VACUOUS = "vacuous: the premises contradict each other"


def check_valid(
    premises: Iterable[Any],
    conclusion: Any,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    nonvacuous: bool = False,
) -> Outcome:
    """Is `premises ⇒ conclusion` valid? A counterexample comes with z3's model.

    With `nonvacuous`, a proof also requires the premises to be satisfiable: contradictory
    premises prove anything, and are reported as `unknown`.
    """
    premises = list(premises)
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    solver.add(*premises)
    solver.add(z3.Not(conclusion))
    started = time.perf_counter()
    answer = solver.check()
    if answer == z3.unsat and nonvacuous and find_example(premises, timeout_ms) is None:
        return Outcome("unknown", time.perf_counter() - started, reason=VACUOUS)
    seconds = time.perf_counter() - started
    if answer == z3.unsat:
        return Outcome("proven", seconds)
    if answer == z3.sat:
        return Outcome("counterexample", seconds, solver.model())
    return Outcome("unknown", seconds, reason=solver.reason_unknown())


def find_example(constraints: Iterable[Any], timeout_ms: int = DEFAULT_TIMEOUT_MS) -> z3.ModelRef | None:
    """A model of `constraints`, or None when they are unsatisfiable (or z3 gives up)."""
    solver = z3.Solver()
    solver.set("timeout", timeout_ms)
    solver.add(*constraints)
    return solver.model() if solver.check() == z3.sat else None


def verdict(
    name: str,
    outcome: Outcome,
    describe: Callable[[z3.ModelRef], str],
    assumptions: tuple[str, ...] = (),
    proven_detail: str = "",
) -> Verdict:
    """Turn a solver outcome into a `Verdict`, describing a counterexample with `describe`."""
    if outcome.status == "counterexample":
        assert outcome.model is not None
        detail = describe(outcome.model)
    elif outcome.status == "unknown":
        detail = f"z3: {outcome.reason}"
    else:
        detail = proven_detail
    return Verdict(name, outcome.status, outcome.seconds, detail, assumptions)


def value_of(model: z3.ModelRef | None, term: Any) -> Any:
    """An int or bool: `term`'s value in `model`, or its simplification when it is closed."""
    value = z3.simplify(term) if model is None else model.eval(term, model_completion=True)
    if z3.is_int_value(value) or z3.is_bv_value(value):
        return value.as_long()
    if z3.is_true(value) or z3.is_false(value):
        return z3.is_true(value)
    raise ValueError(f"not a concrete value: {value}")


def as_int(model: z3.ModelRef, term: Any) -> int:
    return int(model.eval(term, model_completion=True).as_long())


def as_bool(model: z3.ModelRef, term: Any) -> bool:
    return bool(z3.is_true(model.eval(term, model_completion=True)))
