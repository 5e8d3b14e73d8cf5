"""Campaigns: worker processes searching until a time limit, sharing one Hypothesis example database.

Each worker is a process of its own with its own seed. It first replays what the database holds
(the shrunk failures every worker stored, then Hypothesis's own examples of each machine, in
Hypothesis's reuse phase), then searches in short batches, each a fresh Hypothesis run with the
next seed. Between batches it replays failures other workers (on this machine or any other sharing
the database) stored since.

A failure is shrunk once with the project's shrinker (`checks.fuzz_targets.FuzzTarget.shrink`) and named by
its invariant and shrunk trace (`checks.fuzz_targets.Found.fingerprint`). A new one is saved as a trace file
and in the database, beside the raw example Hypothesis saved itself; a duplicate only counts, and
the raw example it added is deleted again so the database keeps one per failure. A native
library's hang is the one failure whose shrink costs seconds (each candidate that still hangs
waits a quarter of the step timeout), so a hang at the kind of step where a hang the worker knows
hung (`hang_site`) is counted as that failure's duplicate without a shrink, and its raw example is
kept.

If a Redis database goes away, each worker carries on with the local directory database and
copies the failures it knows into it. The parent (`Campaign`) only collects what workers report
over one pipe each (no lock a killed worker could hold), restarts a worker that dies, and keeps the
figures the display and the summary show.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import signal
import time
import unittest
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

from hypothesis import Phase, Verbosity, seed, settings
from hypothesis.errors import FlakyFailure
from hypothesis.stateful import run_state_machine_as_test

import externref_harness.search.profiles  # noqa: F401  (registers the `dev` profile workers start from)
from externref_harness import trace as tracefile
from externref_harness.checks.fuzz_targets import Found, FuzzTarget
from externref_harness.checks.plan import CHECKS, CheckOptions
from externref_harness.errors import UsageError
from externref_harness.isolation.pool import DEFAULT_STEP_TIMEOUT, HANG
from externref_harness.isolation.wire import poll_for
from externref_harness.model.ops import Op
from externref_harness.model.state import Build
from externref_harness.search.databases import (
    DEFAULT_DIRECTORY,
    KeyedDatabase,
    RecordingDatabase,
    database_errors,
    open_database,
)
from externref_harness.search.model_check import REQUIRED_EVENTS, InvariantViolation, RunStats

#: How long a worker aims to spend in one Hypothesis run before it reports and polls again.
BATCH_SECONDS = 1.0
#: How long `stop()` waits for workers to finish the batch (and shrink) they are in.
STOP_GRACE = 30.0

Message = dict[str, Any]


@dataclass(frozen=True)
class CampaignOptions:
    checks: tuple[str, ...]
    workers: int = 1
    time_limit: float = 60.0
    #: A directory or `redis://HOST:PORT/DB`; None for the local directory database.
    database: str | None = None
    failures: Path = field(default_factory=tracefile.failures_dir)
    mutant: str | None = None
    build: Build = "debug"
    #: The first worker's seed; None for a random one.
    seed: int | None = None
    batch_seconds: float = BATCH_SECONDS
    #: A native library to search (`fuzz --impl`): only the lockstep, the library only in each
    #: worker's confined children (`isolation`), a step slower than `step_timeout` a hang.
    impl: Path | None = None
    step_timeout: float = DEFAULT_STEP_TIMEOUT


#: The checks `fuzz --impl` can search: those that run an implementation.
IMPL_CHECKS = ("lockstep",)


def check_impl_checks(names: Sequence[str]) -> None:
    """Only the checks of an implementation run against `--impl` (others: `UsageError`)."""
    wrong = [name for name in names if name not in IMPL_CHECKS]
    if wrong:
        raise UsageError(
            f"--checks: {', '.join(wrong)} cannot run against --impl; choose from {list(IMPL_CHECKS)}"
        )


def fuzz_targets(
    names: Sequence[str],
    mutant: str | None,
    build: Build,
    impl: Path | None = None,
    step_timeout: float = DEFAULT_STEP_TIMEOUT,
) -> list[FuzzTarget]:
    """The targets of the named checks of `checks.CHECKS`; a check that is not a search is refused.
    With `impl` the lockstep runs against that library (its own build), in child processes."""
    if impl is not None:
        check_impl_checks(names)
        from externref_harness.checks.fuzz_targets import native_lockstep_target
        from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG

        base = replace(LOCKSTEP_CONFIG, mutant=mutant)
        return [native_lockstep_target(impl, base, LOCKSTEP_BOUNDS, step_timeout)]
    by_name = {c.name: c for c in CHECKS}
    searchable = [c.name for c in CHECKS if c.target is not None]
    opts = CheckOptions(settings(), build, mutant)
    out = []
    for name in names:
        check = by_name.get(name)
        if check is None or check.target is None:
            raise UsageError(f"--checks: {name!r} cannot be fuzzed; choose from {searchable}")
        out.append(check.target(opts))
    return out


def trace_path(failures: Path, found: Found, impl: Path | None = None) -> Path:
    cfg = found.trace.config
    check = found.check if impl is None else f"{found.check}-{impl.stem}"
    return failures / f"fuzz-{check}-{cfg.mutant or 'seed'}-{cfg.build}-{found.fingerprint[:12]}.json"


# --- the worker ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    index: int
    seed: int
    options: CampaignOptions
    #: Wall-clock time (`time.time()`) at which to stop.
    deadline: float


class _Stopped:
    requested = False


def _request_stop(signum: int, frame: object) -> None:
    _Stopped.requested = True


def hang_site(check: str, problem: str, steps: Sequence[Op]) -> tuple[str, str] | None:
    """Where a native library hung: the check and the kind of step that did not answer (None: the
    failure is no such hang). Two hangs at one site are taken for one bug without shrinking the
    second, which would cost a step timeout's share for every candidate that still hangs."""
    if HANG not in problem or not steps:
        return None
    return check, type(steps[-1]).__name__


