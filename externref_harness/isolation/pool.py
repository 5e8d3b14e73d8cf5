"""The implementation in a child process: a crash or a hang is a failing step, never the harness's.

    parent: Hypothesis, the model, the lockstep        child: World + runtime + checking heap
    ChildProcessImpl ──── request pipe ─────────────▶  externref_harness.isolation.child
                     ◀─── response pipe ────────────   (stdout/stderr: a capture file)

`ChildProcessImpl` is an `ImplAdapter`: the lockstep cannot tell it from `InProcessImpl`. A child
that dies (a signal, `abort`, `exit`), does not answer within the per-step time limit, floods its
output or breaks the protocol (a frame that is not plain data of the reply's declared types,
`isolation.wire`) is killed with its process group and reported as `ImplementationCrash` at that
step, with its exit status or signal and the tail of what it printed; the lockstep turns that into
the step's failure, and the trace is shrunk and saved like any other.

A pool may have a budget (`deadline`, a `time.monotonic()` instant): no read waits past it, and
once it has passed every call raises `OutOfTime`, which is not the implementation's failure; the
driver that set the budget (the gate) stops there and says what it cut short.

Children come from a `ChildPool`, which forks them from a server that has loaded the library
(`isolation.forkserver`: a fresh child in milliseconds, where an interpreter's start-up and the
library's load take 130 ms of CPU; a library the server cannot copy gets exec'd children) and keeps
one spare child ready. During a search a child serves example after example (each `start` makes a
fresh world, table and checking heap in it) and is replaced after any failure; `fresh=True` gives
every run its own child, as shrinking wants.

Frames go one way each in order, so a request need not wait for the reply before it: a run's
`start` is sent and its reply read before the first step's (`_started`), batches and replays are
sent ahead and read as they come back (`submit_many`, `replay`), and the replies waiting in the
pipe are read together (`wire.FrameReader`). Which request a frame answers is known from the
order, so a crash is still the failure of the request it interrupted.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from subprocess import Popen
from typing import Any, TypeVar

from externref_harness.errors import RunsOverlap
from externref_harness.impl.interface import (
    PlainOp,
    PlainReport,
    Probe,
    ProbeFrame,
    RefFacts,
    Replayed,
    StepOutcome,
)
from externref_harness.isolation.batch import ends_batch
from externref_harness.isolation.fast_wire import Encoded, conform_reply, split_ok, write_plain
from externref_harness.isolation.forkserver import Forked, ForkedProc, ForkServer, child_command
from externref_harness.isolation.process import OUTPUT_LIMIT, Confined, Limits, describe_status
from externref_harness.isolation.wire import (
    FrameReader,
    PartialFrameTimeout,
    WireError,
    conform,
    decode,
    tagged,
    write_frame,
)
from externref_harness.vec import Vec

__all__ = ["ChildPool", "ChildProcessImpl", "ImplementationCrash", "OutOfTime", "describe_status"]


#: How a step slower than the step timeout is named in its failure (`lockstep.check` looks for it).
HANG = "(a hang)"
#: While a hang is shrunk, a candidate's steps get this share of the step timeout, at least
#: `SHRINK_STEP_FLOOR` seconds (`ChildProcessImpl.limit_steps_for_shrinking`).
SHRINK_STEP_SHARE = 0.25
SHRINK_STEP_FLOOR = 0.5

#: Per-step time limit, seconds (a step of a correct implementation takes milliseconds).
DEFAULT_STEP_TIMEOUT = 10.0
#: How long the replies of a batch's steps after a run's end are waited for (then the child is
#: retired instead: a correct implementation's step takes milliseconds).
DRAIN_TIMEOUT = 1.0
#: How long a child may take to start (import the harness, load the library).
START_TIMEOUT = 60.0
#: The most refs a step's reply may say the implementation holds (a search makes thousands at most).
MAX_REFS = 1 << 20

T = TypeVar("T")

#: What a step's reply is: the outcome, the probe's frame (`ProbeFrame`: its refs apart, and of its
#: handles those that changed), the number of refs, and the facts of the refs that changed.
StepReply = tuple[StepOutcome, ProbeFrame, int, tuple[tuple[int, RefFacts], ...]]
#: What a replay's last frame is: a step's reply without the outcome (`ChildProcessImpl.replay`).
ProbeReply = tuple[ProbeFrame, int, tuple[tuple[int, RefFacts], ...]]


def replay_args(impl: Path, step_timeout: float) -> str:
    """The arguments that replay a saved trace as it ran: on `impl`, at the same step timeout (a
    hang saved at a short one is not waited for at the default)."""
    if step_timeout == DEFAULT_STEP_TIMEOUT:
        return f"--impl {impl}"
    return f"--impl {impl} --step-timeout {step_timeout:g}"


class ImplementationCrash(Exception):
    """The implementation's process died, hung or broke the protocol; the message says how, and
    what it printed."""


class OutOfTime(BaseException):
    """The run's time budget (`ChildPool.deadline`) ran out: not the implementation's failure.

    A `BaseException`, as `KeyboardInterrupt` is: it passes through the lockstep's handlers (which
    would make any exception the implementation's failure) and ends a Hypothesis run at once, and
    the driver that set the budget catches it and says what it cut short."""


class Child:
    """One running child process (its own process group) and its two protocol pipes."""

    def __init__(
        self,
        impl: Path | None,
        env: Mapping[str, str] | None,
        limits: Limits,
        deadline: float | None = None,
        server: ForkServer | None = None,
    ) -> None:
        req_r, self._req_w = os.pipe()
        self._resp_r, resp_w = os.pipe()
        self._process: Confined | Forked
        if server is not None:
            self._process = server.fork(req_r, resp_w)
        else:
            args = [*child_command(impl), str(req_r), str(resp_w)]
            self._process = Confined(args, (req_r, resp_w), env, limits)
        self.proc: Popen[bytes] | ForkedProc = self._process.proc
        os.close(req_r)
        os.close(resp_w)
        #: The response pipe's frames: a batch's replies are read together (`wire.FrameReader`).
        self._replies = FrameReader(self._resp_r)
        self._ready = False
        #: The child's exit watch once it is up (`process.open_exit_watch`): its exit ends a read
        #: even while a process it forked holds the response pipe open.
        self._watch: int | None = None
        #: A `time.monotonic()` instant no read waits past (the pool's budget), or None.
        self.deadline = deadline
        #: `close` has run: the pipes' descriptors are closed.
        self.closed = False
        #: A run's `close` was sent and its reply not read yet: the next run reads it before its
        #: start's (`ChildProcessImpl._started`).
        self.closing = False
        #: Runs closed ahead (`ChildProcessImpl.close_ahead`) whose replies are still being read:
        #: a run started now is behind them, and must not read from the pipe until they are done.
        self.unread_runs = 0
        #: The adapter whose run is under way here: started, and neither closed nor closed ahead.
        #: Another adapter's run may not start on this child meanwhile (`ChildPool.take`).
        self.running: object | None = None

    def ensure_ready(self) -> None:
        if not self._ready:
            self._ready = True
            try:
                reply = self._receive(START_TIMEOUT, "loading the library")
            except ImplementationCrash as e:
                # `the process exited with status 0 while loading the library`: not yet a step.
                text = str(e).replace("the implementation's process", "the process", 1)
                raise ImplementationCrash(text.replace("during loading", "while loading", 1)) from None
            if reply != "ready":
                self.kill()
                raise ImplementationCrash(f"the child did not start: it answered {str(reply)[:200]!r}")
            self._watch = self._replies.watch = self._process.exit_watch()

    def call(self, request: tuple[Any, ...], timeout: float) -> Any:
        self.send(request)
        return self.receive(timeout, request[0])

    def send(self, request: tuple[Any, ...]) -> None:
        """Send a request without waiting for its answer (`receive` gets it)."""
        self._refuse_closed(request[0])
        self.ensure_ready()
        try:
            write_plain(self._req_w, request)
        except OSError:
            raise self._died(f"during {request[0]}") from None

    def receive(self, timeout: float, during: str, encoded: bool = False) -> Any:
        """The value of the next response frame. `encoded`: an `ok` frame's value may come back
        not yet decoded (`fast_wire.Encoded`), for `fast_wire.conform_reply` to decode as its type."""
        return self._receive(timeout, during, encoded)

    def _refuse_closed(self, during: str) -> None:
        if self.closed:
            raise ImplementationCrash(f"the implementation's process was closed after it failed ({during})")

    def _receive(self, timeout: float, during: str, encoded: bool = False) -> Any:
        """The value of the next response frame, within `timeout` and the pool's budget."""
        self._refuse_closed(during)
        started = time.monotonic()
        limit = started + timeout
        budget_first = self.deadline is not None and self.deadline < limit
        if budget_first:
            assert self.deadline is not None
            limit = self.deadline
        reads = self._replies.reads
        try:
            body = self._replies.read_body(limit)
        except TimeoutError:
            self.kill()
            if budget_first:
                raise OutOfTime(f"the time limit ran out during {during}") from None
            raise ImplementationCrash(
                f"the implementation did not answer within {timeout:g} s during {during} "
                f"{HANG}; its process was killed{self._process.capture.printed()}"
            ) from None
        except (EOFError, OSError):
            raise self._died(f"during {during}") from None
        except PartialFrameTimeout as cut:  # (not `as e`: compiled, one name gets one type)
            # A frame's second half was still to be written when the budget ran out: the budget's
            # doing, as a reply that had not begun would be; past its own time limit, the child's.
            if budget_first:
                self.kill()
                raise OutOfTime(f"the time limit ran out during {during}") from None
            raise self._broke(during, cut) from None
        except WireError as e:
            raise self._broke(during, e) from None
        # The child's output is measured after each read from its pipe, not for each frame that
        # one read took: a flood shows at the next read.
        if self._replies.reads != reads and self._process.capture.flooded():
            self.kill()
            raise ImplementationCrash(
                f"the implementation printed more than {OUTPUT_LIMIT >> 20} MB during {during} (a flood); "
                f"its process was killed{self._process.capture.printed()}"
            )
        if encoded:
            ok = split_ok(body)
            if ok is not None:
                return ok
        try:
            frame = decode(body)
        except WireError as e:
            raise self._broke(during, e) from None
        try:
            status, value = tagged(frame, "response")
            if status == "error":
                value = conform(value, str, "error")
        except WireError as e:
            self.kill()
            raise ImplementationCrash(
                f"the implementation's process broke the protocol during {during}: {e}"
            ) from None
        if status == "error":
            raise ImplementationCrash(f"the implementation's process raised {str(value)[:2000]}")
        if status != "ok":
            self.kill()
            raise ImplementationCrash(
                f"the implementation's process broke the protocol during {during}: "
                f"a {str(status)[:40]!r} frame"
            )
        return value

    def _broke(self, during: str, e: WireError) -> ImplementationCrash:
        """A frame that is not one (partial, oversized, no JSON): the child is killed."""
        self.kill()
        return ImplementationCrash(
            f"the implementation's process broke the protocol during {during}: {e}; "
            f"its process was killed{self._process.capture.printed()}"
        )

    def _died(self, during: str) -> ImplementationCrash:
        try:
            self.proc.wait(timeout=2)
            how = describe_status(self.proc.returncode)
        except Exception:
            how = (
                "closed its end of the protocol pipe while still running (did it close descriptors "
                "it does not own?); it was killed"
            )
        self.kill()
        printed = self._process.capture.printed()
        return ImplementationCrash(f"the implementation's process {how} {during}{printed}")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the child's whole process group (whatever it forked too)."""
        self._process.kill()

    def close(self) -> None:
        """Ask the child to exit, then make sure it and everything it forked have. Once: its
        descriptors' numbers may name other files afterwards, so a closed child is not read,
        written or closed again (`send` and `receive` refuse)."""
        if self.closed:
            return
        self.closed = True
        if self.alive and self._ready:
            try:
                write_frame(self._req_w, ("exit",))
                self.proc.wait(timeout=2)
            except Exception:
                pass
        self._process.close()
        for fd in (self._req_w, self._resp_r):
            try:
                os.close(fd)
            except OSError:
                pass


