"""`externref-harness fuzz`: real worker processes, a real Redis server, a seeded bug to find.

Every campaign here runs as its own process tree in its own `tmp_path`, on the model machine with
CVE-2022-23636 (found within a few examples), with time limits of a few seconds. The Redis server
is Debian's `redis-server`, started on a free loopback port for each test and stopped after it.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
from foreground import interruptible
from hypothesis.database import DirectoryBasedExampleDatabase

from externref_harness.campaign.campaign import fuzz_targets
from externref_harness.checks.fuzz_targets import Found
from externref_harness.cli.main import main
from externref_harness.search.databases import REDIS_TIMEOUT, open_database

ROOT = Path(__file__).resolve().parents[2]
MUTANT = "cve-2022-23636"
FOUND = re.compile(r"^failure \d+: model: (?P<inv>[^:]+): .* externref-harness replay (?P<trace>\S+)$")


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs create their default directories (`.hypothesis/examples`, the failures
    directory) in the test's own directory, never in a shared one."""
    monkeypatch.chdir(tmp_path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """`redis-server` on a loopback port, without persistence, as a child of the test."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(directory), *extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not listen on port {self.port}")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def need_redis_server() -> None:
    if shutil.which("redis-server") is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed; .ci/run installs it (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run installs it)")


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    need_redis_server()
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


class Fuzz:
    """One `externref-harness fuzz` process, its stdout and stderr read line by line as they come."""

    def __init__(self, cwd: Path, *args: str) -> None:
        self.lines: queue.Queue[tuple[str, str]] = queue.Queue()
        self.seen: dict[str, list[str]] = {"out": [], "err": []}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "externref_harness.cli", "fuzz", "--checks", "model", "--mutant", MUTANT,
             "--seed", "3", "--failures", "failures", "--progress-every", "1", "--json", "summary.json",
             *args],
            cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            preexec_fn=interruptible,
        )  # fmt: skip
        self.cwd = cwd
        self.readers = [
            threading.Thread(target=self._read, args=(name, stream), daemon=True)
            for name, stream in (("out", self.process.stdout), ("err", self.process.stderr))
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, name: str, stream: IO[str] | None) -> None:
        assert stream is not None
        for line in stream:
            self.lines.put((name, line.rstrip("\n")))

    def _take(self, timeout: float) -> tuple[str, str] | None:
        try:
            name, line = self.lines.get(timeout=max(0.01, timeout))
        except queue.Empty:
            return None
        self.seen[name].append(line)
        return name, line

    def wait_for(self, pattern: re.Pattern[str], stream: str = "out", timeout: float = 60) -> re.Match[str]:
        """The first line of `stream` from now on that matches (a bounded wait)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            taken = self._take(deadline - time.monotonic())
            if taken is not None and taken[0] == stream:
                found = pattern.search(taken[1])
                if found:
                    return found
        shown = "\n".join(self.seen["out"] + self.seen["err"])
        raise AssertionError(f"no line matching {pattern.pattern!r} on std{stream} in:\n{shown}")

    def interrupt(self) -> None:
        """Ctrl-C, as a terminal sends it to the parent."""
        self.process.send_signal(signal.SIGINT)

    def finish(self, timeout: float = 90) -> tuple[int, str, str]:
        """Exit status, all of stdout, all of stderr."""
        code = self.process.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=10)
        while self._take(0) is not None:
            pass
        return code, "\n".join(self.seen["out"]), "\n".join(self.seen["err"])

    def summary(self) -> dict[str, object]:
        loaded: dict[str, object] = json.loads((self.cwd / "summary.json").read_text())
        return loaded


def stored_failures(database: str) -> list[Found]:
    """The shrunk failures a database holds for the model machine with the mutant."""
    (target,) = fuzz_targets(["model"], MUTANT, "debug")
    raw = open_database(database).database.fetch(target.failures_key)
    return [f for f in map(Found.from_bytes, raw) if f is not None]


def trace_steps(path: Path) -> list[object]:
    steps: list[object] = json.loads(path.read_text())["steps"]
    return steps


