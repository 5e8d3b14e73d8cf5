"""`--exhaustive`: the plan covers exactly the explorer's graph; the correct C reference covers
every transition; each seeded C bug inside the bounds, and a model bug, is found with a shrunk
trace that `replay` reproduces; a crash and a hang are saved, shrunk traces; bad options are one
line and exit 2."""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import pytest
from crashing import crashing_gc_library
from one_line import assert_one_line_exit_2

from externref_harness.cli.main import main
from externref_harness.exhaustive import execute
from externref_harness.exhaustive.chain import (
    WALK_RADIUS,
    Coverage,
    _way_to_uncovered,
    corresponding_move,
    plan_chain,
)
from externref_harness.exhaustive.plan import build_plan
from externref_harness.explore.driver import explore
from externref_harness.explore.explorer import NO_LIMITS, ExploreBounds
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.model.ops import Clone, Drop, New
from externref_harness.model.state import State
from externref_harness.model.transition import step
from externref_harness.native.build import build_reference

SMALL = ["--refs", "1", "--frames", "1"]


@pytest.mark.parametrize("bounds", [ExploreBounds(refs=1, frames=1), ExploreBounds(frames=1, chunk=1)])
def test_the_plan_has_the_explorers_states_and_transitions(bounds: ExploreBounds) -> None:
    search = bounds.search()
    plan = build_plan(search)
    outcome = explore(search, None, 10.0, NO_LIMITS, 1)
    assert outcome.status == "exhausted"
    assert (plan.classes, plan.transitions) == (outcome.states, outcome.transitions)
    # Every class's path is real operations from the initial state to a member of its class.
    for c in range(0, plan.classes, max(1, plan.classes // 25)):
        state = State.initial(search.cfg)
        for op in plan.ops_to(c):
            state = step(search.cfg, state, op)[0]
        assert search.fingerprint(search.key(state)) == plan.fingerprints[c]
        assert len(plan.ops_to(c)) == plan.depth[c]


def test_each_move_of_a_class_leads_where_the_plan_says() -> None:
    search = ExploreBounds(refs=1, frames=1).search()
    plan = build_plan(search)
    assert len(plan.targets) == plan.transitions == plan.offsets[-1]
    expanded = [c for c in range(plan.classes) if plan.moves[c]]
    assert len(expanded) == plan.classes - plan.constrained - plan.depth_cut - plan.violating
    for c in expanded:
        state = plan.states[c]
        assert len(search.moves(state)) == plan.moves[c]
        for move, op in enumerate(search.moves(state)):
            after = step(search.cfg, state, op)[0]
            assert plan.index[search.fingerprint(search.key(after))] == plan.target(c, move)


def test_a_move_is_made_from_another_state_of_its_class_only_where_it_corresponds() -> None:
    """A run goes on from a state of a class that is not the plan's concrete state (a clone then
    its drop leaves a tombstone: same class, other handle numbers): the move made there reaches the
    class the plan's move reaches. From a state of another class, a move is refused (None) where
    it would not: the check is what makes the coverage count honest."""
    search = ExploreBounds(refs=1, frames=1).search()
    plan = build_plan(search)
    cfg = search.cfg
    state = State.initial(cfg)
    for first in (New(8, 8), Clone(0), Drop(0)):  # handle 1 is live, handle 0 a tombstone
        state = step(cfg, state, first)[0]
    c = plan.index[search.fingerprint(search.key(state))]
    assert plan.states[c] != state
    for move in range(plan.moves[c]):
        made = corresponding_move(plan, c, move, state)
        assert made is not None
        op, after, _ = made
        assert op == search.moves(state)[move]
        assert after == step(cfg, state, op)[0]
        assert plan.index[search.fingerprint(search.key(after))] == plan.target(c, move)
    other = next(d for d in range(plan.classes) if d != c and plan.moves[d] == plan.moves[c])
    refused = [corresponding_move(plan, other, move, state) for move in range(plan.moves[c])]
    assert None in refused


def test_the_corresponding_move_is_the_one_listed_at_the_same_index_in_every_state_walked() -> None:
    """`corresponding_move` renames the plan's move rather than listing the state's moves: from
    states random walks reach (tombstones among handles and raw pointers, refs in the table), the
    renamed move is `flat_moves`' move at the same index, and leads where the plan says."""
    search = ExploreBounds(refs=2, frames=1).search()
    plan = build_plan(search)
    cfg, rng = search.cfg, random.Random(5)
    made_elsewhere = 0
    for _ in range(60):
        state = State.initial(cfg)
        for _ in range(14):
            key = plan.index.get(search.fingerprint(search.key(state)))
            moves = search.moves(state)
            if key is None or not moves:
                break
            for move in range(plan.moves[key]):
                made = corresponding_move(plan, key, move, state)
                assert made is not None and made[0] == moves[move], (state, move)
            made_elsewhere += state is not plan.states[key]
            state = step(cfg, state, rng.choice(moves))[0]
    assert made_elsewhere > 100


def _check(tmp_path: Path, library: Path, *extra: str) -> tuple[int, dict[str, object]]:
    report = tmp_path / "check.json"
    args = ["check", "--impl", str(library), "--exhaustive", *SMALL, "--failures", str(tmp_path / "f")]
    status = main([*args, *extra, "--json", str(report)])
    return status, json.loads(report.read_text())


@pytest.mark.parametrize("build", ["debug", "release"])
def test_the_c_reference_covers_every_transition(build: str, tmp_path: Path) -> None:
    status, report = _check(tmp_path, build_reference(build))
    assert status == 0
    assert report["covered"] == report["transitions"] == 2686
    assert report["states"] == 295


#: Each seeded C bug inside small bounds, with the knobs that reach it and its build.
BUGS_IN_BOUNDS = [
    ("c-early-free", "debug", ()),
    ("c-precise-root-uncounted", "debug", ()),
    ("c-stack-map-offset", "debug", ()),
    ("c-leak-chunk", "debug", ()),
    ("c-duplicate-insert-leaks", "debug", ()),
    ("c-sweep-without-canary", "debug", ("--opaque-frames",)),
    ("c-bump-off-by-one", "release", ()),
    ("c-wild-read", "debug", ("--scalars",)),
]


@pytest.mark.parametrize("bug,build,knobs", BUGS_IN_BOUNDS, ids=[b for b, _, _ in BUGS_IN_BOUNDS])
def test_each_seeded_c_bug_in_the_bounds_is_found_shrunk_and_replayable(
    bug: str, build: str, knobs: tuple[str, ...], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library = build_reference(build, bug=bug)
    status, report = _check(tmp_path, library, *knobs)
    assert status == 1
    covered, total = report["covered"], report["transitions"]
    assert isinstance(covered, int) and isinstance(total, int) and covered < total
    assert "shrunk from" in str(report["failure"])
    trace = Path(str(report["trace"]))
    assert 1 <= len(json.loads(trace.read_text())["steps"]) <= 8
    capsys.readouterr()
    assert main(["replay", str(trace), "--impl", str(library)]) == 1


def test_a_model_bug_is_found_on_the_python_port(tmp_path: Path) -> None:
    report = tmp_path / "check.json"
    # cve-2021-39216 needs --args 2 (two refs moved by one call): switched on as explore does.
    args = ["check", "--exhaustive", "--refs", "2", "--frames", "1"]
    status = main([*args, "--mutant", "cve-2021-39216", "--failures", str(tmp_path), "--json", str(report)])
    assert status == 1
    got = json.loads(report.read_text())
    assert "I1" in str(got["failure"]) and Path(str(got["trace"])).exists()


def test_the_python_port_covers_every_transition(tmp_path: Path) -> None:
    report = tmp_path / "check.json"
    assert main(["check", "--exhaustive", *SMALL, "--json", str(report)]) == 0
    got = json.loads(report.read_text())
    assert got["covered"] == got["transitions"] == 2686


def _gate(tmp_path: Path, library: Path, *extra: str) -> tuple[int, dict[str, object]]:
    report = tmp_path / "gate.json"
    args = ["gate", str(library), "--exhaustive", *SMALL, "--no-threads", "--failures", str(tmp_path / "f")]
    status = main([*args, *extra, "--json", str(report)])
    return status, json.loads(report.read_text())


def _exhaustive_case(report: dict[str, object]) -> dict[str, object]:
    cases = report["cases"]
    assert isinstance(cases, list)
    (case,) = [c for c in cases if c["kind"] == "exhaustive"]
    assert not [c for c in cases if c["kind"] == "search"]
    return case  # type: ignore[no-any-return]


def test_the_gate_covers_every_transition_and_says_the_search_did_not_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A progress line for every run (a run at the default bounds takes minutes: every 10 s).
    monkeypatch.setattr(execute, "PROGRESS_EVERY", 0.0)
    status, report = _gate(tmp_path, build_reference("debug"))
    assert status == 0
    case = _exhaustive_case(report)
    assert case["status"] == "pass" and "2,686 of 2,686 transitions covered" in str(case["detail"])
    # The runs' replayed steps repeat replies already checked (`ModelSteps`): most are known.
    assert re.search(r"[\d,]+ replayed, [1-9][\d,]* of them known replies", str(case["detail"]))
    # Most runs are sent behind the run before, while it is checked (`Lockstep.close_ahead`).
    behind = re.search(r"([\d,]+) runs \(([\d,]+) sent behind the one before\)", str(case["detail"]))
    assert behind is not None
    runs, sent_behind = (int(n.replace(",", "")) for n in behind.groups())
    assert runs // 2 < sent_behind < runs, case["detail"]
    assert any("--exhaustive covered the bounded space" in line for line in report["not_checked"])  # type: ignore[attr-defined]
    progress = [line for line in capsys.readouterr().out.splitlines() if "gate: exhaustive: " in line]
    line_format = re.compile(
        r"exhaustive: [\d,]+ of 2,686 transitions, [\d,]+ runs, [\d,]+ steps \([\d,]+ replayed\), \d+s"
    )
    assert progress and all(line_format.search(line) for line in progress), progress


@pytest.mark.slow
@pytest.mark.parametrize(
    "bug,knob,expected",
    [("crash", "--scalars", "killed by SIGSEGV"), ("c-gc-hang", "--opaque-frames", "did not answer")],
)
def test_a_crash_and_a_hang_are_saved_shrunk_traces(
    bug: str, knob: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library = crashing_gc_library(tmp_path) if bug == "crash" else build_reference("release", bug=bug)
    status, report = _gate(tmp_path, library, knob, "--step-timeout", "2")
    assert status == 1
    case = _exhaustive_case(report)
    assert case["status"] == "fail" and expected in str(case["detail"])
    trace = Path(str(case["trace"]))
    assert 1 <= len(json.loads(trace.read_text())["steps"]) <= 6
    capsys.readouterr()
    assert main(["replay", str(trace), "--impl", str(library), "--step-timeout", "2"]) == 1


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--refs", "9"], "refs must be between 1 and 8"),
        (["--chunk-size", "4"], "--chunk N"),
        (["--max-examples", "5"], "--max-examples has no use with --exhaustive"),
        (["--hypothesis-profile", "ci"], "--hypothesis-profile has no use with --exhaustive"),
    ],
)
def test_bad_exhaustive_options_are_one_line_and_exit_2(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    library = str(build_reference("debug"))
    assert_one_line_exit_2(["gate", library, "--exhaustive", *args], capsys, expected)
    assert_one_line_exit_2(["check", "--impl", library, "--exhaustive", *args], capsys, expected)
    assert_one_line_exit_2(["check", "--refs", "1"], capsys, "add --exhaustive")
    assert_one_line_exit_2(["gate", library, "--refs", "1"], capsys, "add --exhaustive")
    assert_one_line_exit_2(["gate", library, "--exhaustive", "--seed", "0"], capsys, "--seed has no use")
    proof_bug = ["check", "--exhaustive", "--mutant", "proof-drop-roots-in-table-assumption"]
    assert_one_line_exit_2(proof_bug, capsys, "which --exhaustive does not run")


def test_a_run_planned_but_not_made_covers_nothing() -> None:
    """Runs are planned ahead (while the one before is under way), their moves counted covered
    when planned: one stopped before it starts takes them back. (Bounds whose whole execution
    takes seconds, so that 0.3 s stops it part way on a quick machine too.)"""
    search = ExploreBounds(refs=2, frames=1).search()
    plan = build_plan(search)
    outcome = execute.run_exhaustive(plan, InProcessImpl, stop_at=time.monotonic())
    assert outcome.stopped == execute.TIME_LIMIT
    assert (outcome.stats.runs, outcome.stats.covered) == (0, 0)
    done = execute.run_exhaustive(plan, InProcessImpl, stop_at=time.monotonic() + 0.3)
    assert done.stopped == execute.TIME_LIMIT and 0 < done.stats.covered < plan.transitions


def test_a_class_remembered_stranded_has_no_way_to_an_uncovered_move() -> None:
    """`Coverage.stranded` spares a run's end the walk search a run before it made from the same
    class and that found nothing. It is sound while moves only become covered: at every run of a
    whole planning, a fresh search from each remembered class (the memory set aside) still finds
    nothing, and taking a move back forgets them all."""
    plan = build_plan(ExploreBounds(refs=1, frames=1).search())
    coverage, c, remembered = Coverage(plan), 0, 0
    while True:
        while c < plan.classes and coverage.next_uncovered(c) is None:
            c += 1
        if c == plan.classes:
            break
        for at, move in plan.path(c):
            coverage.mark(at, move)
        plan_chain(plan, coverage, c)
        stranded, coverage.stranded = coverage.stranded, set()
        assert all(_way_to_uncovered(plan, coverage, s, WALK_RADIUS) is None for s in stranded)
        coverage.stranded = stranded
        remembered = max(remembered, len(stranded))
    assert coverage.covered == plan.transitions and remembered > 0
    coverage.unmark(0, 0)
    assert not coverage.stranded
