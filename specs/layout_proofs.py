"""z3 proofs about `VMExternData::layout_for` over the whole 64-bit domain.

The function proven is `model.layout.layout_for` itself, run on 64-bit bitvectors: the same code
the model and the implementation run on Python ints. The domain is every `(value_size,
value_align)` that `mem::size_of::<T>()` / `mem::align_of::<T>()` can return for a Rust type `T`
(`model.layout.rust_type_layout_admissible`: align a power of two ≤ 2**29, size a multiple of align,
size ≤ isize::MAX).

Within that domain `layout_for`'s own `Layout` is not always valid: near `isize::MAX` the footer
pushes the allocation past it and the seed's `debug_assert!` fires. `layout.precondition-exact`
proves that `model.layout.layout_for_precondition` describes that region exactly, and shows a
concrete point of it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import z3

from externref_harness.model import layout
from externref_harness.specs.proving import (
    DEFAULT_TIMEOUT_MS,
    Verdict,
    as_int,
    check_valid,
    find_example,
    verdict,
)

LayoutFn = Callable[[Any, Any], layout.ExternLayout[Any]]

#: The assumption every layout property is proven under.
ADMISSIBLE = "Rust type layout (align = 2^k ≤ 2^29, size % align == 0, size ≤ isize::MAX)"
#: The extra precondition of `layout.valid` (`model.layout.layout_for_precondition`).
PRECONDITION = "V: value_size ≤ 2^63 − A − round_up(24, A), A = max(value_align, 8)"


@dataclass(frozen=True)
class LayoutProperty:
    name: str
    statement: str
    #: Premises beyond `ADMISSIBLE` (the names shown in `prove`'s output).
    preconditions: tuple[str, ...]
    build: Callable[[LayoutTerms], tuple[list[Any], Any]]


@dataclass(frozen=True)
class LayoutTerms:
    """The symbolic inputs and `layout_fn`'s symbolic result."""

    value_size: Any
    value_align: Any
    base: Any
    result: layout.ExternLayout[Any]

    @staticmethod
    def fresh(layout_fn: LayoutFn) -> LayoutTerms:
        size, align, base = z3.BitVecs("value_size value_align base", layout.WORD_BITS)
        return LayoutTerms(size, align, base, layout_fn(size, align))

    @property
    def admissible(self) -> Any:
        return layout.rust_type_layout_admissible(self.value_size, self.value_align)


def _wide(x: Any) -> Any:
    """Zero-extend to 128 bits: arithmetic there is mathematical, no 64-bit wrap-around."""
    return z3.ZeroExt(layout.WORD_BITS, x)


def _footer(t: LayoutTerms) -> tuple[list[Any], Any]:
    r = t.result
    return [], z3.And(
        z3.Not(r.unwrap_panics),
        layout.is_aligned(r.footer_offset, layout.EXTERN_DATA_ALIGN),
        z3.ULE(t.value_size, r.footer_offset),
        _wide(r.footer_offset) < _wide(t.value_size) + 8,
    )


def _align(t: LayoutTerms) -> tuple[list[Any], Any]:
    a = t.result.alloc_align
    is_max = z3.And(
        z3.UGE(a, t.value_align),
        z3.UGE(a, layout.EXTERN_DATA_ALIGN),
        z3.Or(a == t.value_align, a == layout.EXTERN_DATA_ALIGN),
    )
    return [], z3.And(is_max, layout.is_power_of_two(a))


def _size(t: LayoutTerms) -> tuple[list[Any], Any]:
    r = t.result
    exact = _wide(r.alloc_size) == _wide(r.footer_offset) + layout.EXTERN_DATA_SIZE
    return [], z3.And(exact, z3.Not(r.size_add_wraps))


def _placement(t: LayoutTerms) -> tuple[list[Any], Any]:
    r = t.result
    return [layout.is_aligned(t.base, r.alloc_align)], z3.And(
        layout.is_aligned(t.base, t.value_align),
        layout.is_aligned(t.base + r.footer_offset, layout.EXTERN_DATA_ALIGN),
    )


def _precondition(t: LayoutTerms) -> Any:
    return layout.layout_for_precondition(t.value_size, t.value_align)


def _valid(t: LayoutTerms) -> Any:
    return layout.layout_is_valid(t.result.alloc_size, t.result.alloc_align)


def _valid_under_v(t: LayoutTerms) -> tuple[list[Any], Any]:
    return [_precondition(t)], _valid(t)


def _v_exact(t: LayoutTerms) -> tuple[list[Any], Any]:
    return [], _valid(t) == _precondition(t)


