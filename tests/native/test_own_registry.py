"""`own-registry` with the C reference: the variant keeps its own code registry and passes, each of
the three registry bugs is caught (and how), and a library that declares the capability but
ignores what it is given is caught too."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import settings

from externref_harness.cli.main import main
from externref_harness.lockstep.check import run_lockstep_check
from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG, LockstepOptions
from externref_harness.lockstep.targets import bounds_for, native_target
from externref_harness.native.build import C_BUGS, build_reference, reference_flags
from externref_harness.search.model_check import CheckOutcome

CI = settings.get_profile("ci")
REGISTRY_BUGS = sorted(name for name, bug in C_BUGS.items() if bug.variant == "c-own-registry")


def _lockstep(path: Path, examples: int) -> CheckOutcome:
    target = native_target(path)
    cfg = target.config(LOCKSTEP_CONFIG, None, 2)
    assert cfg.has("own-registry")
    return run_lockstep_check(
        cfg,
        bounds_for(cfg, LOCKSTEP_BOUNDS),
        settings(CI, max_examples=examples),
        None,
        target.adapter_factory,
        LockstepOptions(impl_name=target.name, replay_args=f"--impl {path}"),
    )


@pytest.mark.parametrize("build", ["debug", "release"])
def test_the_own_registry_variant_passes_the_lockstep(build: str) -> None:
    out = _lockstep(build_reference(build, variant="c-own-registry"), 150)
    assert out.passed, out.failure


def test_the_registry_bugs_are_changes_of_the_variant() -> None:
    assert REGISTRY_BUGS == [
        "c-registry-first-pc-panics",
        "c-registry-nearest-safepoint",
        "c-registry-previous-function",
    ]
    flags = reference_flags("debug", bug="c-registry-nearest-safepoint")
    assert "-DXR_VARIANT_OWN_REGISTRY" in flags and "-DXR_BUG_REGISTRY_NEAREST_SAFEPOINT" in flags
    # Asked for with another variant, the bug's own is built in too (c-family holds every one).
    both = reference_flags("debug", bug="c-registry-first-pc-panics", variant="c-family")
    assert "-DXR_VARIANT_OWN_REGISTRY" in both and "-DXR_VARIANT_OPAQUE_REFS" in both


#: What each bug does when a frame is read with the map it finds (debug builds): a non-ref word
#: taken for a ref fails the seed's activations-table assertion; the unchecked index panics.
HOW = {
    "c-registry-nearest-safepoint": "should have an entry in the VMExternRefActivationsTable",
    "c-registry-previous-function": "should have an entry in the VMExternRefActivationsTable",
    "c-registry-first-pc-panics": "index out of bounds: the len is",
}


@pytest.mark.parametrize("bug", REGISTRY_BUGS)
def test_each_registry_bug_is_caught_by_what_it_reads(bug: str) -> None:
    out = _lockstep(build_reference("debug", bug=bug), 300)
    assert not out.passed, f"{bug} was not caught"
    assert out.failure is not None and HOW[bug] in out.failure
    assert "[observed.result] model ('ok', None), impl ('panic',)" in out.failure


def test_a_library_that_declares_own_registry_and_ignores_the_registration_is_caught() -> None:
    """It takes the modules and keeps none: every pc is host code to its gc, so refs only Wasm
    frames hold are swept and freed under them."""
    path = build_reference(
        "debug", variant="c-own-registry", defines={"XR_OWN_REGISTRY_IGNORED": "1"}
    )
    out = _lockstep(path, 300)
    assert not out.passed
    assert out.failure is not None
    # It fails at a GC where the model roots a ref from a Wasm frame's stack map; the library saw
    # no Wasm frame, so the ref is not counted as a root (its count is low, it is dropped or freed).
    assert "paths=['gc:wasm-frame', 'gc:stack-map-root'" in out.failure
    assert any(
        check in out.failure
        for check in ("[observed.dropped]", "[refs.reachable-freed]", "[layout.ref-count-offset]")
    )


@pytest.mark.slow
def test_the_own_registry_variant_passes_the_conformant_gate(tmp_path: Path) -> None:
    library = build_reference("debug", variant="c-own-registry")
    report_path = tmp_path / "gate.json"
    status = main(["gate", str(library), "--level", "conformant", "--json", str(report_path)])
    report = json.loads(report_path.read_text())
    assert status == 0, [c for c in report["cases"] if c["status"] == "fail"]
