"""Every seeded bug of every layer, in one catalogue (`externref-harness mutants`)."""

from __future__ import annotations

from externref_harness.errors import shown
from externref_harness.impl.mutants import IMPL_MUTANTS
from externref_harness.model.mutants import MODEL_MUTANTS, Mutant
from externref_harness.specs.mutants import PROOF_MUTANTS


def all_mutants() -> tuple[Mutant, ...]:
    return MODEL_MUTANTS + IMPL_MUTANTS + PROOF_MUTANTS


def mutant_names() -> list[str]:
    return [m.name for m in all_mutants()]


class UnknownMutant(ValueError):
    pass


def find(name: str) -> Mutant:
    for m in all_mutants():
        if m.name == name:
            return m
    raise UnknownMutant(f"unknown mutant {shown(repr(name))}; `externref-harness mutants` lists them")
