"""z3 proofs of `layout_for` over the whole 64-bit domain, and the JIT's field offsets checked
against the implementation's ctypes structures. Each proof is also shown to fail."""

from __future__ import annotations

from typing import Any

import pytest
import z3

from externref_harness.model import layout
from externref_harness.specs.layout_proofs import (
    PROPERTIES,
    SMALLEST_INVALID_SIZE,
    LayoutTerms,
    invalid_layout_example,
    prove_layout,
)
from externref_harness.specs.offset_proofs import OffsetFact, check_facts, offset_facts, prove_offsets
from externref_harness.specs.proving import check_valid


def test_every_layout_property_is_proven_for_every_rust_type_layout() -> None:
    verdicts = prove_layout()
    assert [v.name for v in verdicts] == [p.name for p in PROPERTIES]
    assert all(v.status == "proven" for v in verdicts), [(v.name, v.detail) for v in verdicts]


def test_the_invalid_region_is_found_printed_and_checked_on_ints() -> None:
    example = invalid_layout_example()
    assert example is not None
    assert layout.rust_type_layout_admissible(example.value_size, example.value_align)
    concrete = layout.layout_for(example.value_size, example.value_align)
    assert not layout.layout_is_valid(concrete.alloc_size, concrete.alloc_align)
    assert not layout.layout_for_precondition(example.value_size, example.value_align)
    assert "exceeds isize::MAX" in str(example) and hex(example.value_size) in str(example)


def test_the_invalid_region_starts_at_the_largest_alignment() -> None:
    assert invalid_layout_example(below=SMALLEST_INVALID_SIZE) is None
    edge = layout.layout_for(SMALLEST_INVALID_SIZE, layout.MAX_TYPE_ALIGN)
    assert layout.rust_type_layout_admissible(SMALLEST_INVALID_SIZE, layout.MAX_TYPE_ALIGN)
    assert not layout.layout_is_valid(edge.alloc_size, edge.alloc_align)
    below = layout.layout_for(SMALLEST_INVALID_SIZE - layout.MAX_TYPE_ALIGN, layout.MAX_TYPE_ALIGN)
    assert layout.layout_is_valid(below.alloc_size, below.alloc_align)


def test_without_the_precondition_validity_has_a_counterexample() -> None:
    t = LayoutTerms.fresh(layout.layout_for)
    valid = layout.layout_is_valid(t.result.alloc_size, t.result.alloc_align)
    outcome = check_valid([t.admissible], valid)
    assert outcome.status == "counterexample"
    assert outcome.model is not None
    size = outcome.model.eval(t.value_size, model_completion=True).as_long()
    align = outcome.model.eval(t.value_align, model_completion=True).as_long()
    assert not layout.layout_for_precondition(size, align)


@pytest.mark.parametrize("value_size", [0, 1, 7, 8, 24, 4096, (1 << 63) - 40, (1 << 63) - 32])
@pytest.mark.parametrize("value_align", [1, 2, 8, 16, 1 << 12])
def test_the_precondition_agrees_with_validity_on_ints(value_size: int, value_align: int) -> None:
    size = value_size - value_size % value_align
    if not layout.rust_type_layout_admissible(size, value_align):
        return
    lay = layout.layout_for(size, value_align)
    assert layout.layout_for_precondition(size, value_align) == layout.layout_is_valid(
        lay.alloc_size, lay.alloc_align
    )


@pytest.mark.parametrize("align", [1, 2, 8, 64, 1 << 29])
def test_the_mask_test_is_the_remainder_test_for_powers_of_two(align: int) -> None:
    for x in [0, 1, align - 1, align, align + 1, 3 * align, (1 << 64) - align, (1 << 64) - 1]:
        assert layout.is_aligned(x, align) == (x % align == 0)


def _footer_not_rounded(value_size: Any, value_align: Any) -> layout.ExternLayout[Any]:
    """A broken layout_for: the footer right after the value, not rounded up to 8."""
    lay = layout.layout_for(value_size, value_align)
    return layout.ExternLayout(
        value_size + layout.EXTERN_DATA_SIZE,
        lay.alloc_align,
        value_size,
        lay.unwrap_panics,
        lay.size_add_wraps,
    )


def _alignment_of_the_footer(value_size: Any, value_align: Any) -> layout.ExternLayout[Any]:
    """A broken layout_for: the allocation aligned to 8 only, whatever the value needs."""
    lay = layout.layout_for(value_size, value_align)
    eight: Any = layout.EXTERN_DATA_ALIGN
    if isinstance(value_size, z3.BitVecRef):
        eight = z3.BitVecVal(layout.EXTERN_DATA_ALIGN, layout.WORD_BITS)
    return layout.ExternLayout(
        lay.alloc_size, eight, lay.footer_offset, lay.unwrap_panics, lay.size_add_wraps
    )


@pytest.mark.parametrize(
    ("broken", "fails"),
    [
        (_footer_not_rounded, {"layout.footer-offset", "layout.placement"}),
        (_alignment_of_the_footer, {"layout.alloc-align", "layout.placement"}),
    ],
)
def test_a_broken_layout_for_gets_counterexamples(broken: Any, fails: set[str]) -> None:
    verdicts = {v.name: v for v in prove_layout(layout_fn=broken)}
    for name in fails:
        assert verdicts[name].status == "counterexample", name
        assert "value_size=0x" in verdicts[name].detail


def test_jit_offsets_match_the_implementations_ctypes_structures() -> None:
    verdicts = prove_offsets()
    names = {v.name for v in verdicts}
    assert {"offsets.ref_count", "offsets.value_ptr", "offsets.footer-size", "offsets.footer-align"} <= names
    assert {"offsets.table-next (debug)", "offsets.table-end (release)"} <= names
    assert all(v.proven for v in verdicts), [(v.name, v.detail) for v in verdicts]


def test_offsets_are_read_from_the_structures_not_constants() -> None:
    facts = {f.name: f for f in offset_facts(None)}
    assert facts["offsets.ref_count"].actual == 0
    assert facts["offsets.value_ptr"].actual == 8
    assert facts["offsets.footer-size"].actual == layout.EXTERN_DATA_SIZE
    assert facts["offsets.table-end (debug)"].actual == 8


def test_the_refcount_offset_mutant_is_a_counterexample() -> None:
    verdicts = {v.name: v for v in prove_offsets("impl-refcount-offset")}
    assert verdicts["offsets.ref_count"].status == "counterexample"
    assert "the implementation has 16" in verdicts["offsets.ref_count"].detail
    assert verdicts["offsets.value_ptr"].status == "counterexample"


def test_a_wrong_fact_is_reported_with_both_values() -> None:
    (v,) = check_facts([OffsetFact("offsets.x", "x at 0", 8, 0)], 0.0)
    assert v.status == "counterexample" and "has 8" in v.detail and "uses 0" in v.detail
