"""The seed's `VMExternData::layout_for` and `round_up_to_align`, written once.

The same functions run on Python ints (the model and the ctypes implementation use them to place
the footer) and on 64-bit z3 bitvectors (the layout proofs in `specs/` reason about them), so
there is exactly one copy of the rule:

    +----------------------------+-----------+-----------+
    | value (value_size bytes)   | ref_count | value_ptr |   <- one allocation,
    +----------------------------+-----------+-----------+      align = max(value_align, 8)
    ^ offset 0                   ^ footer_offset = round_up(value_size, 8)

Arithmetic is `usize` arithmetic: every result is reduced modulo 2**64, and `checked_add` reports
overflow as a flag (a Python bool, or a z3 Bool) instead of returning `None`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

WORD_BITS = 64
WORD_MASK = (1 << WORD_BITS) - 1

#: `mem::size_of::<VMExternData>()`: `ref_count: AtomicUsize` then a fat `NonNull<dyn Any>`.
EXTERN_DATA_SIZE = 24
#: `mem::align_of::<VMExternData>()`.
EXTERN_DATA_ALIGN = 8
#: Offset of `ref_count` in `VMExternData` (`VMOffsets::vm_extern_data_ref_count()`).
REF_COUNT_OFFSET = 0
#: Offset of the fat `value_ptr` (data pointer, then vtable pointer).
VALUE_PTR_OFFSET = 8
#: Rust's `isize::MAX`: `Layout::from_size_align` rejects sizes that round up past it.
ISIZE_MAX = (1 << (WORD_BITS - 1)) - 1

W = TypeVar("W")  # an int, or a z3 BitVecRef
B = TypeVar("B")  # a bool, or a z3 BoolRef


def _is_z3(x: object) -> bool:
    return type(x).__module__.startswith("z3")


def _z3() -> Any:
    import z3

    return z3


def wrap(x: W) -> W:
    """Reduce to a `usize` (z3 bitvectors already wrap)."""
    if isinstance(x, int):
        return x & WORD_MASK  # type: ignore[return-value]
    return x


def ult(a: W, b: W) -> Any:
    """Unsigned `a < b` (z3's `<` on bitvectors is signed)."""
    if _is_z3(a) or _is_z3(b):
        return _z3().ULT(a, b)
    return a < b  # type: ignore[operator]


def ule(a: W, b: W) -> Any:
    if _is_z3(a) or _is_z3(b):
        return _z3().ULE(a, b)
    return a <= b  # type: ignore[operator]


def umax(a: W, b: W) -> W:
    """`std::cmp::max` on `usize`."""
    if _is_z3(a) or _is_z3(b):
        return _z3().If(_z3().UGE(a, b), a, b)  # type: ignore[no-any-return]
    return a if a >= b else b  # type: ignore[operator]


def is_power_of_two(x: W) -> Any:
    if _is_z3(x):
        z3 = _z3()
        return z3.And(x != 0, (x & (x - 1)) == 0)
    return x != 0 and (x & (x - 1)) == 0  # type: ignore[operator]


@dataclass(frozen=True)
class Rounded(Generic[W, B]):
    """`round_up_to_align`'s result: `value` is meaningful only when `overflow` is false."""

    value: W
    overflow: B


def round_up_to_align(n: W, align: W) -> Rounded[W, Any]:
    """`Some(n.checked_add(align - 1)? & !(align - 1))`; the seed debug-asserts `align` is a power of two."""
    align_minus_one = wrap(align - 1)  # type: ignore[operator]
    total = wrap(n + align_minus_one)  # type: ignore[operator]
    overflow = ult(total, n)
    return Rounded(wrap(total & ~align_minus_one), overflow)  # type: ignore[operator]


@dataclass(frozen=True)
class ExternLayout(Generic[W]):
    """`layout_for`'s `(Layout, footer_offset)`, plus the `.unwrap()` overflow flag."""

    alloc_size: W
    alloc_align: W
    footer_offset: W
    #: `round_up_to_align(..).unwrap()` would panic.
    unwrap_panics: Any
    #: `alloc_size = value_and_padding_size + extern_data_size` wrapped (release builds wrap).
    size_add_wraps: Any


def layout_for(value_size: W, value_align: W) -> ExternLayout[W]:
    """Mirror of `VMExternData::layout_for` (seed lines 235-249)."""
    extern_data_size = EXTERN_DATA_SIZE
    extern_data_align = EXTERN_DATA_ALIGN
    rounded = round_up_to_align(value_size, _const_like(value_size, extern_data_align))
    value_and_padding_size = rounded.value
    alloc_align = umax(value_align, _const_like(value_align, extern_data_align))
    alloc_size = wrap(value_and_padding_size + extern_data_size)  # type: ignore[operator]
    return ExternLayout(
        alloc_size=alloc_size,
        alloc_align=alloc_align,
        footer_offset=value_and_padding_size,
        unwrap_panics=rounded.overflow,
        size_add_wraps=ult(alloc_size, value_and_padding_size),
    )


def layout_is_valid(size: W, align: W) -> Any:
    """`Layout::from_size_align(size, align).is_ok()` (Rust 1.60 rules)."""
    rounded = round_up_to_align(size, align)
    if _is_z3(size) or _is_z3(align):
        z3 = _z3()
        return z3.And(
            is_power_of_two(align),
            z3.Not(rounded.overflow),
            z3.ULE(rounded.value, ISIZE_MAX),
        )
    return bool(is_power_of_two(align)) and not rounded.overflow and rounded.value <= ISIZE_MAX


def rust_type_layout_admissible(value_size: W, value_align: W) -> Any:
    """What `mem::size_of::<T>()` / `align_of::<T>()` can be for a Rust type `T`.

    A type's size is a multiple of its alignment, the alignment is a power of two of at most 2**29,
    and the size rounded up to the alignment does not exceed `isize::MAX`.
    """
    valid = layout_is_valid(value_size, value_align)
    if _is_z3(value_size) or _is_z3(value_align):
        z3 = _z3()
        return z3.And(
            valid,
            z3.ULE(value_align, 1 << 29),
            z3.URem(value_size, value_align) == 0,
        )
    return bool(valid) and value_align <= (1 << 29) and value_size % value_align == 0  # type: ignore[operator]


def _const_like(like: object, value: int) -> Any:
    if _is_z3(like):
        return _z3().BitVecVal(value, WORD_BITS)
    return value
