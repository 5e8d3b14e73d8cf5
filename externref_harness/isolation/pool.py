"""The implementation in a child process: a crash or a hang is a failing step, never the harness's.

    parent: Hypothesis, the model, the lockstep        child: World + runtime + checking heap
    ChildProcessImpl ──── request pipe ─────────────▶  externref_harness.isolation.child
                     ◀─── response pipe ────────────   (stdout/stderr: a capture file)

`ChildProcessImpl` is an `ImplAdapter`: the lockstep cannot tell it from `InProcessImpl`. A child
that dies (a signal, `abort`, `exit`) or does not answer within the per-step time limit is killed
and reported as `ImplementationCrash` at that step, with its exit status or signal and the tail of
what it printed; the lockstep turns that into the step's failure, and the trace is shrunk and
saved like any other.

Children come from a `ChildPool`, which keeps one spare child warming up (a child's start-up, the
interpreter and the library, is the slow part). During a search a child serves example after
example (each `start` makes a fresh world, table and checking heap in it) and is replaced after any
failure; `fresh=True` gives every run its own child, as shrinking wants.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from externref_harness.impl.adapter import PlainOp, PlainReport, Probe, RefFacts, StepOutcome
from externref_harness.isolation.child import read_frame, write_frame

#: Per-step time limit, seconds (a step of a correct implementation takes milliseconds).
DEFAULT_STEP_TIMEOUT = 10.0
#: How long a child may take to start (import the harness, load the library).
START_TIMEOUT = 60.0
#: How much of what a dead child printed goes into the report.
OUTPUT_TAIL = 2000


class ImplementationCrash(Exception):
    """The implementation's process died or hung; the message says how, and what it printed."""


def describe_status(returncode: int | None) -> str:
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with status {returncode}"


class Child:
    """One running child process and its two protocol pipes."""

    def __init__(self, impl: Path | None, env: Mapping[str, str] | None) -> None:
        req_r, self._req_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        self._output: IO[bytes] = tempfile.TemporaryFile()
        args = [sys.executable, "-m", "externref_harness.isolation.child"]
        if impl is not None:
            args += ["--impl", str(impl)]
        self.proc = subprocess.Popen(
            [*args, str(req_r), str(resp_w)],
            pass_fds=(req_r, resp_w),
            stdin=subprocess.DEVNULL,
            stdout=self._output,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
        )
        os.close(req_r)
        os.close(resp_w)
        self._ready = False

    def ensure_ready(self) -> None:
        if not self._ready:
            self._ready = True
            reply = self._receive(START_TIMEOUT, "starting")
            if reply != "ready":
                raise ImplementationCrash(f"the child did not start: {reply!r}")

    def call(self, request: tuple[Any, ...], timeout: float) -> Any:
        self.send(request)
        return self.receive(timeout, request[0])

    def send(self, request: tuple[Any, ...]) -> None:
        """Send a request without waiting for its answer (`receive` gets it)."""
        self.ensure_ready()
        try:
            write_frame(self._req_w, request)
        except OSError:
            raise self._died(f"during {request[0]}") from None

    def receive(self, timeout: float, during: str) -> Any:
        return self._receive(timeout, during)

    def _receive(self, timeout: float, during: str) -> Any:
        ready, _, _ = select.select([self._resp_r], [], [], timeout)
        if not ready:
            self.kill()
            raise ImplementationCrash(
                f"the implementation did not answer within {timeout:g} s during {during} "
                f"(a hang); its process was killed{self._printed()}"
            )
        try:
            status, value = read_frame(self._resp_r)
        except (EOFError, OSError):
            raise self._died(f"during {during}") from None
        if status == "error":
            raise ImplementationCrash(f"the implementation's process raised {value}")
        return value

    def _died(self, during: str) -> ImplementationCrash:
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        return ImplementationCrash(
            f"the implementation's process {describe_status(self.proc.returncode)} {during}{self._printed()}"
        )

    def _printed(self) -> str:
        try:
            self._output.seek(0)
            data = self._output.read()
        except (OSError, ValueError):
            return ""
        text = data.decode("utf-8", "replace").strip()
        if not text:
            return ""
        if len(text) > OUTPUT_TAIL:
            text = "..." + text[-OUTPUT_TAIL:]
        return "; it printed:\n" + "\n".join(f"      | {line}" for line in text.splitlines())

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        """Ask the child to exit, then make sure it has."""
        if self.alive and self._ready:
            try:
                write_frame(self._req_w, ("exit",))
                self.proc.wait(timeout=2)
            except (OSError, subprocess.TimeoutExpired):
                pass
        self.kill()
        for fd in (self._req_w, self._resp_r):
            try:
                os.close(fd)
            except OSError:
                pass
        self._output.close()


