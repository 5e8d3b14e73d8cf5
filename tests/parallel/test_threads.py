"""The parallel check: real threads on the C reference, each history judged against the model.

The linearizability checker is tested on hand-written histories (no threads): the same results are
accepted when the calls overlap and rejected when real time orders them so that no interleaving
explains them. On real threads, the two seeded race bugs are caught within a bounded time, the
correct reference (debug and release) passes the same programs, the threads really overlap (the GIL
does not serialise them), and a saved parallel trace replays with a failure rate. Built with no
pause in their race windows (`XR_RACE_WINDOW_NS=0`), the three race bugs are still caught, within
bounded repetitions; the driver's cheap verdicts are shown failing on them, and the one-verdict-per-
signature memo is shown to judge few histories in Python without hiding a failing one.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import signal
import time
from dataclasses import replace
from pathlib import Path

import pytest
from one_line import assert_one_line_exit_2

from externref_harness.cli.main import main
from externref_harness.model.state import Config
from externref_harness.native.backend import open_library
from externref_harness.native.build import build_reference
from externref_harness.native.library import XrRef
from externref_harness.parallel.check import (
    Judge,
    ParallelOptions,
    fails_within,
    model_config,
    run_parallel_check,
)
from externref_harness.parallel.child import run_isolated
from externref_harness.parallel.linearizability import Verdict, check_history, plan_of
from externref_harness.parallel.program import (
    ParallelProgram,
    ParallelTrace,
    PStep,
    generate,
    load_trace,
    omitted_kinds,
    save_trace,
)
from externref_harness.parallel.run import DropEvent, History, OpResult, Runner

REF, VALUE = 0x1000, 0xFE0
CFG = Config(build="release")

# prefix: r0 = New, Deref(r0); r0 is shared. thread 1: StrongCount(r0). thread 2: r1 = Clone(r0),
# Drop(r1). epilogue: StrongCount(r0), Drop(r0).
PROGRAM = ParallelProgram(
    (PStep("New", 8, 8, 0), PStep("Deref", 0)),
    ((PStep("StrongCount", 0),), (PStep("Clone", 0, -1, 1), PStep("Drop", 1))),
)


def _history(count_seen: int, count_at: tuple[int, int]) -> History:
    """Thread 2 clones at [4, 5] and drops at [6, 7]; thread 1's StrongCount sees `count_seen`
    during `count_at`."""
    results = (
        OpResult(0, REF, 0, 1),  # New
        OpResult(0, VALUE, 2, 3),  # Deref
        OpResult(0, count_seen, *count_at),  # thread 1: StrongCount(r0)
        OpResult(0, REF, 4, 5),  # thread 2: Clone(r0)
        OpResult(0, 0, 6, 7),  # thread 2: Drop(r1)
        OpResult(0, 1, 20, 21),  # epilogue: StrongCount(r0)
        OpResult(0, 0, 22, 24),  # epilogue: Drop(r0)
    )
    return History(results, (DropEvent(VALUE, 0, 23),), (), False, 1, 1)


def test_the_epilogue_is_derived_from_what_stays_live() -> None:
    assert [str(s) for s in PROGRAM.epilogue] == ["StrongCount(r0)", "Drop(r0)"]


@pytest.mark.parametrize(
    ("seen", "at"),
    [
        (1, (8, 9)),  # after the drop responded: the count is back to 1
        (2, (5, 8)),  # overlapping the clone and the drop: linearized between them
        (1, (0, 30)),  # overlapping everything: either count is explained
        (2, (0, 30)),
    ],
)
def test_the_checker_accepts_linearizable_histories(seen: int, at: tuple[int, int]) -> None:
    verdict = check_history(PROGRAM, _history(seen, at), CFG)
    assert verdict.passed, verdict.problems
    assert verdict.linearization is not None and len(verdict.linearization) == 3


@pytest.mark.parametrize(
    ("seen", "at", "why"),
    [
        (2, (8, 9), "StrongCount(r0) gave 2, the model says 1"),  # the drop had responded
        (2, (0, 3), "StrongCount(r0) gave 2, the model says 1"),  # the clone was not invoked yet
        (3, (0, 30), "gave 3"),  # no interleaving ever has 3
    ],
)
def test_the_checker_rejects_histories_no_interleaving_explains(
    seen: int, at: tuple[int, int], why: str
) -> None:
    verdict = check_history(PROGRAM, _history(seen, at), CFG)
    assert not verdict.passed
    assert any("not linearizable" in p and why in p for p in verdict.problems), verdict.problems


def test_the_checker_names_a_drop_made_by_the_wrong_call() -> None:
    history = _history(1, (8, 9))
    # The value's destructor ran inside thread 2's Drop (count 2 -> 1) instead of the epilogue's.
    wrong = History(history.results, (DropEvent(VALUE, 2, 6),), (), False, 1, 1)
    moved = History(
        (*history.results[:4], OpResult(0, 0, 6, 8), *history.results[5:]),
        (DropEvent(VALUE, 2, 7),),
        (),
        False,
        1,
        1,
    )
    assert not check_history(PROGRAM, wrong, CFG).passed  # at 6 no call of thread 2 holds it
    verdict = check_history(PROGRAM, moved, CFG)
    assert not verdict.passed
    text = "\n".join(verdict.problems)
    assert "Drop(r1) dropped value 0, the model says it drops nothing" in text


def test_the_checker_reports_final_counts_double_drops_and_panics() -> None:
    history = _history(1, (8, 9))
    results = list(history.results)
    results[5] = OpResult(0, 2, 20, 21)
    counted = History(tuple(results), (*history.drops, DropEvent(VALUE, 0, 23)), (), False, 1, 1)
    text = "\n".join(check_history(PROGRAM, counted, CFG).problems)
    assert "final count of value 0 after the join: 2, the model says 1" in text
    assert "value 0 was dropped 2 times" in text
    results[4] = OpResult(2, 0, 6, 7, "assertion failed: ref_count == 0")
    results[5:] = [OpResult(-1, 0, -1, -1)] * 2
    panicked = History(tuple(results), (), (), True, 1, 0)
    verdict = check_history(PROGRAM, panicked, CFG)
    assert not verdict.passed
    assert any("returned status 2: assertion failed" in p for p in verdict.problems)


def test_malformed_programs_are_refused_with_the_op_named() -> None:
    with pytest.raises(ValueError, match="thread 1 op 1: Drop of the shared r0"):
        ParallelProgram((PStep("New", 8, 8, 0), PStep("Deref", 0)), ((PStep("Drop", 0),),))
    with pytest.raises(ValueError, match="r1 belongs to thread 2"):
        ParallelProgram(
            (PStep("New", 8, 8, 0), PStep("Deref", 0), PStep("Clone", 0, -1, 1)),
            ((PStep("StrongCount", 1),), ()),
            ((1, 2),),
        )
    with pytest.raises(ValueError, match="never dereferenced"):
        ParallelProgram((PStep("New", 8, 8, 0),), ((),))


# ---- real threads -----------------------------------------------------------------------------------


def _options(tmp_path: Path, histories: int) -> ParallelOptions:
    return ParallelOptions(
        histories=histories,
        time_limit=10.0,
        seed=0,
        save_as=tmp_path / "threads.json",
        shrink_runs=40,
        shrink_time=1.0,
        replay_runs=20,
    )


@pytest.mark.parametrize("bug", ["c-nonatomic-count", "c-drop-reread"])
def test_each_race_bug_is_caught_within_ten_seconds(bug: str, tmp_path: Path) -> None:
    library = open_library(build_reference("release", bug=bug))
    out = run_parallel_check(library, _options(tmp_path, 100_000))
    assert not out.passed, f"{bug} not caught in {out.histories} histories ({out.seconds:.1f} s)"
    assert out.detected_after is not None and out.detected_after < 10.0
    assert out.failure is not None and "Parallel check failed" in out.failure
    assert out.trace is not None and load_trace(out.trace).program == out.program


@pytest.mark.parametrize("build", ["debug", "release"])
def test_the_correct_reference_passes_the_same_programs(build: str, tmp_path: Path) -> None:
    library = open_library(build_reference(build))
    out = run_parallel_check(library, _options(tmp_path, 600))
    assert out.passed, out.failure
    assert out.histories == 600


def test_the_threads_really_run_at_once() -> None:
    """If anything on the path took the GIL per call, the two threads' calls would never overlap.
    (Runs for up to 5 s: on a machine whose cores are all busy, overlaps come in bursts.)"""
    ops = 16
    program = ParallelProgram(
        (PStep("New", 8, 8, 0), PStep("Deref", 0)),
        tuple(tuple(PStep("StrongCount", 0) for _ in range(ops)) for _ in range(2)),
    )
    runner = Runner(open_library(build_reference("release")))
    overlapping = 0
    deadline = time.monotonic() + 5.0
    while overlapping < 3 and time.monotonic() < deadline:
        history = runner.run(program)
        one, two = history.results[2 : 2 + ops], history.results[2 + ops : 2 + 2 * ops]
        overlapping += any(a.inv < b.resp and b.inv < a.resp for a in one for b in two)
    assert overlapping >= 3


def test_a_saved_parallel_trace_replays_with_its_failure_rate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    buggy = build_reference("debug", bug="c-drop-reread")
    out = run_parallel_check(open_library(buggy), replace(_options(tmp_path, 100_000), shrink_time=3.0))
    assert out.trace is not None and out.program is not None
    assert out.program.n_threads == 2 and out.program.n_ops <= 3  # shrunk to (about) the racing drops
    saved = json.loads(out.trace.read_text())
    assert saved["runs"] == 20 and 0 < saved["failures"] <= 20
    capsys.readouterr()
    assert main(["replay", str(out.trace), "--impl", str(buggy), "--runs", "30"]) == 1
    text = capsys.readouterr().out
    assert "double free" in text and " of 30 runs (" in text
    assert main(["replay", str(out.trace), "--impl", str(build_reference("debug")), "--runs", "30"]) == 0
    assert "failed in 0 of 30 runs (0%)" in capsys.readouterr().out


def test_the_cli_refuses_what_the_parallel_check_cannot_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check", "--only", "threads"]) == 2
    assert "not applicable without --impl" in capsys.readouterr().err
    trace = tmp_path / "bad.json"
    trace.write_text(json.dumps({"format": "externref-harness-parallel-trace", "version": 1, "program": {}}))
    assert main(["replay", str(trace), "--impl", str(build_reference("debug"))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(trace) in err
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"format": "externref-harness-parallel-trace", "version": 1,
                              "program": PROGRAM.to_json()}))  # fmt: skip
    assert main(["replay", str(ok)]) == 2
    assert "give --impl" in capsys.readouterr().err


def test_the_search_memoises_interleavings() -> None:
    """Three threads of four overlapping calls each have 34650 interleavings; with the memo of
    visited (positions, state) pairs a search that must try them all visits at most 5**3 nodes."""
    program = ParallelProgram(
        (PStep("New", 8, 8, 0), PStep("Deref", 0)),
        tuple(tuple(PStep("StrongCount", 0) for _ in range(4)) for _ in range(3)),
    )
    results = [OpResult(0, REF, 0, 1), OpResult(0, VALUE, 2, 3)]
    results += [OpResult(0, 1, 10 + i, 100 + i) for i in range(12)]
    results += [OpResult(0, 2, 200, 201), OpResult(0, 0, 202, 204)]  # a final count the model denies
    history = History(tuple(results), (DropEvent(VALUE, 0, 203),), (), False, 1, 1)
    verdict = check_history(program, history, CFG)
    assert not verdict.passed
    assert verdict.nodes <= 5**3


def test_the_driver_gives_the_library_back_its_own_allocator() -> None:
    """After a run the hooks are uninstalled: a ref made and dropped directly does not reach the
    driver's heap (whose report is gone: it would crash)."""
    library = open_library(build_reference("release"))
    Runner(library).run(PROGRAM)
    cdll = library.cdll
    r = XrRef()
    assert cdll.xr_ref_new(8, 8, 0, ctypes.byref(r)) == 0
    assert cdll.xr_ref_drop(r) == 0


