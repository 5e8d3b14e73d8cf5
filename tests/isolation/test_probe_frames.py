"""What crosses of a probe (`impl.interface.ProbeFrame`): the refs' facts and the handles that
changed since the last frame, which the parent writes into the vectors it kept
(`ChildProcessImpl._take_probe`). A frame that names a position past its own count, or leaves a
new position unsent, is the implementation's process breaking the protocol."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from externref_harness.impl.interface import ProbeFrame, StepOutcome, TableFacts, plain_config
from externref_harness.isolation.pool import ChildPool, ChildProcessImpl, ImplementationCrash, StepReply
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, Lockstep
from externref_harness.model import ops
from externref_harness.native.build import build_reference

OUTCOME = StepOutcome(("ok", None), (), (), ())


def _frame(n_handles: int, changed: tuple[tuple[int, int | None], ...]) -> ProbeFrame:
    return ProbeFrame(1, None, TableFacts(0, 0, 0, 2, None), (), n_handles, changed, (), (), (), ())


@pytest.fixture
def started() -> Iterator[ChildProcessImpl]:
    pool = ChildPool(build_reference("debug"), step_timeout=5.0)
    adapter = pool.adapter()
    adapter.start(plain_config(LOCKSTEP_CONFIG))
    try:
        yield adapter
    finally:
        adapter.close()
        pool.close()


def test_the_handles_a_run_changes_are_sent_as_they_change() -> None:
    """A run whose handles grow, are dropped (None) and are taken again passes every check, each
    probe rebuilt from the handles that changed."""
    pool = ChildPool(build_reference("debug"), step_timeout=5.0)
    steps = [ops.New(8, 8), ops.New(8, 8), ops.Clone(0), ops.Drop(1), ops.Gc(), ops.New(8, 8), ops.Drop(0)]
    try:
        run = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
        try:
            sizes = []
            for op in steps:
                check = run.step(op)
                assert check.impl_problem is None and check.model_problem is None, (op, check)
                probe = run.adapter.probe()
                sizes.append((len(probe.handles), sum(h is None for h in probe.handles)))
            assert sizes == [(1, 0), (2, 0), (3, 0), (3, 1), (3, 1), (4, 1), (4, 2)]
        finally:
            run.close()
    finally:
        pool.close()


def test_a_handle_changed_past_the_number_of_handles_breaks_the_protocol(started: ChildProcessImpl) -> None:
    reply = (OUTCOME, _frame(1, ((3, 16),)), 0, ())
    with pytest.raises(ImplementationCrash, match="broke the protocol: step reply: handles changed past"):
        started._checked(reply, StepReply, "step reply")


def test_a_new_handle_never_sent_breaks_the_protocol(started: ChildProcessImpl) -> None:
    started._take_probe(_frame(1, ((0, 16),)), 0, ())
    assert tuple(started.probe().handles) == (16,)
    with pytest.raises(ImplementationCrash, match="broke the protocol: a handle never sent"):
        started._take_probe(_frame(3, ((1, 32),)), 0, ())
