"""`externref-harness gate`: the C reference passes strict in every build, each seeded C bug is
rejected (the crash and the hang too, as saved, shrunk traces, by a gate that does not die), the
loose variant fails strict with its divergences named and passes conformant or with an
expectations file, bad input is one line and exit 2, and the reports and the pytest plugin say
the same."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from one_line import assert_one_line_exit_2

from externref_harness.cli.main import main
from externref_harness.corpus.run import load_corpus
from externref_harness.lockstep.memory_checks import FOOTER_LAYOUT_CHECKS
from externref_harness.native.build import C_BUGS, build_reference, sanitizer_supported

#: A small budget: the corpus carries most of the weight, the search adds random walks.
FAST = ["--max-examples", "40", "--no-threads"]
LOOSE_DIVERGENCES = ("seed.chunk-size", "seed.capacity-slots", "observed.drop-order")


def _gate(tmp_path: Path, library: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    report = tmp_path / "gate.json"
    args = ["gate", str(library), *FAST, "--json", str(report), "--failures", str(tmp_path / "f"), *extra]
    status = main(args)
    return status, json.loads(report.read_text())


def _failing(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in report["cases"] if c["status"] == "fail"]


@pytest.mark.parametrize("build", ["debug", "release"])
def test_the_c_reference_passes_strict(build: str, tmp_path: Path) -> None:
    junit = tmp_path / "gate.xml"
    status, report = _gate(tmp_path, build_reference(build), "--junit", str(junit))
    assert status == 0, _failing(report)
    assert report["passed"] and report["level"] == "strict"
    kinds = {c["kind"] for c in report["cases"]}
    assert {"describe", "corpus", "search"} <= kinds
    assert sum(c["kind"] == "corpus" for c in report["cases"]) >= 30
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    assert int(suite.get("tests", "0")) == len(report["cases"]) and suite.get("failures") == "0"
    # The seed's set of capabilities rules nothing out: every layout check ran.
    assert not any("ruled out" in line for line in report["not_checked"]), report["not_checked"]


def test_the_search_seeds_are_printed_and_chosen(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """With --time-limit the search runs in rounds of 20 examples, each with its own seed: --seed
    chooses the first, and the run says which it used (here 40 examples: two rounds)."""
    status, report = _gate(tmp_path, build_reference("release"), "--time-limit", "300", "--seed", "77")
    assert status == 0, _failing(report)
    assert "gate: search (seed 77)" in capsys.readouterr().out
    (search,) = [c for c in report["cases"] if c["kind"] == "search"]
    assert "seeds 77-78" in search["detail"]
    assert_one_line_exit_2(["gate", str(build_reference("release")), "--seed", "-1"], capsys, "--seed")


@pytest.mark.skipif(not sanitizer_supported(), reason="the C compiler has no AddressSanitizer")
def test_the_c_reference_passes_strict_under_asan(tmp_path: Path) -> None:
    status, report = _gate(tmp_path, build_reference("debug", sanitize=True))
    assert status == 0, _failing(report)


def _bug_build(name: str) -> str:
    # The debug build stops these with a debug assertion before the crash or the overflow.
    return "release" if C_BUGS[name].needs & {"crash", "release"} else "debug"


@pytest.mark.slow
@pytest.mark.parametrize("bug", sorted(name for name, b in C_BUGS.items() if "threads" not in b.needs))
def test_every_seeded_c_bug_is_rejected(bug: str, tmp_path: Path) -> None:
    extra = ["--step-timeout", "2"] if "hang" in C_BUGS[bug].needs else []
    status, report = _gate(tmp_path, build_reference(_bug_build(bug), bug=bug), *extra)
    assert status == 1, f"{bug} passed the gate"
    assert _failing(report)


@pytest.mark.slow
@pytest.mark.parametrize(
    "bug,expected",
    [("c-wild-read", "killed by SIGSEGV"), ("c-gc-hang", "did not answer within 2 s")],
)
def test_a_crash_and_a_hang_become_saved_shrunk_traces(
    bug: str, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library = build_reference(_bug_build(bug), bug=bug)
    status, report = _gate(tmp_path, library, "--step-timeout", "2", "--max-examples", "100")
    assert status == 1
    (search,) = [c for c in report["cases"] if c["kind"] == "search"]
    assert search["status"] == "fail" and expected in search["detail"]
    trace = Path(search["trace"])
    steps = json.loads(trace.read_text())["steps"]
    assert 1 <= len(steps) <= 10
    # The printed replay command replays it as it ran: at the gate's step timeout.
    assert f"--impl {library} --step-timeout 2" in capsys.readouterr().out
    # The saved trace replays to the same crash, in a child: the replaying process survives it.
    assert main(["replay", str(trace), "--impl", str(library), "--step-timeout", "2"]) == 1
    assert expected.split(" 2 s")[0] in capsys.readouterr().out


@pytest.mark.slow
def test_the_loose_variant_fails_strict_and_passes_conformant(tmp_path: Path) -> None:
    loose = build_reference("debug", variant="c-loose")
    status, report = _gate(tmp_path, loose)
    assert status == 1
    named = " ".join(c["detail"] for c in _failing(report))
    # Capacity in slots is its declared capability now: a seed.<capability> case, not a divergence.
    assert "[seed.chunk-size]" in named and "[seed.capacity-slots]" in named
    assert "[observed.bump-capacity-bytes]" not in named
    status, report = _gate(tmp_path, loose, "--level", "conformant")
    assert status == 0, _failing(report)


def test_expectations_let_strict_pass_and_name_what_no_longer_happens(tmp_path: Path) -> None:
    expect = tmp_path / "expectations.toml"
    lines = [f'[divergences."{name}"]\nreason = "the loose variant"\n' for name in LOOSE_DIVERGENCES]
    lines.append('[divergences."layout.vtable"]\nreason = "listed, but it never happens"\n')
    expect.write_text("\n".join(lines))
    status, report = _gate(tmp_path, build_reference("debug", variant="c-loose"), "--expect", str(expect))
    assert status == 0, _failing(report)
    seen = {name for c in report["cases"] for name in c["expected"]}
    assert {"seed.chunk-size", "seed.capacity-slots"} <= seen
    assert any(c["status"] == "expected-fail" for c in report["cases"])
    assert report["stale_expectations"] == ["layout.vtable"]
    # The correct reference with the same file: nothing it lists happens, and it says so.
    status, report = _gate(tmp_path, build_reference("debug"), "--expect", str(expect))
    assert status == 0 and set(report["stale_expectations"]) >= {"seed.chunk-size", "layout.vtable"}


def test_bad_libraries_and_expectation_files_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "lib.so"
    text.write_text("not a library")
    good = str(build_reference("debug"))
    assert_one_line_exit_2(["gate", str(tmp_path / "none.so")], capsys, "no such file")
    assert_one_line_exit_2(["gate", str(text)], capsys, "not a loadable shared library")
    old = build_reference("debug", defines={"XR_REPORT_ABI_VERSION": "3"})
    assert_one_line_exit_2(["gate", str(old)], capsys, "ABI version 3")
    cases = {
        "unknown.toml": ('[divergences."no.such-check"]\nreason = "x"\n', "unknown check"),
        "noreason.toml": ('[divergences."seed.chunk-size"]\n', "needs a non-empty 'reason'"),
        "broken.toml": ("[divergences\n", "not valid TOML"),
        "list.json": ("[1, 2]", "expected one table 'divergences'"),
    }
    for name, (content, expected) in cases.items():
        path = tmp_path / name
        path.write_text(content)
        assert_one_line_exit_2(["gate", good, "--expect", str(path)], capsys, expected)
    assert_one_line_exit_2(["gate", good, "--expect", str(tmp_path / "missing.toml")], capsys, "no such file")
    assert_one_line_exit_2(["gate", good, "--time-limit", "0"], capsys, "positive number")


def _pytest_with_plugin(tmp_path: Path, library: Path) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_own.py").write_text("def test_own_suite() -> None:\n    pass\n")
    env = {**os.environ, "CI": "true"}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--externref-impl", str(library)]
    args += ["--externref-time-limit", "5", "-p", "no:xdist"]
    return subprocess.run(
        args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False
    )


@pytest.mark.slow
def test_the_pytest_plugin_gates_a_library_from_its_own_suite(tmp_path: Path) -> None:
    done = _pytest_with_plugin(tmp_path, build_reference("release", no_optional=True))
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and " skipped" not in done.stdout  # the fixed chunk runs every scenario
    assert "externref gate: not checked: optional functions the library lacks" in done.stdout
    bad = _pytest_with_plugin(tmp_path, build_reference("release", bug="c-early-free"))
    assert bad.returncode == 1
    assert "externref_gate[" in bad.stdout and "FAILED" in bad.stdout


# --- what the verdict says it ran --------------------------------------------------------------------


def test_a_fixed_chunk_library_runs_every_corpus_scenario(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The seed's chunk is a constant, so an honest build of it has no
    `xr_table_new_with_chunk_size`: it runs every scenario of the corpus, none skipped."""
    library = build_reference("release", no_optional=True)
    junit = tmp_path / "gate.xml"
    status, report = _gate(tmp_path, library, "--junit", str(junit))
    assert status == 0, _failing(report)
    assert report["counts"]["skip"] == 0 and report["counts"]["fail"] == 0
    corpus_cases = [c for c in report["cases"] if c["kind"] == "corpus"]
    assert all(c["status"] == "pass" and c["name"].startswith("release/") for c in corpus_cases)
    ran = {c["name"].removeprefix("release/").removesuffix("-chunk-512") for c in corpus_cases}
    scenarios = {t.scenario_name for t in load_corpus(build="release")}
    assert scenarios <= ran and len(corpus_cases) >= 30
    assert "0 skipped" in capsys.readouterr().out
    notes = " | ".join(report["not_checked"])
    assert "did not apply" in notes and "release/path-insert-slow-without-gc" in notes
    assert "xr_table_elements" in notes and "--no-threads" in notes
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("skipped") == "0"


