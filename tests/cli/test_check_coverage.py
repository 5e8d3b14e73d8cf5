"""`check` fails when a machine passes without reaching every required path, naming the paths."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import settings

from externref_harness.checks.plan import CHECKS, CheckOptions
from externref_harness.cli.main import main
from externref_harness.search.model_check import REQUIRED_EVENTS

ONE_EXAMPLE = settings(settings.get_profile("ci"), max_examples=1, stateful_step_count=5)


@pytest.mark.parametrize("name", ["model", "lockstep"])
def test_a_run_that_misses_required_paths_fails_and_names_them(name: str, tmp_path: Path) -> None:
    check = next(c for c in CHECKS if c.name == name)
    result = check.run(CheckOptions(ONE_EXAMPLE, failures=tmp_path))
    assert not result.passed
    assert result.failure is not None and "required paths never reached in 1 example " in result.failure
    missing = [e for e in REQUIRED_EVENTS if e in result.failure]
    assert "gc:stack-map-root" in missing
    assert result.figures["paths"] == f"{len(REQUIRED_EVENTS) - len(missing)}/{len(REQUIRED_EVENTS)}"
    assert not list(tmp_path.iterdir()), "no trace: nothing failed but the coverage"


def test_check_exits_1_on_missing_coverage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        ["check", "--only", "model", "--hypothesis-profile", "ci", "--max-examples", "1",
         "--failures", str(tmp_path)]
    )  # fmt: skip
    shown = capsys.readouterr().out
    assert status == 1, shown
    assert "required paths never reached" in shown and "gc:stack-map-root" in shown
