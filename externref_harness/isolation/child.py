"""The implementation's process: the host world, a runtime backend and the checking heap.

`python -m externref_harness.isolation.child [--impl PATH.so] REQUEST_FD RESPONSE_FD` serves the plain-data
adapter protocol (`impl.interface.ImplAdapter`) to the parent (`isolation.ChildProcessImpl`): one
request frame in, one response frame out, each plain data as `isolation.wire` encodes it (JSON
behind an 8-byte length; no pickle: the parent runs no code a frame could carry). The requests and
replies of steps and replays are written by `isolation.fast_wire`: the same bytes, faster.

    parent (Hypothesis, the model)                 child (this module)
    ("start", config)                     ──▶      InProcessImpl.start
    ("step", op, capacity)                ──▶      step + probe        ──▶ ("ok", (outcome, probe,
                                                                                   n_refs, changed refs))
    ("steps", [[op, capacity], ...])      ──▶      each in turn        ──▶ one such frame per step,
                                                   ending after a panic or misuse (`batch`)
    ("replay", [[op, capacity], ...])     ──▶      each in turn, no    ──▶ ("ok", (outcome, stack_top,
                                                   probe between them          canary)) per step, same
                                                                           end; then ("ok", (probe,
                                                                           n_refs, changed refs))
    ("finish",) / ("close",) / ("exit",)  ──▶      ...                 ──▶ ("ok", value)
                                                   any exception       ──▶ ("error", "Type: text")

Only plain data crosses, and the parent checks every field of it (`isolation.pool`). The child's
stdout and stderr are the parent's capture of whatever the implementation prints; the protocol has
its own pipes, so a library that prints cannot corrupt it. `--describe PATH FD` loads the library,
and writes its description (or why it is refused) to FD as one frame.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import ProbeFrame, RefFacts, StepOutcome
from externref_harness.isolation.batch import ends_batch
from externref_harness.isolation.fast_wire import decode_any, write_plain
from externref_harness.isolation.wire import decode_plain, read_frame_body, write_frame
from externref_harness.vec import Vec


def _adapter(impl: str | None) -> InProcessImpl:
    if impl is None:
        return InProcessImpl()
    from externref_harness.native.backend import native_runtime, open_library

    return InProcessImpl(native_runtime(open_library(Path(impl))))


class _Sent:
    """What the parent holds of the last probe sent: every ref's facts and every handle (a probe
    sends only those that changed, `ProbeFrame`)."""

    def __init__(self) -> None:
        self.refs: Vec[RefFacts] = Vec()
        self.handles: Vec[int | None] = Vec()


def _step(
    adapter: InProcessImpl, op: Any, capacity: Any, sent: _Sent
) -> tuple[StepOutcome, ProbeFrame, int, list[tuple[int, RefFacts]]]:
    """One step and its reply; of the refs' facts and the handles, only those that changed since
    the last probe sent cross (the parent keeps the rest)."""
    outcome = adapter.step(op, capacity)
    return (outcome, *_probe(adapter, sent))


def _probe(adapter: InProcessImpl, sent: _Sent) -> tuple[ProbeFrame, int, list[tuple[int, RefFacts]]]:
    """The probe as it crosses (`ProbeFrame`): of its refs' facts and its handles, only those that
    changed since the last probe sent."""
    probe = adapter.probe()
    refs, handles = probe.refs, probe.handles
    changed = [(i, refs[i]) for i in refs.changed_positions(sent.refs)]
    changed_handles = tuple([(i, handles[i]) for i in handles.changed_positions(sent.handles)])
    sent.refs, sent.handles = refs, handles
    frame = ProbeFrame(
        probe.stack_top, probe.canary, probe.table, (), len(handles), changed_handles, *probe[5:]
    )
    return frame, len(refs), changed


def serve(adapter: InProcessImpl, requests: int, responses: int) -> None:
    #: What the parent holds of the last probe (it is sent only what changes).
    sent = _Sent()
    while True:
        try:
            request = decode_plain(decode_any(read_frame_body(requests)))
        except EOFError:
            return
        kind = request[0]
        try:
            if kind == "start":
                adapter.start(request[1])
                sent = _Sent()
                reply: Any = None
            elif kind == "step":
                reply = _step(adapter, request[1], request[2], sent)
            elif kind == "steps":
                # A batch: one reply frame per step, as each is done; it ends after a step that
                # panicked or was a misuse (`batch.ends_batch`), and at an exception (which the
                # error frame below reports at that step).
                for op, capacity in request[1]:
                    reply = _step(adapter, op, capacity, sent)
                    write_plain(responses, ("ok", reply))
                    if ends_batch(reply[0]):
                        break
                continue
            elif kind == "replay":
                # Steps already checked, taken again to reach a run's start (`Lockstep.replay`):
                # a frame per step without a probe, ending after a step that panicked, as a batch
                # does; then one frame with the probe of the memory they left.
                for got in adapter.replay(request[1]):
                    write_plain(responses, ("ok", got))
                    if ends_batch(got.outcome):
                        break
                reply = _probe(adapter, sent)
            elif kind == "finish":
                reply = adapter.finish()
            elif kind == "close":
                adapter.close()
                reply = None
            elif kind == "exit":
                adapter.close()
                write_frame(responses, ("ok", None))
                return
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as e:
            write_frame(responses, ("error", f"{type(e).__name__}: {e}"))
            continue
        write_plain(responses, ("ok", reply))


def describe(path: str, fd: int) -> int:
    """`--describe PATH FD`: load and validate the library here, write `("ok", description)` or
    `("refused", why)` to FD.

    The parent never loads an implementation itself: a library whose constructor or `xr_describe`
    crashes, or exits, takes down only this process, and the parent says so."""
    import dataclasses

    from externref_harness.native.library import LibraryError, load_library

    try:
        library = load_library(path)
    except LibraryError as e:
        write_frame(fd, ("refused", str(e)))
        return 2
    write_frame(fd, ("ok", dataclasses.asdict(library.description)))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--describe"]:
        return describe(argv[1], int(argv[2]))
    impl = None
    if argv[:1] == ["--impl"]:
        impl, argv = argv[1], argv[2:]
    if argv[:1] == ["--fork-server"]:
        return fork_server(impl, int(argv[1]))
    requests, responses = int(argv[0]), int(argv[1])
    try:
        adapter = _adapter(impl)
    except Exception as e:
        write_frame(responses, ("error", f"{type(e).__name__}: {e}"))
        return 2
    return _serve_ready(adapter, requests, responses)


def _serve_ready(adapter: InProcessImpl, requests: int, responses: int) -> int:
    """Say the library is loaded, then serve the parent until it is done; the exit status."""
    try:
        write_frame(responses, ("ok", "ready"))
        serve(adapter, requests, responses)
    except OSError as e:
        # The library closed or replaced the protocol's descriptors: say so in one line (the
        # parent shows what the child printed), not as a traceback.
        print(f"child: the protocol pipes failed ({e}); did the library close descriptors?", file=sys.stderr)
        return PIPES_FAILED
    return 0


def fork_server(impl: str | None, sock_fd: int) -> int:
    """`--fork-server FD`: load the library once, then fork a worker for each request on the
    socket FD and reap each (`isolation.forkserver` explains the messages). A library that does not
    load, or leaves a second thread, gets no "R": the parent execs its children instead."""
    import ctypes
    import os
    import select
    import signal
    import socket

    from externref_harness.isolation.forkserver import MESSAGE
    from externref_harness.isolation.process import PR_SET_PDEATHSIG

    sock = socket.socket(fileno=sock_fd)
    try:
        adapter = _adapter(impl)
    except Exception:
        return 2
    if len(os.listdir("/proc/self/task")) != 1:
        return 0
    libc = ctypes.CDLL(None, use_errno=True)
    server = os.getpid()
    sock.send(MESSAGE.pack(b"R", server, 0))
    workers: dict[int, int] = {}  # pidfd -> pid
    while True:
        for fd in select.select([sock_fd, *workers], [], [])[0]:
            if fd in workers:
                pid = workers.pop(fd)
                os.close(fd)
                _, status = os.waitpid(pid, 0)
                sock.send(MESSAGE.pack(b"S", pid, os.waitstatus_to_exitcode(status)))
                continue
            _, fds, _, _ = socket.recv_fds(sock, 1, 3, socket.MSG_CMSG_CLOEXEC)
            if len(fds) != 3:  # the parent closed its end
                return 0
            requests, responses, output = fds
            libc.fflush(None)  # nothing the library buffered is written twice
            pid = os.fork()
            if pid == 0:
                status = 70
                try:
                    os.setpgid(0, 0)
                    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                    if os.getppid() != server:  # the server died before the line above
                        os._exit(1)
                    os.dup2(output, 1)
                    os.dup2(output, 2)
                    for own in (sock_fd, output, *workers):
                        os.close(own)
                    status = _serve_ready(adapter, requests, responses)
                finally:
                    os._exit(status)
            try:
                os.setpgid(pid, pid)  # before the parent can signal the group
            except OSError:
                pass  # the worker has set it already, or has already ended
            for own in fds:
                os.close(own)
            workers[os.pidfd_open(pid)] = pid
            sock.send(MESSAGE.pack(b"P", pid, 0))


#: The child's exit status when its protocol pipes failed under it.
PIPES_FAILED = 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
