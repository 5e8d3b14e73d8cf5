"""The C reference implementation, built with the system compiler, in lockstep with the model.

It passes every check in both builds, at a small chunk and at the seed's 512 slots (with every
required path reached there too); each seeded C bug that shows in one process is caught with a
shrunk trace that `replay --impl` reproduces; bad libraries are refused in one line with exit 2.
(The bugs that crash or hang the process, and the threads-only ones, are the gate's and the
parallel check's: see tests/gate/test_gate.py and tests/parallel/test_threads.py.) The
`c-opaque-refs` variant's refs are handles, and it passes too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import settings
from one_line import assert_one_line_exit_2

from externref_harness.cli.main import main
from externref_harness.impl.interface import plain_config, plain_op
from externref_harness.lockstep.check import run_lockstep_check
from externref_harness.lockstep.runner import (
    LOCKSTEP_BOUNDS,
    LOCKSTEP_CONFIG,
    LockstepOptions,
    _panic_note,
    drive,
)
from externref_harness.lockstep.targets import bounds_for, native_target
from externref_harness.model import ops
from externref_harness.model.capabilities import OPAQUE_REFS
from externref_harness.model.observation import FREED_RAW, Misuse
from externref_harness.native.build import C_BUGS, build_reference
from externref_harness.search.model_check import REQUIRED_EVENTS, CheckOutcome

CI = settings.get_profile("ci")
#: The bugs a lockstep run in this process catches (the rest crash, hang, or need threads).
IN_PROCESS_BUGS = sorted(name for name, bug in C_BUGS.items() if not bug.needs & {"crash", "hang", "threads"})


def _lockstep(path: Path, chunk: int | None, examples: int, save_as: Path | None = None) -> CheckOutcome:
    target = native_target(path)
    cfg = target.config(LOCKSTEP_CONFIG, None, chunk)
    return run_lockstep_check(
        cfg,
        bounds_for(cfg, LOCKSTEP_BOUNDS),
        settings(CI, max_examples=examples),
        save_as,
        target.adapter_factory,
        LockstepOptions(impl_name=target.name, replay_args=f"--impl {path}"),
    )


@pytest.mark.parametrize("build", ["debug", "release"])
@pytest.mark.parametrize("chunk", [2, pytest.param(512, marks=pytest.mark.slow)])
def test_the_c_reference_passes_every_check_and_reaches_every_path(build: str, chunk: int) -> None:
    out = _lockstep(build_reference(build), chunk, 150 if chunk == 2 else 300)
    assert out.passed, out.failure
    missing = [e for e in REQUIRED_EVENTS if not out.stats.events[e]]
    assert not missing, f"paths not reached at chunk {chunk}: {missing}"


def test_a_fixed_chunk_library_runs_at_its_own_size(tmp_path: Path) -> None:
    path = build_reference("debug", no_optional=True)
    target = native_target(path)
    assert target.config(LOCKSTEP_CONFIG, None, None).chunk_size == 512
    out = _lockstep(path, None, 60)
    assert out.passed, out.failure


@pytest.mark.parametrize("bug", IN_PROCESS_BUGS)
def test_every_seeded_c_bug_is_caught_and_replays(
    bug: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = build_reference("debug", bug=bug)
    saved = tmp_path / "failure.json"
    out = _lockstep(path, 512 if "chunk-512" in C_BUGS[bug].needs else 2, 300, saved)
    assert not out.passed, f"{bug} was not caught"
    assert out.failure is not None and f"replay {saved} --impl {path}" in out.failure
    steps = json.loads(saved.read_text())["steps"]
    assert len(steps) <= 12, f"{bug}: the trace shrank only to {len(steps)} steps"
    capsys.readouterr()
    assert main(["replay", str(saved), "--impl", str(path)]) == 1
    assert "implementation: fails at" in capsys.readouterr().out
    # The same trace on the correct library (the variant the bug is a change of) passes: the
    # failure is the bug's.
    correct = build_reference("debug", variant=C_BUGS[bug].variant)
    assert main(["replay", str(saved), "--impl", str(correct)]) == 0


def test_the_chunk_512_bug_hides_at_a_small_chunk() -> None:
    """`c-chunk-index-u8` only misbehaves past 255 filled slots: a small chunk never shows it."""
    assert _lockstep(build_reference("debug", bug="c-chunk-index-u8"), 2, 100).passed
    assert not _lockstep(build_reference("debug", bug="c-chunk-index-u8"), 512, 300).passed


def test_check_impl_from_the_command_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    path = build_reference("release")
    # The deterministic profile: a random 20 examples may miss a required path (check fails then).
    args = ["check", "--impl", str(path), "--hypothesis-profile", "ci", "--max-examples", "20"]
    args += ["--failures", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "externref-c-reference" in out and "pass" in out
    bad = build_reference("release", bug="c-early-free")
    assert main(["check", "--impl", str(bad), "--max-examples", "20", "--failures", str(tmp_path)]) == 1


def test_bad_libraries_and_requests_are_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = tmp_path / "lib.so"
    text.write_text("not a library")
    fixed = build_reference("debug", no_optional=True)
    assert_one_line_exit_2(["check", "--impl", str(tmp_path / "missing.so")], capsys, "no such file")
    assert_one_line_exit_2(["check", "--impl", str(text)], capsys, "not a loadable shared library")
    old = build_reference("debug", defines={"XR_REPORT_ABI_VERSION": "3"})
    assert_one_line_exit_2(["check", "--impl", str(old)], capsys, "ABI version 3")
    assert_one_line_exit_2(["check", "--impl", str(fixed), "--chunk-size", "4"], capsys, "fixed chunk of 512")
    assert_one_line_exit_2(["check", "--impl", str(fixed), "--build", "release"], capsys, "is a debug build")
    assert_one_line_exit_2(
        ["check", "--impl", str(fixed), "--only", "model"], capsys, "checks the harness itself"
    )
    mutant = ["check", "--impl", str(fixed), "--mutant", "impl-early-free"]
    assert_one_line_exit_2(mutant, capsys, "bug of the Python port")


def test_the_search_makes_only_the_value_layouts_a_library_makes() -> None:
    """`max_value_size` / `max_value_align` limit the layouts the search draws, and a library that
    lists its layouts (`xr_value_layouts`) gets exactly those: the C reference built to make only
    such values panics on any other, so a search that drew one would fail."""
    limits = {"XR_MAX_VALUE_SIZE": "16", "XR_MAX_VALUE_ALIGN": "8"}
    small = native_target(build_reference("debug", defines=limits))
    cfg = small.config(LOCKSTEP_CONFIG, None, None)
    assert bounds_for(cfg, LOCKSTEP_BOUNDS, small.description).layouts == ((8, 8), (16, 8), (0, 1), (1, 1))
    listed = build_reference("debug", defines={"XR_VALUE_LAYOUTS": "{16,8},{32,16}"})
    target = native_target(listed)
    assert target.description is not None and target.description.value_layouts == ((16, 8), (32, 16))
    assert bounds_for(cfg, LOCKSTEP_BOUNDS, target.description).layouts == ((16, 8), (32, 16))
    out = run_lockstep_check(
        cfg,
        bounds_for(cfg, LOCKSTEP_BOUNDS, target.description),
        settings(CI, max_examples=30),
        None,
        target.adapter_factory,
        LockstepOptions(impl_name=target.name),
    )
    assert out.passed, out.failure
    # Without the list the search draws layouts the library does not make: it fails.
    out = run_lockstep_check(
        cfg, bounds_for(cfg, LOCKSTEP_BOUNDS), settings(CI, max_examples=30), None, target.adapter_factory
    )
    assert not out.passed and out.failure is not None and "no value type of size" in out.failure


def test_a_panic_message_is_shown_escaped_and_cut() -> None:
    """`xr_panic_message` is the implementation's text: escaped (no terminal control) and bounded."""
    note = _panic_note(("panic", "\x1b[2J" + "x" * 5000))
    assert note.startswith("; the implementation panicked: \\x1b[2J") and note.endswith("...")
    assert len(note) < 400
    assert _panic_note(("ok", None)) == ""


