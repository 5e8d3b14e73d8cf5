"""The command line: the main job, the mutant catalogue, and one-line errors for bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from externref_harness import trace as tracefile
from externref_harness.catalogue import all_mutants
from externref_harness.cli.main import main
from externref_harness.model import ops
from externref_harness.model.state import Config


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "externref_harness.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mutants_json_lists_every_mutant_with_name_layer_description() -> None:
    out = cli("mutants", "--json")
    assert out.returncode == 0, out.stderr
    listed = json.loads(out.stdout)
    assert [m["name"] for m in listed] == [m.name for m in all_mutants()]
    assert all(set(m) == {"name", "layer", "description"} and all(m.values()) for m in listed)


def test_mutants_table_names_every_mutant(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mutants"]) == 0
    shown = capsys.readouterr().out
    assert all(m.name in shown for m in all_mutants())


def test_check_on_the_seed_passes(tmp_path: Path) -> None:
    out = cli(
        "check", "--only", "model", "--hypothesis-profile", "ci", "--max-examples", "20",
        "--failures", str(tmp_path),
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "all checks passed" in out.stdout


def test_check_with_a_model_mutant_fails_and_saves_the_shrunk_trace(tmp_path: Path) -> None:
    out = cli(
        "check", "--only", "model", "--mutant", "cve-2022-23636", "--failures", str(tmp_path)
    )  # fmt: skip
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Steps:" in out.stdout and "FAIL" in out.stdout
    saved = list(tmp_path.glob("*.json"))
    assert len(saved) == 1
    trace = tracefile.load(saved[0])
    assert trace.config.mutant == "cve-2022-23636"
    assert [type(op).__name__ for op in trace.steps][-1] == "TeardownGlobals"
    assert len(trace.steps) <= 2  # shrunk: at most an instantiation that stopped early, then teardown


@pytest.mark.parametrize(
    "args",
    [
        ["check", "--mutant", "no-such-bug"],
        ["check", "--only", "nothing"],
        ["check", "--max-examples", "0"],
        ["check", "--max-examples", "many"],
        ["frobnicate"],
        [],
    ],
)
def test_bad_arguments_exit_2_with_one_line_and_no_traceback(args: list[str]) -> None:
    out = cli(*args)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith(("externref-harness", "usage"))
    assert "error" in out.stderr


def test_trace_round_trips_through_json(tmp_path: Path) -> None:
    trace = tracefile.Trace(
        Config(chunk_size=2, slots=2, mutant="cve-2022-31146"),
        (ops.New(8, 8), ops.CallWasm((0,)), ops.WasmCallHost((0,), 1, False), ops.Gc()),
        "note",
    )
    path = tracefile.save(trace, tmp_path / "t.json")
    assert tracefile.load(path) == trace


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json", "is not JSON"),
        ("[]", "must be a JSON object"),
        ('{"format": "other"}', "not an externref-harness-trace file"),
        ('{"format": "externref-harness-trace", "version": 9}', "version 9 is not supported"),
        (
            '{"format": "externref-harness-trace", "version": 1, "config": {"chunk_size": 0},'
            ' "steps": []}',
            "chunk_size must be >= 1",
        ),
        (
            '{"format": "externref-harness-trace", "version": 1, "config": {}, '
            '"steps": [{"op": "Explode"}]}',
            'step 1: unknown operation "Explode"',
        ),
        (
            '{"format": "externref-harness-trace", "version": 1, "config": {}, '
            '"steps": [{"op": "New", "size": "big", "align": 8}]}',
            "step 1: New.size: expected an int",
        ),
        (
            '{"format": "externref-harness-trace", "version": 1, "config": {}, '
            '"steps": [{"op": "Drop"}]}',
            "step 1: Drop: missing field 'h'",
        ),
    ],
)
def test_malformed_traces_are_rejected_with_a_precise_message(
    tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(tracefile.TraceFormatError, match=message):
        tracefile.load(path)


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ('{"op": "Drop", "h": null}', "Drop.h: expected an int, got null"),
        ('{"op": "Drop", "h": [1]}', "Drop.h: expected an int"),
        ('{"op": "Drop", "h": true}', "Drop.h: expected an int"),
        ('{"op": "CallWasm", "args": 5}', "CallWasm.args: expected a list of ints"),
        ('{"op": "New", "size": null, "align": 8}', "New.size: expected an int"),
        ('{"op": "SetGcOkay", "okay": 1}', "SetGcOkay.okay: expected true or false"),
        ('{"op": "WasmCallHost", "args": [], "ret_slot": 0, "unwind_info": 0}', "expected true or false"),
    ],
)
def test_steps_with_mistyped_fields_are_rejected(tmp_path: Path, step: str, message: str) -> None:
    path = tmp_path / "bad.json"
    header = '"format": "externref-harness-trace", "version": 1, "config": {}'
    path.write_text(f'{{{header}, "steps": [{step}]}}')
    with pytest.raises(tracefile.TraceFormatError, match=message):
        tracefile.load(path)


@pytest.mark.parametrize(
    "config", ['{"chunk_size": 2.5}', '{"slots": true}', '{"chunk_size": "x"}', '{"mutant": 3}']
)
def test_configs_with_mistyped_fields_are_rejected(tmp_path: Path, config: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(f'{{"format": "externref-harness-trace", "version": 1, "config": {config}, "steps": []}}')
    with pytest.raises(tracefile.TraceFormatError, match="must be"):
        tracefile.load(path)


def test_an_unwritable_failures_directory_is_refused_before_the_run() -> None:
    out = cli("check", "--only", "model", "--failures", "/proc/no-such-dir")
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "externref-harness check: error: --failures /proc/no-such-dir: cannot write there: "
        "No such file or directory"
    ]


def test_a_mutant_no_selected_check_exercises_is_refused() -> None:
    out = cli("check", "--only", "model", "--mutant", "impl-early-free")
    assert out.returncode == 2
    assert "not exercised by the selected checks (model)" in out.stderr


#: `check` in a child whose embedder protocol runs without the pre-GC before entering Wasm (the
#: model interpreted, or the patched module global would not be the one the compiled model calls).
_NO_PRE_GC_CHECK = """
import sys
from externref_harness.cli.main import main
from externref_harness.model import protocol

