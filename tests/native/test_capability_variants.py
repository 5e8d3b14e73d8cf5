"""The C reference's capability variants: each declares its one capability and exports exactly the
functions its capability set requires; the variant macros compose (the lead's `c-family` is their
union); a seeded bug that needs a variant is built with it; `reference --help` lists them; the
runtime's own choices (eager-chunk, capacity-slots) agree with the model in lockstep; and a trace
holding a step the library lacks is skipped (corpus) or refused in one line (replay)."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import pytest
from one_line import assert_one_line_exit_2

from externref_harness import trace as tracefile
from externref_harness.cli.main import main
from externref_harness.corpus.run import CorpusResult, cannot_run, load_corpus, run_config, run_corpus_trace
from externref_harness.lockstep.memory_checks import CONFORMANT
from externref_harness.lockstep.runner import LockstepOptions, drive
from externref_harness.lockstep.targets import Target, native_target
from externref_harness.model import capabilities, ops
from externref_harness.model.state import Config
from externref_harness.native import build, library

#: Each variant of one capability (the names `reference --help` lists) and what it declares.
VARIANTS = {
    "c-eager-chunk": capabilities.EAGER_CHUNK,
    "c-no-gc-free-insert": capabilities.NO_GC_FREE_INSERT,
    "c-guard-canary": capabilities.CANARY_GUARD,
    "c-single-threaded": capabilities.SINGLE_THREADED,
    "c-no-raw": capabilities.NO_RAW,
    "c-capacity-slots": capabilities.CAPACITY_SLOTS,
    "c-no-strong-count": capabilities.NO_STRONG_COUNT,
    "c-own-registry": capabilities.OWN_REGISTRY,
    "c-opaque-refs": capabilities.OPAQUE_REFS,
}
HEADER_FUNCTIONS = (
    set(library.REQUIRED)
    | {name for added in library.ADDED.values() for name in added}
    | {name for name in library.OPTIONAL if name != "xr_value_layouts"}
)


def _exports(path: Path) -> set[str]:
    cdll = ctypes.CDLL(str(path))
    return {name for name in HEADER_FUNCTIONS if hasattr(cdll, name)}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_declares_its_capability_and_exports_exactly_what_it_requires(variant: str) -> None:
    path = build.build_reference("debug", variant=variant)
    declared = library.load_library(path).description.capabilities
    assert declared == (VARIANTS[variant],)
    optional = {name for name in library.OPTIONAL if name != "xr_value_layouts"}
    assert _exports(path) == set(library.required_functions(declared)) | optional


def test_the_variant_macros_compose_into_one_library() -> None:
    macros = [m for name in VARIANTS for m in build.C_VARIANTS[name].macros]
    path = build.build_reference("debug", defines={m: "1" for m in macros})
    declared = library.load_library(path).description.capabilities
    assert declared == capabilities.canonical(VARIANTS.values())
    optional = {name for name in library.OPTIONAL if name != "xr_value_layouts"}
    assert _exports(path) == set(library.required_functions(declared)) | optional


def test_c_family_is_every_capability_at_once() -> None:
    path = build.build_reference("release", variant="c-family")
    declared = library.load_library(path).description.capabilities
    assert declared == capabilities.NAMES
    optional = {name for name in library.OPTIONAL if name != "xr_value_layouts"}
    assert _exports(path) == set(library.required_functions(declared)) | optional
    assert set(build.C_VARIANTS["c-family"].macros) == {
        m for name in VARIANTS for m in build.C_VARIANTS[name].macros
    }


def test_c_loose_declares_capacity_slots() -> None:
    loose = library.load_library(build.build_reference("debug", variant="c-loose")).description
    assert loose.capabilities == (capabilities.CAPACITY_SLOTS,)


def test_a_bug_that_needs_a_variant_is_built_with_it() -> None:
    for bug in ("c-eager-chunk-off-by-one", "c-guard-canary-not-cleared"):
        needed = build.C_BUGS[bug].variant
        assert needed is not None
        flags = build.reference_flags("debug", bug=bug)
        assert all(f"-D{m}" in flags for m in build.C_VARIANTS[needed].macros)
        declared = library.load_library(build.build_reference("debug", bug=bug)).description.capabilities
        assert declared == (VARIANTS[needed],)


def test_reference_help_lists_the_variants(capsys: pytest.CaptureFixture[str]) -> None:
    try:
        main(["reference", "--help"])
    except SystemExit:
        pass
    # argparse wraps a long list at hyphens ("c-own-" / "registry"): joined back here.
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    for name in (*VARIANTS, "c-family", "c-eager-chunk-off-by-one", "c-guard-canary-not-cleared"):
        assert name in text


#: Inserts before the first GC, capacity, and a GC: where eager-chunk and capacity-slots differ.
RUNTIME_TRACE = [
    ops.BumpCapacityRemaining(), ops.New(8, 8), ops.TryInsert(0), ops.New(8, 8), ops.InsertWithGc(1),
    ops.New(8, 8), ops.New(8, 8), ops.BumpCapacityRemaining(), ops.CallWasm((2, 3)), ops.WasmReturn(None),
    ops.Gc(), ops.BumpCapacityRemaining(),
]  # fmt: skip


@pytest.mark.parametrize(
    "variant,defines",
    [
        ("c-eager-chunk", {}),
        ("c-loose", {}),
        (None, {"XR_VARIANT_EAGER_CHUNK": "1", "XR_VARIANT_LOOSE": "1"}),
    ],
    ids=["eager-chunk", "capacity-slots", "both"],
)
def test_the_runtime_s_own_choices_agree_with_the_model_in_lockstep(
    variant: str | None, defines: dict[str, str]
) -> None:
    """At the conformant level: c-loose also sweeps in another order, a strict-level divergence."""
    target = native_target(build.build_reference("debug", variant=variant, defines=defines))
    cfg = target.config(Config(chunk_size=2, slots=3), None, 2)
    assert cfg.capabilities
    conformant = LockstepOptions(levels=frozenset({CONFORMANT}))
    driven = drive(cfg, RUNTIME_TRACE, target.adapter_factory(), until_first=True, options=conformant)
    assert driven.first is None, driven.first
    # The seed's model (no capabilities) against the same library disagrees (capacity in slots
    # undeclared is the strict level's `observed.bump-capacity-bytes`).
    seed = drive(Config(chunk_size=2, slots=3), RUNTIME_TRACE, target.adapter_factory(), until_first=True)
    assert seed.first is not None
    assert "[observed.result]" in seed.first.problem or "[observed.bump-capacity-bytes]" in seed.first.problem


def test_capacity_in_slots_undeclared_fails_the_conformant_level() -> None:
    """A design choice is declared, never tolerated: the same library without its capacity-slots
    bit fails `observed.bump-capacity-bytes` at the conformant level too."""
    undeclared = build.build_reference("debug", variant="c-capacity-slots", defines={"XR_CAPABILITIES": "0"})
    target = native_target(undeclared)
    cfg = target.config(Config(chunk_size=2, slots=3), None, 2)
    assert cfg.capabilities == ()
    conformant = LockstepOptions(levels=frozenset({CONFORMANT}))
    driven = drive(cfg, RUNTIME_TRACE, target.adapter_factory(), until_first=True, options=conformant)
    assert driven.first is not None and "[observed.bump-capacity-bytes]" in driven.first.problem
    assert "declares capacity-slots" in driven.first.problem
    declared = native_target(build.build_reference("debug", variant="c-capacity-slots"))
    cfg = declared.config(Config(chunk_size=2, slots=3), None, 2)
    driven = drive(cfg, RUNTIME_TRACE, declared.adapter_factory(), until_first=True, options=conformant)
    assert driven.first is None, driven.first


def test_a_corpus_trace_with_a_step_the_library_lacks_cannot_run_and_says_why() -> None:
    target = native_target(build.build_reference("debug", variant="c-no-gc-free-insert"))
    reasons = {t.id: cannot_run(target, t) for t in load_corpus(build="debug")}
    assert reasons["debug/path-gc-no-canary"] == (
        "step 2 (InsertWithoutGc(h=0)): InsertWithoutGc calls a function a no-gc-free-insert "
        "implementation lacks"
    )
    # An observer it lacks (here the canary's getter) is left out of the run instead.
    guard = native_target(build.build_reference("debug", variant="c-guard-canary"))
    assert cannot_run(guard, BY_ID["debug/path-gc-canary-found"]) is None


BY_ID = {t.id: t for t in load_corpus(build="debug")}


def _corpus_run(target: Target, trace_id: str) -> CorpusResult:
    trace = BY_ID[trace_id]
    cfg = run_config(target, trace)
    return run_corpus_trace(
        trace, target.adapter_factory(), chunk_size=cfg.chunk_size, capabilities=cfg.capabilities
    )


def test_observers_the_library_lacks_are_left_out_and_the_rest_of_the_trace_runs() -> None:
    """Under c-family 10 more debug corpus traces run (observers left out, each named), all pass;
    with a seeded bug they fail at the file's own step numbers, past the step left out."""
    family = native_target(build.build_reference("debug", variant="c-family"))
    runnable = [t.id for t in BY_ID.values() if cannot_run(family, t) is None]
    results = [_corpus_run(family, t) for t in runnable]
    assert all(r.passed for r in results), [r.summary() for r in results if not r.passed]
    left = [r for r in results if r.left_out]
    assert len(left) >= 10
    guard = native_target(build.build_reference("debug", variant="c-guard-canary"))
    assert _corpus_run(guard, "debug/path-gc-canary-found").left_out == ("step 5 (StackCanary())",)
    buggy = native_target(build.build_reference("debug", variant="c-family", bug="c-early-free"))
    failed = _corpus_run(buggy, "debug/chunk-512-gc-at-512")
    assert not failed.passed and failed.left_out == ("step 4 (StrongCount(h=0))",)
    assert failed.step == 7 and "fails at step 7" in failed.problem, failed.problem