class Worker:
    """One process's search: its database, what it has seen, and the failures it knows."""

    def __init__(self, spec: WorkerSpec, conn: Connection) -> None:
        self.spec = spec
        self.conn = conn
        opts = spec.options
        self.targets = fuzz_targets(opts.checks, opts.mutant, opts.build, opts.impl, opts.step_timeout)
        self.stats = {t.name: RunStats() for t in self.targets}
        self.reported = (0, 0)
        self.cpu_at_start = time.process_time()
        self.labels: set[str] = set()
        opened = open_database(opts.database)
        self.database = RecordingDatabase(opened.database)
        self.on_redis = opened.is_redis
        #: fingerprint -> failure, for every failure this worker found or replayed.
        self.known: dict[str, Found] = {}
        #: `hang_site` -> the first known hang there (found or replayed).
        self.hangs: dict[tuple[str, str], Found] = {}
        #: Stored entries already looked at, per target.
        self.seen: dict[str, set[bytes]] = {t.name: set() for t in self.targets}
        self.base = settings(
            settings.get_profile("dev"),
            derandomize=False,
            report_multiple_bugs=False,
            verbosity=Verbosity.quiet,
        )

    def send(self, kind: str, **fields: Any) -> None:
        try:
            self.conn.send({"kind": kind, "worker": self.spec.index, "time": time.time(), **fields})
        except OSError:
            # The parent is gone (killed itself): what this worker saved stays saved; stop.
            raise SystemExit(0) from None

    def run(self) -> None:
        self.cpu_at_start = time.process_time()  # what searching costs, without the imports
        self.send("ready", pid=os.getpid(), seed=self.spec.seed)
        for target in self.targets:
            self.guarded(target, self.replay_stored, target)
            self.guarded(target, self.search, target, 10, [Phase.explicit, Phase.reuse], "database")
        batch = 0
        sizes = {t.name: 5 for t in self.targets}
        # Every worker searches each target at least once, however late it started.
        while batch < len(self.targets) or not self.finished():
            for target in self.targets:
                if batch >= len(self.targets) and self.finished():
                    break
                batch += 1
                started = time.perf_counter()
                before = self.stats[target.name].examples
                self.guarded(
                    target, self.search, target, sizes[target.name], [Phase.generate], "search", batch
                )
                took = max(time.perf_counter() - started, 1e-3)
                rate = (self.stats[target.name].examples - before) / took
                sizes[target.name] = max(1, min(1000, int(rate * self.spec.options.batch_seconds)))
                self.guarded(target, self.replay_stored, target)
                self.progress()
        self.progress()
        self.send("done")

    def finished(self) -> bool:
        return _Stopped.requested or time.time() >= self.spec.deadline

    def progress(self) -> None:
        examples = sum(s.examples for s in self.stats.values())
        steps = sum(s.steps for s in self.stats.values())
        labels = {label for s in self.stats.values() for label in s.events}
        new = sorted(labels - self.labels)
        self.labels |= labels
        self.send(
            "progress",
            examples=examples - self.reported[0],
            steps=steps - self.reported[1],
            labels=new,
            cpu=time.process_time() - self.cpu_at_start,
        )
        self.reported = (examples, steps)

    def guarded(self, target: FuzzTarget, action: Callable[..., None], *args: Any) -> None:
        """Run a batch or a poll; if the shared database went away, go on with the local one."""
        try:
            action(*args)
        except database_errors() as e:
            if not self.on_redis:
                raise
            self.fall_back(e)
            # A failure found just as its raw example could not be saved is not lost.
            if isinstance(e.__context__, InvariantViolation):
                self.handle(target, e.__context__, "search", saved_raw=[])

    def fall_back(self, error: BaseException) -> None:
        directory = open_database(None)
        self.database = RecordingDatabase(directory.database)
        self.on_redis = False
        for found in self.known.values():
            self.database.save(self.failures_key(found.check), found.to_bytes())
        self.send(
            "fallback", error=f"{type(error).__name__}: {error}", to=directory.where, kept=len(self.known)
        )

    def failures_key(self, check: str) -> bytes:
        return next(t.failures_key for t in self.targets if t.name == check)

    def search(
        self, target: FuzzTarget, examples: int, phases: list[Phase], source: str, batch: int = 0
    ) -> None:
        # The first batch runs with the worker's seed itself; each later one with its own.
        batch_seed = self.spec.seed + max(batch - 1, 0) * 1_000_003
        machine = seed(batch_seed)(target.make_machine(self.stats[target.name]))
        database = KeyedDatabase(self.database, target.machine_key)
        chosen = settings(self.base, max_examples=examples, database=database, phases=phases)
        self.database.take_saved()
        try:
            run_state_machine_as_test(machine, settings=chosen)
        except unittest.SkipTest:
            pass  # a reuse phase with nothing stored: Hypothesis ran no test cases
        except InvariantViolation as e:
            self.handle(target, e, source, self.database.take_saved() if source == "search" else [])
        except FlakyFailure as group:
            # Failed once, passed when Hypothesis ran it again: the example is still a failure
            # to shrink (the shrinker replays it and keeps it only if it fails again).
            failure = next((x for x in group.exceptions if isinstance(x, InvariantViolation)), None)
            if failure is not None:
                self.handle(target, failure, source, self.database.take_saved() if source == "search" else [])

    def handle(
        self,
        target: FuzzTarget,
        failure: InvariantViolation,
        source: str,
        saved_raw: list[tuple[bytes, bytes]],
    ) -> None:
        site = hang_site(target.name, failure.problem, failure.steps)
        if site is not None and site in self.hangs:
            # Not shrunk: taken for the known hang at this site. Its raw example stays in the
            # database (it is not proven a duplicate), so it is not lost either.
            self.report_found(self.hangs[site], source, False, unshrunk_hang=True)
            return
        found = target.shrink(failure)
        if target.replay(found.trace.steps) is None:
            self.send("unreproducible", check=target.name, problem=failure.problem)
            return
        fingerprint = found.fingerprint
        if fingerprint not in self.known:
            self.replay_stored(target)  # another worker may have stored it meanwhile
        new = fingerprint not in self.known
        if new:
            self.record(found)
            self.database.save(target.failures_key, found.to_bytes())
        else:
            for key, value in saved_raw:
                self.database.delete(key, value)
        if site is not None:
            # The site where this example hung, which its shrunk trace may not end at (a GC
            # reached through another step): the next hang there is this failure too.
            self.hangs.setdefault(site, self.known[fingerprint])
        self.report_found(found, source, new)

    def record(self, found: Found) -> None:
        """Keep a failure and save its trace file (a full disk is reported, and ends the campaign)."""
        self.known[found.fingerprint] = found
        site = hang_site(found.check, found.trace.note, found.trace.steps)
        if site is not None:
            self.hangs.setdefault(site, found)
        path = trace_path(self.spec.options.failures, found, self.spec.options.impl)
        if not path.exists():
            try:
                tracefile.save(found.trace, path)
            except OSError as e:
                self.send("fatal", error=f"cannot save trace {path}: {e.strerror or e}")
                raise SystemExit(2) from None

    def report_found(self, found: Found, source: str, new: bool, unshrunk_hang: bool = False) -> None:
        self.send(
            "failure",
            unshrunk_hang=unshrunk_hang,
            check=found.check,
            invariant=found.invariant,
            fingerprint=found.fingerprint,
            trace=str(trace_path(self.spec.options.failures, found, self.spec.options.impl)),
            steps=len(found.trace.steps),
            original_steps=found.original_steps,
            note=found.trace.note,
            source=source,
            new=new,
        )

    def replay_stored(self, target: FuzzTarget) -> None:
        """Replay the shrunk failures stored since the last look; drop those that pass now."""
        entries = set(self.database.fetch(target.failures_key)) - self.seen[target.name]
        for raw in sorted(entries):
            self.seen[target.name].add(raw)
            stored = Found.from_bytes(raw)
            if stored is None or stored.fingerprint in self.known:
                continue
            invariant = target.replay(stored.trace.steps)
            if invariant is None:
                self.database.delete(target.failures_key, raw)
                continue
            self.record(stored)
            self.report_found(stored, "database", False)


