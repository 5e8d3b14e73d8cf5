"""The memory checks' kept comparisons (`memory_checks.ChunkCompare`): after a step that passed, the
next one compares only the positions that changed, on either side. A change on the
implementation's side alone (the model's vectors the very same objects) must still be found.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from externref_harness.impl import heap as checking_heap
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import Probe, plain_config, plain_op
from externref_harness.lockstep.memory_checks import ChunkCompare, memory_problems
from externref_harness.lockstep.projection import RefMap
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG
from externref_harness.model import ops
from externref_harness.model.state import State
from externref_harness.model.transition import run

STEPS = [ops.New(8, 8), ops.New(8, 8), ops.New(8, 8)]


@pytest.fixture
def passed() -> Iterator[tuple[State, Probe, RefMap, ChunkCompare]]:
    """A run of `STEPS` on the Python port, its probe checked once (and passing) with `chunk`."""
    impl = InProcessImpl()
    impl.start(plain_config(LOCKSTEP_CONFIG))
    try:
        refs = RefMap()
        for op in STEPS:
            for word, value in impl.step(plain_op(op)).allocated:
                refs.add(word, value)
        state = run(LOCKSTEP_CONFIG, STEPS)[-1][0]
        probe, chunk = impl.probe(), ChunkCompare()
        assert memory_problems(LOCKSTEP_CONFIG, state, probe, refs, chunk) == []
        yield state, probe, refs, chunk
    finally:
        impl.close()


def test_a_handle_only_the_implementation_changed_is_found(
    passed: tuple[State, Probe, RefMap, ChunkCompare],
) -> None:
    state, probe, refs, chunk = passed
    wrong = probe._replace(handles=probe.handles.set(1, probe.handles[0]))
    assert "host.handles" in {p.check for p in memory_problems(LOCKSTEP_CONFIG, state, wrong, refs, chunk)}


def test_a_ref_whose_facts_only_the_implementation_changed_is_checked_again(
    passed: tuple[State, Probe, RefMap, ChunkCompare],
) -> None:
    state, probe, refs, chunk = passed
    freed = probe.refs[2]._replace(status=checking_heap.FREED)
    wrong = probe._replace(refs=probe.refs.set(2, freed))
    problems = memory_problems(LOCKSTEP_CONFIG, state, wrong, refs, chunk)
    assert [p.check for p in problems] == ["refs.reachable-freed"] and "ref 2" in problems[0].text