def test_skipped_cases_are_counted_and_say_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A fixed chunk of 256 slots runs the traces that run at any chunk size, and skips the others:
    counted in the summary line, the JSON and the JUnit, each with its reason, named like the rest."""
    library = build_reference("debug", no_optional=True, chunk_size=256)
    junit = tmp_path / "gate.xml"
    status, report = _gate(tmp_path, library, "--level", "conformant", "--junit", str(junit))
    assert status == 0, _failing(report)
    skipped = [c for c in report["cases"] if c["status"] == "skip"]
    assert skipped and report["counts"]["skip"] == len(skipped)
    assert all(c["name"].startswith("debug/") for c in report["cases"] if c["kind"] == "corpus")
    for c in skipped:
        assert c["detail"].startswith("written for a chunk of"), c
        assert "fixed chunk of 256 slots" in c["detail"] and "--chunk-size" not in c["detail"]
    assert f"{len(skipped)} skipped" in capsys.readouterr().out
    notes = " | ".join(report["not_checked"])
    assert f"{len(skipped)} trace(s) skipped" in notes
    assert "the strict checks were not applied" in notes and "seed.chunk-size" in notes
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("skipped") == str(len(skipped))
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert "trace(s) skipped" in str(props["not_checked"])


def test_a_search_cut_short_by_the_time_limit_says_so(tmp_path: Path) -> None:
    status, report = _gate(
        tmp_path, build_reference("debug"), "--max-examples", "100000", "--time-limit", "0.5"
    )
    assert status == 0, _failing(report)
    (search,) = [c for c in report["cases"] if c["kind"] == "search"]
    assert "stopped at the 0.5 s limit" in search["detail"]
    notes = report["not_checked"]
    assert any(
        n.startswith("cut short by --time-limit: search: stopped by the time limit after")
        and n.endswith("of 100000 examples")
        for n in notes
    ), notes
    assert report["cut_short"], "the JSON report lists what the limit cut short"


def _text_file(directory: Path) -> Path:
    (directory / "text.so").write_text("not a library")
    return directory / "text.so"


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda d: d / "none.so", "no such file"),
        (_text_file, "not a loadable shared library"),
        (lambda d: build_reference("debug", defines={"XR_REPORT_ABI_VERSION": "3"}), "ABI version 3"),
    ],
    ids=["missing", "not-a-library", "other-abi"],
)
def test_a_refused_library_still_gets_its_reports(
    make: Callable[[Path], Path], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Exit 2 and one line, as any bad input; and the JSON and JUnit CI asked for say why."""
    library = make(tmp_path)
    report, junit = tmp_path / "gate.json", tmp_path / "gate.xml"
    args = ["gate", str(library), "--json", str(report), "--junit", str(junit)]
    assert_one_line_exit_2(args, capsys, expected)
    data = json.loads(report.read_text())
    assert data["passed"] is False and expected in data["refused"] and data["implementation"] is None
    assert data["library"] == str(library) and data["counts"]["fail"] == 1
    (case,) = data["cases"]
    assert (case["kind"], case["name"], case["status"]) == ("describe", "load", "fail")
    assert data["not_checked"] == ["every case: the library was refused"]
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None and suite.get("tests") == "1" and suite.get("failures") == "1"
    failure = suite.find("testcase/failure")
    assert failure is not None and expected in failure.get("message", "")


