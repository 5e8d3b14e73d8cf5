"""Bad input on the command line, case by case: one line naming the input, exit 2, no traceback,
nothing created or deleted that the user did not ask for."""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from externref_harness import trace as tracefile
from externref_harness.cli.main import main, os_error_message
from externref_harness.model import ops
from externref_harness.model.state import Config
from externref_harness.native.build import build_reference

Capture = pytest.CaptureFixture[str]
SMALL_EXPLORE = ["explore", "--frames", "1", "--slots", "1", "--chunk", "1", "--quiet"]


def one_error_line(capsys: Capture, command: str) -> str:
    """The single stderr line of a refused command (stdout empty)."""
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith(f"externref-harness {command}: error: ") and "error::" not in lines[0]
    assert "Traceback" not in captured.err
    return lines[0]


def valid_trace_json(**changes: object) -> dict[str, object]:
    obj = tracefile.Trace(Config(chunk_size=2, slots=2), (ops.New(8, 8), ops.Gc())).to_json()
    obj.update(changes)
    return obj


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Run in an empty working directory, so side effects there can be seen."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EXTERNREF_HARNESS_FAILURES", raising=False)
    yield tmp_path


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b'{"format": "externref-harness-trace", "note": "\xff"}', "is not UTF-8 text (byte 0xff at offset"),
        ("[" * 100_000, "JSON nested too deeply"),
        ("1" * 5000, "an integer of more than 4,300 digits"),
        (json.dumps(valid_trace_json())[:60], "is not JSON: "),
        ("[]", "a trace must be a JSON object, got a list"),
        (json.dumps(valid_trace_json(note=True)), "note: expected a string, got a boolean"),
        (json.dumps(valid_trace_json(version=True)), "trace version true is not supported"),
        (json.dumps(valid_trace_json(version=1.0)), "trace version 1.0 is not supported"),
        (json.dumps(valid_trace_json(note=float("nan"))), "NaN is not a JSON number"),
        (json.dumps(valid_trace_json(steps=[None])), "step 1: a step must be an object, got null"),
        (json.dumps(valid_trace_json(steps=[{"op": "Drop", "h": 10**40}])), "out of range"),
        (json.dumps(valid_trace_json(steps=[{"op": "Drop", "h": -1}])), "Drop.h: -1 is out of range"),
        (json.dumps(valid_trace_json(steps=[{"op": "Drop", "h": "x" * 5000}])), "..."),
    ],
)
def test_a_bad_trace_file_is_one_line_naming_the_file(
    tmp_path: Path, content: str | bytes, message: str, capsys: Capture
) -> None:
    path = write(tmp_path / "bad.json", content)
    assert main(["replay", str(path)]) == 2
    line = one_error_line(capsys, "replay")
    assert f"{path}" in line and message in line
    assert len(line) < 400


def test_special_and_endless_files_are_refused_before_opening(tmp_path: Path, capsys: Capture) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert main(["replay", str(fifo)]) == 2  # a FIFO nobody writes would block the open
    assert "is a FIFO, not a trace file" in one_error_line(capsys, "replay")
    assert main(["replay", "/dev/zero"]) == 2
    assert "is a character device" in one_error_line(capsys, "replay")
    huge = tmp_path / "huge.json"
    with open(huge, "wb") as f:
        f.truncate(tracefile.MAX_TRACE_BYTES + 1)  # sparse: costs no disk
    assert main(["replay", str(huge)]) == 2
    assert "more than a trace may" in one_error_line(capsys, "replay")
    # A directory is `replay DIR`: every file in it is checked before any runs.
    assert main(["replay", str(tmp_path)]) == 2
    assert "huge.json" in one_error_line(capsys, "replay")
    assert time.monotonic() - started < 10


def test_a_trace_too_long_to_replay_is_refused_with_its_limit(tmp_path: Path, capsys: Capture) -> None:
    steps = [{"op": "Gc"}] * 100_000
    path = write(tmp_path / "long.json", json.dumps(valid_trace_json(steps=steps)))
    assert main(["replay", str(path)]) == 2
    assert "100,000 steps, more than the 5,000 a replay runs (raise --max-steps)" in one_error_line(
        capsys, "replay"
    )
    for bad in ("0", "-1", "many", ""):
        assert main(["replay", str(path), "--max-steps", bad]) == 2
        assert "--max-steps" in one_error_line(capsys, "replay")


def test_a_bad_step_timeout_for_replay_is_one_line(tmp_path: Path, capsys: Capture) -> None:
    path = write(tmp_path / "t.json", json.dumps(valid_trace_json()))
    library = str(build_reference("debug"))
    for bad in ("0", "-1", "nan", "inf"):
        assert main(["replay", str(path), "--impl", library, "--step-timeout", bad]) == 2
        assert "--step-timeout must be a positive number of seconds" in one_error_line(capsys, "replay")
    assert main(["replay", str(path), "--step-timeout", "1"]) == 2
    assert "--step-timeout applies to --impl only" in one_error_line(capsys, "replay")
    assert main(["replay", str(path), "--impl", library, "--step-timeout", "5"]) == 0


