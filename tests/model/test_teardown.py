"""Teardown reaches quiescence for any trace the model accepts, or says plainly that it gave up.

A fixed cap on the quiescing steps (200) once turned clean long traces into a leak reported on the
implementation while the model said ok.
"""

from __future__ import annotations

import pytest
from interpreted import ran_interpreted

from externref_harness.impl.adapter import InProcessImpl
from externref_harness.lockstep import runner as lockstep
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, drive
from externref_harness.model import ops
from externref_harness.model.moves import next_quiesce_op, quiesce_step_bound
from externref_harness.model.state import Uninit
from externref_harness.model.transition import run, step

CFG = LOCKSTEP_CONFIG

LONG_TRACES: dict[str, list[ops.Op]] = {
    "250 allocations": [ops.New(8, 8)] * 250,
    "a host call passing slot 0 197 times": [
        ops.New(8, 8), ops.CallWasm((0,)), ops.WasmCallHost((0,) * 197, 0)
    ],
    "a host call passing slot 0 250 times": [
        ops.New(8, 8), ops.CallWasm((0,)), ops.WasmCallHost((0,) * 250, 0)
    ],
}  # fmt: skip


@pytest.mark.parametrize("name", LONG_TRACES)
def test_long_clean_traces_pass_on_both_sides(name: str) -> None:
    steps = LONG_TRACES[name]
    driven = drive(CFG, steps, InProcessImpl(), until_first=False)
    assert driven.model_failure is None
    assert driven.impl_failure is None, driven.impl_failure
    final = driven.states[-1]
    assert next_quiesce_op(final) is None, "the teardown ran to quiescence"
    assert all(box.freed for box in final.heap)


#: Traces that leave every kind of thing to tear down: handles, owned and borrowed raws, globals,
#: nested Wasm and host frames, `gc_okay` false, refs in the table.
TEARDOWN_STATES = [
    [ops.New(8, 8)] * 3 + [ops.IntoRaw(0), ops.AsRaw(1), ops.InitGlobals(2), ops.HostGlobalSet(0, 1)],
    [ops.New(8, 8), ops.New(8, 8), ops.CallWasm((0, 1)), ops.WasmCallWasm((0,), 2),
     ops.WasmCallHost((0,), 1), ops.New(8, 8), ops.IntoRaw(3), ops.SetGcOkay(False)],
    [ops.New(8, 8)] * 4 + [ops.TryInsert(0), ops.InsertWithoutGc(1), ops.InsertWithGc(2), ops.IntoRaw(3)],
]  # fmt: skip


@pytest.mark.parametrize("trace", TEARDOWN_STATES)
def test_the_bound_covers_what_the_state_needs(trace: list[ops.Op]) -> None:
    state = run(CFG, trace)[-1][0]
    bound = quiesce_step_bound(state)
    needed = 0
    while (op := next_quiesce_op(state)) is not None:
        state, _ = step(CFG, state, op)
        needed += 1
        assert needed <= bound
    assert all(h is None for h in state.handles)
    assert not any(raw is not None and raw.owned for raw in state.raws)
    assert all(isinstance(g, Uninit) for g in state.globals) and len(state.frames) == 1
    assert state.table.next == 0 and not state.table.over_approximated_stack_roots
    assert all(b.freed for b in state.heap)


def test_the_bound_is_tight_when_every_kind_of_step_is_needed() -> None:
    trace = [ops.New(8, 8)] * 3 + [
        ops.IntoRaw(0), ops.IntoRaw(1), ops.InitGlobals(1), ops.InsertWithoutGc(2), ops.SetGcOkay(False)
    ]  # fmt: skip
    state = run(CFG, trace)[-1][0]
    needed = []
    bound = quiesce_step_bound(state)
    while (op := next_quiesce_op(state)) is not None:
        state, _ = step(CFG, state, op)
        needed.append(op)
    assert needed == [
        ops.SetGcOkay(True), ops.FromRaw(0), ops.Drop(3), ops.FromRaw(1), ops.Drop(4),
        ops.TeardownGlobals(), ops.Gc(),
    ]  # fmt: skip
    assert bound == len(needed)


def test_a_teardown_that_gives_up_says_so_instead_of_reporting_a_leak(
    monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    if ran_interpreted(request):
        return
    monkeypatch.setattr(lockstep, "quiesce_step_bound", lambda state: 3)
    driven = drive(CFG, [ops.New(8, 8)] * 5, InProcessImpl(), until_first=False)
    assert driven.impl_failure is not None
    problem = driven.impl_failure.problem
    assert "the teardown gave up: 3 steps did not reach quiescence" in problem
    assert "checking heap reports" not in problem and "never freed" not in problem