def move_refs_into_table(rt, refs, cfg):
    previous = rt.set_gc_okay(False)
    for r in refs:
        if r is not None:
            rt.insert_without_gc(r)
    rt.set_gc_okay(previous)

protocol.move_refs_into_table = move_refs_into_table
sys.exit(main(sys.argv[1:]))
"""


def test_check_s_corpus_row_fails_on_a_change_to_the_shared_protocol(tmp_path: Path) -> None:
    """Both sides of the lockstep run the one protocol, so they agree after the edit; the corpus
    recorded what the protocol did, and `check`'s corpus row fails."""
    from externref_harness import compiled

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        report = tmp_path / "check.json"
        args = ["check", "--only", "corpus", "--only", "lockstep", "--hypothesis-profile", "ci"]
        args += ["--max-examples", "10", "--failures", str(tmp_path / "f"), "--json", str(report), *extra]
        return subprocess.run(
            [sys.executable, "-c", _NO_PRE_GC_CHECK, *args],
            capture_output=True, text=True, timeout=300,
            env={**os.environ, compiled.ENV_INTERPRETED: "1"},
        )  # fmt: skip

    done = check()
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {r["check"]: r for r in json.loads((tmp_path / "check.json").read_text())["checks"]}
    assert rows["lockstep"]["result"] == "pass", rows["lockstep"]["failure"]
    assert rows["corpus"]["result"] == "fail"
    assert "the model no longer observes what the corpus expects" in rows["corpus"]["failure"]
    assert "shared code changed" in rows["corpus"]["failure"]
    assert "corpus expectations on the model" in done.stdout and "FAIL" in done.stdout
    # Unpatched, the same row passes in well under a second.
    out = cli("check", "--only", "corpus", "--json", str(tmp_path / "seed.json"))
    assert out.returncode == 0, out.stdout + out.stderr
    (row,) = json.loads((tmp_path / "seed.json").read_text())["checks"]
    assert row["result"] == "pass" and row["seconds"] < 1.0 and int(row["figures"]["traces"]) >= 70
