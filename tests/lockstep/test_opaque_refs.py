"""`opaque-refs`: a ref word is a handle. The checks it rules out (one list, every footer layout
check on it, nothing else of the seed's), the identity rules judged by model id (eq, a stable
total order for cmp, stable hashes; the words' order only for the seed), `refs.distinct`, raw
pointers that outlive a ref whose handle is given out again, and a library whose refs are still
addresses, which may declare the capability and passes."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import settings

from externref_harness.impl import mutants
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import Probe, StepOutcome, TableFacts, plain_config, plain_op
from externref_harness.lockstep.check import run_lockstep_check
from externref_harness.lockstep.identity import IdentityChecks
from externref_harness.lockstep.memory_checks import (
    CHECKS,
    FOOTER_LAYOUT_CHECKS,
    checks_ruled_out,
    memory_problems,
    new_ref_problems,
)
from externref_harness.lockstep.projection import RefMap
from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG
from externref_harness.model import ops
from externref_harness.model.capabilities import NAMES, OPAQUE_REFS
from externref_harness.model.state import Box, Config, RawPtr, State
from externref_harness.model.transition import run
from externref_harness.vec import Vec

CFG = Config(chunk_size=2, slots=3, n_globals=2)
OPAQUE = replace(CFG, capabilities=(OPAQUE_REFS,))


# --- what is ruled out --------------------------------------------------------------------------


def test_the_seed_and_every_other_capability_rule_out_nothing_of_this_list() -> None:
    assert checks_ruled_out(()) == ()
    for name in NAMES:
        if name != OPAQUE_REFS:
            assert not {r.check for r in checks_ruled_out((name,))} & set(FOOTER_LAYOUT_CHECKS), name


def test_opaque_refs_rules_out_every_footer_layout_check_and_the_words_order_only() -> None:
    ruled = checks_ruled_out((OPAQUE_REFS,))
    names = {r.check for r in ruled}
    assert names == {*FOOTER_LAYOUT_CHECKS, "observed.cmp-order"}
    # Every check that reads at a footer is on the list; each has a reason and is a known check.
    assert {name for name in CHECKS if name.startswith("layout.")} == set(FOOTER_LAYOUT_CHECKS)
    assert all(r.check in CHECKS and r.capability == OPAQUE_REFS and r.reason for r in ruled)
    # The behavioural checks all still apply.
    kept: tuple[str, ...] = ("refs.distinct", "refs.reachable-freed", "refs.liveness", "observed.identity")
    kept += ("observed.dropped", "heap.leak", "host.raws", "stack.slots", "table.chunk-slots")
    for kept_check in kept:
        assert kept_check not in names


@pytest.mark.parametrize("cfg,reported", [(CFG, True), (OPAQUE, False)])
def test_a_misplaced_footer_fails_the_layout_checks_unless_refs_are_opaque(
    cfg: Config, reported: bool
) -> None:
    """No weakening: without the capability a misplaced footer is still a `layout.*` failure."""
    cfg = replace(cfg, mutant=mutants.FOOTER_VALUE_ALIGNED)
    impl = InProcessImpl()
    impl.start(plain_config(cfg))
    try:
        outcome = impl.step(plain_op(ops.New(1, 1)))
        refs = RefMap()
        for word, value in outcome.allocated:
            refs.add(word, value)
        state = run(cfg, [ops.New(1, 1)])[-1][0]
        layout = {p.check for p in memory_problems(cfg, state, impl.probe(), refs)} & set(
            FOOTER_LAYOUT_CHECKS
        )
        assert bool(layout) == reported, layout
    finally:
        impl.close()


# --- identity -----------------------------------------------------------------------------------


def _probe(handles: tuple[int | None, ...], hashes: tuple[tuple[int, int], ...] = ()) -> Probe:
    return Probe(0, None, TableFacts(0, 0, 0, 0, b""), Vec(), Vec.of(handles), hashes, (), (), ())


def _outcome(value: Any) -> StepOutcome:
    return StepOutcome(("ok", value), (), (), ())


def _refs(*words: int) -> RefMap:
    refs = RefMap()
    for i, w in enumerate(words):
        refs.add(w, 0x10_0000 + 0x100 * i)
    return refs


def _checks(checks: IdentityChecks, op: ops.Op, got: Any, handles: tuple[int, ...], refs: RefMap,
            hashes: tuple[tuple[int, int], ...] = ()) -> list[str]:  # fmt: skip
    return [
        f"[{p.check}] {p.text}" for p in checks.problems(op, _outcome(got), _probe(handles, hashes), refs)
    ]


def test_the_seed_s_cmp_is_the_words_order() -> None:
    refs, checks = _refs(0x1000, 0x2000), IdentityChecks(opaque=False)
    assert _checks(checks, ops.Cmp(0, 1), -1, (0x1000, 0x2000), refs) == []
    (problem,) = _checks(checks, ops.Cmp(0, 1), 1, (0x1000, 0x2000), refs)
    assert problem.startswith("[observed.cmp-order]")
    (problem,) = _checks(checks, ops.Eq(0, 1), True, (0x1000, 0x2000), refs)
    assert problem.startswith("[observed.identity]")


def test_opaque_cmp_may_be_any_stable_total_order_consistent_with_eq() -> None:
    refs, checks = _refs(0x1, 0x2, 0x3), IdentityChecks(opaque=True)
    handles = (0x1, 0x2, 0x3)
    # Against the words' order, and consistent: no problem.
    assert _checks(checks, ops.Cmp(0, 1), 1, handles, refs) == []
    assert _checks(checks, ops.Cmp(1, 0), -1, handles, refs) == []
    assert _checks(checks, ops.Cmp(1, 2), 1, handles, refs) == []
    assert _checks(checks, ops.Cmp(0, 2), 1, handles, refs) == []  # 2 < 1 < 0
    assert _checks(checks, ops.Cmp(0, 0), 0, handles, refs) == []
    assert _checks(checks, ops.Eq(0, 1), False, handles, refs) == []


@pytest.mark.parametrize(
    "steps,expected",
    [
        ([(ops.Cmp(0, 1), -1), (ops.Cmp(0, 1), 1)], "earlier above it"),
        ([(ops.Cmp(0, 1), -1), (ops.Cmp(1, 0), -1)], "earlier above it"),
        (
            [(ops.Cmp(0, 1), -1), (ops.Cmp(1, 2), -1), (ops.Cmp(2, 0), -1)],
            "not a total order: refs 2 < 0 < 1 < 2",
        ),
        ([(ops.Cmp(0, 1), 0)], "yet eq(a, b) is False"),
        ([(ops.Cmp(1, 1), 1)], "yet eq(a, b) is True"),
        ([(ops.Eq(0, 1), True)], "the words say False"),
    ],
)
def test_opaque_identity_failures(steps: list[tuple[ops.Op, int]], expected: str) -> None:
    refs, checks = _refs(0x1, 0x2, 0x3), IdentityChecks(opaque=True)
    found = [p for op, got in steps for p in _checks(checks, op, got, (0x1, 0x2, 0x3), refs)]
    assert len(found) == 1 and found[0].startswith("[observed.identity]") and expected in found[0], found


def test_hashes_are_kept_per_ref_not_per_handle() -> None:
    """A handle given out again names a new ref, which owes nothing to the old one's hash; the same
    ref's hash must not change."""
    refs, checks = _refs(0x1, 0x2), IdentityChecks(opaque=True)
    assert _checks(checks, ops.Eq(0, 1), False, (0x1, 0x2), refs, ((0x1, 0xAA), (0x2, 0xBB))) == []
    refs.add(0x1, 0x20_0000)  # ref 0 freed, its handle given to ref 2
    assert _checks(checks, ops.Eq(0, 1), False, (0x1, 0x2), refs, ((0x1, 0xCC), (0x2, 0xBB))) == []
    (problem,) = _checks(checks, ops.Eq(0, 1), False, (0x1, 0x2), refs, ((0x1, 0xCC), (0x2, 0xBD)))
    assert "the hash of ref 1 changed from 0xbb to 0xbd" in problem


