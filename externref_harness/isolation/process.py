"""A confined child process: its own process group, resource limits, bounded captured output.

    parent                                    child's process group (pgid = child's pid)
    Confined.spawn ──fork/exec──────────────▶ python -m ... (the library loaded here)
      .capture: a temporary file ◀─ stdout ──   └── anything it forks stays in the group
      .kill()  ── SIGKILL to the whole group ─▶ nothing left behind, even after a clean exit

The implementation under test is untrusted: it may fork (the group is killed when the run ends,
whatever its verdict), exhaust memory (`RLIMIT_AS`), spin (`RLIMIT_CPU`), fork without end
(`RLIMIT_NPROC`, counted above the user's current tasks; a root parent is exempt from it, the
group kill is what bounds that case), dump core (`RLIMIT_CORE` 0) or flood its output
(`RLIMIT_FSIZE` caps the capture file; `flooded` tells a parent to fail the run). A library built
with AddressSanitizer reserves terabytes of shadow memory, so it runs with no address-space limit.

A parent that dies without `kill` (a campaign's worker ended by SIGTERM, a test run interrupted)
must not leave a child spinning in the library's endless loop, so the child gets SIGKILL when its
parent dies (`PR_SET_PDEATHSIG`, set before exec; a parent already gone by then is noticed by the
child's parent pid). The signal comes when the thread that spawned the child ends: every `Confined`
is spawned from a thread that outlives it (the harness spawns from its main thread only).
"""

from __future__ import annotations

import ctypes
import os
import resource
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

#: The captured output a child may write (stdout and stderr together) before it counts as a flood.
OUTPUT_LIMIT = 16 << 20
#: How much of what a child printed a report shows.
OUTPUT_TAIL = 2000



#: How long `Confined.kill` waits for the killed group's members to be gone.
GROUP_EXIT_TIMEOUT = 10.0


def live_members(pgid: int) -> bool:
    """Whether a process of group `pgid` is still alive (not a zombie), from `/proc`.

    A zombie has exited: its parent (the child, reaped, so init) only has to collect its status."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] != b"Z":
            return True
    return False


@dataclass(frozen=True)
class Limits:
    """Resource limits of a child. None: no limit of that kind."""

    #: Address space, bytes.
    memory: int | None = 8 << 30
    #: CPU time, seconds (SIGXCPU at the limit, SIGKILL 5 s later).
    cpu_seconds: int | None = None
    #: Tasks (processes and threads) the child's user may have beyond those it has now.
    extra_tasks: int | None = 512

    def without_memory_limit(self) -> Limits:
        return Limits(None, self.cpu_seconds, self.extra_tasks)


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


def _tasks_of_user() -> int:
    """Tasks (threads included, as `RLIMIT_NPROC` counts them) of this real user, from /proc."""
    uid = str(os.getuid())
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as f:
                status = f.read().decode("ascii", "replace")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("Uid", "").split()[:1] == [uid]:
            count += int(fields.get("Threads", "1").strip() or 1)
    return count


#: `prctl(2)`, looked up in the parent: between fork and exec the child only calls it.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
PR_SET_PDEATHSIG = 1


def _set_limits(limits: Limits, nproc: int | None, parent: int) -> None:
    """In the child, between fork and exec (only async-signal-safe work: prctl, setrlimit)."""
    _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above took effect
        os._exit(1)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_FSIZE, (OUTPUT_LIMIT, OUTPUT_LIMIT))
    if limits.memory is not None:
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory, limits.memory))
    if limits.cpu_seconds is not None:
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 5))
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


class Capture:
    """A child's stdout and stderr: a temporary file, bounded by `RLIMIT_FSIZE` in the child."""

    def __init__(self) -> None:
        self.file: IO[bytes] = tempfile.TemporaryFile()

    def flooded(self) -> bool:
        """Whether the child's output reached `OUTPUT_LIMIT` (its later writes fail)."""
        try:
            return os.fstat(self.file.fileno()).st_size >= OUTPUT_LIMIT
        except (OSError, ValueError):
            return False

    def tail(self, limit: int = OUTPUT_TAIL) -> str:
        """The end of what the child printed, decoded, control characters escaped; "" if nothing."""
        try:
            size = os.fstat(self.file.fileno()).st_size
            self.file.seek(max(0, size - limit))
            data = self.file.read(limit)
        except (OSError, ValueError):
            return ""
        text = data.decode("utf-8", "replace").strip()
        text = "".join(c if c.isprintable() or c == "\n" else f"\\x{ord(c):02x}" for c in text)
        return ("..." if size > limit else "") + text if text else ""

    def printed(self) -> str:
        """`tail()` as the end of a report: `; it printed:` and the lines indented, or ""."""
        text = self.tail()
        if not text:
            return ""
        return "; it printed:\n" + "\n".join(f"      | {line}" for line in text.splitlines())

    def close(self) -> None:
        self.file.close()


def open_exit_watch(pid: int | None) -> int | None:
    """A pidfd of process `pid` (`os.pidfd_open`), readable once it has exited: `wire.read_frame`'s
    `watch`. A pipe's end of file waits for every process holding its write end, and a child's own
    children hold it too, so the child's exit is watched as well. None when it cannot be opened (no
    such process any more): the reader then waits for the end of file or its deadline."""
    if pid is None:
        return None
    try:
        return os.pidfd_open(pid)
    except OSError:
        return None


def close_fd(fd: int | None) -> None:
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass


def kill_group(pgid: int, reap: Callable[[], object]) -> None:
    """SIGKILL the whole group `pgid` (what its leader forked too), `reap` the leader, and wait
    until no live member of the group is left (at most `GROUP_EXIT_TIMEOUT`): a library that forked
    thousands of processes takes a while to die, and a verdict must not come before it has."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        reap()
        return
    reap()
    deadline = time.monotonic() + GROUP_EXIT_TIMEOUT
    while live_members(pgid) and time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)  # a member that was mid-fork has a child now
        except ProcessLookupError:
            return
        time.sleep(0.01)


class Confined:
    """One child in its own process group, its output in a bounded capture file."""

    def __init__(
        self,
        args: Sequence[str],
        pass_fds: Sequence[int] = (),
        env: Mapping[str, str] | None = None,
        limits: Limits = Limits(),
        stdin: int | IO[bytes] = subprocess.DEVNULL,
    ) -> None:
        self.capture = Capture()
        nproc = None if limits.extra_tasks is None else _tasks_of_user() + limits.extra_tasks
        parent = os.getpid()
        self.proc = subprocess.Popen(
            list(args),
            pass_fds=tuple(pass_fds),
            stdin=stdin,
            stdout=self.capture.file,
            stderr=subprocess.STDOUT,
            env=None if env is None else {**os.environ, **env},
            process_group=0,
            preexec_fn=lambda: _set_limits(limits, nproc, parent),
        )
        self.pid = self.proc.pid
        # Opened at once: the child is not reaped before `close`, so its pid names it until then.
        self._watch = open_exit_watch(self.pid)

    def exit_watch(self) -> int | None:
        """A pidfd readable once the child has exited (`open_exit_watch`), open until `close`."""
        return self._watch

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the child's whole group and wait for it (`kill_group`)."""
        kill_group(self.pid, self.proc.wait)

    def close(self) -> None:
        self.kill()
        self.capture.close()
        close_fd(self._watch)
        self._watch = None
