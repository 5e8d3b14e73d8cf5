"""Seeded bugs of the ctypes implementation, selectable by name through `Config.mutant`.

The model ignores these names, so one `Config` serves both sides of the lockstep run.
"""

from __future__ import annotations

from externref_harness.model.mutants import Mutant

FOOTER_VALUE_ALIGNED = "impl-footer-value-aligned"
FOOTER_ROUNDED_DOWN = "impl-footer-rounded-down"
REFCOUNT_OFFSET = "impl-refcount-offset"
EARLY_FREE = "impl-early-free"
DEALLOC_IGNORES_VALUE_ALIGN = "impl-dealloc-ignores-value-align"
NUM_FILLED_OFF_BY_ONE = "impl-num-filled-off-by-one"
TRY_INSERT_IGNORES_END = "impl-try-insert-ignores-end"
SWEEP_WITHOUT_CANARY = "impl-sweep-without-canary"
PRECISE_NOT_SWAPPED = "impl-precise-not-swapped"
STACK_MAP_OFFSET = "impl-stack-map-offset"

IMPL_MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        FOOTER_VALUE_ALIGNED, "impl",
        "layout_for rounds the footer offset up to the value's alignment instead of "
        "VMExternData's, so footers of small-alignment values are misaligned",
    ),
    Mutant(
        FOOTER_ROUNDED_DOWN, "impl",
        "layout_for rounds the value size down instead of up, so the footer overlaps the "
        "value's last bytes",
    ),
    Mutant(
        REFCOUNT_OFFSET, "impl",
        "VMExternData declares value_ptr before ref_count, so ref_count is not at offset 0 "
        "(where compiled code and VMOffsets expect it)",
    ),
    Mutant(
        EARLY_FREE, "impl",
        "Drop for VMExternRef frees when the count drops from 2 to 1, one decrement early",
    ),
    Mutant(
        DEALLOC_IGNORES_VALUE_ALIGN, "impl",
        "drop_and_dealloc recomputes the layout with VMExternData's alignment instead of the "
        "value's, so over-aligned values are freed with the wrong layout",
    ),
    Mutant(
        NUM_FILLED_OFF_BY_ONE, "impl",
        "num_filled_in_bump_chunk counts one slot fewer than are filled",
    ),
    Mutant(
        TRY_INSERT_IGNORES_END, "impl",
        "try_insert does not compare next with end, and writes past the bump chunk",
    ),
    Mutant(
        SWEEP_WITHOUT_CANARY, "impl",
        "gc sweeps even though the stack walk did not find the canary",
    ),
    Mutant(
        PRECISE_NOT_SWAPPED, "impl",
        "sweep does not swap precise_stack_roots into over_approximated_stack_roots: it clears "
        "the precise roots and keeps the old over-approximation",
    ),
    Mutant(
        STACK_MAP_OFFSET, "impl",
        "gc reads stack-map bit i at sp + (i + 1) * 8, one slot above the mapped word",
    ),
)  # fmt: skip


def impl_mutant_names() -> frozenset[str]:
    return frozenset(m.name for m in IMPL_MUTANTS)
