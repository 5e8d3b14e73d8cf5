"""The runs planned in a process of their own (`exhaustive.planner.PlannedAhead`) are the runs
planned in process, in the same order; the planner process's failure, or its death, is an error
that says so, not a hang or a short check; and it is reaped however the check ends."""

from __future__ import annotations

import dataclasses
import os
import signal

import pytest

from externref_harness.exhaustive import execute, planner
from externref_harness.exhaustive.chain import Coverage
from externref_harness.exhaustive.plan import Plan, build_plan
from externref_harness.explore.explorer import ExploreBounds
from externref_harness.impl.adapter import InProcessImpl


@pytest.fixture(scope="module")
def plan() -> Plan:
    return build_plan(ExploreBounds(refs=1, frames=1).search())


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_the_planner_process_plans_the_runs_planned_in_process(plan: Plan) -> None:
    here = planner.Planner(plan, Coverage(plan))
    coverage = Coverage(plan)
    with planner.PlannedAhead(plan, coverage) as ahead:
        runs = 0
        while (run := ahead.next()) is not None:
            assert run == here.next()
            runs += 1
            # The moves a run covers are marked in the reader's coverage as it is read.
            assert coverage.covered == here.coverage.covered
        assert here.next() is None and ahead.next() is None
    assert coverage.covered == plan.transitions and runs > 100
    # Some of the chains' moves were made from states other than the plan's (other handles):
    # those operations crossed the pipe, the others were the plan's own.
    assert any(op != plan.ops[at][move] for run in planner_runs(plan) for (at, move), op in run)


def planner_runs(plan: Plan) -> list[list[tuple[tuple[int, int], object]]]:
    here = planner.Planner(plan, Coverage(plan))
    out = []
    while (run := here.next()) is not None:
        first = len(plan.path(run.c))
        out.append(list(zip(run.taken[first:], run.ops[first:], strict=True)))
    return out


def test_a_planner_process_that_raises_is_an_error_with_its_traceback(
    plan: Plan, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = 0
    real = planner.plan_chain

    def failing(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise ZeroDivisionError("seeded in the planner")
        return real(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(planner, "plan_chain", failing)  # the forked process has it too
    with planner.PlannedAhead(plan, Coverage(plan)) as ahead:
        pid = ahead._pid
        for _ in range(4):
            assert ahead.next() is not None
        with pytest.raises(planner.PlannerFailed, match="(?s)planner process failed.*ZeroDivisionError: seeded"):
            ahead.next()
    assert pid is not None and _gone(pid)


def test_a_planner_process_killed_is_an_error_not_a_hang_or_a_short_check(plan: Plan) -> None:
    with planner.PlannedAhead(plan, Coverage(plan)) as ahead:
        assert ahead.next() is not None
        assert ahead._pid is not None
        os.kill(ahead._pid, signal.SIGKILL)
        with pytest.raises(planner.PlannerFailed, match="ended"):
            while ahead.next() is not None:
                pass


def test_the_planner_process_is_reaped_when_the_check_stops_early(plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[planner.PlannedAhead] = []
    real_init = planner.PlannedAhead.__init__

    def record(self: planner.PlannedAhead, *args: object) -> None:
        real_init(self, *args)  # type: ignore[arg-type]
        made.append(self)

    monkeypatch.setattr(planner.PlannedAhead, "__init__", record)
    pids = []
    for stop_at in (0.0, None):
        outcome = execute.run_exhaustive(plan, InProcessImpl, stop_at=stop_at)
        assert outcome.complete == (stop_at is None)
        pids.append(made[-1]._pid)
    # Closed (pid forgotten) and reaped: no process is left behind either way.
    assert pids == [None, None]
    assert not [p for p in os.listdir("/proc") if p.isdigit() and _is_zombie_child(int(p))]


def _is_zombie_child(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] == "Z" and int(fields[1]) == os.getpid()


def test_a_run_that_ends_elsewhere_than_planned_is_an_error(plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    """The lockstep's model and the planner's are the same code: a run whose end state's hash is
    not the planned one stops the check (a planning bug, not a divergence)."""
    real_next = planner.PlannedAhead.next

    def off(self: planner.PlannedAhead) -> planner.Run | None:
        run = real_next(self)
        return None if run is None else dataclasses.replace(run, end_hash=run.end_hash + 1)

    monkeypatch.setattr(planner.PlannedAhead, "next", off)
    with pytest.raises(AssertionError, match="did not reach the state it was planned to"):
        execute.run_exhaustive(plan, InProcessImpl)
