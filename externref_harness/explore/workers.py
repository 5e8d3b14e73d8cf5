"""The explorer over several worker processes, states partitioned by fingerprint (as TLC and
Stateright distribute a search).

Worker `w` owns the fingerprints `fingerprints.owner` maps to `w`: it keeps their seen-set and
expands exactly those states. The search stays breadth-first and level-synchronous, so it counts
exactly what one process counts: in each level every worker expands its frontier, keeps the
successors it owns and hands the others (deduplicated, pickled in one batch per owner) to the
coordinator, which passes each batch on to its owner; then every worker makes its new states its
next frontier. A violation found in a level stops the search after that level, so the trace is
still a shortest one. The trace is rebuilt in the coordinator, asking each fingerprint's owner for
its parent link. The per-state work of a hand-over (claiming offered fingerprints, collecting the
claimed items) is the compiled `Partition`'s (`claim`, `hand_over`); this module only moves bytes.

Workers are forked (they inherit the imported model and the interpreter's hash, which the
fingerprints are made of) and ignore SIGINT: Ctrl-C reaches the coordinator, which sets an event
every worker polls.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import pickle
import signal
import time
import traceback
from array import array
from collections.abc import Callable
from multiprocessing.sharedctypes import SynchronizedArray
from multiprocessing.synchronize import Event
from typing import Any, cast

from externref_harness.explore.explorer import (
    INTERRUPTED,
    STATE_LIMIT,
    TIME_LIMIT,
    Interrupted,
    Limits,
    Outcome,
    Progress,
    ProgressHook,
    memory_bytes,
    rebuild_violation,
)
from externref_harness.explore.fingerprints import owner
from externref_harness.explore.partition import Found, Partition, Search
from externref_harness.model.state import State

Connection = multiprocessing.connection.Connection
#: Per worker in the shared counters: distinct states stored, transitions taken, frontier left.
_COUNTERS = 3


def _worker(
    search: Search,
    index: int,
    count: int,
    conn: Connection,
    stop: Event,
    counters: SynchronizedArray[int],
    deadline: float | None,
    max_states: int | None,
) -> None:
    """A worker's command loop; an exception is sent to the coordinator, which raises it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        _serve(search, index, count, conn, stop, counters, deadline, max_states)
    except BaseException:
        conn.send(WorkerError(f"worker {index}:\n{traceback.format_exc()}"))


class WorkerError(RuntimeError):
    """A worker process failed (a bug in the model or the explorer); carries its traceback."""


def _serve(
    search: Search,
    index: int,
    count: int,
    conn: Connection,
    stop: Event,
    counters: SynchronizedArray[int],
    deadline: float | None,
    max_states: int | None,
) -> None:
    """expand / want / send / receive / advance / lookup / stats / quit, one answer each."""
    import gc

    gc.disable()
    part = Partition(search, index, count)
    base = index * _COUNTERS

    def tick(done: int) -> bool:
        counters[base] = len(part.store)
        counters[base + 1] = part.transitions
        counters[base + 2] = len(part.frontier) - done + len(part.grown)
        if stop.is_set():
            return True
        if (deadline is not None and time.time() >= deadline) or (
            max_states is not None and len(part.store) >= max_states
        ):
            stop.set()  # the other workers stop too, at their next tick
            return True
        return False

    conn.send(part.found)
    outboxes: list[dict[int, tuple[int, int, State]]] = []
    while True:
        command, argument = conn.recv()
        if command == "expand":
            outboxes = part.expand(tick)
            offers = [array("Q", box).tobytes() for box in outboxes]
            conn.send((offers, part.found, part.stopped))
        elif command == "want":
            # Offers from every other worker: claim the fingerprints not stored yet, each once.
            conn.send(part.claim(argument))
        elif command == "send":
            blobs = []
            for dest, want in enumerate(argument):
                items = part.hand_over(outboxes[dest], want)
                blobs.append(pickle.dumps(items, pickle.HIGHEST_PROTOCOL) if items else b"")
            outboxes = []
            conn.send(blobs)
        elif command == "receive":
            for blob in argument:
                if blob:
                    part.admit_all(pickle.loads(blob))
            conn.send(part.found)
        elif command == "advance":
            new = len(part.grown)
            conn.send((new, part.advance()))
            tick(0)
        elif command == "lookup":
            conn.send(part.store.parent(argument))
        elif command == "stats":
            conn.send((
                len(part.store), part.transitions, part.constrained, part.op_counts,
                part.path_counts, part.store.nbytes, part.unexpanded + len(part.frontier),
            ))  # fmt: skip
        elif command == "quit":
            conn.send(None)
            return


