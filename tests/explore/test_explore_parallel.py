"""The explorer at scale: worker processes, the fingerprint seen-set, limits and the incomplete status."""

from __future__ import annotations

import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
from test_explore import PINNED, SHORTEST, _check_trace, mutant_bounds

from externref_harness.cli.main import main
from externref_harness.explore.driver import explore
from externref_harness.explore.explorer import (
    INTERRUPTED,
    REFUSED,
    STATE_LIMIT,
    TIME_LIMIT,
    ExploreBounds,
    Limits,
    Progress,
)
from externref_harness.explore.fingerprints import FingerprintStore, collision_probability, fingerprint, owner
from externref_harness.model.moves import Bounds
from externref_harness.model.mutants import MODEL_MUTANTS, Mutant
from externref_harness.model.state import Config, State

Capture = pytest.CaptureFixture[str]
SMALL = ["--frames", "1", "--slots", "1", "--chunk", "1", "--quiet"]


@pytest.mark.parametrize("name", ["one-frame-one-slot-chunk-1", "three-refs-one-frame-one-slot-chunk-1"])
def test_two_workers_count_exactly_what_one_process_counts(name: str) -> None:
    bounds, states, transitions, depth = PINNED[name]
    one = explore(bounds.search())
    two = explore(bounds.search(), workers=2)
    for out in (one, two):
        assert out.status == "exhausted"
        assert (out.states, out.transitions, out.max_depth) == (states, transitions, depth)
    assert two.workers == 2
    assert two.op_counts == one.op_counts and two.path_counts == one.path_counts
    assert two.constrained == one.constrained


@pytest.mark.slow
@pytest.mark.parametrize("name", ["one-ref", "every-feature-to-depth-6"])
def test_two_workers_count_the_larger_pinned_spaces_exactly(name: str) -> None:
    bounds, states, transitions, depth = PINNED[name]
    out = explore(bounds.search(), workers=2)
    assert (out.states, out.transitions, out.max_depth) == (states, transitions, depth)
    assert out.depth_cut == explore(bounds.search()).depth_cut


@pytest.mark.parametrize("mutant", MODEL_MUTANTS, ids=lambda m: m.name)
def test_two_workers_find_every_model_mutant_at_the_same_shortest_length(mutant: Mutant) -> None:
    """The same shortest length, and a real trace of it. Where several states at that depth break
    invariants, which one a worker reaches first depends on the partition: the invariant it
    reports may be another of the shortest violations than one process reports."""
    _, length = SHORTEST[mutant.name]
    out = explore(mutant_bounds(mutant).search(), workers=2)
    assert out.violation is not None and out.status == "violation"
    assert len(out.violation.trace) == length
    assert out.max_depth == length
    _check_trace(out)


def test_two_workers_report_a_refused_move() -> None:
    from externref_harness.model import moves, ops

    def with_misuse(cfg: Config, bounds: Bounds, state: State) -> list[ops.Op]:
        return [*moves.flat_moves(cfg, bounds, state), ops.Drop(len(state.handles))]

    out = explore(replace(ExploreBounds(refs=1).search(), moves_of=with_misuse), workers=2)
    assert out.violation is not None and out.violation.invariant == REFUSED
    assert len(out.violation.trace) == 1


# --- the fingerprint store --------------------------------------------------------------------------


def test_the_store_keeps_first_parents_and_grows_without_losing_any() -> None:
    store = FingerprintStore(capacity=16)
    fps = [fingerprint(("state", i)) for i in range(5000)]
    assert len(set(fps)) == len(fps)
    for i, fp in enumerate(fps):
        assert store.add(fp, parent=i, move=i % 7)
    assert len(store) == 5000
    assert not store.add(fps[10], parent=99, move=3), "a stored fingerprint is not new"
    assert store.parent(fps[10]) == (10, 10 % 7), "it keeps the first parent"
    assert all(fp in store for fp in fps)
    assert fingerprint(("state", -1)) not in store and store.parent(12345) is None
    assert 20 * len(store) <= store.nbytes <= 64 * len(store)


