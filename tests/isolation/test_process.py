"""A confined child: its limits hold and its whole process group goes when it is killed."""

from __future__ import annotations

import os
import sys
import time

from externref_harness.isolation.process import Confined, Limits, describe_status


def _python(code: str, limits: Limits | None = None) -> Confined:
    return Confined([sys.executable, "-c", code], limits=limits or Limits())


def test_the_cpu_limit_kills_a_spinning_child() -> None:
    child = _python("while True: pass", Limits(cpu_seconds=1))
    started = time.monotonic()
    child.proc.wait(timeout=30)
    assert describe_status(child.proc.returncode) == "killed by SIGXCPU"
    assert time.monotonic() - started < 15
    child.close()


def test_the_memory_limit_refuses_a_huge_allocation() -> None:
    child = _python("bytearray(16 << 30)", Limits(memory=2 << 30))
    child.proc.wait(timeout=30)
    assert child.proc.returncode == 1 and "MemoryError" in child.capture.tail()
    child.close()


def test_a_flood_is_capped_and_noticed() -> None:
    child = _python("import sys\nwhile True: sys.stdout.write('x' * 65536)\n")
    deadline = time.monotonic() + 30
    while not child.capture.flooded() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert child.capture.flooded()
    child.close()
    assert child.proc.returncode is not None


def test_killing_the_child_kills_what_it_forked() -> None:
    code = (
        "import os, time\nif os.fork() == 0:\n    time.sleep(1000)\n"
        "print(os.getpid(), flush=True)\ntime.sleep(1000)\n"
    )
    child = _python(code)
    deadline = time.monotonic() + 30
    while not child.capture.tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    members = [int(p) for p in os.listdir("/proc") if p.isdigit() and _pgid(int(p)) == child.pid]
    assert len(members) == 2
    child.close()
    time.sleep(0.2)
    assert [p for p in members if _alive(p)] == []


def test_output_is_shown_escaped() -> None:
    child = _python("import sys; sys.stdout.write('\\x1b[2Jbell\\x07\\n')")
    child.proc.wait(timeout=30)
    assert child.capture.tail() == "\\x1b[2Jbell\\x07"
    child.close()


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def test_a_child_dies_with_a_parent_that_never_killed_it() -> None:
    """A parent ended by SIGKILL (a campaign worker, an interrupted run) leaves no child spinning."""
    import signal
    import subprocess

    parent_code = (
        "import sys\nfrom externref_harness.isolation.process import Confined\n"
        "child = Confined([sys.executable, '-c', 'while True: pass'])\n"
        "print(child.pid, flush=True)\nwhile True: pass\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child), "the orphaned child is still running"