# --- refs.distinct and raw pointers -----------------------------------------------------------------


def _state(*freed: bool) -> State:
    return State.initial(OPAQUE).with_(heap=tuple(Box(8, 8, 0 if f else 1, f) for f in freed))


def test_a_new_ref_may_take_only_a_freed_ref_s_handle() -> None:
    refs = _refs(0x1, 0x2)
    (problem,) = new_ref_problems(_state(False, False), [(0x1, 0x30_0000)], refs)
    assert problem.check == "refs.distinct" and "is that of ref 0, which is live" in problem.text
    assert new_ref_problems(_state(True, False), [(0x1, 0x30_0000)], refs) == []
    (problem,) = new_ref_problems(_state(True, False), [(0x3, 0x10_0100)], refs)
    assert problem.check == "refs.distinct" and "where live ref 1's value is" in problem.text


def test_a_raw_pointer_outlives_its_ref_when_its_handle_is_given_out_again() -> None:
    """as_raw of ref 0, ref 0 freed, ref 1 given handle 0x1: the raw still holds ref 0's word."""
    refs = _refs(0x1)
    refs.add(0x1, 0x30_0000)
    state = _state(True, False).with_(raws=(RawPtr(0, False),))
    probe = _probe((None, 0x1))._replace(raws=((0x1, False),))
    checks = {p.check for p in memory_problems(OPAQUE, state, probe, refs)}
    assert "host.raws" not in checks
    wrong = probe._replace(raws=((0x2, False),))
    assert "host.raws" in {p.check for p in memory_problems(OPAQUE, state, wrong, refs)}


# --- a library whose refs are addresses may declare opaque-refs -------------------------------------


def test_the_python_port_declaring_opaque_refs_passes_the_lockstep() -> None:
    """Its refs are footer addresses, which are handles too: allowed, and every behavioural check
    runs (the misplaced-footer test above shows the layout checks are the ones left out)."""
    cfg = replace(LOCKSTEP_CONFIG, capabilities=(OPAQUE_REFS,))
    out = run_lockstep_check(cfg, LOCKSTEP_BOUNDS, settings(settings.get_profile("ci"), max_examples=60))
    assert out.passed, out.failure