def test_fingerprints_are_nonzero_and_owners_cover_every_partition() -> None:
    fps = [fingerprint(i) for i in range(1000)]
    assert all(0 < fp < 2**64 for fp in fps)
    assert {owner(fp, 3) for fp in fps} == {0, 1, 2}


def test_the_collision_probability_is_tlcs_optimistic_estimate() -> None:
    assert collision_probability(10, 10) == 0.0
    assert collision_probability(2**20, 2**22) == pytest.approx(2**20 * 3 * 2**20 / 2**64)
    out = explore(ExploreBounds(frames=1, slots=1, chunk=1).search())
    assert 0 < out.collision_probability < 1e-12
    assert 0 < out.bytes_per_state


@pytest.mark.parametrize("workers", [1, 2])
def test_a_weak_fingerprint_loses_states_so_the_store_matters(workers: int) -> None:
    """Seeded bug: 6-bit fingerprints. Collisions merge different states and the count drops."""
    bounds, states, _, _ = PINNED["three-refs-one-frame-one-slot-chunk-1"]
    weak = replace(bounds.search(), fingerprint_of=lambda value: (hash(value) & 63) + 1)
    out = explore(weak, workers=workers)
    assert out.states < states


def test_the_fingerprint_store_finds_every_shortest_violation_with_a_real_trace() -> None:
    for mutant in MODEL_MUTANTS:
        out = explore(mutant_bounds(mutant).search())
        assert out.violation is not None
        assert len(out.violation.trace) == SHORTEST[mutant.name][1]
        _check_trace(out)


# --- limits and Ctrl-C ------------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 2])
def test_a_state_limit_stops_the_search_incomplete(workers: int) -> None:
    bounds = ExploreBounds()
    out = explore(bounds.search(), limits=Limits(states=500), workers=workers)
    assert out.status == "incomplete" and out.stopped == STATE_LIMIT
    assert out.violation is None
    assert 500 <= out.states < PINNED["defaults"][1]
    assert out.unexpanded > 0


#: A space that takes half a minute or more here (716,463 states), so the limits below always
#: stop it long before it is exhausted, however fast the machine.
LONG = ExploreBounds(slots=3)
LONG_STATES = 716_463


@pytest.mark.parametrize("workers", [1, 2])
def test_a_time_limit_stops_the_search_incomplete(workers: int) -> None:
    out = explore(LONG.search(), limits=Limits(time=0.5), workers=workers)
    assert out.status == "incomplete" and out.stopped == TIME_LIMIT
    assert 0 < out.states < LONG_STATES
    assert out.elapsed < 10


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_stops_the_search_with_a_partial_outcome(workers: int) -> None:
    def interrupt(p: Progress) -> None:
        if p.states > 100:
            os.kill(os.getpid(), signal.SIGINT)

    out = explore(LONG.search(), interrupt, every=0.05, workers=workers)
    assert out.status == "incomplete" and out.stopped == INTERRUPTED
    assert 100 < out.states < LONG_STATES


def test_bad_limits_and_worker_counts_are_refused() -> None:
    for bad in ({"time": 0}, {"time": -1.0}, {"states": 0}):
        with pytest.raises(ValueError):
            Limits(**bad)
    with pytest.raises(ValueError, match="workers"):
        explore(ExploreBounds().search(), workers=0)


# --- the command line ---------------------------------------------------------------------------------


def test_a_limit_exits_3_and_the_json_says_incomplete(tmp_path: Path, capsys: Capture) -> None:
    report = tmp_path / "run.json"
    argv = ["explore", "--quiet", "--max-states", "300", "--json", str(report), "--workers", "2"]
    assert main(argv) == 3
    out = capsys.readouterr().out
    assert "incomplete" in out and "state limit" in out
    obj = json.loads(report.read_text())
    assert obj["status"] == "incomplete" and obj["stopped_by"] == "state limit"
    assert obj["states"] >= 300 and obj["workers"] == 2
    assert f"{obj['states']:,}" in out
    assert not [p for p in tmp_path.iterdir() if p.name != "run.json"], "no temporary file left"


