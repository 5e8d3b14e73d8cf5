"""The proofs' own seeded bug: an assumption left out, so the proofs must find a counterexample.

Kept apart from the proofs (no z3 import) so the catalogue can list it cheaply.
"""

from __future__ import annotations

from externref_harness.model.mutants import Mutant

#: The sweep proofs drop I8 ("every stack root is in the table") from their assumptions.
DROP_ROOTS_IN_TABLE = "proof-drop-roots-in-table-assumption"

PROOF_MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        DROP_ROOTS_IN_TABLE,
        "specs",
        "the sweep proofs drop invariant I8 (every stack root is in the activations table) from "
        "their assumptions; the counterexample's trace breaks I8 the way CVE-2021-39216 did",
    ),
)