class ChildPool:
    """Children for one implementation: the current one, and a spare already starting."""

    def __init__(
        self,
        impl: Path | None,
        step_timeout: float = DEFAULT_STEP_TIMEOUT,
        env: Mapping[str, str] | None = None,
        limits: Limits | None = None,
        deadline: float | None = None,
        fork: bool = True,
    ) -> None:
        self.impl = impl
        self.step_timeout = step_timeout
        self.env = dict(env) if env is not None else None
        asan = env is not None and "LD_PRELOAD" in env
        chosen = limits if limits is not None else Limits()
        self.limits = chosen.without_memory_limit() if asan else chosen
        #: A `time.monotonic()` instant no read from a child waits past (None: no budget); when it
        #: passes, calls raise `OutOfTime`.
        self.deadline = deadline
        self._current: Child | None = None
        self._spare: Child | None = None
        #: Where children come from: forks of a process that has loaded the library
        #: (`isolation.forkserver`), unless `fork` is false: then each child is exec'd.
        self._server: ForkServer | None = None
        self.fork = fork
        #: Children started so far (for reports and the benchmark).
        self.started = 0
        self.crashes = 0

    def _spawn(self) -> Child:
        self.started += 1
        return Child(self.impl, self.env, self.limits, self.deadline, self._fork_server())

    def _fork_server(self) -> ForkServer | None:
        """The server to fork children from, started if need be; None: exec each child (a
        library the server could not load and copy, `isolation.forkserver`)."""
        server = self._server
        if server is not None and server.alive:
            return server
        if server is not None:
            server.close()
        self._server = None
        if not self.fork:
            return None
        server = ForkServer(self.impl, self.env, self.limits)
        wait = START_TIMEOUT
        if self.deadline is not None:
            wait = min(wait, max(0.0, self.deadline - time.monotonic()))
        if not server.wait_ready(wait):
            self.fork = False
            return None
        self._server = server
        return server

    def set_deadline(self, deadline: float | None) -> None:
        """Bound every later read from a child (the current and the spare included) by `deadline`."""
        self.deadline = deadline
        for child in (self._current, self._spare):
            if child is not None:
                child.deadline = deadline

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def take(self, fresh: bool, runner: object = None) -> Child:
        """A live child for `runner`'s run: the current one, unless it died or `fresh` asks for a
        new one. Refused (`errors.RunsOverlap`) while another adapter's run is under way in the current
        child and not closed ahead: the two runs' requests and replies would interleave on one
        pipe, or the fresh child would end the other run, and either run's verdict would be
        wrong. A pool's adapters run one at a time, or each behind one closed ahead."""
        current = self._current
        if current is not None and current.running not in (None, runner) and current.alive:
            raise RunsOverlap(
                "a run was started on this pool while another run on its child had not been "
                "closed: a pool's adapters run one at a time (open a pool per concurrent run)"
            )
        if current is not None and current.unread_runs and not fresh:
            # A run closed ahead is still reading this child's replies: the next run goes behind
            # it, dead or alive (its reads, or that run's, say what became of it).
            return current
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
        if self._server is not None:
            self._server.close()
            self._server = None

    def adapter(self, fresh: bool = False) -> ChildProcessImpl:
        return ChildProcessImpl(self, fresh)