def test_json_of_an_exhausted_search_has_the_summary_and_coverage(tmp_path: Path) -> None:
    report = tmp_path / "run.json"
    assert main(["explore", *SMALL, "--json", str(report)]) == 0
    obj = json.loads(report.read_text())
    assert obj["status"] == "exhausted" and obj["states"] == 285 and obj["violation"] is None
    assert obj["op_counts"]["wasm_call_host"] > 0 and obj["path_counts"]["gc:canary-found"] > 0
    assert 0 < obj["collision_probability"] < 1e-12 and obj["bytes_per_state"] > 0


def test_json_of_a_violation_has_its_steps(tmp_path: Path, capsys: Capture) -> None:
    report = tmp_path / "run.json"
    argv = ["explore", "--quiet", "--mutant", "cve-2022-23636", "--json", str(report),
            "--out", str(tmp_path / "trace.json")]  # fmt: skip
    assert main(argv) == 1
    assert "cve-2022-23636 needs --globals 2 to be reachable: switched on" in capsys.readouterr().out
    obj = json.loads(report.read_text())
    assert obj["status"] == "violation" and obj["switched_on_for_mutant"] == ["--globals 2"]
    assert obj["violation"]["invariant"] == "I4" and len(obj["violation"]["steps"]) == 2
    assert obj["violation"]["saved"] == str(tmp_path / "trace.json")


@pytest.mark.parametrize(
    "argv",
    [
        ["--json", "/proc/version/x.json"], ["--json", "."], ["--workers", "0"],
        ["--time-limit", "0"], ["--max-states", "0"], ["--progress-every", "0"],
        ["--time-limit", "soon"],
    ],
)  # fmt: skip
def test_bad_limits_exit_2_with_one_line_before_searching(argv: list[str], capsys: Capture) -> None:
    try:
        status = main(["explore", *argv])
    except SystemExit as e:
        status = int(e.code or 0)
    assert status == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "error" in captured.err
    assert captured.out == ""


def test_help_documents_the_exit_statuses(capsys: Capture) -> None:
    assert main(["explore", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for line in ("0 the bounded space is exhausted", "1 a violation", "2 bad input", "3 incomplete"):
        assert line in out
    for option in ("--workers", "--time-limit", "--max-states", "--json", "--failures"):
        assert option in out


def test_a_mutants_knob_given_on_the_command_line_is_kept(capsys: Capture) -> None:
    """An explicit setting wins over the switch: then the hint says what is missing."""
    assert main(["explore", *SMALL, "--mutant", "cve-2022-23636", "--globals", "0"]) == 0
    out = capsys.readouterr().out
    assert "switched on" not in out and "hint: cve-2022-23636 needs --globals 2" in out


def test_progress_lines_off_a_terminal_are_plain(capsys: Capture) -> None:
    # 2,717 states, about 0.1 s here: a hundred progress intervals even on a much faster machine.
    argv = ["explore", "--frames", "1", "--slots", "2", "--progress-every", "0.001"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("explore: ")]
    assert lines and all("states," in line and "frontier" in line and "depth" in line
                         and "states/s" in line for line in lines)  # fmt: skip
    assert "\x1b" not in err


def test_a_failing_worker_raises_its_error_in_the_coordinator() -> None:
    from externref_harness.explore.workers import WorkerError
    from externref_harness.model import ops

    def broken(cfg: Config, bounds: Bounds, state: State) -> list[ops.Op]:
        raise ZeroDivisionError("seeded failure in a worker")

    with pytest.raises(WorkerError, match="seeded failure in a worker"):
        explore(replace(ExploreBounds(refs=1).search(), moves_of=broken), workers=2)
