"""Children forked from a fork server (`isolation.forkserver`): a fresh run sees the library's
globals as a fresh process does, a worker's crash, status and output are its own, a library that
ends the server while loading is named as before, and a killed server takes its workers with it
and is replaced. Each library is the C reference behind a wrapper (`misbehaving.py`)."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from misbehaving import build, leftovers

from externref_harness.impl.interface import plain_config
from externref_harness.isolation.pool import ChildPool, ImplementationCrash
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, Failure, drive
from externref_harness.lockstep.targets import open_isolated
from externref_harness.model.ops import Gc, New, Op

#: The library's second `xr_ref_new` in one process prints its pid, then dies by SIGSEGV.
SECOND_NEW_CRASHES = (
    'if (calls == 2) { printf("worker %d dies\\n", getpid()); fflush(stdout); raise(SIGSEGV); }'
)


def _first(pool: ChildPool, steps: list[Op], cfg: object, fresh: bool) -> Failure | None:
    return drive(cfg, steps, pool.adapter(fresh=fresh), until_first=True).first  # type: ignore[arg-type]


def test_each_fresh_run_sees_the_library_as_a_fresh_process_does(tmp_path: Path) -> None:
    """`calls` lives in the library: one `New` per fresh run never reaches the second call, while
    one child serving two runs does."""
    library = build(tmp_path, "second-new-crashes", top="#include <stdio.h>\n", new_before=SECOND_NEW_CRASHES)
    target, pool = open_isolated(library, step_timeout=5.0)
    try:
        cfg = target.config(LOCKSTEP_CONFIG, None, None)
        for _ in range(3):
            assert _first(pool, [New(8, 8), Gc()], cfg, fresh=True) is None
        assert _first(pool, [New(8, 8)], cfg, fresh=False) is None
        reused = _first(pool, [New(8, 8)], cfg, fresh=False)
        assert reused is not None and "killed by SIGSEGV" in reused.problem, reused
        crashed = _first(pool, [New(8, 8), New(8, 8)], cfg, fresh=True)
        assert crashed is not None and crashed.step == 2 and "killed by SIGSEGV" in crashed.problem
        # Its own output only: one worker's line, not the earlier workers' (each has a capture).
        assert crashed.problem.count(" dies") == 1, crashed.problem
    finally:
        pool.close()
    assert leftovers(library) == []


def test_a_library_that_ends_the_server_while_loading_is_named(tmp_path: Path) -> None:
    """No "R" from the server: the pool execs the child, whose start says what the load did."""
    top = "#include <stdlib.h>\n__attribute__((constructor)) static void leave(void) { exit(0); }\n"
    library = build(tmp_path, "constructor-exits", top=top)
    pool = ChildPool(library, step_timeout=5.0)
    try:
        adapter = pool.adapter()
        loading = "the process exited with status 0 while loading the library"
        with pytest.raises(ImplementationCrash, match=loading):
            adapter.start(plain_config(LOCKSTEP_CONFIG))
    finally:
        pool.close()
    assert leftovers(library) == []


def test_a_killed_server_takes_its_workers_and_the_next_run_gets_a_new_one(tmp_path: Path) -> None:
    library = build(tmp_path, "plain")
    target, pool = open_isolated(library, step_timeout=5.0)
    try:
        cfg = target.config(LOCKSTEP_CONFIG, None, None)
        assert _first(pool, [New(8, 8)], cfg, fresh=False) is None
        server = pool._server
        assert server is not None
        os.kill(server._process.pid, signal.SIGKILL)
        server._process.proc.wait(timeout=30)
        # The current child went with the server: the pool notices and forks from a new one.
        assert _first(pool, [New(8, 8), Gc()], cfg, fresh=False) is None
        assert pool._server is not server
    finally:
        pool.close()
    assert leftovers(library) == []


def test_a_library_that_starts_a_thread_while_loading_gets_exec_d_children(tmp_path: Path) -> None:
    """A thread does not survive `fork`: such a library is not copied, each child loads it anew."""
    top = (
        "#include <pthread.h>\n"
        "static void *idle(void *arg) { for (;;) pause(); return arg; }\n"
        "__attribute__((constructor)) static void start(void) {\n"
        "    pthread_t t;\n"
        "    pthread_create(&t, 0, idle, 0);\n"
        "}\n"
    )
    threaded, plain = build(tmp_path, "threaded", top=top), build(tmp_path, "unthreaded")
    for library, forks in ((threaded, False), (plain, True)):
        target, pool = open_isolated(library, step_timeout=5.0)
        try:
            cfg = target.config(LOCKSTEP_CONFIG, None, None)
            assert _first(pool, [New(8, 8), Gc()], cfg, fresh=True) is None
            assert pool.fork is forks and (pool._server is not None) is forks
        finally:
            pool.close()
        assert leftovers(library) == []
