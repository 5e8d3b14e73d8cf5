"""What the command line prints and writes for a person and a CI system: the version, exit statuses
in `--help`, `--json` reports, the mutation score of `check --all-mutants`, "not applicable",
stale traces, readable steps and diffs, and progress lines off a terminal."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from externref_harness import trace as tracefile
from externref_harness.cli.main import COMMANDS, main
from externref_harness.model import ops
from externref_harness.model.observation import Observation, Ok
from externref_harness.model.state import Config, State, WasmFrame
from externref_harness.report import format_observation, format_op, full_output, slot_runs, state_diff

Capture = pytest.CaptureFixture[str]


def test_version(capsys: Capture) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("externref-harness 0.")


@pytest.mark.parametrize("command", [name for name, _, _ in COMMANDS])
def test_every_help_lists_exit_statuses_and_every_option_has_help(command: str, capsys: Capture) -> None:
    assert main([command, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Exit status: 0 " in text and " 2 " in text
    from externref_harness.cli.main import build_parser

    parser, _ = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in commands.choices[command]._actions:
        assert action.help, f"{command} {action.option_strings} has no help"


def test_one_name_for_the_failures_directory(capsys: Capture) -> None:
    for command in ("check", "explore", "prove"):
        assert main([command, "--help"]) == 0
        text = capsys.readouterr().out
        assert "--failures DIR" in text
        assert "--out" not in text and "--traces" not in text  # deprecated spellings stay hidden


def test_check_json_report_and_a_passing_run_creates_nothing(tmp_path: Path, capsys: Capture) -> None:
    report = tmp_path / "report.json"
    failures = tmp_path / "never" / "made"
    # 10 examples: the fewest under ci that reach every required path (check fails otherwise).
    argv = ["check", "--only", "model", "--max-examples", "10", "--hypothesis-profile", "ci"]
    assert main([*argv, "--failures", str(failures), "--json", str(report)]) == 0
    obj = json.loads(report.read_text())
    assert obj["command"] == "check" and obj["status"] == 0 and obj["passed"] is True
    assert obj["profile"] == "ci" and obj["max_examples"] == 10
    (row,) = obj["checks"]
    assert row["check"] == "model" and row["result"] == "pass" and row["trace"] is None
    assert row["figures"]["examples"] == "10"
    assert not (tmp_path / "never").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no temporary file left


def test_check_json_names_the_saved_trace_of_a_failure(tmp_path: Path, capsys: Capture) -> None:
    report = tmp_path / "r.json"
    argv = ["check", "--only", "model", "--mutant", "cve-2022-23636", "--hypothesis-profile", "ci"]
    assert main([*argv, "--failures", str(tmp_path / "f"), "--json", str(report)]) == 1
    (row,) = json.loads(report.read_text())["checks"]
    assert row["result"] == "fail" and row["examples_needed"] >= 1
    assert Path(row["trace"]).exists() and row["failure"].startswith("Model check failed")


def test_a_check_that_cannot_exercise_the_mutant_is_not_applicable(tmp_path: Path, capsys: Capture) -> None:
    report = tmp_path / "r.json"
    argv = ["check", "--only", "model", "--only", "proofs", "--mutant", "cve-2022-23636", "--json"]
    assert main([*argv, f"{report}", "--hypothesis-profile", "ci", "--failures", f"{tmp_path}"]) == 1
    out = capsys.readouterr().out
    assert "not applicable" in out
    rows = {r["check"]: r["result"] for r in json.loads(report.read_text())["checks"]}
    assert rows == {"model": "fail", "proofs": "not applicable"}


def test_all_mutants_missed_with_a_budget_too_small_exits_1(tmp_path: Path, capsys: Capture) -> None:
    """Two examples per check cannot reach cve-2021-39218 (its stack-map fallback needs a Wasm frame
    that called twice, then a GC; the ci profile needs 142 examples): the score must say missed."""
    report = tmp_path / "score.json"
    argv = ["check", "--all-mutants", "--only", "model", "--hypothesis-profile", "ci", "--max-examples", "2"]
    assert main([*argv, "--json", str(report)]) == 1
    out = capsys.readouterr().out
    assert "MISSED" in out and "seeded bugs missed" in out
    rows = {m["mutant"]: m for m in json.loads(report.read_text())["mutants"]}
    assert rows["cve-2021-39218"]["caught"] is False
    assert rows["cve-2021-39218"]["checks_run"] == ["model"]
    assert {m["layer"] for m in rows.values()} == {"model", "protocol"}  # the selected layers only


@pytest.mark.slow
def test_all_mutants_of_the_model_are_caught_with_the_ci_budget(tmp_path: Path, capsys: Capture) -> None:
    report = tmp_path / "score.json"
    argv = ["check", "--all-mutants", "--only", "model", "--hypothesis-profile", "ci"]
    assert main([*argv, "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "all 8 seeded bugs caught" in out and "examples needed" in out
    rows = json.loads(report.read_text())["mutants"]
    assert len(rows) == 8 and all(r["caught"] and r["caught_by"] == "model" for r in rows)
    assert all(1 <= r["examples_needed"] <= 300 for r in rows)


def test_prove_exits_3_when_z3_runs_out_of_time_and_writes_json(tmp_path: Path, capsys: Capture) -> None:
    report = tmp_path / "p.json"
    argv = ["prove", "--bounds", "2,2,2,2", "--timeout", "0.001", "--build", "debug", "--json", str(report)]
    assert main(argv) == 3
    assert "unknown within the timeout" in capsys.readouterr().out
    obj = json.loads(report.read_text())
    assert obj["status"] == 3 and any(p["verdict"] == "unknown" for p in obj["properties"])
    assert not any(p["verdict"] == "counterexample" for p in obj["properties"])


def test_prove_exits_1_on_a_counterexample_and_json_names_the_trace(tmp_path: Path, capsys: Capture) -> None:
    report = tmp_path / "p.json"
    argv = ["prove", "--bounds", "4,3,3,3", "--mutant", "cve-2022-31146", "--build", "debug"]
    assert main([*argv, "--failures", str(tmp_path / "t"), "--json", str(report)]) == 1
    obj = json.loads(report.read_text())
    assert obj["status"] == 1 and obj["mutant"] == "cve-2022-31146"
    (saved,) = obj["traces"]
    assert Path(saved["trace"]).exists()
    assert main(["replay", saved["trace"]]) == 1  # the saved counterexample fails on replay


def _save(tmp_path: Path, steps: tuple[ops.Op, ...], note: str = "", name: str = "t.json") -> Path:
    return tracefile.save(tracefile.Trace(Config(chunk_size=2, slots=2), steps, note), tmp_path / name)


def test_replay_of_a_stale_trace_says_so(tmp_path: Path, capsys: Capture) -> None:
    path = _save(tmp_path, (ops.New(8, 8), ops.Gc()), "I1 no reachable ref is freed: ref 0 was freed")
    report = tmp_path / "r.json"
    assert main(["replay", str(path), "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "STALE: the failure recorded in this trace no longer happens" in out
    assert "recorded when saved" not in out
    obj = json.loads(report.read_text())
    assert obj["stale"] is True and obj["model_failure"] is None and obj["status"] == 0


def test_replay_json_of_a_failing_trace(tmp_path: Path, capsys: Capture) -> None:
    trace = tracefile.Trace(
        Config(chunk_size=2, slots=2, n_globals=2, mutant="cve-2022-23636"),
        (ops.InitGlobals(1), ops.TeardownGlobals()),
        "recorded",
    )
    path = tracefile.save(trace, tmp_path / "t.json")
    report = tmp_path / "r.json"
    assert main(["replay", str(path), "--json", str(report)]) == 1
    assert "recorded when saved: recorded" in capsys.readouterr().out
    obj = json.loads(report.read_text())
    assert obj["stale"] is False and obj["model_failure"]["step"] == 2


def test_steps_print_with_field_names() -> None:
    assert str(ops.WasmCallHost((1,), 2, True)) == "WasmCallHost(args=(1,), ret_slot=2, unwind_info=True)"
    assert format_op(ops.New(8, 8)) == "New(size=8, align=8)"
    assert format_op(ops.Gc()) == "Gc()"


def test_long_lists_are_summarised_unless_asked_in_full() -> None:
    obs = Observation(Ok(), frozenset(range(1024)), ("gc:canary-found", *["gc:wasm-frame"] * 50))
    line = format_observation(obs)
    assert "dropped=[0, 1, 2, ..., 1021, 1022, 1023] (1024 values)" in line
    assert "'gc:wasm-frame' x50" in line and len(line) < 200
    elements = format_observation(Observation(Ok(tuple(range(512)))))
    assert elements == "Ok((0, 1, 2, ..., 509, 510, 511) (512 values))"
    long_call = format_op(ops.CallWasm(tuple(range(100))))
    assert long_call == "CallWasm(args=(0, 1, 2, ..., 97, 98, 99) (100 values))"
    with full_output():
        assert "1000, 1001" in format_observation(obs)


def test_alternating_paths_and_long_slot_lists_are_summarised() -> None:
    """A host loop of 512 inserts at the seed's chunk alternates paths; a chunk of 512 slots
    allocated is one diff line; a 512-slot chunk in a failure is runs of equal slots."""
    loop = ["try_insert:chunk-full", "insert:gc-and-insert-slow", "gc:wasm-frame"] * 512
    line = format_observation(Observation(Ok(), frozenset(), ("gc:canary-found", *loop, "values-dropped")))
    assert "('try_insert:chunk-full', 'insert:gc-and-insert-slow', 'gc:wasm-frame') x512" in line
    assert len(line) < 200
    varied = format_observation(Observation(Ok(), frozenset(), tuple(f"path-{i % 7}" for i in range(700))))
    assert len(varied) < 400 and "more groups" in varied
    with full_output():
        assert format_observation(Observation(Ok(), frozenset(), tuple(loop))).count("gc:wasm-frame") == 512
    before = State()
    after = before.with_(table=before.table.with_(chunk=(None,) * 512))
    assert state_diff(before, after) == ["table.chunk[0-511]: (none) -> None (512 slots)"]
    chunk = tuple([0] * 200 + [1] * 300 + [None] * 12)
    assert slot_runs(chunk) == "512 slots: [0-199] 0, [200-499] 1, [500-511] None"
    assert len(slot_runs(tuple(range(512)))) < 300
    with full_output():
        assert "[511] 511" in slot_runs(tuple(range(512)))


def test_a_frame_diff_shows_the_changed_slots() -> None:
    before = State(frames=(State().frames[0], WasmFrame(slots=(0, 1, None, None))))
    after = State(frames=(State().frames[0], WasmFrame(slots=(0, None, None, 2))))
    assert state_diff(before, after) == ["frames[1].slots[1]: 1 -> None", "frames[1].slots[3]: None -> 2"]


def test_a_printed_failure_marks_the_teardown(tmp_path: Path, capsys: Capture) -> None:
    """The implementation frees a ref early; the shrunk failure is the teardown's drop."""
    argv = ["check", "--only", "lockstep", "--mutant", "impl-early-free", "--hypothesis-profile", "ci"]
    assert main([*argv, "--failures", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    steps = out[out.index("Steps:") : out.index("State diff")].splitlines()
    assert steps[1].startswith("  1. New(size=0, align=1)")
    assert "-- teardown from here" in steps[2] and steps[3].startswith(">>2. Drop(h=0)")
    assert "heap[0]: ref_count 1 -> 0, freed False -> True" in out


def test_progress_lines_off_a_terminal(tmp_path: Path) -> None:
    """A CI log gets a plain line every few seconds on stderr (here every 0.2 s)."""
    env = {**os.environ, "EXTERNREF_HARNESS_PROGRESS_SECONDS": "0.2", "PYTHONPATH": os.getcwd()}
    argv = ["check", "--only", "model", "--hypothesis-profile", "ci", "--max-examples", "60"]
    out = subprocess.run(
        [sys.executable, "-m", "externref_harness.cli", *argv, "--failures", str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stderr.splitlines() if line.startswith("externref-harness check: model:")]
    assert lines and "examples" in lines[-1] and lines[-1].endswith("s)")
    assert not (tmp_path / ".hypothesis").exists()  # the ci profile writes no Hypothesis storage here


def test_a_long_replay_reports_its_step_off_a_terminal(tmp_path: Path) -> None:
    steps: tuple[ops.Op, ...] = ()
    for h in range(300):
        steps += (ops.New(8, 8), ops.Drop(h))
    path = _save(tmp_path, steps)
    # A line every 10 ms: the 600 steps take about 0.1 s on a quiet machine, so a line every 0.1 s
    # could come after the end.
    env = {**os.environ, "EXTERNREF_HARNESS_PROGRESS_SECONDS": "0.01", "PYTHONPATH": os.getcwd()}
    out = subprocess.run(
        [sys.executable, "-m", "externref_harness.cli", "replay", str(path)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    done = [
        int(line.split("step ")[1].split(" of")[0])
        for line in out.stderr.splitlines()
        if line.startswith("externref-harness replay: step ") and " of 600 " in line
    ]
    assert done and done == sorted(done) and all(0 <= n <= 600 for n in done)
    # A default of --max-steps 5,000 and an explicit smaller one refuse it before it runs.
    assert main(["replay", str(path), "--max-steps", "599"]) == 2
