"""Children forked from a loaded template: a fresh process per run for a few milliseconds.

A child's start-up (the interpreter, the harness's imports, the library) costs about 130 ms of
CPU, and shrinking asks for a fresh process for every candidate, so that no run sees what an
earlier one left in the library's globals. A fork server pays the start-up once:

    parent (ChildPool)                        fork server (its own process group, `Confined`)
    ForkServer ◀── "R" (loaded, one thread) ──  harness + library loaded, no world made
               ── "F" + 3 fds (SEQPACKET) ──▶  fork() ──▶ worker: its own process group,
               ◀── "P" pid ───────────────                stdout/stderr to its own capture,
               ◀── "S" pid status (at exit) ─             serves the protocol on the two pipes
    Forked: a worker's handle (pid, status, group kill, captured output), as `Confined` is

A worker is a copy of a process that has only loaded the library, so its globals are as a fresh
process has them. Each worker is its own process group, gets SIGKILL when the server dies (which
gets it when the parent dies, `PR_SET_PDEATHSIG`), inherits the server's resource limits, and is
reaped by the server, which sends its exit status as `Popen` gives it (negative: the signal).

The server says "R" only if the library loaded and left the process with one thread: a thread
does not survive `fork`, so a library that starts one while loading could not be copied
faithfully. A library that fails to load, ends or hangs the server, or starts a thread gets no
"R"; then the pool execs each child as before (`ChildPool`), and that child's start reports what
happened in the words it always has.
"""

from __future__ import annotations

import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from collections.abc import Mapping
from pathlib import Path

from externref_harness.isolation.process import (
    Capture,
    Confined,
    Limits,
    close_fd,
    kill_group,
    open_exit_watch,
)

#: One message from the server: a kind (b"R" ready, b"P" forked, b"S" ended), a pid, a status.
MESSAGE = struct.Struct("<cqq")
#: How long a pid or a status is waited for (the server forks and reaps in microseconds; only a
#: server that is itself stopped takes longer, and then the worker is taken as killed).
REPLY_TIMEOUT = 10.0


def child_command(impl: Path | None) -> list[str]:
    """The command line of the harness's child process (`isolation.child`) for `impl`."""
    args = [sys.executable, "-m", "externref_harness.isolation.child"]
    return args if impl is None else [*args, "--impl", str(impl)]


class ForkServer:
    """The parent's end of one fork server (for one library, environment and limits)."""

    def __init__(self, impl: Path | None, env: Mapping[str, str] | None, limits: Limits) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        args = [*child_command(impl), "--fork-server", str(theirs.fileno())]
        self._process = Confined(args, (theirs.fileno(),), env, limits)
        theirs.close()
        self._sock = mine
        self._gone = False
        self._ready = False
        #: Forks asked for whose pid has not come yet, in the order asked.
        self._awaiting: deque[ForkedProc] = deque()
        #: Exit statuses of ended workers, by pid.
        self.statuses: dict[int, int] = {}

    @property
    def pid(self) -> int:
        return self._process.pid

    def wait_ready(self, timeout: float) -> bool:
        """Whether the server said "R" within `timeout` (else it is closed: use exec'd children)."""
        deadline = time.monotonic() + timeout
        while not self._ready and self.read(max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                break
        if not self._ready:
            self.close()
        return self._ready

    @property
    def alive(self) -> bool:
        self.read(0.0)
        return not self._gone and self._process.alive

    def fork(self, requests: int, responses: int) -> Forked:
        """A worker serving the protocol on the two pipe ends (the caller then closes its copies:
        the server holds its own from the moment the message is sent)."""
        capture = Capture()
        proc = ForkedProc(self)
        try:
            socket.send_fds(self._sock, [b"F"], [requests, responses, capture.file.fileno()])
            self._awaiting.append(proc)
        except OSError:
            self._gone = True
        return Forked(proc, capture)

    def read(self, timeout: float) -> bool:
        """Take the messages that come within `timeout`, then those already there; False once the
        server is gone (its end closed: it ended)."""
        deadline = time.monotonic() + timeout
        while not self._gone:
            if not select.select([self._sock], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return True
            try:
                data = self._sock.recv(MESSAGE.size)
            except OSError:
                data = b""
            if len(data) != MESSAGE.size:
                self._gone = True
                break
            kind, pid, status = MESSAGE.unpack(data)
            if kind == b"R":
                self._ready = True
            elif kind == b"P" and self._awaiting:
                self._awaiting.popleft().pid = pid
            elif kind == b"S":
                self.statuses[pid] = status
            deadline = time.monotonic()  # then only what is already there
        self._awaiting.clear()  # never forked: those workers never ran
        return False

    def close(self) -> None:
        """End the server (a worker still running gets SIGKILL with it)."""
        self._sock.close()
        self._gone = True
        self._process.close()


class ForkedProc:
    """A worker as `subprocess.Popen` shows a child: `pid`, `poll`, `wait`, `returncode`."""

    def __init__(self, server: ForkServer) -> None:
        self.server = server
        self.pid: int | None = None
        self.returncode: int | None = None

    def resolved_pid(self) -> int | None:
        """The worker's pid (its process group), once the server has said it; None if it never ran."""
        deadline = time.monotonic() + REPLY_TIMEOUT
        while self.pid is None and self.server.read(max(0.0, deadline - time.monotonic())):
            if time.monotonic() >= deadline:
                break
        return self.pid

    def poll(self) -> int | None:
        if self.returncode is None:
            self._settle()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        limit = REPLY_TIMEOUT if timeout is None else timeout
        deadline = time.monotonic() + limit
        while self._settle() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", limit)
            self.server.read(min(left, 0.05))
        assert self.returncode is not None
        return self.returncode

    def _settle(self) -> int | None:
        """The status the server sent; SIGKILL if the server is gone without sending it (its
        death killed the worker, or the worker never ran)."""
        alive = self.server.alive  # (takes what the server has sent)
        if self.pid is not None and self.pid in self.server.statuses:
            self.returncode = self.server.statuses.pop(self.pid)
        elif not alive:
            self.returncode = -signal.SIGKILL
        return self.returncode


class Forked:
    """One worker of a `ForkServer`, used as a `process.Confined` is: `proc`, `capture`, `kill`, `close`."""

    def __init__(self, proc: ForkedProc, capture: Capture) -> None:
        self.proc = proc
        self.capture = capture
        self._watch: int | None = None

    def exit_watch(self) -> int | None:
        """A pidfd readable once the worker has exited (`process.open_exit_watch`), open until
        `close`. Asked for while the worker runs (its server reaps it, and then its pid could name
        another process)."""
        if self._watch is None:
            self._watch = open_exit_watch(self.proc.resolved_pid())
        return self._watch

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the worker's group and wait for its status (`process.kill_group`)."""
        pid = self.proc.resolved_pid()
        if pid is not None:
            kill_group(pid, self._reap)

    def _reap(self) -> None:
        try:
            self.proc.wait()
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        self.kill()
        self.capture.close()
        close_fd(self._watch)
        self._watch = None
