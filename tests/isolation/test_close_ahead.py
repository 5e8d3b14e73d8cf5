"""A run closed ahead (`Lockstep.close_ahead`): every request of it sent, its close is sent before
its replies are all read, and the next run is sent behind it at once, so the child goes on to the
next run while the parent still checks this one. The replies are still read in order, each by its
own run; a close that fails still retires the child and the run behind goes on in another; a run
that stops before reading all its replies retires the child, and the run behind it is closed
unread. The libraries are the C reference and its misbehaving wrappers (`misbehaving.py`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from misbehaving import build, leftovers

from externref_harness.errors import RunsOverlap
from externref_harness.isolation.pool import ChildPool
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, Lockstep
from externref_harness.model.ops import Drop, Gc, InsertWithGc, New, Op
from externref_harness.native.build import build_reference

#: A run: two steps replayed, then three sent in one batch behind them.
REPLAYED: list[Op] = [New(8, 8), New(8, 8)]
STEPPED: list[Op] = [InsertWithGc(1), Gc(), Drop(0)]


def _sent_and_closed_ahead(pool: ChildPool) -> Lockstep:
    """A run whose replay is read and checked, its batch under way, and its close sent."""
    run = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
    sent = run.send_replay(REPLAYED, STEPPED)
    assert sent is not None
    assert [c.impl_problem for c in run.check_replay(sent)] == [None, None]
    assert run.steps_under_way == len(STEPPED)
    assert run.close_ahead()
    return run


def test_the_run_behind_is_sent_before_the_one_ahead_is_read_and_each_reads_its_own() -> None:
    pool = ChildPool(build_reference("debug"), step_timeout=5.0)
    try:
        for _ in range(3):
            ahead = _sent_and_closed_ahead(pool)
            behind = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
            sent = behind.send_replay([*REPLAYED, *STEPPED])
            assert sent is not None
            try:
                checks = [ahead.step(op, STEPPED[i + 1 :]) for i, op in enumerate(STEPPED)]
                assert [c.impl_problem for c in checks] == [None] * len(STEPPED)
            finally:
                ahead.close()
            try:
                assert [c.impl_problem for c in behind.check_replay(sent)] == [None] * 5
                assert behind.finish() is None
            finally:
                behind.close()
        assert (pool.started, pool.crashes) == (2, 0)  # one child served them all (a spare waited)
    finally:
        pool.close()


def test_an_adapter_in_this_process_is_not_closed_ahead() -> None:
    from externref_harness.impl.adapter import InProcessImpl

    run = Lockstep(LOCKSTEP_CONFIG, InProcessImpl())
    try:
        assert run.step(New(8, 8)).impl_problem is None
        assert not run.close_ahead()
    finally:
        run.close()


def test_a_run_not_all_sent_is_not_closed_ahead() -> None:
    """While the start's or the replay's reply is still to be read (they may have to be sent again
    to another child) the close is not sent ahead."""
    pool = ChildPool(build_reference("debug"), step_timeout=5.0)
    try:
        run = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
        try:
            sent = run.send_replay(REPLAYED)
            assert sent is not None
            assert not run.close_ahead()
            assert [c.impl_problem for c in run.check_replay(sent)] == [None, None]
            assert run.close_ahead() and not run.close_ahead()  # once
        finally:
            run.close()
    finally:
        pool.close()


@pytest.mark.parametrize(
    "name,hooks",
    [
        ("close-segfaults", "if (h == NULL) raise(SIGSEGV)"),
        ("close-hangs", "if (h == NULL) for (;;) pause()"),
    ],
)
def test_a_close_ahead_that_fails_retires_the_child_and_the_run_behind_goes_on_in_another(
    tmp_path: Path, name: str, hooks: str
) -> None:
    """The close of a run closed before its teardown calls `xr_set_hooks(NULL)`, where these fail:
    the run behind, sent to the same child, reads the close's failure before its start's reply,
    and goes on in another child, sent everything it had sent. No failure of either run."""
    library = build(tmp_path, name, set_hooks=hooks)
    pool = ChildPool(library, step_timeout=2.0)
    try:
        ahead = _sent_and_closed_ahead(pool)
        behind = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
        sent = behind.send_replay(REPLAYED, STEPPED)
        assert sent is not None
        try:
            assert [ahead.step(op).impl_problem for op in STEPPED] == [None] * len(STEPPED)
        finally:
            ahead.close()
        try:
            assert [c.impl_problem for c in behind.check_replay(sent)] == [None, None]
            assert [behind.step(op).impl_problem for op in STEPPED] == [None] * len(STEPPED)
        finally:
            behind.close()
        assert pool.crashes == 0 and pool.started >= 3
    finally:
        pool.close()
    assert leftovers(library) == []


@pytest.mark.parametrize("with_behind", [True, False])
def test_a_run_that_stops_before_its_last_reply_retires_the_child_and_the_run_behind_is_dropped(
    tmp_path: Path, with_behind: bool
) -> None:
    """The run ahead stops at its first batched step (as at a divergence): its other replies, the
    close's, and everything of the run behind (if one was sent) are never read. Its child is
    retired; the run behind is closed unread; the next run starts in another child and passes."""
    library = build(tmp_path, "plain")
    pool = ChildPool(library, step_timeout=2.0)
    try:
        ahead = _sent_and_closed_ahead(pool)
        behind = Lockstep(LOCKSTEP_CONFIG, pool.adapter()) if with_behind else None
        if behind is not None:
            assert behind.send_replay(REPLAYED, STEPPED) is not None
        try:
            assert ahead.step(STEPPED[0]).impl_problem is None
        finally:
            ahead.close()
        if behind is not None:
            behind.close()
        run = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
        try:
            assert [run.step(op).impl_problem for op in [*REPLAYED, *STEPPED]] == [None] * 5
        finally:
            run.close()
        assert pool.crashes == 0 and pool.started >= 3
    finally:
        pool.close()
    assert leftovers(library) == []


@pytest.mark.parametrize("dropped", [True, False])
def test_a_finish_sent_ahead_is_read_by_the_run_and_the_run_behind_goes_on(dropped: bool) -> None:
    """A run's teardown (its quiescence steps, then `finish`, the leak check) sent with its steps,
    and its close, before any of their replies is read: `finish` reads the leak check's verdict
    (a ref still held is a leak; none once it is dropped), then the run behind reads its own."""
    pool = ChildPool(build_reference("debug"), step_timeout=5.0)
    try:
        ahead = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
        tail: list[Op] = [Gc(), Drop(0)] if dropped else [Gc()]
        sent = ahead.send_replay([New(8, 8)], tail)
        assert sent is not None
        assert [c.impl_problem for c in ahead.check_replay(sent)] == [None]
        assert ahead.steps_under_way == len(tail)
        assert ahead.close_ahead(finish=True)
        behind = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
        behind_sent = behind.send_replay(REPLAYED)
        assert behind_sent is not None
        try:
            assert [ahead.step(op).impl_problem for op in tail] == [None] * len(tail)
            verdict = ahead.finish()
            assert (verdict is None) == dropped, verdict
        finally:
            ahead.close()
        try:
            assert [c.impl_problem for c in behind.check_replay(behind_sent)] == [None, None]
        finally:
            behind.close()
        assert (pool.started, pool.crashes) == (2, 0)
    finally:
        pool.close()


@pytest.mark.parametrize("fresh", [False, True])
def test_a_second_run_on_a_pool_whose_child_runs_one_not_closed_is_refused(fresh: bool) -> None:
    """Two runs under way on one child would read each other's replies (or a fresh child would end
    the first run): the second start is refused, and once the first is closed it goes ahead."""
    pool = ChildPool(build_reference("debug"), step_timeout=5.0)
    try:
        first = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
        assert first.step(New(8, 8)).impl_problem is None
        second = pool.adapter(fresh=fresh)
        with pytest.raises(RunsOverlap, match="another run on its child had not been closed"):
            Lockstep(LOCKSTEP_CONFIG, second)
        assert first.step(Gc()).impl_problem is None, "the first run goes on undisturbed"
        first.close()
        again = Lockstep(LOCKSTEP_CONFIG, pool.adapter(fresh=fresh))
        assert again.impl_broken is None and again.step(New(8, 8)).impl_problem is None
        again.close()
    finally:
        pool.close()
