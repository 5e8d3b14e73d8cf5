"""`externref-harness fuzz --impl`: campaigns against a native library, the library only in each
worker's child processes. A seeded C bug is found, shrunk, saved and kept in the shared example
database, where a second campaign replays it; a crash is a saved, shrunk, replayable trace; bad
arguments are one line and exit 2."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from crashing import crashing_gc_library
from foreground import interruptible
from one_line import assert_one_line_exit_2

from externref_harness.cli.main import main
from externref_harness.native.build import build_reference

ROOT = Path(__file__).resolve().parents[2]
FOUND = re.compile(
    r"^failure \d+: lockstep: .* externref-harness replay (?P<trace>\S+) --impl (?P<impl>\S+)"
    r"(?: --step-timeout (?P<timeout>\S+))?$"
)


def _fuzz(cwd: Path, library: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "externref_harness.cli", "fuzz", "--impl", str(library), "--workers", "1",
         "--database", str(cwd.parent / "db"), "--failures", "failures", "--progress-every", "5", *args],
        cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=interruptible,  # `_first_failure` stops it with Ctrl-C
    )  # fmt: skip


def _first_failure(process: subprocess.Popen[str], timeout: float = 240) -> tuple[re.Match[str], str]:
    """The first failure line; then Ctrl-C, and the rest of the output."""
    assert process.stdout is not None
    lines = []
    for line in process.stdout:
        lines.append(line)
        found = FOUND.search(line.rstrip("\n"))
        if found:
            process.send_signal(signal.SIGINT)
            rest, err = process.communicate(timeout=timeout)
            return found, "".join(lines) + rest + err
    _, err = process.communicate(timeout=timeout)
    raise AssertionError("no failure line in:\n" + "".join(lines) + err)


def test_a_failure_is_kept_in_the_shared_database_and_replayed_by_a_second_campaign(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library = build_reference("release", bug="c-early-free")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    found, out = _first_failure(_fuzz(tmp_path / "a", library, "--time-limit", "300", "--seed", "1"))
    assert Path(found["impl"]) == library
    trace = tmp_path / "a" / found["trace"]
    steps = json.loads(trace.read_text())["steps"]
    assert 1 <= len(steps) <= 4, out
    second = _fuzz(tmp_path / "b", library, "--time-limit", "3", "--seed", "7")
    replayed, out_b = _first_failure(second)
    assert "replayed from the database" in replayed.string, out_b
    assert json.loads((tmp_path / "b" / replayed["trace"]).read_text())["steps"] == steps
    capsys.readouterr()
    assert main(["replay", str(trace), "--impl", str(library)]) == 1


def test_the_correct_reference_passes_a_short_campaign(tmp_path: Path) -> None:
    process = _fuzz(tmp_path, build_reference("debug"), "--time-limit", "4", "--seed", "2")
    out, err = process.communicate(timeout=240)
    assert process.returncode == 0, out + err
    assert not re.search(r"^failure \d+:", out, re.MULTILINE), out


@pytest.mark.slow
@pytest.mark.parametrize("bug,expected", [("crash", "SIGSEGV"), ("c-gc-hang", "did not answer")])
def test_a_crash_and_a_hang_are_saved_shrunk_traces(
    bug: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library = crashing_gc_library(tmp_path) if bug == "crash" else build_reference("release", bug=bug)
    args = ("--time-limit", "300", "--seed", "1", "--step-timeout", "2")
    found, out = _first_failure(_fuzz(tmp_path, library, *args))
    trace = tmp_path / found["trace"]
    saved = json.loads(trace.read_text())
    shrunk = re.search(r"(\d+) steps \(shrunk from (\d+)\)", found.string)
    assert shrunk is not None and int(shrunk[1]) <= int(shrunk[2]), out
    assert expected in saved["note"] and len(saved["steps"]) == int(shrunk[1]), out
    capsys.readouterr()
    # The line says how to replay it as it ran: at the campaign's step timeout.
    assert found["timeout"] == "2", found.string
    assert main(["replay", str(trace), "--impl", str(library), "--step-timeout", found["timeout"]]) == 1
    assert expected in capsys.readouterr().out


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--impl", "/nonexistent/lib.so"], "/nonexistent/lib.so"),
        (["--checks", "model"], "cannot run against --impl"),
        (["--step-timeout", "0"], "--step-timeout"),
        (["--mutant", "impl-early-free"], "not of --impl"),
        (["--build", "release"], "debug build"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    args: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library = str(build_reference("debug"))
    base = ["fuzz", "--impl", library, "--time-limit", "1", "--failures", str(tmp_path)]
    assert_one_line_exit_2([*base, *args], capsys, expected)


@pytest.mark.slow
def test_a_hang_where_a_known_hang_hung_is_its_duplicate_without_a_shrink(tmp_path: Path) -> None:
    """A worker shrinks its first hang; a second example hanging at the same kind of step is
    reported as that failure's duplicate at once, marked unshrunk (a shrink would cost a share of
    the step timeout for every candidate that still hangs), and its raw example is not lost."""
    import time
    from multiprocessing import Pipe

    from externref_harness.campaign.campaign import CampaignOptions, Worker, WorkerSpec
    from externref_harness.lockstep.runner import drive
    from externref_harness.lockstep.targets import open_isolated
    from externref_harness.model.ops import CallWasm, New, WasmCallHost
    from externref_harness.search.model_check import InvariantViolation

    library = build_reference("release", bug="c-gc-hang")
    options = CampaignOptions(
        ("lockstep",), database=str(tmp_path / "db"), failures=tmp_path / "failures", build="release",
        impl=library, step_timeout=2,
    )  # fmt: skip
    ours, theirs = Pipe()
    worker = Worker(WorkerSpec(1, 1, options, time.time() + 600), theirs)
    (target,) = worker.targets
    _, pool = open_isolated(library, 2)
    hang = (CallWasm(()), WasmCallHost((), 0, unwind_info=False))
    try:
        for steps in (hang, (New(8, 8), New(8, 8), *hang)):
            first = drive(target.config, steps, pool.adapter(fresh=True), until_first=True).first
            assert first is not None and "(a hang)" in first.problem, first
            worker.handle(target, InvariantViolation("hung", steps, first.problem), "search", [])
    finally:
        pool.close()
        target.close()
    shrunk, again = ours.recv(), ours.recv()
    assert shrunk["kind"] == again["kind"] == "failure"
    assert shrunk["new"] and not shrunk["unshrunk_hang"], shrunk
    assert not again["new"] and again["unshrunk_hang"], again
    assert again["fingerprint"] == shrunk["fingerprint"]