# --- opaque-refs ------------------------------------------------------------------------------------


def test_the_opaque_refs_variant_hands_out_handles_and_passes_every_check() -> None:
    path = build_reference("debug", variant="c-opaque-refs")
    target = native_target(path)
    assert target.description is not None and target.description.capabilities == (OPAQUE_REFS,)
    cfg = target.config(LOCKSTEP_CONFIG, None, None)
    impl = target.adapter_factory()
    impl.start(plain_config(cfg))
    try:
        words = [impl.step(plain_op(ops.New(8, 8))).allocated[0][0] for _ in range(3)]
    finally:
        impl.close()
    assert words == [1, 2, 3], "refs are index + 1, not addresses"
    out = _lockstep(path, 2, 150)
    assert out.passed, out.failure
    missing = [e for e in REQUIRED_EVENTS if not out.stats.events[e]]
    assert not missing, missing


def test_a_raw_pointer_of_a_freed_ref_stays_refused_when_its_handle_is_given_out_again() -> None:
    """`as_raw`, the ref freed, a New that takes its handle: `clone_from_raw` of the old raw pointer
    is still misuse (the host refuses it, as the model does), and nothing else diverges."""
    path = build_reference("debug", variant="c-opaque-refs")
    target = native_target(path)
    cfg = target.config(LOCKSTEP_CONFIG, None, None)
    steps = [ops.New(8, 8), ops.AsRaw(0), ops.Drop(0), ops.New(8, 8), ops.CloneFromRaw(0)]
    driven = drive(cfg, steps, target.adapter_factory(), until_first=False)
    assert driven.first is None, driven.first
    refused = driven.observations[len(steps) - 1].result  # the teardown's steps follow
    assert isinstance(refused, Misuse) and refused.kind == FREED_RAW
    # The scenario is real: the second New was given the first ref's handle.
    impl = target.adapter_factory()
    impl.start(plain_config(cfg))
    try:
        first = impl.step(plain_op(steps[0])).allocated[0][0]
        for op in steps[1:3]:
            impl.step(plain_op(op))
        assert impl.step(plain_op(steps[3])).allocated[0][0] == first
    finally:
        impl.close()


def test_a_wild_write_outside_the_steps_refs_is_caught_by_check_impl(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """`c-wild-write-footer` decrements, during gc, the count of a ref only the host holds: no
    operation of the failing step names it, so only a check of the whole heap sees the write. The
    default `check --impl` catches it and saves a shrunk trace that replays to the same failure."""
    bad = build_reference("debug", bug="c-wild-write-footer")
    args = ["check", "--impl", str(bad), "--hypothesis-profile", "ci", "--failures", str(tmp_path)]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "[layout.ref-count-offset]" in out
    (saved,) = tmp_path.glob("lockstep-*.json")
    steps = json.loads(saved.read_text())["steps"]
    assert len(steps) <= 6, f"the trace shrank only to {len(steps)} steps"
    assert any(s["op"] in ("Gc", "InsertWithGc", "CallWasm") for s in steps), steps
    assert main(["replay", str(saved), "--impl", str(bad)]) == 1
    assert "[layout.ref-count-offset]" in capsys.readouterr().out
    assert main(["replay", str(saved), "--impl", str(build_reference("debug"))]) == 0