def worker_main(spec: WorkerSpec, conn: Connection) -> None:
    """A worker process: Ctrl-C is the parent's to handle; SIGTERM stops after the current batch."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _request_stop)
    # A worker and the child that runs its implementation are two busy processes; a frame's
    # reader that polls (`isolation.wire.poll_for`) keeps both on a core, so a campaign of one
    # worker would take the machine's two cores and more workers would fight over them
    # (`benchmarks/fuzz.py --impl`: one worker polling, 36.6 examples/s against 28.7 not; two,
    # 47.8-49.2 polling against 60.9-64.2 not). A campaign's throughput is meant to grow with its
    # workers, a core each, so its workers do not poll.
    poll_for(0.0)
    fatal: tuple[type[BaseException], ...] = (UsageError, *database_errors())
    worker = None
    try:
        worker = Worker(spec, conn)
        worker.run()
    except fatal as e:
        conn.send({"kind": "fatal", "worker": spec.index, "time": time.time(), "error": f"{e}"})
        raise SystemExit(2) from None
    finally:
        for target in worker.targets if worker is not None else ():
            target.close()
        conn.close()


# --- the parent ------------------------------------------------------------------------------------


@dataclass
class WorkerState:
    index: int
    seed: int
    process: multiprocessing.process.BaseProcess
    conn: Connection
    pid: int | None = None
    ready_at: float | None = None
    last_at: float | None = None
    examples: int = 0
    steps: int = 0
    #: CPU seconds the worker process used (what the machine gave it, beside the wall clock).
    cpu: float = 0.0
    done: bool = False
    restarts: int = 0
    cpu_before_restart: float = 0.0

    def rates(self) -> tuple[float, float]:
        if self.ready_at is None or self.last_at is None or self.last_at <= self.ready_at:
            return 0.0, 0.0
        took = self.last_at - self.ready_at
        return self.examples / took, self.steps / took


@dataclass
class FailureRecord:
    check: str
    invariant: str
    fingerprint: str
    trace: str
    steps: int
    original_steps: int
    note: str
    found_by: int
    at: float
    source: str
    duplicates: int = 0
    #: Of the duplicates, hangs at this failure's site taken for it without a shrink (`hang_site`).
    unshrunk_hangs: int = 0


_FAILURE_FIELDS = ("check", "invariant", "fingerprint", "trace", "steps", "original_steps", "note", "source")


class Campaign:
    """The parent side: start the workers, collect their reports, restart the dead, stop them."""

    def __init__(self, options: CampaignOptions) -> None:
        self.options = options
        self.context = multiprocessing.get_context("spawn")
        self.started = time.time()
        self.deadline = self.started + options.time_limit
        self.first_seed = options.seed if options.seed is not None else random.randrange(1, 2**31)
        self.workers: list[WorkerState] = []
        self.first_reached: dict[str, float] = {}
        self.coverage_over_time: list[tuple[float, int]] = []
        self.failures: dict[str, FailureRecord] = {}
        self.fallback: str | None = None
        self.fatal: str | None = None
        self.notices: list[str] = []
        #: Failures that did not fail again when replayed (flaky, so not saved).
        self.unreproducible = 0

    def start(self) -> None:
        for index in range(self.options.workers):
            self.workers.append(self._spawn(index, self.first_seed + index))

    def _spawn(self, index: int, worker_seed: int, restarts: int = 0) -> WorkerState:
        reader, writer = self.context.Pipe(duplex=False)
        spec = WorkerSpec(index + 1, worker_seed, self.options, self.deadline)
        process = self.context.Process(
            target=worker_main, args=(spec, writer), name=f"fuzz-worker-{index + 1}"
        )
        process.start()
        writer.close()
        return WorkerState(index + 1, worker_seed, process, reader, restarts=restarts)

    @property
    def running(self) -> bool:
        return self.fatal is None and any(not w.done for w in self.workers)

    def elapsed(self) -> float:
        return time.time() - self.started

    def poll(self, timeout: float) -> list[str]:
        """Take every report that arrives within `timeout`; returns the notices to print once."""
        for worker in self._collect(timeout):
            self._lost(worker)
        notices, self.notices = self.notices, []
        return notices

    def _collect(self, timeout: float) -> list[WorkerState]:
        """Take the reports that arrive within `timeout`; returns the workers whose pipe closed."""
        live = [w for w in self.workers if not w.done]
        ready = wait([w.conn for w in live], timeout)
        closed = []
        for worker in live:
            if worker.conn not in ready:
                continue
            try:
                while worker.conn.poll():
                    self._take(worker, worker.conn.recv())
            except (EOFError, OSError):
                closed.append(worker)
        return closed

    def _lost(self, worker: WorkerState) -> None:
        """A worker's pipe closed: after its last report, or because it died."""
        finished = worker.done
        worker.done = True
        worker.process.join(timeout=5)
        if finished:
            return
        code = worker.process.exitcode
        how = f"signal {-code}" if code is not None and code < 0 else f"exit status {code}"
        if self.fatal is None and worker.pid is None:
            self.fatal = f"worker {worker.index} could not start ({how})"
        elif self.fatal is None and (code is None or code >= 0):
            # Killed from outside, a worker is replaced; one that crashed would only crash again.
            self.fatal = f"worker {worker.index} (pid {worker.pid}) crashed ({how}); its traceback is above"
        if self.fatal is not None or time.time() >= self.deadline - 1:
            return
        restarts = worker.restarts + 1
        replacement = self._spawn(worker.index - 1, worker.seed + 1000 * restarts, restarts)
        self.notices.append(
            f"worker {worker.index} (pid {worker.pid}) died ({how}); restarted with seed {replacement.seed};"
            f" its saved failures are in the database"
        )
        self.workers[self.workers.index(worker)] = replacement
        replacement.examples, replacement.steps = worker.examples, worker.steps
        replacement.cpu = replacement.cpu_before_restart = worker.cpu
        replacement.ready_at = worker.ready_at

    def _take(self, worker: WorkerState, msg: Message) -> None:
        kind = msg["kind"]
        at = msg["time"] - self.started
        if kind == "ready":
            worker.pid = msg["pid"]
            worker.ready_at = worker.ready_at or msg["time"]
            worker.last_at = msg["time"]
        elif kind == "progress":
            worker.examples += msg["examples"]
            worker.cpu = worker.cpu_before_restart + msg["cpu"]
            worker.steps += msg["steps"]
            worker.last_at = msg["time"]
            for label in msg["labels"]:
                if label not in self.first_reached:
                    self.first_reached[label] = at
                    if label in REQUIRED_EVENTS:
                        self.coverage_over_time.append((round(at, 3), self.covered()))
        elif kind == "failure":
            known = self.failures.get(msg["fingerprint"])
            if known is not None:
                known.duplicates += 1
                known.unshrunk_hangs += bool(msg.get("unshrunk_hang"))
            else:
                self.failures[msg["fingerprint"]] = FailureRecord(
                    **{k: msg[k] for k in _FAILURE_FIELDS}, found_by=worker.index, at=round(at, 3)
                )
        elif kind == "fallback" and self.fallback is None:
            self.fallback = msg["to"]
            self.notices.append(
                f"the database {self.options.database} went away ({msg['error']}); the campaign goes on with"
                f" the local database {msg['to']}, into which every worker copies the failures it holds"
            )
        elif kind == "unreproducible":
            self.unreproducible += 1
        elif kind == "fatal":
            self.fatal = msg["error"]
        elif kind == "done":
            worker.done = True

    def covered(self) -> int:
        return sum(1 for e in REQUIRED_EVENTS if e in self.first_reached)

    def totals(self) -> tuple[int, int, float, float]:
        """Examples, steps, and their rates over the time since the first worker began."""
        examples = sum(w.examples for w in self.workers)
        steps = sum(w.steps for w in self.workers)
        began = [w.ready_at for w in self.workers if w.ready_at is not None]
        ended = [w.last_at for w in self.workers if w.last_at is not None]
        if not began or not ended or max(ended) <= min(began):
            return examples, steps, 0.0, 0.0
        took = max(ended) - min(began)
        return examples, steps, examples / took, steps / took

    def stop(self, grace: float = STOP_GRACE) -> None:
        """Ask every worker to stop after its batch, wait for their last reports, then end them."""
        for w in self.workers:
            if not w.done and w.process.pid is not None and w.process.exitcode is None:
                os.kill(w.process.pid, signal.SIGTERM)
        until = time.time() + grace
        while any(not w.done for w in self.workers) and time.time() < until:
            for worker in self._collect(0.2):
                worker.done = True
        for w in self.workers:
            w.process.join(timeout=1)
            if w.process.exitcode is None:
                w.process.kill()
                w.process.join()
            w.conn.close()

    def summary(self) -> dict[str, Any]:
        examples, steps, examples_rate, steps_rate = self.totals()
        return {
            "checks": list(self.options.checks),
            "mutant": self.options.mutant,
            "build": self.options.build,
            "database": self.options.database or str(DEFAULT_DIRECTORY),
            "database_fallback": self.fallback,
            "workers": len(self.workers),
            "time_limit": self.options.time_limit,
            "elapsed": round(self.elapsed(), 3),
            "examples": examples,
            "steps": steps,
            "examples_per_s": round(examples_rate, 2),
            "steps_per_s": round(steps_rate, 2),
            "per_worker": [
                {
                    "worker": w.index,
                    "pid": w.pid,
                    "seed": w.seed,
                    "restarts": w.restarts,
                    "examples": w.examples,
                    "steps": w.steps,
                    "cpu_s": round(w.cpu, 3),
                    "examples_per_s": round(w.rates()[0], 2),
                    "steps_per_s": round(w.rates()[1], 2),
                }
                for w in self.workers
            ],
            "coverage": {e: self.first_reached.get(e) for e in REQUIRED_EVENTS},
            "coverage_over_time": self.coverage_over_time,
            "failures": [vars(f) for f in self.failures.values()],
            "unreproducible": self.unreproducible,
        }