def test_replay_of_a_step_the_library_lacks_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    saved = tmp_path / "trace.json"
    trace = tracefile.Trace(Config(), (ops.New(8, 8), ops.IntoRaw(0), ops.FromRaw(0), ops.Drop(0)))
    saved.write_text(json.dumps(trace.to_json()))
    no_raw = str(build.build_reference("debug", variant="c-no-raw"))
    assert_one_line_exit_2(
        ["replay", str(saved), "--impl", no_raw], capsys, "step 2 (IntoRaw(h=0)) cannot run: IntoRaw calls"
    )
    # The seed-shaped library replays it.
    assert main(["replay", str(saved), "--impl", str(build.build_reference("debug"))]) == 0


def test_the_no_canary_probe_under_canary_guard_leaves_and_enters_the_scope() -> None:
    """Clearing the canary while Wasm is live is refused and probed (`model.assertions`): under
    canary-guard the host leaves the scope, GCs (the library's debug assertion fires, as the seed's
    does) and enters it again, so later GCs still find the canary and nothing is lost."""
    target = native_target(build.build_reference("debug", variant="c-guard-canary"))
    cfg = target.config(Config(chunk_size=2, slots=3), None, 2)
    steps = [
        ops.New(8, 8), ops.CallWasm((0,)), ops.WasmCallHost((0,), 1), ops.SetStackCanary(None), ops.Gc(),
        ops.ReturnToWasm(None), ops.WasmReturn(None), ops.Gc(),
    ]  # fmt: skip
    driven = drive(cfg, steps, target.adapter_factory(), until_first=True)
    assert driven.first is None, driven.first
    assert driven.observations[3].result.kind == "bad-canary"  # type: ignore[union-attr]
