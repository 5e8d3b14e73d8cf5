"""The trace shrinker keeps the failure it was given and removes everything else it can."""

from __future__ import annotations

from collections.abc import Sequence

from externref_harness.model import ops
from externref_harness.model.ops import Op
from externref_harness.model.state import Config
from externref_harness.search.shrink import (
    ddmin,
    model_failure,
    shrink_model_trace,
    simplify_fields,
    without_step,
)


def test_ddmin_finds_a_one_minimal_failing_subsequence() -> None:
    steps: list[Op] = [ops.New(i, 1) for i in range(20)]

    def fails(candidate: Sequence[Op]) -> bool:
        sizes = {op.size for op in candidate if isinstance(op, ops.New)}
        return {3, 11, 17} <= sizes

    assert [op.size for op in ddmin(steps, fails) if isinstance(op, ops.New)] == [3, 11, 17]


def test_shrinking_a_model_failure_keeps_the_same_invariant_and_drops_the_noise() -> None:
    cfg = Config(chunk_size=1, slots=3, mutant="cve-2021-39216")
    noisy: list[Op] = [
        ops.New(8, 8), ops.BumpCapacityRemaining(), ops.New(8, 8), ops.Clone(0), ops.Drop(2),
        ops.Elements(), ops.Gc(), ops.New(8, 8), ops.New(8, 8), ops.CallWasm((0, 1, 3)),
        ops.WasmNull(0),
    ]  # fmt: skip
    before = model_failure(cfg, noisy)
    assert before is not None
    shrunk = shrink_model_trace(cfg, noisy)
    after = model_failure(cfg, shrunk)
    assert after is not None and after.invariant == before.invariant
    assert after.step == len(shrunk) < len(noisy)
    assert not any(isinstance(op, ops.BumpCapacityRemaining | ops.Elements) for op in shrunk)


def test_a_passing_trace_is_left_alone() -> None:
    cfg = Config(chunk_size=2, slots=2)
    steps: list[Op] = [ops.New(8, 8), ops.Drop(0), ops.Gc()]
    assert model_failure(cfg, steps) is None
    assert shrink_model_trace(cfg, steps) == steps


def test_deleting_a_step_renumbers_the_handles_named_after_it() -> None:
    cfg = Config(chunk_size=2, slots=2)
    steps: list[Op] = [ops.New(8, 8), ops.New(16, 8), ops.Clone(1), ops.Drop(2), ops.Drop(1)]
    assert without_step(cfg, steps, 0) == [ops.New(16, 8), ops.Clone(0), ops.Drop(1), ops.Drop(0)]
    assert without_step(cfg, steps, 1) is None  # later steps use the handle it created


def test_shrinking_removes_allocations_the_failure_does_not_need() -> None:
    cfg = Config(chunk_size=2, slots=3, mutant="cve-2021-39216")
    noisy: list[Op] = [
        ops.New(16, 8), ops.New(16, 8), ops.Clone(1), ops.Clone(1), ops.New(8, 8), ops.Gc(),
        ops.New(0, 1), ops.New(1, 1), ops.New(8, 8), ops.CallWasm((4, 5, 7)),
    ]  # fmt: skip
    shrunk = shrink_model_trace(cfg, noisy)
    assert model_failure(cfg, shrunk) is not None
    assert len(shrunk) == 5
    assert isinstance(shrunk[-1], ops.CallWasm) and shrunk[-1].args == (0, 1, 2)


def test_simplifying_fields_drops_arguments_and_moves_values_toward_0() -> None:
    def fails(steps: Sequence[Op]) -> bool:  # a host call returning to a slot above 0 (no model)
        return any(isinstance(op, ops.WasmCallHost) and op.ret_slot >= 1 for op in steps)

    steps: list[Op] = [ops.New(32, 16), ops.WasmCallHost((0, 2), 5, False)]
    assert simplify_fields(steps, fails) == [ops.New(0, 0), ops.WasmCallHost((), 1, False)]
    assert simplify_fields([ops.Gc()], fails) == [ops.Gc()]  # nothing to simplify, nothing asked


def test_traces_of_one_bug_that_differ_only_in_drawn_values_shrink_to_one() -> None:
    """What deletion alone leaves differs with the values the search drew; simplified, it is one
    trace, so a campaign counts the second as a duplicate of the first."""
    cfg = Config(chunk_size=2, slots=3, mutant="cve-2021-39216")
    one: list[Op] = [ops.New(16, 8), ops.New(32, 16), ops.New(8, 8), ops.Gc(), ops.CallWasm((0, 1, 2))]
    other: list[Op] = [ops.New(8, 8), ops.New(0, 1), ops.New(24, 8), ops.Gc(), ops.Gc()]
    other.append(ops.CallWasm((0, 1, 2)))
    assert model_failure(cfg, one) is not None and model_failure(cfg, other) is not None
    assert shrink_model_trace(cfg, one) == shrink_model_trace(cfg, other)
