"""Seeded bugs, selectable by name, never active by default.

The catalogue is shared by every layer: the model's and the protocol's bugs are listed here, the
implementation and the proofs add theirs. `Config.mutant` (and each layer's own switch) selects one.
"""

from __future__ import annotations

from dataclasses import dataclass

from externref_harness.model import protocol, runtime


@dataclass(frozen=True)
class Mutant:
    name: str
    layer: str
    description: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "layer": self.layer, "description": self.description}


MODEL_MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        protocol.CVE_2021_39216,
        "protocol",
        "CVE-2021-39216: host-to-Wasm arguments are moved in one at a time with insert_with_gc; a "
        "GC triggered by a later argument sweeps an earlier one only the table held",
    ),
    Mutant(
        runtime.CVE_2021_39218,
        "model",
        "CVE-2021-39218: stack-map lookup falls back to an earlier safepoint's map when the pc has "
        "none, so non-ref stack words are treated as refs",
    ),
    Mutant(
        runtime.CVE_2022_24791,
        "model",
        "CVE-2022-24791: the compiler emits no stack map at Wasm-to-Wasm call safepoints; frames "
        "there look ref-free and their live refs are swept",
    ),
    Mutant(
        runtime.CVE_2022_31146,
        "model",
        "CVE-2022-31146: the compiler omits the highest live ref slot from a stack map when a "
        "frame holds two or more live refs",
    ),
    Mutant(
        runtime.CVE_2022_23636,
        "model",
        "CVE-2022-23636: instance teardown drops externref globals that instantiation never "
        "initialised (a garbage pointer is decremented)",
    ),
    Mutant(
        runtime.SWEEP_WITHOUT_CANARY,
        "model",
        "gc sweeps even though the stack walk did not find the canary",
    ),
    Mutant(
        runtime.PRECISE_ROOT_UNCOUNTED,
        "model",
        "a precise stack root is taken into precise_stack_roots without incrementing its count",
    ),
    Mutant(
        runtime.HASHSET_DUPLICATE_LEAKS,
        "model",
        "a HashSet insert of an element already present forgets the handle passed in instead of "
        "dropping it (a leaked count)",
    ),
)


def model_mutant_names() -> frozenset[str]:
    return frozenset(m.name for m in MODEL_MUTANTS)
