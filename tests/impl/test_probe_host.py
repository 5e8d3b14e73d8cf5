"""The probe's raw pointers and globals (`InProcessImpl._raw_facts`, `_global_facts`): the last
probe's tuples while nothing changed, so the memory checks can tell an unchanged side by identity.
The globals' words are read from the instance's memory every probe: a write there that no step made
must still show in the next one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from probed import probed

from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import plain_op
from externref_harness.model import ops

SETUP = [ops.New(8, 8), ops.AsRaw(0), ops.InitGlobals(2), ops.HostGlobalSet(0, 0)]


@pytest.fixture
def impl() -> Iterator[InProcessImpl]:
    """The Python port after `SETUP`, probed once."""
    yield from probed(InProcessImpl(), SETUP)


def test_a_step_that_changes_neither_keeps_the_last_probes_tuples(impl: InProcessImpl) -> None:
    before = impl.probe()
    impl.step(plain_op(ops.New(8, 8)))
    after = impl.probe()
    assert after.raws is before.raws and after.globals is before.globals


def test_a_step_that_changes_them_is_in_the_next_probe(impl: InProcessImpl) -> None:
    before = impl.probe()
    assert before.raws[0] is not None and before.globals[1] == 0
    impl.step(plain_op(ops.HostGlobalSet(1, 0)))
    impl.step(plain_op(ops.AsRaw(0)))
    after = impl.probe()
    assert after.globals == (before.globals[0], before.globals[0])
    assert after.raws == (before.raws[0], before.raws[0])


def test_a_global_written_behind_the_hosts_back_is_in_the_next_probe(impl: InProcessImpl) -> None:
    before = impl.probe()
    impl.world.globals_memory[0] = 0x1234_5670
    after = impl.probe()
    assert after.globals == (0x1234_5670, before.globals[1])