@pytest.mark.parametrize(
    ("program", "message"),
    [
        ({"prefix": [{"op": "New", "a": 8, "b": 8, "out": 10**12}], "threads": [[]]}, "registers are r0 to"),
        ({"prefix": [], "threads": []}, "0 threads"),
        ({"prefix": [{"op": "Gc", "a": -1, "b": -1, "out": -1}], "threads": [[]]}, "unknown op 'Gc'"),
        ({"prefix": [{"op": "New", "a": 8, "b": 8, "out": 0}], "threads": [[]], "owners": [[0, 5]]}, "never"),
    ],
)
def test_a_bad_parallel_trace_is_one_line_naming_the_flaw(
    program: dict[str, object], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "bad.json"
    trace.write_text(
        json.dumps({"format": "externref-harness-parallel-trace", "version": 1, "program": program})
    )
    assert main(["replay", str(trace), "--impl", str(build_reference("debug"))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_a_crash_of_the_implementations_process_is_a_failure_naming_its_program(tmp_path: Path) -> None:
    """The check runs in a child process; a SIGSEGV there is reported with the program it ran."""
    path = build_reference("release")

    def crash_at_run_50(pid: int, runs: int) -> None:
        if runs == 50:
            os.kill(pid, signal.SIGSEGV)

    out = run_isolated(path, replace(_options(tmp_path, 10**9), time_limit=20.0), crash_at_run_50)
    assert not out.passed
    assert out.failure is not None and "killed by SIGSEGV" in out.failure
    assert out.trace is not None and out.program is not None
    assert load_trace(out.trace).program == out.program


def test_the_isolated_check_gives_the_childs_verdict(tmp_path: Path) -> None:
    out = run_isolated(build_reference("release", bug="c-drop-reread"), _options(tmp_path, 10**9))
    assert not out.passed and out.failure is not None and "double free" in out.failure
    assert run_isolated(build_reference("release"), _options(tmp_path, 300)).passed


def test_replay_refuses_a_library_that_is_not_one_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    trace = tmp_path / "ok.json"
    header = {"format": "externref-harness-parallel-trace", "version": 1}
    trace.write_text(json.dumps({**header, "program": PROGRAM.to_json()}))
    assert main(["replay", str(trace), "--impl", str(tmp_path / "missing.so")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


@pytest.mark.slow
def test_the_gate_runs_the_parallel_check_by_default(tmp_path: Path) -> None:
    """A race bug passes every sequential case of the gate and fails its threads case."""
    report = tmp_path / "gate.json"
    library = build_reference("release", bug="c-nonatomic-count")
    args = ["gate", str(library), "--max-examples", "10", "--json", str(report), "--failures", str(tmp_path)]
    assert main(args) == 1
    cases = json.loads(report.read_text())["cases"]
    failing = [c for c in cases if c["status"] == "fail"]
    assert [c["kind"] for c in failing] == ["threads"], failing
    detail = failing[0]["detail"]
    assert "histories in 10 s" in detail and "% overlapping" in detail and "start schedules" in detail


# ---- no pause in the race windows -------------------------------------------------------------------

NO_PAUSE = {"XR_RACE_WINDOW_NS": "0"}
BUILDS = ("debug", "release")

# One value, two handles, each given to its own thread, which drops it: the two last drops race.
LAST_DROPS = ParallelProgram(
    (PStep("New", 8, 8, 0), PStep("Deref", 0), PStep("Clone", 0, -1, 1)),
    ((PStep("Drop", 0),), (PStep("Drop", 1),)),
    ((0, 1), (1, 2)),
)
# A shared value: thread 1 clones it while thread 2 drops its own clone.
CLONE_AND_DROP = ParallelProgram(
    (PStep("New", 8, 8, 0), PStep("Deref", 0), PStep("Clone", 0, -1, 1)),
    ((PStep("Clone", 0, -1, 2), PStep("Drop", 2)), (PStep("Drop", 1),)),
    ((1, 2),),
)


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("bug", ["c-nonatomic-count", "c-clone-load-store"])
def test_the_lost_update_races_are_caught_without_a_pause(bug: str, build: str, tmp_path: Path) -> None:
    """The generated programs find a plain load-and-store of the count within seconds (at most
    three runs of the check, each with a 10 s budget)."""
    library = open_library(build_reference(build, bug=bug, defines=NO_PAUSE))
    opts = replace(_options(tmp_path, 10**9), shrink_time=0.0, replay_runs=1)
    outs = []
    for seed in range(3):
        outs.append(run_parallel_check(library, replace(opts, seed=seed)))
        if not outs[-1].passed:
            break
    out = outs[-1]
    assert not out.passed, [(o.histories, round(o.seconds, 1)) for o in outs]
    assert out.detected_after is not None and out.detected_after < 10.0


def _fails_within_seconds(
    bug: str | None, build: str, program: ParallelProgram, seconds: float
) -> tuple[History, Verdict] | None:
    library = open_library(build_reference(build, bug=bug, defines=None if bug is None else NO_PAUSE))
    runner, cfg = Runner(library), model_config(library)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = fails_within(runner, program, cfg, 50_000)
        if found is not None:
            return found
    return None


@pytest.mark.slow
@pytest.mark.parametrize("build", BUILDS)
def test_two_racing_last_drops_are_caught_without_a_pause(build: str) -> None:
    """`c-drop-reread` re-reads the count right after its fetch_sub: a window of a few
    instructions, met by running two single-drop threads often, their start perturbed (at most
    20 s of histories)."""
    found = _fails_within_seconds("c-drop-reread", build, LAST_DROPS, 20.0)
    assert found is not None, "no double free in 20 s of histories"
    _, verdict = found
    text = "\n".join(verdict.problems)
    assert "value 0 was dropped 2 times" in text or "double free" in text, text


def test_the_driver_takes_the_cheap_verdicts() -> None:
    """Histories that break a cheap verdict come back failed by the driver itself (the race
    bugs as shipped, with their 5 us pause, fail nearly every overlapping history), and the model
    agrees; the correct reference passes every one."""
    checks = [("c-drop-reread", LAST_DROPS, "double free"), ("c-clone-load-store", CLONE_AND_DROP, "")]
    for bug, program, why in checks:
        library = open_library(build_reference("release", bug=bug))
        runner, cfg = Runner(library), model_config(library)
        for _ in range(20):
            out = runner.run_batch(program, plan_of(program, cfg), 2000)
            if out.failing is not None:
                break
        assert out.failing is not None, bug
        assert why in out.why, out.why
        assert not check_history(program, out.failing, cfg).passed
    library = open_library(build_reference("release"))
    runner, cfg = Runner(library), model_config(library)
    for program in (LAST_DROPS, CLONE_AND_DROP):
        histories = 0
        while histories < 20_000:  # a batch stops after 50 ms
            out = runner.run_batch(program, plan_of(program, cfg), 20_000, stop_at_failure=False)
            assert out.cheap_failures == 0, out.why
            histories += out.run


def test_the_clone_race_breaks_the_final_count_the_driver_checks() -> None:
    """c-clone-load-store loses a drop or a clone: the epilogue's count is one no interleaving
    gives, and the driver says so."""
    library = open_library(build_reference("release", bug="c-clone-load-store"))
    runner, cfg = Runner(library), model_config(library)
    plan = plan_of(CLONE_AND_DROP, cfg)
    assert plan.expect[-2:] == (1, None)  # the epilogue: StrongCount(r0) is 1 in every order
    whys = set()
    for _ in range(20):
        out = runner.run_batch(CLONE_AND_DROP, plan, 2000, stop_at_failure=False)
        whys.add(out.why.split(" gave")[-1])
        if out.cheap_failures:
            break
    assert out.cheap_failures > 0 and "which no interleaving gives" in out.why, whys


def test_few_histories_are_judged_in_python_and_a_known_order_passes_only_what_it_explains() -> None:
    """The correct reference's histories of one program fall into few signatures, judged once; and
    an order that explained one signature is reused only where real time allows it."""
    library = open_library(build_reference("release"))
    runner, cfg = Runner(library), model_config(library)
    judge = Judge(runner, CLONE_AND_DROP, cfg)
    histories = 0
    for _ in range(10):
        out, failing, _ = judge.batch(2000)
        assert failing is None
        histories += out.run
    assert 0 < judge.judged <= histories // 100, (judge.judged, histories)

    judge = Judge(runner, LAST_DROPS, cfg)
    head = (0).to_bytes(8, "little") * 2 + (4).to_bytes(8, "little")  # no counts read; op 4 drops
    judge._orders[head] = [judge._violations([3, 4])]  # thread 1's drop, then thread 2's
    thread1_first = (1 << (0 * 2 + 1)).to_bytes(8, "little")  # op 3 responded before op 4 began
    thread2_first = (1 << (1 * 2 + 0)).to_bytes(8, "little")
    overlapping = (0).to_bytes(8, "little")
    assert judge._explained(head + thread1_first)
    assert judge._explained(head + overlapping)
    assert not judge._explained(head + thread2_first)
    assert not judge._explained((1).to_bytes(8, "little") + head[8:] + overlapping)


def test_threads_started_together_overlap_in_most_histories() -> None:
    """Two threads of one call each, started at one instant after touching what their calls
    need: their calls overlap in most histories (a worker a few cache misses late would not)."""
    library = open_library(build_reference("release"))
    runner, cfg = Runner(library), model_config(library)
    out = runner.run_batch(LAST_DROPS, plan_of(LAST_DROPS, cfg), 5_000)
    assert out.run > 100 and out.overlapped > out.run // 4, (out.overlapped, out.run)


def test_a_library_without_raw_functions_gets_programs_without_raw_operations(tmp_path: Path) -> None:
    """`no-raw` removes into_raw, from_raw and clone_from_raw: the generator draws none of them (the
    seed's programs do), the driver gets NULL for the functions, and the check passes."""
    rng = random.Random(0)
    omit = omitted_kinds(("no-raw",))
    assert omit == {"IntoRaw", "FromRaw", "CloneFromRaw"}
    assert omitted_kinds(("no-strong-count",)) == {"StrongCount"}
    drawn = {s.kind for _ in range(200) for _, _, s in generate(rng, omit=omit).steps()}
    seed_drawn = {s.kind for _ in range(200) for _, _, s in generate(rng).steps()}
    assert not drawn & omit and omit <= seed_drawn
    library = open_library(build_reference("release", variant="c-no-raw"))
    out = run_parallel_check(library, _options(tmp_path, 300))
    assert out.passed, out.failure
    assert out.histories == 300


def test_replaying_a_parallel_trace_the_library_lacks_a_function_of_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "raw.json"
    rng = random.Random(1)
    programs = (generate(rng) for _ in range(100))
    program = next(p for p in programs if any(s.kind == "IntoRaw" for _, _, s in p.steps()))
    save_trace(ParallelTrace(program, note="a raw program"), saved)
    no_raw = build_reference("release", variant="c-no-raw")
    assert_one_line_exit_2(
        ["replay", str(saved), "--impl", str(no_raw)], capsys, "which " + str(no_raw) + " lacks"
    )
