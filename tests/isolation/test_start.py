"""A run's start in a child (`ChildProcessImpl.start`): sent and not waited for, so the child
starts while the parent does the run's first work; a crash there is still the start's failure.
Each library is the C reference behind a wrapper (`misbehaving.py`) whose `xr_set_hooks` (called
by every start) misbehaves."""

from __future__ import annotations

from pathlib import Path

import pytest
from misbehaving import build, leftovers

from externref_harness.isolation.pool import ChildPool
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, Lockstep, drive
from externref_harness.lockstep.targets import native_target
from externref_harness.model.ops import Drop, Gc, InsertWithGc, New
from externref_harness.native.build import build_reference


@pytest.mark.parametrize(
    "name,hooks,expected",
    [
        ("start-segfaults", "raise(SIGSEGV)", "killed by SIGSEGV during start"),
        ("start-hangs", "for (;;) pause()", "did not answer within 2 s during start"),
    ],
)
def test_a_crash_or_hang_at_start_is_the_runs_failure_at_start_stepped_or_replayed(
    tmp_path: Path, name: str, hooks: str, expected: str
) -> None:
    library = build(tmp_path, name, set_hooks=hooks)
    pool = ChildPool(library, step_timeout=2.0)
    try:
        first = drive(LOCKSTEP_CONFIG, [New(8, 8), Gc()], pool.adapter(), until_first=True).first
        assert first is not None and first.step == 1, first
        assert expected in first.problem and first.problem.endswith(" at start"), first.problem
        run = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
        try:
            (check,) = run.replay([New(8, 8), Gc()])
        finally:
            run.close()
        assert check.impl_problem is not None and expected in check.impl_problem, check.impl_problem
    finally:
        pool.close()
    assert leftovers(library) == []


@pytest.mark.parametrize("replayed", [False, True])
def test_a_child_dead_at_start_before_the_run_writes_to_it_is_the_starts_failure(
    tmp_path: Path, replayed: bool
) -> None:
    """The run's next request finds the child already gone (the write fails, nothing is read):
    still the start's failure, at the run's first step, and nothing escapes `replay`. A child that
    failed is then refused without its descriptors being used again."""
    library = build(tmp_path, "start-segfaults", set_hooks="raise(SIGSEGV)")
    pool = ChildPool(library, step_timeout=2.0)
    adapter = pool.adapter()
    run = Lockstep(LOCKSTEP_CONFIG, adapter)
    try:
        assert run.impl_broken is None
        adapter._child.proc.wait(timeout=10)  # type: ignore[union-attr]  # dead before the run goes on
        if replayed:
            (check,) = run.replay([New(8, 8), Gc()])
        else:
            check = run.step(New(8, 8), [Gc()])
        assert check.impl_problem == "the implementation's process killed by SIGSEGV during start at start"
        later = run.step(Gc()).impl_problem
        assert later is not None and "closed after it failed" in later, later
        assert pool.crashes == 1
    finally:
        run.close()
        pool.close()
    assert leftovers(library) == []


def test_a_runs_steps_are_sent_before_the_child_has_started(tmp_path: Path) -> None:
    """`xr_set_hooks` waits for a file only the test makes, after the run has started: a start
    that waited for the child would wait out its 60 s limit and fail the run instead."""
    go = tmp_path / "go"
    waits = f'while (access("{go}", F_OK) != 0) nanosleep(&(struct timespec){{0, 1000000}}, NULL)'
    library = build(tmp_path, "start-waits", set_hooks=waits, top="#include <time.h>\n")
    pool = ChildPool(library, step_timeout=5.0)
    try:
        run = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
        try:
            assert run.impl_broken is None
            go.touch()
            checks = [run.step(op) for op in (New(8, 8), Drop(0), Gc())]
            assert all(c.impl_problem is None and c.model_problem is None for c in checks), checks
            assert run.finish() is None
        finally:
            run.close()
    finally:
        pool.close()
    assert leftovers(library) == []


