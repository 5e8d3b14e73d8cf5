"""The seed's own assertions: misuse the host refuses is sent to the implementation too, in debug
builds (`model.assertions`), and judged at both levels.

Two seeded C bugs each omit one assertion: `c-gc-okay-unchecked` (gc runs while `gc_okay` is
false, as the release build would: only strict fails it) and `c-no-wasm-frame-assert` (gc with the
canary cleared sweeps refs Wasm frames hold: strict and conformant fail it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from externref_harness.isolation.pool import ChildPool
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, Driven, LockstepOptions, drive
from externref_harness.lockstep.targets import PYTHON, native_target
from externref_harness.model import ops
from externref_harness.model.observation import Misuse
from externref_harness.native.build import build_reference

STRICT = LockstepOptions()
CONFORMANT = LockstepOptions(levels=frozenset({"conformant"}))

#: A ref moved into Wasm (the table holds its only count), a host frame called from Wasm; then the
#: canary cleared (refused; probed: gc with no canary and a Wasm frame), a GC while `gc_okay` is
#: false (refused; probed), and the ref read back: a sweep would have freed it.
CANARY_CLEARED = [ops.New(8, 8), ops.CallWasm((0,)), ops.WasmCallHost((), 0), ops.SetStackCanary(None)]
GC_NOT_OKAY = [ops.New(8, 8), ops.InsertWithoutGc(0), ops.SetGcOkay(False), ops.Gc(), ops.SetGcOkay(True)]
AFTER = [ops.ReturnToWasm(None), ops.WasmMove(0, 1), ops.WasmCallHost((1,), 2)]


def _drive(library: Path | None, steps: list[ops.Op], options: LockstepOptions) -> Driven:
    target = PYTHON if library is None else native_target(library)
    cfg = target.config(LOCKSTEP_CONFIG, None, None)
    return drive(cfg, steps, target.adapter_factory(), until_first=True, options=options)


@pytest.mark.parametrize("library", ["python", "c-debug"])
@pytest.mark.parametrize("steps", [CANARY_CLEARED + AFTER, GC_NOT_OKAY], ids=["no-canary", "gc-not-okay"])
def test_a_seed_exact_implementation_panics_where_the_seed_does_and_goes_on(
    library: str, steps: list[ops.Op]
) -> None:
    """The misuse is refused (the model says `Misuse`), the implementation's assertion fires,
    and the run goes on to the teardown with nothing changed (every later step compared)."""
    path = None if library == "python" else build_reference("debug")
    driven = _drive(path, steps, STRICT)
    assert driven.first is None, driven.first
    refused = [obs for obs in driven.observations if isinstance(obs.result, Misuse)]
    assert len(refused) == 1
    assert len(driven.steps) > len(steps)  # the teardown ran after the probe


def test_a_release_build_is_not_probed() -> None:
    """Release builds have no assertion to fire: the misuse is only refused."""
    driven = _drive(build_reference("release", bug="c-gc-okay-unchecked"), GC_NOT_OKAY, STRICT)
    assert driven.first is None, driven.first


def test_an_omitted_gc_okay_assertion_fails_strict_and_passes_conformant() -> None:
    bug = build_reference("debug", bug="c-gc-okay-unchecked")
    strict = _drive(bug, GC_NOT_OKAY, STRICT).first
    assert strict is not None and strict.step == 4 and strict.side == "implementation"
    fired = "[assert.fires] the seed panics here (gc: assert!(externref_activations_table.gc_okay)"
    assert fired in strict.problem
    assert "the implementation returned" in strict.problem
    # It did what the release build does (swept the table's only ref): nothing is lost or corrupted.
    assert _drive(bug, GC_NOT_OKAY, CONFORMANT).first is None


def test_an_omitted_no_canary_assertion_fails_both_levels_in_the_gates_child() -> None:
    """Run as the gate runs it: the library in a child process."""
    bug = build_reference("debug", bug="c-no-wasm-frame-assert")
    target = native_target(bug)
    cfg = target.config(LOCKSTEP_CONFIG, None, None)
    pool = ChildPool(bug)
    try:
        steps = CANARY_CLEARED + AFTER
        strict = drive(cfg, steps, pool.adapter(fresh=True), until_first=True, options=STRICT)
        conformant = drive(cfg, steps, pool.adapter(fresh=True), until_first=True, options=CONFORMANT)
    finally:
        pool.close()
    assert strict.first is not None and strict.first.step == 4
    assert "[assert.fires] the seed panics here (gc with no canary" in strict.first.problem
    assert conformant.first is not None and conformant.first.step == 4
    problem = conformant.first.problem
    assert "[assert.fires]" not in problem
    assert "[assert.state-kept] it went on as the seed's release build does, which breaks I1" in problem
    assert "[refs.reachable-freed] ref 0" in problem