# --- bad input: one line, exit 2 -------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    ["redis://127.0.0.1:notaport/0", "redis://127.0.0.1:6379/zero", "http://127.0.0.1:6379/0", "redis:///0"],
)
def test_bad_database_url_is_one_line_and_exit_2(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fuzz", "--database", url, "--time-limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--database" in err and "redis://HOST:PORT/DB" in err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--workers", "0"], "--workers"),
        (["--time-limit", "0"], "--time-limit"),
        (["--checks", ""], "--checks"),
        (["--mutant", "no-such-bug"], "no-such-bug"),
        (["--mutant", "proof-drop-roots-in-table-assumption"], "not exercised"),
        (["--json", "/proc/no-such-dir/summary.json"], "/proc/no-such-dir"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    args: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["fuzz", "--time-limit", "1", *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and named in err


def test_check_refuses_a_bad_database_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check", "--only", "model", "--database", "redis://127.0.0.1:x/0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--database" in err


def test_unreachable_redis_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    assert main(["fuzz", "--database", url, "--time-limit", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and url in err and "unreachable" in err
    assert time.monotonic() - started < REDIS_TIMEOUT + 5


def test_a_password_protected_redis_takes_the_password_from_the_url(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    need_redis_server()
    server = RedisServer(tmp_path, "--requirepass", "s3cret")
    try:
        url = f"redis://:s3cret@127.0.0.1:{server.port}/0"
        db = open_database(url).database
        db.save(b"k", b"v")
        assert list(db.fetch(b"k")) == [b"v"]
        wrong = f"redis://:wrong@127.0.0.1:{server.port}/0"
        assert main(["fuzz", "--database", wrong, "--time-limit", "1"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Redis refused" in err and "wrong" not in err
    finally:
        server.stop()


@pytest.mark.parametrize("checks", ["proofs", "model,nonsense"])
def test_checks_that_are_not_searches_are_refused(checks: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fuzz", "--checks", checks, "--time-limit", "1"]) == 2
    assert "cannot be fuzzed" in capsys.readouterr().err


@pytest.fixture
def full_directory(tmp_path: Path) -> Iterator[Path]:
    """A directory on a 64 KiB tmpfs, filled up."""
    mount = tmp_path / "full"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        with pytest.raises(OSError), open(mount / "filler", "wb", buffering=0) as f:
            for _ in range(1000):
                f.write(bytes(4096))
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_full_disk_for_the_traces_is_one_line_and_exit_2(
    full_directory: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["fuzz", "--failures", str(full_directory / "traces"), "--database", str(tmp_path / "db"),
                 "--time-limit", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(full_directory) in err and "No space left" in err


# --- campaigns -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_failure_found_by_one_campaign_is_replayed_by_another_and_by_check(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = Fuzz(tmp_path / "a", "--workers", "1", "--time-limit", "300", "--database", redis_server.url)
    found = first.wait_for(FOUND)
    # The second campaign starts once the first has stored a failure: it replays it first.
    second = Fuzz(
        tmp_path / "b", "--workers", "1", "--time-limit", "3", "--database", redis_server.url, "--seed", "7"
    )
    replayed = second.wait_for(re.compile(r"replayed from the database"))
    first.interrupt()  # Ctrl-C: the first campaign ends with its summary
    code_a, out_a, err_a = first.finish()
    code_b, _, err_b = second.finish()
    assert (code_a, code_b) == (1, 1), err_a + err_b
    assert "campaign summary (interrupted" in out_a and first.summary()["interrupted"] is True
    trace_a = tmp_path / "a" / found["trace"]
    trace_b = tmp_path / "b" / FOUND.search(replayed.string)["trace"]  # type: ignore[index]
    stored = stored_failures(redis_server.url)
    assert trace_steps(trace_a) in [[op.to_json() for op in f.trace.steps] for f in stored]
    assert trace_steps(trace_b) in [[op.to_json() for op in f.trace.steps] for f in stored]
    found_by_a = {json.dumps(trace_steps(p)) for p in (tmp_path / "a" / "failures").glob("fuzz-*.json")}
    assert json.dumps(trace_steps(trace_b)) in found_by_a

    # A later `check` replays the database's examples first and shrinks to a trace fuzz stored.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    check = subprocess.run(
        [sys.executable, "-m", "externref_harness.cli", "check", "--only", "model", "--mutant", MUTANT,
         "--hypothesis-profile", "ci", "--database", redis_server.url, "--failures", "check-failures"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 1, check.stdout + check.stderr
    replayed_examples = re.search(r"examples=(\d+),", check.stdout)
    assert replayed_examples and int(replayed_examples[1]) <= 2, check.stdout  # replayed, not searched for
    saved = tmp_path / "check-failures" / f"model-{MUTANT}-debug.json"
    assert trace_steps(saved) in [trace_steps(p) for p in (tmp_path / "a" / "failures").glob("fuzz-*.json")]


@pytest.mark.slow
def test_a_killed_worker_loses_nothing_saved_and_the_campaign_goes_on(tmp_path: Path) -> None:
    fuzz = Fuzz(tmp_path, "--workers", "2", "--time-limit", "300", "--database", "db")
    index, pid = map(int, fuzz.wait_for(re.compile(r"^worker (\d+): pid (\d+)")).groups())
    found = fuzz.wait_for(FOUND)
    os.kill(pid, signal.SIGKILL)
    fuzz.wait_for(re.compile(rf"worker {index} \(pid {pid}\) died \(signal 9\); restarted"), stream="err")
    fuzz.wait_for(re.compile(rf"^worker {index}: pid (?!{pid}\b)\d+"))  # the replacement is searching
    fuzz.interrupt()
    code, _, err = fuzz.finish()
    assert code == 1, err
    assert (tmp_path / found["trace"]).exists()
    assert trace_steps(tmp_path / found["trace"]) in [
        [op.to_json() for op in f.trace.steps] for f in stored_failures(str(tmp_path / "db"))
    ]
    workers = fuzz.summary()["per_worker"]
    assert isinstance(workers, list) and sorted(w["restarts"] for w in workers) == [0, 1]
    assert all(w["pid"] != pid for w in workers)


@pytest.mark.slow
def test_redis_going_away_falls_back_to_the_local_database_keeping_the_failures(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    fuzz = Fuzz(tmp_path, "--workers", "2", "--time-limit", "300", "--database", redis_server.url)
    found = fuzz.wait_for(FOUND)
    redis_server.stop()
    fuzz.wait_for(re.compile("went away"), stream="err")
    fuzz.wait_for(re.compile(r"^\[ *\d+\.\ds\] examples"))  # the campaign goes on
    fuzz.interrupt()
    code, _, err = fuzz.finish()
    assert code == 1, err
    assert len(err.splitlines()) == 1, err  # one line, no traceback
    assert redis_server.url in err and "local database .hypothesis/examples" in err
    local = stored_failures(str(tmp_path / ".hypothesis" / "examples"))
    assert trace_steps(tmp_path / found["trace"]) in [[op.to_json() for op in f.trace.steps] for f in local]
    assert fuzz.summary()["database_fallback"] == ".hypothesis/examples"


@pytest.mark.slow
def test_without_a_bug_a_campaign_finds_nothing_and_covers_every_path(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-m", "externref_harness.cli", "fuzz", "--checks", "model,lockstep",
         "--workers", "2", "--time-limit", "5", "--database", "db", "--json", "summary.json",
         "--progress-every", "1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["failures"] == [] and summary["examples"] > 0 and summary["examples_per_s"] > 0
    assert len(summary["per_worker"]) == 2 and all(w["examples"] > 0 for w in summary["per_worker"])
    assert re.search(
        r"^\[ *\d+\.\ds\] examples \d+ ", done.stdout, re.M
    )  # plain progress lines off a terminal
    assert summary["coverage_over_time"] and summary["coverage_over_time"][-1][1] >= 10


def test_a_stored_failure_that_no_longer_fails_is_dropped(tmp_path: Path) -> None:
    """Replay is checked, not trusted: a stored trace that passes here is deleted, as Hypothesis
    deletes stored examples that no longer fail."""
    (target,) = fuzz_targets(["model"], MUTANT, "debug")
    from externref_harness import trace as tracefile

    passing = Found("model", "I1 no reachable ref is freed", tracefile.Trace(target.config, ()))
    db = DirectoryBasedExampleDatabase(str(tmp_path / "db"))
    db.save(target.failures_key, passing.to_bytes())
    fuzz = Fuzz(tmp_path, "--workers", "1", "--time-limit", "3", "--database", "db")
    code, _, err = fuzz.finish()
    assert code == 1, err  # it still finds the bug itself
    assert passing.fingerprint not in {f.fingerprint for f in stored_failures(str(tmp_path / "db"))}


# --- the parts, in process -------------------------------------------------------------------------


def test_the_fingerprint_is_the_invariant_and_the_shrunk_trace_not_the_message() -> None:
    from externref_harness import trace as tracefile
    from externref_harness.model import ops

    (target,) = fuzz_targets(["model"], MUTANT, "debug")
    steps = (ops.New(8, 8), ops.Gc())
    a = Found(
        "model", "I1 no reachable ref is freed", tracefile.Trace(target.config, steps, "refs [0] freed")
    )
    b = Found("model", "I1 no reachable ref is freed", tracefile.Trace(target.config, steps, "other words"))
    assert a.fingerprint == b.fingerprint
    assert Found.from_bytes(a.to_bytes()) == a
    assert Found("model", "I8 every stack root is in the table", a.trace).fingerprint != a.fingerprint
    assert Found("model", a.invariant, tracefile.Trace(target.config, steps[:1])).fingerprint != a.fingerprint
    assert Found.from_bytes(b"not json") is None


def test_each_config_has_its_own_examples_in_the_database(tmp_path: Path) -> None:
    """A mutant's stored examples are replayed for that mutant only: a run of the seed on the same
    database neither replays nor clears them (Hypothesis deletes stored examples that pass)."""
    from dataclasses import replace

    from hypothesis import settings

    from externref_harness.search.model_check import run_model_check
    from externref_harness.search.space import MACHINE_BOUNDS, MACHINE_CONFIG

    db = DirectoryBasedExampleDatabase(str(tmp_path / "db"))
    budget = settings(settings.get_profile("ci"), database=db)  # as `check --database` builds it
    mutant = replace(MACHINE_CONFIG, mutant="cve-2022-23636")
    assert not run_model_check(mutant, MACHINE_BOUNDS, budget).passed
    assert run_model_check(MACHINE_CONFIG, MACHINE_BOUNDS, settings(budget, max_examples=3)).passed
    again = run_model_check(mutant, MACHINE_BOUNDS, settings(budget, max_examples=1))
    assert not again.passed and again.stats.first_failing_example == 1  # replayed, not searched for


@pytest.mark.slow
def test_on_a_terminal_the_display_is_live_and_ends_with_the_summary(tmp_path: Path) -> None:
    """Run on a pseudo-terminal: rich redraws the tables in place, then the summary stays."""
    import pty
    import select

    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm", "COLUMNS": "120", "LINES": "60"}
    process = subprocess.Popen(
        [sys.executable, "-m", "externref_harness.cli", "fuzz", "--checks", "model", "--workers", "1",
         "--time-limit", "4", "--seed", "3", "--database", "db", "--failures", "failures"],
        cwd=tmp_path, env=env, stdin=follower, stdout=follower, stderr=follower,
    )  # fmt: skip
    os.close(follower)
    shown = b""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed: the campaign is over
                break
            if not chunk:
                break
            shown += chunk
        elif process.poll() is not None:
            break
    os.close(leader)
    assert process.wait(timeout=30) == 0
    text = shown.decode(errors="replace")
    assert "\x1b[" in text  # drawn with terminal control sequences, not plain progress lines
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", text)
    assert "examples/s" in text and "first reached" in text and "no failures" in text
    assert "campaign summary (time limit reached" in text
    assert not re.search(r"^\[ *\d+\.\ds\] examples", text, re.M)