def test_a_lone_surrogate_and_a_non_utf8_file_name_print_on_a_strict_stdout(
    tmp_path: Path, capsys: Capture
) -> None:
    """pytest's captured stdout is a strict UTF-8 stream, as a terminal's can be."""
    name = os.fsdecode(b"tr\xffce.json")
    path = tracefile.save(
        tracefile.Trace(Config(chunk_size=2, slots=2), (ops.New(8, 8),), "a \ud800 note"), tmp_path / name
    )
    assert main(["replay", str(path)]) == 0
    out = capsys.readouterr().out
    assert "tr\\udcffce.json" in out and "a \\ud800 note" in out
    assert main(["replay", str(tmp_path / os.fsdecode(b"missing\xff\nname.json"))]) == 2
    assert "missing\\udcff\\nname.json" in one_error_line(capsys, "replay")


def test_an_unknown_hypothesis_profile_is_one_line_and_writes_nothing(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "bogus")
    assert main(["check", "--only", "model"]) == 2
    assert "$HYPOTHESIS_PROFILE=bogus is not a profile; choose from ci, dev, thorough" in one_error_line(
        capsys, "check"
    )
    assert list(in_tmp.iterdir()) == []


def test_a_passing_ci_run_leaves_the_working_directory_as_it_was(in_tmp: Path, capsys: Capture) -> None:
    # 10 examples: the fewest under ci that reach every required path (check fails otherwise).
    assert main(["check", "--only", "model", "--hypothesis-profile", "ci", "--max-examples", "10"]) == 0
    assert list(in_tmp.iterdir()) == []  # no .externref-harness/failures, no .hypothesis


@pytest.mark.parametrize("command", [["check", "--only", "model"], SMALL_EXPLORE, ["prove"]])
def test_where_failures_go_is_checked_first_and_named(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    name = command[0]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    plain = write(tmp_path / "plain", "")
    for value, message in (
        ("", "--failures needs a path, got an empty string"),
        (str(fifo), "--failures " + str(fifo) + ": not a directory"),
        (str(plain), "--failures " + str(plain) + ": not a directory"),
        (str(plain / "sub"), f"not a directory ({plain} is not a directory)"),
    ):
        started = time.monotonic()
        assert main([*command, "--failures", value]) == 2, value
        assert message in one_error_line(capsys, name)
        assert time.monotonic() - started < 5  # before any proof or search runs
    monkeypatch.setenv("EXTERNREF_HARNESS_FAILURES", "")
    argv = [*command, "--mutant", "cve-2022-31146"] if name == "prove" else command
    assert main(argv) == 2
    assert "$EXTERNREF_HARNESS_FAILURES needs a path" in one_error_line(capsys, name)


def test_prove_refuses_its_trace_directory_before_the_proofs_run(tmp_path: Path, capsys: Capture) -> None:
    plain = write(tmp_path / "plain", "")
    started = time.monotonic()
    assert main(["prove", "--mutant", "cve-2022-31146", "--traces", str(plain)]) == 2  # the old spelling
    assert "not a directory" in one_error_line(capsys, "prove")
    assert time.monotonic() - started < 5


def test_tilde_is_expanded_in_every_path(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: Capture
) -> None:
    home = in_tmp / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    argv = [*SMALL_EXPLORE, "--mutant", "cve-2022-23636", "--globals", "2"]
    assert main([*argv, "--failures", "~/f"]) == 1
    assert (home / "f" / "explore-cve-2022-23636-debug.json").exists()
    monkeypatch.setenv("EXTERNREF_HARNESS_FAILURES", "~/env")
    assert main(argv) == 1
    assert (home / "env" / "explore-cve-2022-23636-debug.json").exists()
    assert main(["replay", "~/env/explore-cve-2022-23636-debug.json", "--json", "~/r.json"]) == 1
    assert json.loads((home / "r.json").read_text())["status"] == 1
    capsys.readouterr()
    assert sorted(p.name for p in in_tmp.iterdir()) == ["home"]  # no literal '~' folder


def test_explore_out_with_a_trailing_slash_is_a_directory(tmp_path: Path, capsys: Capture) -> None:
    argv = [*SMALL_EXPLORE, "--mutant", "cve-2022-23636", "--globals", "2"]
    assert main([*argv, "--out", f"{tmp_path}/new/"]) == 1
    assert (tmp_path / "new" / "explore-cve-2022-23636-debug.json").is_file()


def test_explore_out_must_be_a_regular_file(tmp_path: Path, capsys: Capture) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert main([*SMALL_EXPLORE, "--out", str(fifo)]) == 2  # saving would block on the FIFO
    assert f"--out {fifo}: not a regular file (a FIFO)" in one_error_line(capsys, "explore")
    assert main([*SMALL_EXPLORE, "--out", "/dev/zero"]) == 2
    assert "(a character device)" in one_error_line(capsys, "explore")
    assert time.monotonic() - started < 5


def test_an_existing_read_only_trace_is_refused_before_the_run(tmp_path: Path, capsys: Capture) -> None:
    for command, name in (
        (["check", "--only", "model", "--max-examples", "1"], "model-seed-debug.json"),
        (SMALL_EXPLORE, "explore-seed-debug.json"),
    ):
        target = write(tmp_path / name, "keep me")
        target.chmod(stat.S_IRUSR)
        assert main([*command, "--failures", str(tmp_path)]) == 2
        assert f"{target}: the file exists and is read-only" in one_error_line(capsys, command[0])
        assert target.read_text() == "keep me"


def test_the_writability_probe_never_touches_a_users_file(tmp_path: Path, capsys: Capture) -> None:
    mine = write(tmp_path / ".externref-harness-write-probe", "mine")
    argv = ["check", "--only", "model", "--max-examples", "10", "--hypothesis-profile", "ci"]
    assert main([*argv, "--failures", str(tmp_path)]) == 0
    assert mine.read_text() == "mine" and sorted(p.name for p in tmp_path.iterdir()) == [mine.name]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["check", "--mutant", "x" * 5000], "unknown mutant 'xxxxxxxx"),
        (["check", "--only", "y" * 5000], "unknown check 'yyyyyy"),
        (["check", "--max-examples", "9" * 5000], "argument --max-examples"),
        (["check", "--max-examples", "0"], "must be in 1.."),
        # A budget past any run's reach is refused before the gate starts a search that never ends.
        (["gate", "x.so", "--max-examples", "1000000000000"], "must be in 1..1,000,000,000"),
        (["gate", "x.so", "--chunk-size", "0"], "argument --chunk-size: must be in 1.."),
        (["gate", "x.so", "--seed", str(2**64)], "argument --seed: must be in 0.."),
        (["replay", "x.json", "--max-steps", "0"], "argument --max-steps: must be in 1..10,000,000"),
        (["check", "--json", ""], "--json needs a path"),
        (["check", "--json", "/dev/zero"], "--json /dev/zero: not a regular file (a character device)"),
        (["check", "--json", "/"], "--json /: is a directory"),
        (["check", "--mutant", "cve-2022-23636", "--all-mutants"], "not allowed with argument"),
        (["check", "--all-mutants", "--failures", "x"], "--failures has no use with --all-mutants"),
        (["prove", "--timeout", "nan"], "--timeout must be in (0, 3600]"),
        (["prove", "--bounds", "9" * 5000 + ",1,1,1"], "--bounds"),
        (["replay", ""], "TRACE needs a path"),
        (["explore", "--out", ""], "--out needs a path"),
        (["explore", "--refs", "z" * 3000], "argument --refs"),
    ],
)
def test_bad_arguments_are_one_short_line(argv: list[str], message: str, capsys: Capture) -> None:
    assert main(argv) == 2
    line = one_error_line(capsys, argv[0])
    assert message in line and len(line) < 300, line


