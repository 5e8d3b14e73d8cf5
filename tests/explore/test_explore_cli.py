"""`explore` and `replay` on the command line: exit codes 0/1/2, the report, saved traces."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from externref_harness import trace as tracefile
from externref_harness.cli.main import main
from externref_harness.explore.driver import explore
from externref_harness.explore.explorer import ExploreBounds
from externref_harness.lockstep import runner as lockstep
from externref_harness.model import ops
from externref_harness.model.mutants import MODEL_MUTANTS, Mutant
from externref_harness.model.state import Build, Config

Capture = pytest.CaptureFixture[str]
#: Small enough to exhaust in well under a second.
SMALL = ["--frames", "1", "--slots", "1", "--chunk", "1", "--quiet"]


def test_explore_exits_0_and_reports_the_exhausted_space(capsys: Capture) -> None:
    assert main(["explore", *SMALL]) == 0
    out = capsys.readouterr().out
    for figure in ("distinct states", "transitions", "max depth", "states/s", "symmetry reduction"):
        assert figure in out
    assert "285" in out  # the pinned count of this configuration
    assert "wasm_call_host" in out and "gc:canary-found" in out  # per op, per gc path
    assert "no violation" in out


def test_explore_switches_on_the_knobs_a_mutant_needs(tmp_path: Path, capsys: Capture) -> None:
    argv = [*SMALL, "--mutant", "cve-2022-23636", "--out", str(tmp_path / "t")]
    assert main(["explore", *argv]) == 1
    assert "cve-2022-23636 needs --globals 2 to be reachable: switched on" in capsys.readouterr().out


def test_explore_compares_with_and_without_symmetry(capsys: Capture) -> None:
    assert main(["explore", "--depth", "5", "--compare-symmetry", "--quiet"]) == 0
    assert "states without / with symmetry" in capsys.readouterr().out


def test_explore_exits_1_with_a_shortest_trace_that_replay_confirms(
    tmp_path: Path, capsys: Capture
) -> None:
    out_file = tmp_path / "found.json"
    argv = ["explore", "--mutant", "precise-root-uncounted", "--out", str(out_file), "--quiet"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "I1" in out and "after 4 steps" in out
    assert "  1. New(size=8, align=8)" in out and ">>4. Gc()" in out
    assert f"externref-harness replay {out_file}" in out
    trace = tracefile.load(out_file)
    assert trace.config.mutant == "precise-root-uncounted" and len(trace.steps) == 4

    assert main(["replay", str(out_file)]) == 1
    replayed = capsys.readouterr().out
    assert "model: fails at step 4" in replayed
    assert "implementation: fails at step 4" in replayed
    assert ">>4. Gc()" in replayed


#: The impl agrees with the model here: its debug build fires the same assertion at the same step.
IMPL_AGREES = {("cve-2021-39218", "debug")}


@pytest.mark.parametrize("build", ["debug", "release"])
@pytest.mark.parametrize("mutant", MODEL_MUTANTS, ids=lambda m: m.name)
def test_replay_confirms_every_shortest_trace(mutant: Mutant, build: Build) -> None:
    """The model fails at the trace's last step; the impl (which has no model-layer bug of its
    own) diverges from the buggy model or reports a memory error at that same step."""
    from test_explore import mutant_bounds

    bounds = mutant_bounds(mutant, build=build)
    found = explore(bounds.search()).violation
    assert found is not None
    report = lockstep.replay(tracefile.Trace(bounds.search().cfg, found.trace, found.title))
    assert report.model_failure is not None
    assert report.model_failure[0] == len(found.trace)
    if (mutant.name, build) in IMPL_AGREES:
        assert report.impl_failure is None
    else:
        assert report.impl_failure is not None and report.impl_failure[0] == len(found.trace)


def test_replay_of_a_passing_trace_exits_0(tmp_path: Path, capsys: Capture) -> None:
    path = tracefile.save(
        tracefile.Trace(Config(chunk_size=2, slots=2), (ops.New(8, 8), ops.Clone(0), ops.Gc())),
        tmp_path / "ok.json",
    )
    assert main(["replay", str(path)]) == 0
    out = capsys.readouterr().out
    assert "  3. Gc()" in out and "no failure" in out


def exit_status(argv: list[str]) -> int:
    """`main`'s status, or argparse's when it rejects the arguments itself."""
    try:
        return main(argv)
    except SystemExit as e:
        return int(e.code or 0)


@pytest.mark.parametrize(
    "argv",
    [
        ["--refs", "0"], ["--refs", "-2"], ["--chunk", "0"], ["--frames", "0"], ["--slots", "0"],
        ["--depth", "0"], ["--refs", "100"], ["--args", "5"], ["--mutant", "no-such-mutant"],
        ["--mutant", "impl-early-free"], ["--compare-symmetry"], ["--refs", "two"],
        ["--build", "fast"],
    ],
)  # fmt: skip
def test_explore_bad_input_exits_2_with_one_line(argv: list[str], capsys: Capture) -> None:
    assert exit_status(["explore", *argv]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "error" in captured.err
    assert captured.out == ""


def _write(tmp_path: Path, content: str) -> Path:
    path = tmp_path / "bad.json"
    path.write_text(content)
    return path


def _trace(**changes: object) -> str:
    obj = tracefile.Trace(Config(chunk_size=2), (ops.New(8, 8),)).to_json()
    obj.update(changes)
    return json.dumps(obj)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("not json at all", "not JSON"),
        (json.dumps({"format": "something-else", "version": 1}), "not an externref-harness-trace"),
        (_trace(version=99), "version"),
        (_trace(steps=[{"op": "Teleport"}]), "unknown operation"),
        (_trace(steps=[{"op": "Clone", "h": "zero"}]), "Clone.h"),
        (_trace(steps=[{"op": "Clone"}]), "missing field"),
        (_trace(config={"chunk_size": 0}), "chunk_size"),
        (_trace(config={"mutant": "no-such-mutant"}), "unknown mutant"),
        (_trace(config={"chunk_size": 10**9}), "chunk_size=1000000000 is more than"),
        (_trace(steps="New"), "steps"),
    ],
)
def test_replay_rejects_a_malformed_or_incompatible_trace_with_exit_2(
    tmp_path: Path, content: str, message: str, capsys: Capture
) -> None:
    assert main(["replay", str(_write(tmp_path, content))]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and message in captured.err
    assert captured.out == ""


def test_replay_of_a_missing_file_exits_2(tmp_path: Path, capsys: Capture) -> None:
    assert main(["replay", str(tmp_path / "nope.json")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_explore_defaults_are_the_documented_small_bounds() -> None:
    knobs = ExploreBounds()
    assert (knobs.refs, knobs.chunk, knobs.frames, knobs.slots) == (2, 2, 2, 2)
    assert knobs.depth is None and not knobs.observers and knobs.symmetry