@pytest.mark.parametrize(
    "name,hooks",
    [
        ("close-segfaults", "if (h == NULL) raise(SIGSEGV)"),
        ("close-hangs", "if (h == NULL) for (;;) pause()"),
    ],
)
def test_a_close_that_fails_retires_its_child_and_the_next_run_goes_on_in_another(
    tmp_path: Path, name: str, hooks: str
) -> None:
    """A run's close is sent and not waited for; the next run reads its reply before its start's.
    A close that crashes or hangs retires the child, as a close that was waited for did, and is no
    failure: the next run, stepped or replayed, goes on in another child, sent what it had sent
    (the crashed child's pipe refuses the start; the hung one takes the requests, never answering).
    Only a run closed before it finished has a close that calls the library (`finish` closes the
    adapter itself): its close uninstalls the hooks, `xr_set_hooks(NULL)`, where this one fails."""
    library = build(tmp_path, name, set_hooks=hooks)
    pool = ChildPool(library, step_timeout=2.0)
    try:
        for _ in range(2):
            run = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
            try:
                assert run.step(New(8, 8)).impl_problem is None
                assert run.step(Gc()).impl_problem is None
            finally:
                run.close()
        run = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
        try:
            checks = run.replay([New(8, 8), Gc()])
            assert [c.impl_problem for c in checks] == [None, None]
        finally:
            run.close()
        assert pool.crashes == 0
        assert pool.started >= 4  # each run after the first in a child started for it
    finally:
        pool.close()
    assert leftovers(library) == []


def _resident_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_child_serving_many_runs_does_not_grow() -> None:
    """A child serves the runs of a search one after another (200,000 of them in an exhaustive gate
    at the default bounds): what one run made must be gone when the next starts. A runtime kept
    alive by a reference cycle the collector could not see grew a child by about 77 KB a run."""
    pool = ChildPool(build_reference("debug"), step_timeout=5.0)
    try:
        steps = [New(8, 8), New(8, 8), InsertWithGc(1), Gc(), Drop(0)]

        def runs(n: int) -> int:
            for _ in range(n):
                run = Lockstep(LOCKSTEP_CONFIG, pool.adapter())
                try:
                    for i, op in enumerate(steps):
                        assert run.step(op, steps[i + 1 :]).impl_problem is None
                finally:
                    run.close()  # not finished: the child's close frees what the run made
            pid = pool.take(False).proc.pid
            assert pid is not None
            return _resident_kb(pid)

        before = runs(50)
        after = runs(400)
        assert pool.started == 2  # one child served them all (and a spare waited)
        assert after - before < 8 * 1024, f"{before} KB after 50 runs, {after} KB after 450"
    finally:
        pool.close()


def test_a_start_that_fails_in_process_leaves_the_hooks_to_the_next_run(tmp_path: Path) -> None:
    """In this process, a library's first table cannot be made (its hooks' allocator answers NULL
    at the first start): that run fails at start, and the next run of the library is not refused
    as overlapping it (`errors.RunsOverlap`): the failed start uninstalled its hooks."""
    top = (
        "static void *no_memory(void *ctx, size_t size, size_t align) {"
        " (void)ctx; (void)size; (void)align; return NULL; }"
    )
    first_start_fails = (
        "static int starts; static xr_hooks starved;"
        " if (h != NULL && starts++ == 0) { starved = *h; starved.alloc = no_memory; h = &starved; }"
    )
    target = native_target(build(tmp_path, "first-table-fails", top=top, set_hooks=first_start_fails))
    failed = Lockstep(LOCKSTEP_CONFIG, target.adapter_factory())
    try:
        assert failed.impl_broken is not None and "at start" in failed.impl_broken, failed.impl_broken
    finally:
        failed.close()
    again = Lockstep(LOCKSTEP_CONFIG, target.adapter_factory())
    try:
        assert again.impl_broken is None
        assert again.step(New(8, 8)).impl_problem is None
    finally:
        again.close()