class _Pool:
    """The coordinator's side of the workers: send a command to all, gather every answer."""

    def __init__(
        self, search: Search, workers: int, limits: Limits, started: float
    ) -> None:
        ctx = multiprocessing.get_context("fork")
        self.stop = ctx.Event()
        self.counters: SynchronizedArray[int] = ctx.Array("q", workers * _COUNTERS, lock=False)
        deadline = None if limits.time is None else time.time() + limits.time - (
            time.perf_counter() - started
        )
        share = None if limits.states is None else -(-limits.states // workers)
        self.conns: list[Connection] = []
        self.procs: list[Any] = []
        for w in range(workers):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=_worker,
                args=(search, w, workers, child, self.stop, self.counters, deadline, share),
                daemon=True,
            )
            proc.start()
            child.close()
            self.conns.append(parent)
            self.procs.append(proc)

    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def gather(self, on_wait: Callable[[], None] | None = None, every: float = 0.25) -> list[Any]:
        answers: dict[int, Any] = {}
        pending = dict(enumerate(self.conns))
        while pending:
            ready = multiprocessing.connection.wait(list(pending.values()), timeout=every)
            for item in ready:
                conn = cast(Connection, item)
                i = self.conns.index(conn)
                answers[i] = _checked(conn.recv())
                del pending[i]
            if not ready and on_wait is not None:
                on_wait()
        return [answers[i] for i in range(len(self.conns))]

    def all(self, command: str, argument: object = None, **kw: Any) -> list[Any]:
        for conn in self.conns:
            conn.send((command, argument))
        return self.gather(**kw)

    def each(self, command: str, arguments: list[Any]) -> list[Any]:
        """Send each worker its own argument; gather every answer."""
        for conn, argument in zip(self.conns, arguments, strict=True):
            conn.send((command, argument))
        return self.gather()

    def ask(self, worker: int, command: str, argument: object = None) -> Any:
        self.conns[worker].send((command, argument))
        return _checked(self.conns[worker].recv())

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(("quit", None))
                conn.recv()
            except (OSError, EOFError):
                pass
        for proc in self.procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()


def explore_parallel(
    search: Search,
    workers: int,
    limits: Limits,
    progress: ProgressHook | None,
    every: float,
    interrupted: Interrupted,
) -> Outcome:
    started = time.perf_counter()
    pool = _Pool(search, workers, limits, started)
    depth = max_depth = depth_cut = 0
    stopped: str | None = None

    next_report = started + every

    def report() -> None:
        nonlocal next_report
        if interrupted:
            pool.stop.set()
        now = time.perf_counter()
        if progress is None or now < next_report:
            return
        next_report = now + every
        c = pool.counters
        states = sum(c[i * _COUNTERS] for i in range(workers))
        transitions = sum(c[i * _COUNTERS + 1] for i in range(workers))
        queued = sum(c[i * _COUNTERS + 2] for i in range(workers))
        progress(Progress(
            states, queued, depth, transitions, now - started,
            memory_bytes(pool.pids()),
        ))  # fmt: skip

    try:
        found = _first(pool.gather())
        frontier = sum(n for _, n in pool.all("advance"))
        while frontier and found is None:
            if search.depth is not None and depth >= search.depth:
                depth_cut = frontier
                break
            expanded = pool.all("expand", on_wait=report, every=min(every, 0.25))
            found = _first([f for _, f, _ in expanded])
            halted = any(s for _, _, s in expanded)
            # Each owner claims what it has not stored, then only those states cross.
            wanted = pool.each("want", [[o[w] for o, _, _ in expanded] for w in range(workers)])
            blobs = pool.each("send", [[want[w] for want in wanted] for w in range(workers)])
            received = _first(pool.each("receive", [[b[w] for b in blobs] for w in range(workers)]))
            found = found or received
            advanced = pool.all("advance")
            if sum(new for new, _ in advanced):
                max_depth = depth + 1
            if found is not None:
                break
            if halted:
                stopped = _why(interrupted, limits, started)
                break
            frontier = sum(n for _, n in advanced)
            depth += 1
            report()
            if interrupted:
                stopped = INTERRUPTED
                break
        stats = pool.all("stats")
        violation = None
        if found is not None:
            parent_of = lambda fp: pool.ask(owner(fp, workers), "lookup", fp)  # noqa: E731
            root = Partition(search, 0, 1).root
            violation = rebuild_violation(search, root, parent_of, found)
            stopped = None
    finally:
        pool.close()
    op_counts: dict[str, int] = {}
    path_counts: dict[str, int] = {}
    for s in stats:
        for tag, n in s[3].items():
            op_counts[tag] = op_counts.get(tag, 0) + n
        for label, n in s[4].items():
            path_counts[label] = path_counts.get(label, 0) + n
    unexpanded = sum(s[6] for s in stats) if stopped else 0
    return Outcome(
        search, sum(s[0] for s in stats), sum(s[1] for s in stats), max_depth,
        time.perf_counter() - started, depth_cut, sum(s[2] for s in stats),
        dict(sorted(op_counts.items())), dict(sorted(path_counts.items())), violation, stopped,
        unexpanded, workers, sum(s[5] for s in stats),
    )  # fmt: skip


def _checked(answer: Any) -> Any:
    if isinstance(answer, WorkerError):
        raise answer
    return answer


def _first(found: list[Found | None]) -> Found | None:
    return next((f for f in found if f is not None), None)


def _why(interrupted: Interrupted, limits: Limits, started: float) -> str:
    if interrupted:
        return INTERRUPTED
    if limits.time is not None and time.perf_counter() - started >= limits.time:
        return TIME_LIMIT
    return STATE_LIMIT
