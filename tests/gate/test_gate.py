"""`externref-harness gate`: the C reference passes strict in every build, each seeded C bug is
rejected (the crash and the hang too, as saved, shrunk traces, by a gate that does not die), the
loose variant fails strict with its divergences named and passes conformant or with an
expectations file, bad input is one line and exit 2, and the reports and the pytest plugin say
the same."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from one_line import assert_one_line_exit_2

from externref_harness.cli.main import main
from externref_harness.native.build import C_BUGS, build_reference, sanitizer_supported

#: A small budget: the corpus carries most of the weight, the search adds random walks.
FAST = ["--max-examples", "40", "--no-threads"]
LOOSE_DIVERGENCES = ("seed.chunk-size", "observed.bump-capacity-bytes", "observed.drop-order")


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
    capsys.readouterr()
    # The saved trace replays to the same crash, in a child: the replaying process survives it.
    assert main(["replay", str(trace), "--impl", str(library)]) == 1
    assert expected.split(" 2 s")[0] in capsys.readouterr().out


@pytest.mark.slow
def test_the_loose_variant_fails_strict_and_passes_conformant(tmp_path: Path) -> None:
    loose = build_reference("debug", variant="c-loose")
    status, report = _gate(tmp_path, loose)
    assert status == 1
    named = " ".join(c["detail"] for c in _failing(report))
    assert "[seed.chunk-size]" in named and "[observed.bump-capacity-bytes]" in named
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
    assert {"seed.chunk-size", "observed.bump-capacity-bytes"} <= seen
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
    old = build_reference("debug", defines={"XR_REPORT_ABI_VERSION": "2"})
    assert_one_line_exit_2(["gate", str(old)], capsys, "ABI version 2")
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
    done = _pytest_with_plugin(tmp_path, build_reference("release"))
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout
    bad = _pytest_with_plugin(tmp_path, build_reference("release", bug="c-early-free"))
    assert bad.returncode == 1
    assert "externref_gate[" in bad.stdout and "FAILED" in bad.stdout
