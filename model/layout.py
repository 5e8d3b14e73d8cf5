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
#: The largest alignment rustc accepts for a type (`#[repr(align(N))]`, N <= 2**29).
MAX_TYPE_ALIGN = 1 << 29

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
        masked: Any = x & WORD_MASK
        return masked  # type: ignore[no-any-return]
    return x


def ult(a: W, b: W) -> Any:
    """Unsigned `a < b` (z3's `<` on bitvectors is signed)."""
    x: Any = a
    if _is_z3(a) or _is_z3(b):
        return _z3().ULT(a, b)
    return x < b


def ule(a: W, b: W) -> Any:
    x: Any = a
    if _is_z3(a) or _is_z3(b):
        return _z3().ULE(a, b)
    return x <= b


def umax(a: W, b: W) -> W:
    """`std::cmp::max` on `usize`."""
    x: Any = a
    if _is_z3(a) or _is_z3(b):
        return _z3().If(_z3().UGE(a, b), a, b)  # type: ignore[no-any-return]
    return a if x >= b else b


def is_power_of_two(x: W) -> Any:
    v: Any = x
    if _is_z3(x):
        return _z3().And(v != 0, (v & (v - 1)) == 0)
    return v != 0 and (v & (v - 1)) == 0


def is_aligned(x: W, align: W) -> Any:
    """`x % align == 0` for a power-of-two `align`, as a mask test.

    The mask form is what makes the layout proofs fast: z3 decides `x & (align - 1) == 0` in
    milliseconds, while a symbolic 64-bit `urem` takes it seconds.
    """
    v: Any = x
    a: Any = align
    return wrap(v & wrap(a - 1)) == 0


@dataclass(frozen=True)
class Rounded(Generic[W, B]):
    """`round_up_to_align`'s result: `value` is meaningful only when `overflow` is false."""

    value: W
    overflow: B


def round_up_to_align(n: W, align: W) -> Rounded[W, Any]:
    """`Some(n.checked_add(align - 1)? & !(align - 1))`; the seed debug-asserts `align` is a power of two."""
    a: Any = align
    align_minus_one: Any = wrap(a - 1)
    total: Any = wrap(align_minus_one + n)
    overflow = ult(total, n)
    return Rounded(wrap(total & ~align_minus_one), overflow)


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
    value_and_padding_size: Any = rounded.value
    alloc_align = umax(value_align, _const_like(value_align, extern_data_align))
    alloc_size = wrap(value_and_padding_size + extern_data_size)
    return ExternLayout(
        alloc_size=alloc_size,
        alloc_align=alloc_align,
        footer_offset=value_and_padding_size,
        unwrap_panics=rounded.overflow,
        size_add_wraps=ult(alloc_size, value_and_padding_size),
    )


def layout_for_precondition(value_size: W, value_align: W) -> Any:
    """When `layout_for`'s `Layout` is valid: `value_size <= 2**63 - A - round_up(24, A)`.

    `A = max(value_align, 8)` is the allocation's alignment. For a Rust type's `(size, align)`
    (`rust_type_layout_admissible`) this is exact: the seed's `debug_assert!` in `layout_for` fires
    precisely when it is false (proven in `specs.layout_proofs`).
    """
    alloc_align: Any = umax(value_align, _const_like(value_align, EXTERN_DATA_ALIGN))
    footer_room: Any = round_up_to_align(_const_like(value_align, EXTERN_DATA_SIZE), alloc_align).value
    return ule(value_size, wrap(-alloc_align - footer_room + (ISIZE_MAX + 1)))


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
    value: Any = rounded.value
    return bool(is_power_of_two(align)) and not rounded.overflow and value <= ISIZE_MAX


def rust_type_layout_admissible(value_size: W, value_align: W) -> Any:
    """What `mem::size_of::<T>()` / `align_of::<T>()` can be for a Rust type `T`.

    A type's size is a multiple of its alignment, the alignment is a power of two of at most 2**29,
    and the size rounded up to the alignment does not exceed `isize::MAX`.
    """
    valid = layout_is_valid(value_size, value_align)
    multiple = is_aligned(value_size, value_align)
    if _is_z3(value_size) or _is_z3(value_align):
        return _z3().And(valid, _z3().ULE(value_align, MAX_TYPE_ALIGN), multiple)
    align: Any = value_align
    return bool(valid) and align <= MAX_TYPE_ALIGN and bool(multiple)


def _const_like(like: object, value: int) -> Any:
    if _is_z3(like):
        return _z3().BitVecVal(value, WORD_BITS)
    return value
