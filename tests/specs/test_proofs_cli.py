"""`externref-harness prove` and the `proofs` check: exit 0 when proven, 1 on a counterexample,
2 on bad input (one line, no traceback)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from externref_harness.cli.main import main


def test_prove_proves_everything_and_says_how_long(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prove", "--bounds", "3,3,3,3"]) == 0
    out = capsys.readouterr().out
    for name in (
        "layout.valid",
        "offsets.ref_count",
        "sweep.bounded.A (debug)",
        "sweep.unbounded.D (release)",
    ):
        assert name in out
    assert "not proven:" not in out
    assert "Times: layout" in out and "sweep.bounded (debug)" in out
    assert "properties proven" in out


@pytest.mark.slow
def test_prove_with_a_seeded_bug_exits_1_and_replays_the_counterexample(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    args = ["prove", "--bounds", "4,3,3,3", "--mutant", "cve-2022-31146", "--build", "debug"]
    assert main([*args, "--traces", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "not proven: sweep.bounded.A (debug): counterexample: frames" in out and "FREED" in out
    assert "model: fails at step" in out and "implementation: fails at step" in out
    assert "without the seeded bug passes on both sides" in out
    assert (tmp_path / "proof-cve-2022-31146-debug.json").exists()


def test_prove_with_the_refcount_offset_bug_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prove", "--bounds", "2,2,2,2", "--mutant", "impl-refcount-offset"]) == 1
    out = capsys.readouterr().out
    assert "not proven: offsets.ref_count: counterexample:" in out and "the implementation has 16" in out


def test_a_bug_the_proofs_do_not_model_is_said_so(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prove", "--bounds", "2,2,2,2", "--mutant", "cve-2022-23636", "--build", "release"]) == 0
    assert "outside what the proofs model" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bounds", "4,4"], "F,S,R,C"),
        (["--bounds", "4,4,4,0"], "outside 1..8"),
        (["--bounds", "a,b,c,d"], "four ints"),
        (["--timeout", "0"], "--timeout"),
        (["--timeout", "soon"], "--timeout"),
        (["--mutant", "no-such-bug"], "unknown mutant"),
    ],
)
def test_bad_input_exits_2_with_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["prove", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_bad_build_is_refused_by_argparse_with_exit_2() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "externref_harness.cli", "prove", "--build", "fast"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr


@pytest.mark.slow
def test_the_proofs_check_passes_on_the_seed_and_fails_on_a_seeded_bug(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["check", "--only", "proofs", "--build", "release"]) == 0
    assert main(["check", "--only", "proofs", "--mutant", "proof-drop-roots-in-table-assumption"]) == 1
    assert "sweep.bounded.A (debug): counterexample" in capsys.readouterr().out


@pytest.mark.slow
def test_a_counterexample_no_trace_can_build_is_said_so(capsys: pytest.CaptureFixture[str]) -> None:
    """A Wasm-to-Wasm call needs four frames with a host frame at each end."""
    args = ["prove", "--bounds", "3,3,3,3", "--mutant", "cve-2022-24791", "--build", "debug"]
    assert main(args) == 1
    assert "no trace for A (debug)" in capsys.readouterr().out