PROPERTIES: tuple[LayoutProperty, ...] = (
    LayoutProperty(
        "layout.footer-offset",
        "round_up_to_align succeeds; footer_offset % align_of::<VMExternData>() == 0 and "
        "value_size ≤ footer_offset < value_size + 8",
        (),
        _footer,
    ),
    LayoutProperty(
        "layout.alloc-align",
        "alloc_align == max(value_align, 8), a power of two",
        (),
        _align,
    ),
    LayoutProperty(
        "layout.alloc-size",
        "alloc_size == footer_offset + size_of::<VMExternData>(), without wrap-around",
        (),
        _size,
    ),
    LayoutProperty(
        "layout.placement",
        "for every base aligned to alloc_align, the value at base+0 is value_align-aligned and "
        "the footer at base+footer_offset is align_of::<VMExternData>()-aligned",
        (),
        _placement,
    ),
    LayoutProperty(
        "layout.valid",
        "Layout::from_size_align(alloc_size, alloc_align) is Ok (the seed's debug_assert! holds)",
        (PRECONDITION,),
        _valid_under_v,
    ),
    LayoutProperty(
        "layout.precondition-exact",
        "the Layout is valid exactly when V holds: outside V the debug_assert! fires",
        (),
        _v_exact,
    ),
)


def describe(t: LayoutTerms, model: z3.ModelRef) -> str:
    """The counterexample's inputs and `layout_for`'s result, in hex."""

    def h(term: Any) -> str:
        return hex(as_int(model, term))

    r = t.result
    return (
        f"value_size={h(t.value_size)} value_align={h(t.value_align)} base={h(t.base)} -> "
        f"footer_offset={h(r.footer_offset)} alloc_size={h(r.alloc_size)} "
        f"alloc_align={h(r.alloc_align)}"
    )


@dataclass(frozen=True)
class InvalidLayout:
    """A Rust type layout for which `layout_for` builds an invalid `Layout`."""

    value_size: int
    value_align: int
    alloc_size: int
    alloc_align: int

    def __str__(self) -> str:
        return (
            f"value_size={self.value_size:#x} value_align={self.value_align:#x} -> "
            f"alloc_size={self.alloc_size:#x} alloc_align={self.alloc_align:#x}: rounded up, "
            f"the size exceeds isize::MAX={layout.ISIZE_MAX:#x}"
        )


def invalid_layout_example(
    layout_fn: LayoutFn = layout.layout_for,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    below: int | None = None,
) -> InvalidLayout | None:
    """z3's witness of the region where `layout_for`'s `Layout` is invalid (None: there is none).

    `below` restricts the search to `value_size < below`.
    """
    t = LayoutTerms.fresh(layout_fn)
    constraints = [t.admissible, z3.Not(_valid(t))]
    if below is not None:
        constraints.append(z3.ULT(t.value_size, below))
    model = find_example(constraints, timeout_ms)
    if model is None:
        return None
    size, align = as_int(model, t.value_size), as_int(model, t.value_align)
    # Recomputed on ints by the very same function: the witness is checked, not trusted.
    concrete = layout_fn(size, align)
    assert not layout.layout_is_valid(concrete.alloc_size, concrete.alloc_align)
    return InvalidLayout(size, align, concrete.alloc_size, concrete.alloc_align)


#: The smallest value size of the invalid region: the largest alignment, 2**29, starts it.
SMALLEST_INVALID_SIZE = layout.ISIZE_MAX + 1 - layout.MAX_TYPE_ALIGN


def prove_layout(
    timeout_ms: int = DEFAULT_TIMEOUT_MS, layout_fn: LayoutFn = layout.layout_for
) -> list[Verdict]:
    """Every `PROPERTIES` entry over the admissible domain, plus the invalid region's witness."""
    out: list[Verdict] = []
    for prop in PROPERTIES:
        t = LayoutTerms.fresh(layout_fn)
        premises, conclusion = prop.build(t)
        outcome = check_valid([t.admissible, *premises], conclusion, timeout_ms, nonvacuous=True)
        proven_detail = prop.statement
        if prop.name == "layout.precondition-exact":
            proven_detail += _region_summary(layout_fn, timeout_ms)
        out.append(
            verdict(
                prop.name,
                outcome,
                lambda m, t=t: describe(t, m),  # type: ignore[misc]
                (ADMISSIBLE, *prop.preconditions),
                proven_detail,
            )
        )
    return out


def _region_summary(layout_fn: LayoutFn, timeout_ms: int) -> str:
    example = invalid_layout_example(layout_fn, timeout_ms)
    if example is None:
        return "; no admissible input makes the Layout invalid"
    t = LayoutTerms.fresh(layout_fn)
    below = z3.ULT(t.value_size, SMALLEST_INVALID_SIZE)
    lowest = check_valid([t.admissible, below], _valid(t), timeout_ms)
    edge = layout_fn(SMALLEST_INVALID_SIZE, layout.MAX_TYPE_ALIGN)
    edge_invalid = not layout.layout_is_valid(edge.alloc_size, edge.alloc_align)
    summary = f"; counterexample without V: {example}"
    if lowest.proven and edge_invalid:
        summary += (
            f"; the region starts at value_size={SMALLEST_INVALID_SIZE:#x} (value_align=2^29): "
            "every smaller admissible value_size gives a valid Layout"
        )
    return summary
