"""The observable projection (`lockstep.projection`): both sides' dropped values as model ids, in
one order. Both sides go through the same code, so a slip there (a drop lost, an order not kept)
would hide a divergence instead of showing one: these pin the projection itself."""

from __future__ import annotations

import pytest

from externref_harness.impl.interface import Replayed, StepOutcome
from externref_harness.lockstep.projection import RefMap, project_impl, project_model
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG
from externref_harness.model import ops
from externref_harness.model.observation import Observation, Ok
from externref_harness.model.state import State

#: Three refs' (footer, value) words, allocated in this order: model ids 0, 1 and 2.
WORDS = [(0x1000, 0x1100), (0x2000, 0x2100), (0x3000, 0x3100)]
UNKNOWN_VALUE = 0x9900


def _refs() -> RefMap:
    refs = RefMap()
    for footer, value in WORDS:
        refs.add(footer, value)
    return refs


@pytest.mark.parametrize(
    ("model_ids", "values", "shown"),
    [
        pytest.param(set(), [], (), id="none"),
        pytest.param({1}, [0x2100], (1,), id="one"),
        pytest.param({2, 0}, [0x3100, 0x1100], (0, 2), id="two, sorted"),
        pytest.param({2, 1, 0}, [0x2100, 0x3100, 0x1100], (0, 1, 2), id="three, sorted"),
    ],
)
def test_dropped_values_show_as_sorted_model_ids_on_both_sides(
    model_ids: set[int], values: list[int], shown: tuple[int, ...]
) -> None:
    state = State.initial(LOCKSTEP_CONFIG)
    model = project_model(ops.Gc(), Observation(Ok(None), frozenset(model_ids)), state, state)
    outcome = StepOutcome(("ok", None), tuple(values), (), ())
    impl = project_impl(ops.Gc(), outcome, Replayed(outcome, 0, None), _refs())
    assert model.dropped == impl.dropped == shown


def test_a_value_no_ref_has_shows_as_its_address() -> None:
    outcome = StepOutcome(("ok", None), (UNKNOWN_VALUE,), (), ())
    impl = project_impl(ops.Gc(), outcome, Replayed(outcome, 0, None), _refs())
    assert impl.dropped == (f"?{UNKNOWN_VALUE:#x}",)
    outcome = StepOutcome(("ok", None), (UNKNOWN_VALUE, 0x3100), (), ())
    impl = project_impl(ops.Gc(), outcome, Replayed(outcome, 0, None), _refs())
    assert impl.dropped == (2, f"?{UNKNOWN_VALUE:#x}")  # model ids first, then unknown words
