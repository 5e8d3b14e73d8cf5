"""An untrusted library, each misbehaving in one way: a clear verdict within the time limit plus a
fixed margin, no traceback, no process left behind, and no code run in the harness's process.

Each library is the C reference behind a wrapper (`misbehaving.py`), compiled here with `cc`; each
runs through the command line in its own process, as a user runs it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from misbehaving import Run, build, harness, leftovers, pickle_payload

from externref_harness.native.build import build_reference

#: The gate's budget in these tests, and the fixed margin it may overrun by (a failure's report,
#: the children's start-up, the interpreter's).
TIME_LIMIT = 10
MARGIN = 30


def _gate(tmp_path: Path, library: Path, *extra: str) -> tuple[Run, dict[str, object]]:
    report = tmp_path / "gate.json"
    args = ["gate", str(library), "--max-examples", "30", "--time-limit", str(TIME_LIMIT)]
    args += ["--step-timeout", "2", "--json", str(report), "--failures", str(tmp_path / "f"), *extra]
    run = harness(*args)
    loaded = json.loads(report.read_text()) if report.exists() else {}
    return run, loaded


def _assert_clear_failure(run: Run, library: Path, expected: str | None = None) -> None:
    output = run.out + run.err
    assert run.status == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    assert run.seconds < TIME_LIMIT + MARGIN, f"took {run.seconds:.0f} s"
    assert leftovers(library) == []
    if expected is not None:
        assert expected in output, output[-3000:]


@pytest.mark.slow
def test_a_hostile_pickle_frame_is_a_failing_case_and_runs_no_code(tmp_path: Path) -> None:
    marker = tmp_path / "ran-code-in-the-parent"
    payload = pickle_payload(marker)
    library = build(
        tmp_path,
        "pickle-frame",
        new_after=f"if (calls == 2) hostile_frame(BODY, sizeof BODY, {len(payload)}ULL)",
        body=payload,
    )
    run, report = _gate(tmp_path, library, "--no-threads")
    _assert_clear_failure(run, library, "broke the protocol")
    assert not marker.exists()
    assert not report["passed"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,new_after,expected",
    [
        # A header announcing 2**62 bytes: refused before anything is allocated.
        ("huge-header", "hostile_frame(BODY, 0, 1ULL << 62)", "more than the"),
        # A header, then 10 of the 100 bytes it announced, then nothing: read with a deadline.
        ("partial-frame", "if (calls == 2) { hostile_frame(BODY, 10, 100); pause(); }", "a partial frame"),
    ],
)
def test_a_broken_frame_is_a_failing_case(tmp_path: Path, name: str, new_after: str, expected: str) -> None:
    library = build(tmp_path, name, new_after=new_after, body=bytes(10))
    run, _ = _gate(tmp_path, library, "--no-threads")
    _assert_clear_failure(run, library, expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name,hooks,expected",
    [
        ("sigstop-in-gc", {"gc": "raise(SIGSTOP)"}, "did not answer within 2 s"),
        ("pause-in-gc", {"gc": "pause()"}, "did not answer within 2 s"),
        # Slower than the step timeout: every shrink candidate would pay it; the budget bounds them.
        ("slow-gc", {"gc": "sleep(3)"}, "did not answer within 2 s"),
        # Allocates until the address-space limit refuses, then uses what malloc gave it, unchecked,
        # as such a library would: a crash, reached in seconds under the limit. (Stopping at the
        # refusal and going on would be a correct library that leaks outside the hooks.)
        (
            "exhausts-memory",
            {
                "new_before": "if (calls == 3) "
                "{ char *p; while ((p = malloc(1 << 20))) {} *(volatile char *)p = 1; }"
            },
            None,
        ),
        ("closes-descriptors", {"set_hooks": "for (int fd = 3; fd < 1024; fd++) close(fd)"}, None),
        (
            "floods-stdout",
            {"new_before": "for (int i = 0; i < 1 << 14; i++) fputs(FLOOD, stdout)"},
            "a flood",
        ),
        (
            "forks-then-exits",
            {"new_before": "if (calls == 3) { if (fork() == 0) sleep(1000); exit(1); }"},
            None,
        ),
        ("exits-at-its-50th-new", {"new_before": "if (calls == 50) exit(0)"}, "flakily"),
    ],
)
def test_a_misbehaving_library_gets_a_clear_failing_verdict_in_time(
    tmp_path: Path, name: str, hooks: dict[str, str], expected: str | None
) -> None:
    top = '#define FLOOD "flood of output, sixty-four bytes a line, from the library....\\n"\n'
    library = build(tmp_path, name, top=top, **hooks)  # type: ignore[arg-type]
    run, report = _gate(tmp_path, library, "--no-threads")
    _assert_clear_failure(run, library, expected)
    assert not report["passed"]
    assert len(run.out) < 200_000, "the library's output reached the gate's own stdout"


@pytest.mark.slow
def test_a_library_that_forks_a_survivor_passes_and_leaves_no_process(tmp_path: Path) -> None:
    """Every world's start forks a child that outlives it; the verdict is a pass (the library is
    otherwise correct), and the process groups are killed: nothing is left, threads check included."""
    library = build(tmp_path, "forks-a-survivor", set_hooks="if (fork() == 0) { sleep(1000); _exit(0); }")
    run, report = _gate(tmp_path, library)
    assert run.status == 0, (run.out + run.err)[-3000:]
    assert report["passed"]
    assert run.seconds < TIME_LIMIT + MARGIN
    assert leftovers(library) == []


@pytest.mark.slow
def test_what_a_library_prints_stays_out_of_the_gates_output(tmp_path: Path) -> None:
    """Binary garbage printed by the library's threads (the parallel check) and by each new ref
    (the lockstep) is captured in the children, not written to the gate's stdout or stderr. The
    threads print at most about 100 KB: the parallel check runs a million calls in seconds on a
    quiet machine, and a print on every one of them is a flood (its own failing verdict, tested
    with the other misbehaving libraries)."""
    top = (
        "static const char GARBAGE[] = {27, '[', '2', 'J', 1, 2, 3, 7, 8, 0};\n"
        "static int garbage_printed;\n"
    )
    library = build(
        tmp_path,
        "prints-garbage",
        clone="if (garbage_printed++ < 10000) fputs(GARBAGE, stdout)",
        new_after="fputs(GARBAGE, stderr)",
        top=top,
    )
    run, report = _gate(tmp_path, library)
    assert run.status == 0, (run.out + run.err)[-3000:]
    assert "\x1b[2J" not in run.out + run.err and "\x07" not in run.out + run.err
    assert any(c["kind"] == "threads" and c["status"] == "pass" for c in report["cases"])  # type: ignore[attr-defined]


def test_a_child_that_exits_while_what_it_forked_holds_the_pipe_is_an_exit_not_a_hang(
    tmp_path: Path,
) -> None:
    """The library's 3rd `new` forks a sleeper, which inherits the response pipe, and exits: the
    pipe's end of file would wait for the sleeper, so the child's exit is watched (a pidfd), and
    the failure is the exit, reported at once, not a hang after the step timeout."""
    from externref_harness import trace as tracefile
    from externref_harness.model import ops
    from externref_harness.model.state import Config

    library = build(
        tmp_path, "forks-then-exits", new_before="if (calls == 3) { if (fork() == 0) sleep(1000); exit(1); }"
    )
    trace = tracefile.save(
        tracefile.Trace(Config(chunk_size=2, build="release"), (ops.New(8, 8),) * 3, ""),
        tmp_path / "three-new.json",
    )
    run = harness("replay", str(trace), "--impl", str(library))
    output = run.out + run.err
    assert run.status == 1, output
    assert "exited with status 1 during step" in output and "did not answer" not in output, output
    assert "Traceback" not in output
    assert leftovers(library) == []


def test_a_library_whose_constructor_exits_is_refused_saying_so(tmp_path: Path) -> None:
    top = "#include <stdlib.h>\n__attribute__((constructor)) static void leave(void) { exit(0); }\n"
    library = build(tmp_path, "constructor-exits", top=top)
    run = harness("gate", str(library), "--no-threads")
    assert run.status == 2
    lines = run.err.strip().splitlines()
    assert len(lines) == 1 and "the process exited with status 0 while loading the library" in lines[0], (
        run.err
    )
    assert leftovers(library) == []


@pytest.mark.parametrize(
    "name,value,expected",
    [
        ("null-ref", "0", "xr_ref_new returned an invalid ref: NULL"),
        ("wild-ref", "0x1000", "xr_ref_new returned an invalid ref 0x1000: in no block"),
    ],
)
def test_an_invalid_ref_from_xr_ref_new_is_the_implementations(
    tmp_path: Path, name: str, value: str, expected: str
) -> None:
    library = build(tmp_path, name, new_after=f"*out = (xr_ref){value}")
    trace = Path(__file__).parents[2] / "corpus" / "release" / "advisory-cve-2021-39216.json"
    run = harness("replay", str(trace), "--impl", str(library))
    assert run.status == 1, run.out + run.err
    assert expected in run.out and "at step 1" in run.out, run.out
    assert "Traceback" not in run.out + run.err
    assert "killed by SIGSEGV" not in run.out


def test_a_crash_in_a_corpus_replay_is_that_traces_failure_and_the_next_runs(tmp_path: Path) -> None:
    """The issue's reproduction: the seeded CVE-2022-23636 on the debug reference segfaulted the
    replaying process; now the crash is reported, the next trace runs, and --json is written."""
    library = _own_copy(tmp_path, build_reference("debug"))
    corpus = Path(__file__).parents[2] / "corpus" / "debug"
    report = tmp_path / "replay.json"
    run = harness(
        "replay", str(corpus), "--impl", str(library), "--mutant", "cve-2022-23636", "--json", str(report)
    )
    assert run.status == 1 and "Traceback" not in run.out + run.err, run.out + run.err
    lines = run.out.splitlines()
    (crashed,) = [i for i, line in enumerate(lines) if "advisory-cve-2022-23636" in line]
    assert lines[crashed].startswith("FAIL") and "killed by SIGSEGV" in lines[crashed], lines[crashed]
    assert lines[crashed + 1].split()[0] in ("pass", "FAIL")  # the next trace ran
    written = json.loads(report.read_text())
    assert written["status"] == 1 and len(written["traces"]) == len(lines) - 1
    assert leftovers(library) == []


def test_replay_of_a_corpus_file_reports_the_crash(tmp_path: Path) -> None:
    library = _own_copy(tmp_path, build_reference("debug"))
    trace = Path(__file__).parents[2] / "corpus" / "debug" / "advisory-cve-2022-23636.json"
    report = tmp_path / "one.json"
    run = harness(
        "replay", str(trace), "--impl", str(library), "--mutant", "cve-2022-23636", "--json", str(report)
    )
    assert run.status == 1 and "killed by SIGSEGV" in run.out, run.out + run.err
    assert json.loads(report.read_text())["traces"][0]["verdict"] == "FAIL"
    assert leftovers(library) == []


def _own_copy(tmp_path: Path, library: Path) -> Path:
    """A copy at a path of this test's own, so `leftovers` counts only this test's processes."""
    copy = tmp_path / library.name
    shutil.copyfile(library, copy)
    return copy


@pytest.mark.slow
def test_a_parallel_trace_replay_of_a_library_that_deadlocks_in_drop_ends(tmp_path: Path) -> None:
    """`replay PARALLEL-TRACE --runs N` gives each run a time limit: a library whose threads block
    for ever in `xr_ref_drop` is a hang at that run, its process group killed."""
    from externref_harness.parallel.program import ParallelProgram, ParallelTrace, PStep, save_trace

    top = "#include <pthread.h>\nstatic pthread_t hooks_thread;\n"
    library = build(
        tmp_path,
        "drop-deadlocks",
        top=top,
        set_hooks="hooks_thread = pthread_self()",
        drop="if (!pthread_equal(pthread_self(), hooks_thread)) pause()",
    )
    program = ParallelProgram(
        (PStep("New", 8, 8, 0), PStep("Deref", 0), PStep("Clone", 0, -1, 1), PStep("Clone", 0, -1, 2)),
        ((PStep("Drop", 1),), (PStep("Drop", 2),)),
        ((1, 1), (2, 2)),
    )
    trace = save_trace(ParallelTrace(program, str(library)), tmp_path / "threads.json")
    run = harness("replay", str(trace), "--impl", str(library), "--runs", "5")
    assert run.status == 1, run.out + run.err
    assert "hung (no run finished within 10 s; killed) at run 0 of 5" in run.out, run.out
    assert "Traceback" not in run.out + run.err
    assert run.seconds < 10 + MARGIN
    assert leftovers(library) == []


@pytest.mark.slow
def test_a_library_whose_gc_takes_2_s_ends_within_the_time_limit_and_says_what_it_cut(tmp_path: Path) -> None:
    """Slow but not hung (the step timeout is 10 s): every corpus trace and example pays seconds,
    and the gate stops every phase at its budget, naming what it did not run."""
    library = build(tmp_path, "gc-takes-2-s", gc="sleep(2)")
    report = tmp_path / "gate.json"
    run = harness(
        "gate",
        str(library),
        "--time-limit",
        str(TIME_LIMIT),
        "--json",
        str(report),
        "--failures",
        str(tmp_path),
    )
    assert run.status in (0, 1) and "Traceback" not in run.out + run.err, (run.out + run.err)[-3000:]
    assert run.seconds < TIME_LIMIT + MARGIN, f"took {run.seconds:.0f} s"
    assert "cut short by --time-limit" in run.out
    assert json.loads(report.read_text())["cut_short"]
    assert leftovers(library) == []
