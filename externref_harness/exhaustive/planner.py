"""The runs of an exhaustive check in the order they are made, planned ahead in a process of their own.

Planning is the model's alone (`chain.plan_chain`: a run's moves, each checked to correspond to
the plan's, and breadth-first walks to the next class with uncovered moves). It was a quarter of
the lockstep process's time at the default bounds, and nothing in it waits for the
implementation: when every run passes, the runs and their order are a function of the plan. So a
forked process plans them while the lockstep executes them, and sends each down a pipe:

    planner process (a fork: the plan, Coverage of its own)        lockstep process
    Planner.next() ─ Run ─▶ frame: class, chain (class, move, ──pipe──▶ PlannedAhead.next():
                            op only where it is not the plan's),       the tree path from the plan,
                            newly covered, end state's hash and        the chain's ops, and the
                            fingerprint                                 moves marked in its own Coverage

The lockstep process keeps its own `Coverage`, marked from the frames as it takes each run, so
what it reports and takes back (`Run.unplan`, a run that failed or ran out of time) is its own.
Nothing it takes back reaches the planner, which has planned as if every run passed: that is
only wrong after a run that did not pass, and the check stops at the first such run (a
divergence, the time limit, the pool's budget). The pipe's capacity bounds how far ahead the
planner gets; it is killed when the check ends, and dies with the lockstep process
(`PR_SET_PDEATHSIG`).
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import os
import pickle
import signal
import struct
import traceback
from dataclasses import dataclass
from typing import cast

from externref_harness.exhaustive.chain import Coverage, plan_chain
from externref_harness.exhaustive.plan import Plan
from externref_harness.model.ops import Op


@dataclass(frozen=True)
class Run:
    """A run planned on the model: its class, its (class, move) steps and their operations, the
    state they end in (its hash, and its class's fingerprint), and which of them it is the first
    to cover (indices into `taken`)."""

    c: int
    taken: list[tuple[int, int]]
    ops: list[Op]
    #: `hash` of the model state the run ends in (`State.__hash__`: by value).
    end_hash: int
    #: The fingerprint of that state's class (`Search.fingerprint`): a class is torn down once.
    end_class: int
    marked: list[int]
    #: How many steps of the tree path come before its first newly covered one (replayed).
    known: int

    def unplan(self, coverage: Coverage, passed: int) -> None:
        """Take back the moves this run was to cover from its step `passed` on."""
        for i in self.marked:
            if i >= passed:
                coverage.unmark(*self.taken[i])


class Planner:
    """The runs in the order they are made: classes breadth-first, each while it has uncovered
    moves. The moves a run takes are counted covered in `coverage` as it is planned."""

    def __init__(self, plan: Plan, coverage: Coverage) -> None:
        self.plan = plan
        self.coverage = coverage
        self.c = 0

    def next(self) -> Run | None:
        plan, coverage = self.plan, self.coverage
        while self.c < plan.classes and coverage.next_uncovered(self.c) is None:
            self.c += 1
        if self.c == plan.classes:
            return None
        c = self.c
        path = plan.path(c)
        # Counted as covered as they are planned, so that the chain and the next run's plan go
        # elsewhere; a run that fails or runs out of time takes back those from the step that
        # did not pass on (`Run.unplan`).
        marked = [i for i, (at, move) in enumerate(path) if coverage.mark(at, move)]
        chain, state = plan_chain(plan, coverage, c)
        marked += [len(path) + i for i, (_, _, _, new) in enumerate(chain) if new]
        taken = [*path, *((at, move) for at, move, _, _ in chain)]
        run_ops = [*plan.ops_to(c), *(op for _, _, op, _ in chain)]
        end_class = plan.search.fingerprint(plan.search.key(state))
        return Run(c, taken, run_ops, hash(state), end_class, marked, min([*marked, len(path)]))


#: A run as it crosses: class, chain (class, move, the op where it is not the plan's), newly
#: covered (indices into the run's steps), replayed steps, end state's hash, its class's fingerprint.
_RunFrame = tuple[int, list[tuple[int, int, Op | None]], list[int], int, int, int]
#: A frame's header: the length of the pickled body that follows.
_LENGTH = struct.Struct("<I")
#: How many bytes of planned runs may wait in the pipe (about 5,000 runs; the default is 64 KiB).
_PIPE_BYTES = 1 << 20
_F_SETPIPE_SZ = 1031
_PR_SET_PDEATHSIG = 1


class PlannerFailed(RuntimeError):
    """The planner process raised, or ended without saying it was done."""


class PlannedAhead:
    """`Planner`'s runs, planned in a forked process and read from a pipe as they are taken.

    `next()` marks each run's newly covered moves in `coverage` (the caller's, which the planner
    process never sees) and returns it, or None once the planner has no more. A context manager:
    leaving it kills the planner process and reaps it."""

    def __init__(self, plan: Plan, coverage: Coverage) -> None:
        self.plan = plan
        self.coverage = coverage
        self._buffer = bytearray()
        self._done = False
        read, write = os.pipe()
        try:
            fcntl.fcntl(write, _F_SETPIPE_SZ, _PIPE_BYTES)
        except OSError:
            pass  # the default capacity only bounds how far ahead the planner gets
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the planner process (its runs are read by the tests)
            os.close(read)
            _plan_into(plan, write, os.getppid())
        os.close(write)
        self._pid: int | None = pid
        self._read = read

    def __enter__(self) -> PlannedAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._pid is None:
            return
        try:
            os.kill(self._pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(self._pid, 0)
        os.close(self._read)
        self._pid = None

    def next(self) -> Run | None:
        if self._done:
            return None
        kind, body = self._frame()
        if kind == "done":
            self._done = True
            return None
        if kind != "run":
            raise PlannerFailed(f"the exhaustive planner process failed:\n{body}")
        c, chain, marked, known, end_hash, end_class = cast(_RunFrame, body)
        plan = self.plan
        taken = [*plan.path(c), *((at, move) for at, move, _ in chain)]
        ops = [*plan.ops_to(c), *(plan.ops[at][move] if op is None else op for at, move, op in chain)]
        for i in marked:
            newly = self.coverage.mark(*taken[i])
            assert newly, "the planner process covered a move twice"
        return Run(c, taken, ops, end_hash, end_class, marked, known)

    def _frame(self) -> tuple[str, object]:
        header = self._take(_LENGTH.size)
        if header is None:
            return "failed", "it ended without a word (killed, or out of memory?)"
        body = self._take(_LENGTH.unpack(header)[0])
        if body is None:
            return "failed", "it ended in the middle of a frame"
        frame: tuple[str, object] = pickle.loads(body)
        return frame

    def _take(self, n: int) -> bytes | None:
        buffer = self._buffer
        while len(buffer) < n:
            chunk = os.read(self._read, max(n - len(buffer), 1 << 16))
            if not chunk:
                return None
            buffer += chunk
        out = bytes(buffer[:n])
        del buffer[:n]
        return out


def _plan_into(plan: Plan, fd: int, parent: int) -> None:  # pragma: no cover - a forked process
    """The planner process: every run of `Planner`, a frame each, then ("done",); or ("error",
    traceback). Never returns."""
    status = 0
    try:
        ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the lockstep process's to handle
        # The plan is the parent's, shared copy-on-write: keep the collector off its objects.
        gc.freeze()
        planner = Planner(plan, Coverage(plan))
        ops = plan.ops
        while (run := planner.next()) is not None:
            first = len(plan.path(run.c))  # the tree path: the lockstep process has the plan
            chain = [
                (at, move, None if op == ops[at][move] else op)
                for (at, move), op in zip(run.taken[first:], run.ops[first:], strict=True)
            ]
            _send(fd, ("run", (run.c, chain, run.marked, run.known, run.end_hash, run.end_class)))
        _send(fd, ("done", None))
    except BaseException:
        status = 1
        try:
            _send(fd, ("error", traceback.format_exc()))
        except BaseException:
            pass
    finally:
        os._exit(status)


def _send(fd: int, frame: tuple[str, object]) -> None:  # pragma: no cover - a forked process
    body = pickle.dumps(frame, pickle.HIGHEST_PROTOCOL)
    data = memoryview(_LENGTH.pack(len(body)) + body)
    while data:
        data = data[os.write(fd, data) :]