@pytest.mark.slow
def test_the_pytest_plugin_saves_traces_in_the_project_never_beside_the_library(tmp_path: Path) -> None:
    """`pytest --externref-impl PATH` (a space, no ini file): pytest takes PATH for a test path and
    a rootdir from the library's folder (here the ancestor it shares with the project); the traces
    still go under the folder pytest ran in, or `--externref-failures DIR`."""
    lib_dir, project = tmp_path / "vendor", tmp_path / "project"
    lib_dir.mkdir()
    project.mkdir()
    library = lib_dir / "libbuggy.so"
    shutil.copy(build_reference("release", bug="c-early-free"), library)
    (project / "test_own.py").write_text(
        "from pathlib import Path\n\n"
        "def test_own_suite(request):\n"
        "    Path('rootdir.txt').write_text(str(request.config.rootpath))\n"
    )

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist"]
        args += ["--externref-impl", str(library), "--externref-time-limit", "5", *extra]
        env = {k: v for k, v in os.environ.items() if k != "EXTERNREF_HARNESS_FAILURES"}
        env["CI"] = "true"
        return subprocess.run(
            args, cwd=project, env=env, capture_output=True, text=True, timeout=600, check=False
        )

    done = run()
    assert done.returncode == 1, done.stdout[-3000:]
    # pytest's choice, which the traces do not follow.
    rootdir = Path((project / "rootdir.txt").read_text())
    assert rootdir != project and library.is_relative_to(rootdir)
    assert not (rootdir / ".externref-harness").exists()
    saved = project / ".externref-harness" / "failures" / "gate-libbuggy-strict.json"
    assert saved.is_file(), done.stdout[-3000:]
    assert str(saved) in done.stdout
    assert sorted(p.name for p in lib_dir.iterdir()) == ["libbuggy.so"]
    chosen = tmp_path / "traces"
    done = run("--externref-failures", str(chosen))
    assert done.returncode == 1 and (chosen / "gate-libbuggy-strict.json").is_file()
    assert sorted(p.name for p in lib_dir.iterdir()) == ["libbuggy.so"]


