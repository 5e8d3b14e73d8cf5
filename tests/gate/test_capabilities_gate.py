"""The gate and declared capabilities: each C variant of one capability passes the conformant gate
and fails strict only on its `seed.<capability>` case (expectable); the seeded bugs only a
capability reveals are caught by the default gate with a shrunk trace that replays; a library
declaring a capability it does not keep is caught; an unknown capability is refused (exit 2); a
single-threaded library's parallel check is a skipped case that says why; and the reports list
the capabilities and what each left out."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
from one_line import assert_one_line_exit_2

from externref_harness.cli.main import main
from externref_harness.model import capabilities
from externref_harness.native.build import C_BUGS, build_reference

FAST = ["--max-examples", "40", "--no-threads"]
#: Each variant of one capability and the capability it declares.
VARIANTS = {
    "c-eager-chunk": "eager-chunk",
    "c-no-gc-free-insert": "no-gc-free-insert",
    "c-guard-canary": "canary-guard",
    "c-single-threaded": "single-threaded",
    "c-no-raw": "no-raw",
    "c-capacity-slots": "capacity-slots",
    "c-no-strong-count": "no-strong-count",
    "c-own-registry": "own-registry",
    "c-opaque-refs": "opaque-refs",
}


def _gate(tmp_path: Path, library: Path, *extra: str, fast: list[str] = FAST) -> tuple[int, dict[str, Any]]:
    report = tmp_path / "gate.json"
    args = ["gate", str(library), *fast, "--json", str(report), "--failures", str(tmp_path / "f"), *extra]
    status = main(args)
    return status, json.loads(report.read_text())


def _failing(report: dict[str, Any]) -> list[str]:
    return [c["name"] for c in report["cases"] if c["status"] == "fail"]


@pytest.mark.slow
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_passes_conformant_and_fails_strict_only_on_its_seed_case(
    variant: str, tmp_path: Path
) -> None:
    capability = VARIANTS[variant]
    library = build_reference("debug", variant=variant)
    status, report = _gate(tmp_path, library)
    assert status == 1 and _failing(report) == [f"seed.{capability}"], _failing(report)
    assert report["implementation"]["capabilities"] == [capability]
    (case,) = [c for c in report["cases"] if c["name"] == f"seed.{capability}"]
    assert len(case["detail"].splitlines()) == 1 and case["detail"].startswith(f"[seed.{capability}]")
    status, report = _gate(tmp_path, library, "--level", "conformant")
    assert status == 0, _failing(report)
    (case,) = [c for c in report["cases"] if c["name"] == f"seed.{capability}"]
    assert case["status"] == "pass"
    # What the capability left out is said (own-registry leaves nothing out: every check runs).
    said = (f"capability {capability}: ", f"ruled out by {capability}: ")
    left_out = any(line.startswith(said) for line in report["not_checked"])
    assert left_out == (capability != "own-registry")


def test_a_declared_capability_is_expectable_at_the_strict_level(tmp_path: Path) -> None:
    expect = tmp_path / "expectations.toml"
    expect.write_text('[divergences."seed.canary-guard"]\nreason = "the canary is a scope"\n')
    junit = tmp_path / "gate.xml"
    library = build_reference("debug", variant="c-guard-canary")
    status, report = _gate(tmp_path, library, "--expect", str(expect), "--junit", str(junit))
    assert status == 0, _failing(report)
    (case,) = [c for c in report["cases"] if c["name"] == "seed.canary-guard"]
    assert case["status"] == "expected-fail"
    assert case["expected"] == {"seed.canary-guard": "the canary is a scope"}
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite is not None
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["capabilities"] == "canary-guard"
    assert "capability canary-guard: StackCanary is not generated" in (props["not_checked"] or "")
    # A corpus trace that reads the canary runs here without that step, and its case says so.
    assert any("left out: step 5 (StackCanary())" in c["detail"]
               for c in report["cases"] if c["name"] == "debug/path-gc-canary-found")  # fmt: skip


def test_single_threaded_skips_the_parallel_check_and_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library = build_reference("release", variant="c-single-threaded")
    status, report = _gate(tmp_path, library, "--level", "conformant", fast=["--max-examples", "20"])
    assert status == 0, _failing(report)
    (threads,) = [c for c in report["cases"] if c["kind"] == "threads"]
    assert threads["status"] == "skip" and "declares single-threaded" in threads["detail"]
    assert any("the parallel check did not run (counts are not atomic)" in n for n in report["not_checked"])
    out = capsys.readouterr().out
    assert "capabilities: single-threaded" in out and "not checked: capability single-threaded" in out


@pytest.mark.slow
@pytest.mark.parametrize("bug", ["c-eager-chunk-off-by-one", "c-guard-canary-not-cleared"])
@pytest.mark.parametrize("level", ["strict", "conformant"])
def test_a_capability_s_seeded_bug_is_caught_with_a_shrunk_trace_that_replays(
    bug: str, level: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bug builds with its variant (`CBug.variant`); the search fails with a short saved trace
    whose replay on the library fails again (conformant: the behavioural checks alone catch it)."""
    assert C_BUGS[bug].variant is not None
    library = build_reference("debug", bug=bug)
    status, report = _gate(tmp_path, library, "--level", level)
    assert status == 1
    (search,) = [c for c in report["cases"] if c["kind"] == "search"]
    assert search["status"] == "fail", search
    steps = json.loads(Path(search["trace"]).read_text())["steps"]
    assert 1 <= len(steps) <= 10
    capsys.readouterr()
    assert main(["replay", search["trace"], "--impl", str(library)]) == 1