class ChildPool:
    """Children for one implementation: the current one, and a spare already starting."""

    def __init__(
        self,
        impl: Path | None,
        step_timeout: float = DEFAULT_STEP_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.impl = impl
        self.step_timeout = step_timeout
        self.env = dict(env) if env is not None else None
        self._current: Child | None = None
        self._spare: Child | None = None
        #: Children started so far (for reports and the benchmark).
        self.started = 0
        self.crashes = 0

    def _spawn(self) -> Child:
        self.started += 1
        return Child(self.impl, self.env)

    def take(self, fresh: bool) -> Child:
        """A live child: the current one, unless it died or `fresh` asks for a new one."""
        current = self._current
        if current is not None and (fresh or not current.alive):
            current.close()
            current = self._current = None
        if current is None:
            current = self._spare if self._spare is not None and self._spare.alive else self._spawn()
            self._spare = self._spawn()
            self._current = current
        return current

    def retire(self, child: Child) -> None:
        """After a failure: the next run gets another child."""
        if child is self._current:
            self._current = None
        child.close()

    def close(self) -> None:
        for child in (self._current, self._spare):
            if child is not None:
                child.close()
        self._current = self._spare = None

    def adapter(self, fresh: bool = False) -> ChildProcessImpl:
        return ChildProcessImpl(self, fresh)


class ChildProcessImpl:
    """An `ImplAdapter` whose implementation runs in a child process of `pool`."""

    def __init__(self, pool: ChildPool, fresh: bool = False) -> None:
        self._pool = pool
        self._fresh = fresh
        self._child: Child | None = None
        self._probe: Probe | None = None
        self._failed = False

    def _call(self, request: tuple[Any, ...], timeout: float | None = None) -> Any:
        assert self._child is not None, "start() first"
        try:
            return self._child.call(request, timeout or self._pool.step_timeout)
        except ImplementationCrash:
            self._crashed()
            raise

    def _crashed(self) -> None:
        assert self._child is not None
        self._failed = True
        self._pool.crashes += 1
        self._pool.retire(self._child)

    def start(self, config: Mapping[str, Any]) -> None:
        self._child = self._pool.take(self._fresh)
        self._failed = False
        self._refs: list[RefFacts] = []
        self._call(("start", dict(config)), START_TIMEOUT)

    def step(self, op: PlainOp, embedder_capacity: int | None = None) -> StepOutcome:
        self.submit(op, embedder_capacity)
        return self.collect()

    def submit(self, op: PlainOp, embedder_capacity: int | None = None) -> None:
        """Start a step in the child and return at once: the lockstep runs the model's step while
        the child runs the implementation's (the two processes overlap), then `collect`s."""
        assert self._child is not None, "start() first"
        try:
            self._child.send(("step", op, embedder_capacity))
        except ImplementationCrash:
            self._crashed()
            raise

    def collect(self) -> StepOutcome:
        assert self._child is not None, "start() first"
        try:
            reply = self._child.receive(self._pool.step_timeout, "step")
        except ImplementationCrash:
            self._crashed()
            raise
        outcome, probe, n_refs, changed = reply
        refs = self._refs
        del refs[n_refs:]
        refs.extend([None] * (n_refs - len(refs)))  # type: ignore[list-item]
        for i, facts in changed:
            refs[i] = facts
        self._probe = probe._replace(refs=tuple(refs))
        result: StepOutcome = outcome
        return result

    def probe(self) -> Probe:
        assert self._probe is not None, "probe() follows a step"
        return self._probe

    def finish(self) -> tuple[PlainReport, ...]:
        reports: tuple[PlainReport, ...] = self._call(("finish",))
        return reports

    def close(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if self._failed or self._fresh:
            self._pool.retire(child)
            return
        try:
            child.call(("close",), self._pool.step_timeout)
        except ImplementationCrash:
            self._pool.retire(child)