def test_an_os_error_reads_as_one_part_each() -> None:
    assert os_error_message(OSError(28, "No space left on device", "/x")) == "/x: No space left on device"
    assert os_error_message(OSError("boom")) == "boom"


def test_a_real_process_with_a_strict_stdout_prints_surrogates_escaped(tmp_path: Path) -> None:
    import subprocess
    import sys

    name = os.fsdecode(b"n\xffme.json")
    path = tracefile.save(tracefile.Trace(Config(chunk_size=2), (ops.Gc(),), "lone \udc80"), tmp_path / name)
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict", "PYTHONPATH": os.getcwd()}
    out = subprocess.run(
        [sys.executable, "-m", "externref_harness.cli", "replay", os.fsencode(path)],
        capture_output=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 0 and b"Traceback" not in out.stderr, out.stderr
    assert b"n\\udcffme.json" in out.stdout and b"lone \\udc80" in out.stdout


def test_a_trace_of_a_capability_the_seed_lacks_needs_its_library(tmp_path: Path, capsys: Capture) -> None:
    """The Python port is the seed: a trace recorded with own-registry (or any capability that
    changes what the runtime does) is refused in one line; one that only takes checks away runs."""
    own = tracefile.save(
        tracefile.Trace(Config(chunk_size=2, capabilities=("own-registry",)), (ops.Gc(),), ""),
        tmp_path / "own.json",
    )
    assert main(["replay", str(own)]) == 2
    line = one_error_line(capsys, "replay")
    assert "recorded with own-registry" in line and "--impl" in line, line
    opaque = tracefile.save(
        tracefile.Trace(Config(chunk_size=2, capabilities=("opaque-refs",)), (ops.New(8, 8), ops.Gc()), ""),
        tmp_path / "opaque.json",
    )
    assert main(["replay", str(opaque)]) == 0