# --- opaque-refs ------------------------------------------------------------------------------------

#: What the gate says `opaque-refs` ruled out (memory_checks.checks_ruled_out).
OPAQUE_RULED_OUT = (*FOOTER_LAYOUT_CHECKS, "observed.cmp-order")


def _ruled_out(report: dict[str, Any]) -> set[str]:
    lines = [line for line in report["not_checked"] if line.startswith("ruled out by opaque-refs: ")]
    return {name for line in lines for name in OPAQUE_RULED_OUT if name in line}


def test_the_opaque_refs_variant_passes_conformant_and_names_what_did_not_apply(tmp_path: Path) -> None:
    library = build_reference("debug", variant="c-opaque-refs")
    status, report = _gate(tmp_path, library, "--level", "conformant")
    assert status == 0, _failing(report)
    assert _ruled_out(report) == set(OPAQUE_RULED_OUT)
    # Strict holds it to the seed: only the capability itself may fail there (the layout checks
    # were not run, and are named).
    status, report = _gate(tmp_path, library)
    assert all(c["kind"] == "describe" and c["name"] == "seed.opaque-refs" for c in _failing(report))
    assert _ruled_out(report) == set(OPAQUE_RULED_OUT)


def test_a_library_whose_refs_are_addresses_may_declare_opaque_refs(tmp_path: Path) -> None:
    library = build_reference("release", defines={"XR_CAPABILITIES": "XR_CAP_OPAQUE_REFS"})
    status, report = _gate(tmp_path, library, "--level", "conformant")
    assert status == 0, _failing(report)
    assert _ruled_out(report) == set(OPAQUE_RULED_OUT)


def test_the_opaque_free_early_bug_is_caught_with_a_replayable_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library = build_reference("debug", bug="c-opaque-free-early")
    trace = _search_fails_and_replays(tmp_path, library, "refs.distinct", capsys)
    saved = json.loads(trace.read_text())
    assert saved["config"]["capabilities"] == ["opaque-refs"] and len(saved["steps"]) <= 8
    correct = build_reference("debug", variant="c-opaque-refs")
    assert main(["replay", str(trace), "--impl", str(correct)]) == 0


def test_a_wild_write_outside_the_steps_refs_fails_the_default_gate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`c-wild-write-footer` writes the count of a ref the failing step does not otherwise touch;
    the gate (its default checks, strict) fails the search with a shrunk trace that replays."""
    library = build_reference("debug", bug="c-wild-write-footer")
    trace = _search_fails_and_replays(tmp_path, library, "layout.ref-count-offset", capsys)
    assert 1 <= len(json.loads(trace.read_text())["steps"]) <= 6


def _search_fails_and_replays(
    tmp_path: Path, library: Path, check: str, capsys: pytest.CaptureFixture[str]
) -> Path:
    """The default gate fails `library`'s search on `check`, and its saved trace, replayed on the
    library, fails on `check` again; the trace's path."""
    status, report = _gate(tmp_path, library)
    assert status == 1
    (search,) = [c for c in report["cases"] if c["kind"] == "search"]
    assert search["status"] == "fail" and check in search["detail"], search
    trace = Path(search["trace"])
    capsys.readouterr()
    assert main(["replay", str(trace), "--impl", str(library)]) == 1
    assert f"[{check}]" in capsys.readouterr().out
    return trace
