"""Sweep safety: the bounded proof (at (4, 4, 4, 4) once), the unbounded inductive proof, and a
counterexample from every seeded bug the proofs model."""

from __future__ import annotations

import pytest

from externref_harness.specs.proving import check_valid, find_example
from externref_harness.specs.sweep_encoding import Bounds, GcState, Namer, Switches, gc
from externref_harness.specs.sweep_induction import prove_unbounded
from externref_harness.specs.sweep_proofs import (
    PROPERTIES,
    SEEDED,
    VARIANTS,
    BoundedProof,
    assumptions,
    prove_bounded,
)

SMALL = Bounds(3, 3, 3, 3)


@pytest.mark.slow
def test_bounded_sweep_safety_is_proven_at_4_4_4_4() -> None:
    proof = BoundedProof(Bounds(4, 4, 4, 4), debug=True)
    lemmas = proof.prove_cuts()
    assert all(lemma.status == "proven" for lemma in lemmas), lemmas
    assert len(lemmas) == 3 + 16 + 1 + 4 + 2
    verdicts = [proof.prove(p) for p in PROPERTIES]
    assert [v.status for v in verdicts] == ["proven"] * 4, [v.detail for v in verdicts]
    assert set(verdicts[0].assumptions) == {"W", "G", "I1", "I2", "I6", "I7", "I8", "SM"}


def test_bounded_sweep_safety_is_proven_in_a_release_build() -> None:
    verdicts = prove_bounded(SMALL, debug=False)
    assert all(v.proven for v in verdicts), [v.detail for v in verdicts]


@pytest.mark.parametrize("debug", [True, False])
def test_without_cuts_z3_proves_the_same_at_small_bounds(debug: bool) -> None:
    """The cuts only make the proof scale: directly, z3 agrees where it can finish."""
    s = GcState.symbolic(Bounds(2, 2, 2, 2))
    out = gc(s, Switches(debug))
    premises = [a.formula for a in assumptions(s, VARIANTS[None])]
    for prop in PROPERTIES:
        assert check_valid(premises, prop.formula(s, out), 60_000).proven, prop.id


@pytest.mark.parametrize("mutant", SEEDED)
@pytest.mark.parametrize("debug", [True, False])
def test_every_seeded_bug_gives_a_bounded_counterexample(mutant: str, debug: bool) -> None:
    variant = VARIANTS[mutant]
    assert variant.breaks is not None
    (v,) = prove_bounded(SMALL, variant, debug, only=(variant.breaks,))
    assert v.status == "counterexample", v.detail
    assert "frames (youngest first" in v.detail and "after gc" in v.detail


def test_the_assumptions_are_satisfiable() -> None:
    """The proofs are not vacuous: some state meets every assumption."""
    s = GcState.symbolic(SMALL)
    namer = Namer()
    gc(s, Switches(), namer)
    premises = [a.formula for a in assumptions(s, VARIANTS[None])] + namer.definitions
    assert find_example(premises, 10_000) is not None


@pytest.mark.parametrize("debug", [True, False])
def test_unbounded_sweep_safety_is_proven(debug: bool) -> None:
    verdicts = prove_unbounded(VARIANTS[None], debug)
    names = [v.name.split(".")[-1].split(" ")[0] for v in verdicts]
    assert {"walk-word", "walk-frame", "sweep-slot", "A", "B", "C", "D"} <= set(names)
    assert all(v.proven for v in verdicts), [(v.name, v.detail) for v in verdicts if not v.proven]


@pytest.mark.parametrize("mutant", SEEDED)
def test_every_seeded_bug_breaks_an_inductive_step(mutant: str) -> None:
    verdicts = prove_unbounded(VARIANTS[mutant], debug=True)
    failed = [v for v in verdicts if v.status == "counterexample"]
    assert failed, mutant
    assert all("ρ=" in v.detail for v in failed)
