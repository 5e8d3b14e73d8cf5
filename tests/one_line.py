"""The shared assertion of bad-input tests: one line on stderr naming the problem, exit 2."""

from __future__ import annotations

import pytest

from externref_harness.cli.main import main


def assert_one_line_exit_2(args: list[str], capsys: pytest.CaptureFixture[str], expected: str) -> None:
    """`externref-harness ARGS` refuses with exit 2 and one stderr line that contains `expected`."""
    capsys.readouterr()
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