@pytest.mark.parametrize(
    "declared,bits",
    [("eager-chunk", "0x2"), ("capacity-slots", "0x40")],
    ids=["eager-chunk-allocated-lazily", "capacity-slots-answered-in-bytes"],
)
def test_a_library_that_declares_a_capability_it_does_not_keep_is_caught(
    declared: str, bits: str, tmp_path: Path
) -> None:
    """The seed-shaped build declaring a choice it does not make: the model applies the declared
    rule, and the behavioural checks (conformant) see the library break it."""
    library = build_reference("debug", defines={"XR_CAPABILITIES": bits})
    status, report = _gate(tmp_path, library, "--level", "conformant")
    assert status == 1 and report["implementation"]["capabilities"] == [declared]
    (search,) = [c for c in report["cases"] if c["kind"] == "search"]
    assert search["status"] == "fail" and "[observed.result]" in search["detail"]


def test_an_unknown_capability_is_refused_by_gate_and_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    library = str(build_reference("debug", defines={"XR_CAPABILITIES": "0x200"}))
    expected = "declares an unknown capability bit(s) 9 (0x200)"
    assert_one_line_exit_2(["gate", library, "--failures", str(tmp_path / "f")], capsys, expected)
    assert_one_line_exit_2(["check", "--impl", library, "--failures", str(tmp_path / "f")], capsys, expected)


@pytest.mark.slow
def test_c_family_every_capability_at_once_passes_conformant_and_fails_strict_only_on_seed_cases(
    tmp_path: Path,
) -> None:
    library = build_reference("debug", variant="c-family")
    status, report = _gate(tmp_path, library)
    declared = report["implementation"]["capabilities"]
    assert declared == list(capabilities.NAMES)
    assert status == 1 and sorted(_failing(report)) == sorted(f"seed.{name}" for name in declared)
    status, report = _gate(tmp_path, library, "--level", "conformant")
    assert status == 0, _failing(report)
    # What each capability left out is said, except own-registry's: it leaves nothing out (the
    # runtime looks pcs up itself, and every check still runs).
    for name in declared:
        said = (f"capability {name}: ", f"ruled out by {name}: ")
        left_out = any(line.startswith(said) for line in report["not_checked"])
        assert left_out == (name != "own-registry"), name