class ReplayFrame:
    """A replayed step's reply as it came from the child, its value not yet decoded (`decoded`).

    The lockstep keys the steps it has already checked by these bytes (`lockstep.runner.ModelSteps`):
    a replayed step whose reply repeats, byte for byte, one it checked from the same lockstep state
    needs no decoding. It says so (`known`), and the replay then reads the step as the one it
    repeats: not one that ends the replay (`batch.ends_batch`)."""

    __slots__ = ("_adapter", "_encoded", "_value", "known", "raw")

    def __init__(self, adapter: ChildProcessImpl, encoded: Encoded) -> None:
        self._adapter = adapter
        self._encoded = encoded
        self._value: Replayed | None = None
        self.raw = bytes(encoded.raw)
        #: The lockstep found these bytes to be a step it checked and passed.
        self.known = False

    def decoded(self) -> Replayed:
        """The reply as `Replayed`; one of the wrong shape kills the child and is the
        implementation's failure (`ImplementationCrash`), as any reply's is."""
        if self._value is None:
            self._value = self._adapter._decode_replayed(self._encoded)
        return self._value


class ChildProcessImpl:
    """An `ImplAdapter` whose implementation runs in a child process of `pool`.

    Every reply is checked against the adapter's declared types (`wire.conform`) and the ref
    bookkeeping is bounded (`MAX_REFS`): a reply of the wrong shape is the implementation's
    failure at that step, like a crash."""

    def __init__(self, pool: ChildPool, fresh: bool = False) -> None:
        self._pool = pool
        self._fresh = fresh
        self._child: Child | None = None
        self._probe: Probe | None = None
        self._failed = False
        #: Steps sent whose replies are not yet read (a batch's, `submit_many`).
        self.pending = 0
        #: A replay was sent whose frames are not all read yet (they come before a batch's).
        self._replaying = False
        #: The start was sent and its reply is not read yet (it comes before any other).
        self._starting = False
        #: The last run's close was sent and its reply comes before this run's start's.
        self._after_close = False
        #: This run's close was sent before its replies were all read (`close_ahead`).
        self._closed_ahead = False
        #: The teardown's `finish` was sent and its reply is not read yet (`send_finish`).
        self._finish_sent = False
        #: The step timeout of this adapter's calls (None: the pool's).
        self.step_timeout: float | None = None

    def limit_steps_for_shrinking(self) -> None:
        """A shorter step timeout, for the candidates of a hang being shrunk: each candidate that
        still hangs costs this instead of the whole timeout. The shrinker confirms its result at
        the full timeout (`lockstep.check.shrink_lockstep_trace`)."""
        full = self._pool.step_timeout
        self.step_timeout = min(full, max(SHRINK_STEP_FLOOR, full * SHRINK_STEP_SHARE))

    def _timeout(self) -> float:
        return self.step_timeout or self._pool.step_timeout

    def _reply(self, request: tuple[Any, ...], send: bool, timeout: float | None = None) -> Any:
        """The reply to `request`, sent now (`send`) or before (the start's first, if it is still
        to come)."""
        assert self._child is not None, "start() first"
        try:
            child = self._started(self._child)
            if send:
                return child.call(request, timeout or self._timeout())
            return child.receive(timeout or self._timeout(), request[0])
        except (ImplementationCrash, OutOfTime):
            self._crashed()
            raise
        except BaseException:
            # Interrupted (the lockstep's own time limit, ^C): a reply may be half read, so the
            # child's replies are no longer in step with its requests. It is not reused.
            self._failed = True
            raise

    def _crashed(self) -> None:
        """The child failed: it is retired (once; its descriptors are closed then) and not used
        again in this run."""
        assert self._child is not None
        if self._failed and self._child.closed:
            return
        self._failed = True
        self.pending = 0
        self._replaying = self._starting = False
        self._pool.crashes += 1
        self._pool.retire(self._child)

    def _send(self, request: tuple[Any, ...]) -> None:
        """Send a request whose reply is read later. When the send finds the child gone while
        the start's reply is still to come, the start is what failed: its reply (or the end of the
        pipe) says so; or the last run's close did, and the run goes on in another child."""
        child = self._child
        assert child is not None, "start() first"
        try:
            child.send(request)
        except (ImplementationCrash, OutOfTime) as e:
            if child.unread_runs and self._starting:
                # Behind a run closed ahead whose replies are not read yet: nothing may be read
                # now. The request is kept; the close's reply (or its absence) says at `_started`
                # whether the run goes on in another child, sent what it was sent.
                self._sent.append(request)
                return
            if isinstance(e, ImplementationCrash):
                try:
                    if self._starting:
                        self._sent.append(request)  # sent again if the run goes on in another child
                    # Raises the start's failure, if the start failed; or the last run's close
                    # had failed, and the run went on in another child, sent this request too.
                    if self._started(child) is not child:
                        return
                except BaseException:
                    self._crashed()
                    raise
            self._crashed()
            raise
        if self._starting:
            self._sent.append(request)

    def start(self, config: Mapping[str, Any]) -> None:
        if self._pool.out_of_time():
            raise OutOfTime("the time limit ran out before a run could start")
        self._child = self._pool.take(self._fresh, self)
        self._child.running = self
        self._failed = False
        self.pending = 0
        self._replaying = False
        self._refs: Vec[RefFacts] = Vec()
        self._handles: Vec[int | None] = Vec()
        # Not waited for: the first steps go right behind it, and the child starts while this
        # process does the run's first work (the model's side of a replay, the next run's plan).
        # Its reply is read before any other (`_started`), so what the child did at the start is
        # still told apart from what it did at a step. While the child's last close is still to be
        # read, the requests are kept (`_sent`), to be sent again to another child if that close
        # turns out to have failed; then a send that fails may be the close's doing too (`_send`).
        child = self._child
        self._sent: list[tuple[Any, ...]] = []
        self._closed_ahead = self._finish_sent = False
        self._after_close = self._starting = child.closing
        child.closing = False
        self._send(("start", dict(config)))
        if self._child is child:  # else the run went on in another child, its start read (`_send`)
            self._starting = True

    def _started(self, child: Child) -> Child:
        """Read the start's reply if it is still to come, within the pool's step time limit (the
        start makes a table, as a step may; not the shorter limit of a hang being shrunk): a
        crash, a hang or an error there is the implementation's failure `at start` (as a start
        that was waited for says it). The child to read from is returned: before the start's
        reply comes the last run's close's, and a close that failed (a crash, a hang, an error,
        a broken frame) retires the child, as a close that was waited for did, and this run goes
        on in another, sent what it was sent."""
        if not self._starting:
            return child
        self._starting = False
        sent, self._sent = self._sent, []
        if self._after_close:
            self._after_close = False
            try:
                child.receive(self._pool.step_timeout, "close")
            except (ImplementationCrash, WireError):
                self._pool.retire(child)
                child = self._child = self._pool.take(self._fresh, self)
                child.running = self
                for request in sent:
                    child.send(request)
        try:
            child.receive(self._pool.step_timeout, "start")
        except ImplementationCrash as e:
            raise ImplementationCrash(f"{e} at start") from None
        return child

    def step(self, op: PlainOp, embedder_capacity: int | None = None) -> StepOutcome:
        self.submit(op, embedder_capacity)
        return self.collect()

    def submit(self, op: PlainOp, embedder_capacity: int | None = None) -> None:
        """Start a step in the child and return at once: the lockstep runs the model's step while
        the child runs the implementation's (the two processes overlap), then `collect`s."""
        self._send(("step", op, embedder_capacity))
        self.pending = 1

    def submit_many(self, steps: Sequence[tuple[PlainOp, int | None]]) -> None:
        """Start a batch of steps in the child in one frame; `collect` gets their replies one by
        one, in order. The child runs them back to back and ends the batch at a step that panics
        (`child.serve`), as `collect` does here, so `pending` says what is still under way."""
        assert self._child is not None, "start() first"
        assert not self.pending, "a batch follows the replies of the steps before it"
        self._send(("steps", [list(step) for step in steps]))
        self.pending = len(steps)

    def collect(self) -> StepOutcome:
        assert self._child is not None, "start() first"
        assert self.pending, "collect() follows submit()"
        assert not self._replaying, "a batch's replies come after the replay sent before it"
        try:
            child = self._started(self._child)
            reply = child.receive(self._timeout(), "step", encoded=True)
            checked: StepReply = self._checked(reply, StepReply, "step reply")
            outcome, probe, n_refs, changed = checked
            # The child ends a batch at a step that panics: the rest were never run.
            self.pending = 0 if ends_batch(outcome) else self.pending - 1
            self._take_probe(probe, n_refs, changed)
        except (ImplementationCrash, OutOfTime):
            self._crashed()
            raise
        except BaseException:
            self._failed = True  # interrupted mid-read (`_reply`): the child is not reused
            raise
        return outcome

    def replay(self, steps: Sequence[tuple[PlainOp, int | None]]) -> Iterator[Replayed | ReplayFrame]:
        """`InProcessImpl.replay` in the child: the request is sent at once, then the iterator
        reads a frame per step as the child runs it (`Replayed`, or a `ReplayFrame` to decode when
        it is needed), then one frame with the probe of
        the memory the last step left. The child ends the replay after a step that panics
        (`batch.ends_batch`), as the iterator does. A batch may be sent (`submit_many`) before the
        replay is read: the child runs it next, and `collect` reads it after the replay. A caller
        that stops taking steps before the end (at a divergence) closes the iterator: the frames
        still coming are not read, and the child is retired instead of reused."""
        assert self._child is not None, "start() first"
        assert not self.pending and not self._replaying, "a replay follows the replies before it"
        self._send(("replay", [list(step) for step in steps]))
        self._replaying = True
        return self._replayed(self._child, len(steps))

    def _replayed(self, child: Child, n: int) -> Iterator[Replayed | ReplayFrame]:
        try:
            child = self._started(child)
            for _ in range(n):
                reply = child.receive(self._timeout(), "replay", encoded=True)
                if type(reply) is Encoded:
                    frame = ReplayFrame(self, reply)
                    yield frame
                    if not frame.known and ends_batch(frame.decoded().outcome):
                        break
                    continue
                got: Replayed = self._checked(reply, Replayed, "replay reply")
                yield got
                if ends_batch(got.outcome):
                    break
            reply = child.receive(self._timeout(), "replay", encoded=True)
            probe, n_refs, changed = self._checked(reply, ProbeReply, "replay's probe")
            self._take_probe(probe, n_refs, changed)
            self._replaying = False
        except (ImplementationCrash, OutOfTime):
            self._crashed()
            raise
        finally:
            if self._replaying:
                # Closed before its end: what the child still sends is not read, so it is not reused.
                self._failed = True
                self._replaying = False

    def _decode_replayed(self, encoded: Encoded) -> Replayed:
        """A replay's step reply decoded (`ReplayFrame.decoded`): a broken one retires the child."""
        try:
            got: Replayed = self._checked(encoded, Replayed, "replay reply")
        except ImplementationCrash:
            self._crashed()
            raise
        return got

    def _take_probe(self, frame: ProbeFrame, n_refs: int, changed: tuple[tuple[int, RefFacts], ...]) -> None:
        """The probe: its refs' facts and its handles those of the last probe, with the ones that
        changed written (the child sends no others, `ProbeFrame`)."""
        self._refs = self._rebuilt(self._refs, n_refs, changed, "facts of a ref")
        self._handles = self._rebuilt(self._handles, frame.n_handles, frame.changed_handles, "a handle")
        self._probe = Probe(
            frame.stack_top, frame.canary, frame.table, self._refs, self._handles, *frame[6:]
        )

    def _rebuilt(self, last: Vec[T], n: int, changed: Sequence[tuple[int, T]], what: str) -> Vec[T]:
        """`last` cut or grown to `n` items, with `changed` (`(position, item)`, each below `n`:
        `_checked`) written: every position past `last` must be among them."""
        assert self._child is not None
        if not changed and n == len(last):  # (most steps change no handle)
            return last
        if n < len(last):  # (what the child holds shrank)
            last = Vec.of(last.as_tuple()[:n])
        known = len(last)
        written = {i: item for i, item in changed if i < known}
        new = {i: item for i, item in changed if i >= known}
        if len(new) != n - known:
            self._child.kill()
            raise ImplementationCrash(f"the implementation's process broke the protocol: {what} never sent")
        return last.updated(written, [new[i] for i in range(known, n)])

    def _checked(self, reply: Any, expected: Any, where: str) -> Any:
        """`reply` as `expected` (a reply type of this module's), or the child is killed and it is
        the implementation's failure; a probe's ref count and ref positions checked too."""
        assert self._child is not None
        try:
            value = conform_reply(reply, expected, where)
            if expected is not Replayed:
                frame: ProbeFrame = value[-3]
                for n, changed, what in (
                    (value[-2], value[-1], "refs"),
                    (frame.n_handles, frame.changed_handles, "handles"),
                ):
                    if not 0 <= n <= MAX_REFS:
                        raise WireError(f"{where}: {n} {what}, at most {MAX_REFS} are possible")
                    if any(not 0 <= i < n for i, _ in changed):
                        raise WireError(f"{where}: {what} changed past the number of {what}")
        except WireError as e:
            self._child.kill()
            raise ImplementationCrash(f"the implementation's process broke the protocol: {e}") from None
        return value

    def probe(self) -> Probe:
        assert self._probe is not None, "probe() follows a step"
        return self._probe

    def send_finish(self) -> bool:
        """Send `finish` behind the steps sent, without waiting: every step of the run is sent
        (the lockstep knows; `Lockstep.close_ahead`). `finish` reads its reply. Not while the
        start's reply is to be read (so it is never sent again to another child)."""
        if self._child is None or self._failed or self._starting or self._finish_sent:
            return False
        try:
            self._child.send(("finish",))
        except (ImplementationCrash, OutOfTime):
            return False  # this run's own reads say what became of the child
        self._finish_sent = True
        return True

    def finish(self) -> tuple[PlainReport, ...]:
        assert not self.pending and not self._replaying, "finish() follows the replies of every step sent"
        sent, self._finish_sent = self._finish_sent, False
        reply = self._reply(("finish",), send=not sent)
        try:
            reports: tuple[PlainReport, ...] = conform(reply, tuple[PlainReport, ...], "finish reply")
        except WireError as e:
            assert self._child is not None
            self._child.kill()
            self._crashed()
            raise ImplementationCrash(f"the implementation's process broke the protocol: {e}") from None
        return reports

    def close_ahead(self) -> bool:
        """Send the run's close now, before its replies are all read: every request of the run
        has been sent (the lockstep knows; `Lockstep.close_ahead`), and the child then goes on
        to the next run's requests, sent behind it, while this process still checks this run's
        replies. Only once the start's and the replay's replies are read (so nothing this run
        sent is ever to be sent again to another child, `_started`). The next run's start
        reads the close's reply (`_after_close`); `close` then only lets the child go.
        False: not now (the close is sent by `close` as usual)."""
        child = self._child
        if (child is None or self._failed or self._starting or self._replaying or self._fresh
                or self._closed_ahead or child.closing):
            return False
        try:
            child.send(("close",))
        except (ImplementationCrash, OutOfTime):
            return False  # this run's own reads say what became of the child
        child.closing = True
        child.unread_runs += 1
        child.running = None
        self._closed_ahead = True
        return True

    def close(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.running is self:
            child.running = None
        if self._closed_ahead:
            # The close was sent; the next run, started behind this one, reads its reply. A run
            # that stopped before reading all its replies leaves the pipe out of step: retired
            # (the run behind it then fails to read, and is not the gate's verdict: it is
            # closed too, at this run's failure).
            child.unread_runs -= 1
            if self._failed or self._replaying or self.pending or self._finish_sent:
                self._pool.retire(child)
            return
        if self._failed or self._replaying or self._finish_sent or self._fresh or self._pool.out_of_time():
            self._pool.retire(child)
            return
        try:
            self._child = child
            child = self._started(child)
            self._child = None
            # A run that stopped (at a divergence) before the end of a batch: the rest of the
            # batch's replies are read and dropped, so the child serves the next run; a step of
            # them that crashes or takes longer than `DRAIN_TIMEOUT` retires it instead.
            for _ in range(self.pending):
                reply = child.receive(min(DRAIN_TIMEOUT, self._timeout()), "a step after the end")
                if ends_batch(conform(reply, StepReply, "step reply")[0]):
                    break
            self.pending = 0
            # Not waited for: the child closes while this process goes on to the next run, which
            # reads the reply before its start's (`_started`; a close that failed retires it).
            child.send(("close",))
            child.closing = True
            child.running = None  # the child `_started` gave, if not the one this run began in
        except (ImplementationCrash, OutOfTime, WireError):
            # The child this run ended in, and the one it had begun in if they differ (`_started`).
            for used in (child, self._child):
                if used is not None:
                    self._pool.retire(used)
            self._child = None
