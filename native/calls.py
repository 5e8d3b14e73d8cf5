"""The calls `NativeRuntime` makes into a library at every step, in C when it is built.

    NativeRuntime ──library_calls(lib).ref_clone(r)──▶ (status, out)
                         │
                         ├── `_calls.Calls` (C, `_calls.c`): the library's function pointers,
                         │   called as `externref_abi.h` types them: about 0.1 µs a call
                         └── `CtypesCalls`: the same calls through the CDLL's typed functions,
                             where the C module is not used (an interpreted install): about 1 µs

Both answer alike: a status, with each out-parameter after it (started at 0, so a library that
does not write one is read as 0); integers taken modulo 2**64 as ctypes takes them; the GIL
released during the call. `tests/native/test_calls.py` runs every call both ways and compares.
Calls made once a run (`xr_table_new`, `xr_set_hooks`, modules, `xr_table_elements`) stay on
ctypes in `native.backend`.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any, TypeAlias

from externref_harness.native.library import NativeLibrary, XrStack

if TYPE_CHECKING:  # (the C module may not be used, or not built: `make_calls`)
    from externref_harness.native._calls import Calls, Walker

class CtypesCalls:
    """`_calls.Calls`' methods (`_calls.pyi`) through the CDLL's typed functions (`native.library`
    sets their types): a status, then each out-parameter."""

    def __init__(self, library: NativeLibrary) -> None:
        self._cdll: Any = library.cdll

    def _out(self, name: str, cell: Any, *args: Any) -> tuple[int, int]:
        status = getattr(self._cdll, name)(*args, ctypes.byref(cell))
        return int(status), int(cell.value or 0)

    def ref_new(self, size: int, align: int, fill: int, /) -> tuple[int, int]:
        return self._out("xr_ref_new", ctypes.c_size_t(), size, align, fill)

    def ref_clone(self, r: int, /) -> tuple[int, int]:
        return self._out("xr_ref_clone", ctypes.c_size_t(), r)

    def ref_drop(self, r: int, /) -> int:
        return int(self._cdll.xr_ref_drop(r))

    def ref_as_raw(self, r: int, /) -> tuple[int, int]:
        return self._out("xr_ref_as_raw", ctypes.c_void_p(), r)

    def ref_into_raw(self, r: int, /) -> tuple[int, int]:
        return self._out("xr_ref_into_raw", ctypes.c_void_p(), r)

    def ref_from_raw(self, raw: int, /) -> tuple[int, int]:
        return self._out("xr_ref_from_raw", ctypes.c_size_t(), raw)

    def ref_clone_from_raw(self, raw: int, /) -> tuple[int, int]:
        return self._out("xr_ref_clone_from_raw", ctypes.c_size_t(), raw)

    def ref_strong_count(self, r: int, /) -> tuple[int, int]:
        return self._out("xr_ref_strong_count", ctypes.c_size_t(), r)

    def ref_eq(self, a: int, b: int, /) -> tuple[int, int]:
        return self._out("xr_ref_eq", ctypes.c_int(), a, b)

    def ref_hash(self, r: int, /) -> tuple[int, int]:
        return self._out("xr_ref_hash", ctypes.c_uint64(), r)

    def ref_cmp(self, a: int, b: int, /) -> tuple[int, int]:
        return self._out("xr_ref_cmp", ctypes.c_int(), a, b)

    def ref_deref(self, r: int, /) -> tuple[int, int]:
        return self._out("xr_ref_deref", ctypes.c_void_p(), r)

    def table_drop(self, table: int, /) -> int:
        return int(self._cdll.xr_table_drop(table))

    def table_bump_capacity_remaining(self, table: int, /) -> tuple[int, int]:
        return self._out("xr_table_bump_capacity_remaining", ctypes.c_size_t(), table)

    def table_try_insert(self, table: int, r: int, /) -> int:
        return int(self._cdll.xr_table_try_insert(table, r))

    def table_insert_with_gc(self, table: int, r: int, stack: int, /) -> int:
        return int(self._cdll.xr_table_insert_with_gc(table, r, _stack(stack)))

    def table_insert_without_gc(self, table: int, r: int, /) -> int:
        return int(self._cdll.xr_table_insert_without_gc(table, r))

    def table_stack_canary(self, table: int, /) -> tuple[int, int, int]:
        is_some, canary = ctypes.c_int(), ctypes.c_size_t()
        status = self._cdll.xr_table_stack_canary(table, ctypes.byref(is_some), ctypes.byref(canary))
        return int(status), int(is_some.value), int(canary.value)

    def table_set_stack_canary(self, table: int, is_some: int, canary: int, /) -> int:
        return int(self._cdll.xr_table_set_stack_canary(table, is_some, canary))

    def table_set_gc_okay(self, table: int, okay: int, /) -> tuple[int, int]:
        return self._out("xr_table_set_gc_okay", ctypes.c_int(), table, okay)

    def gc(self, stack: int, table: int, /) -> int:
        return int(self._cdll.xr_gc(_stack(stack), table))

    def table_enter_wasm(self, table: int, canary: int, /) -> int:
        return int(self._cdll.xr_table_enter_wasm(table, canary))

    def table_leave_wasm(self, table: int, /) -> int:
        return int(self._cdll.xr_table_leave_wasm(table))

    def table_num_filled_in_bump_chunk(self, table: int, /) -> tuple[int, int]:
        return self._out("xr_table_num_filled_in_bump_chunk", ctypes.c_size_t(), table)


#: Either kind: one method per function, named as it without `xr_` (`_calls.pyi` lists them).
LibraryCalls: TypeAlias = "Calls | CtypesCalls"


def _stack(address: int) -> Any:
    """A `struct xr_stack *` argument, from the struct's address (the caller keeps it alive)."""
    return ctypes.cast(address, ctypes.POINTER(XrStack))


def c_calls_available() -> bool:
    """Whether this process uses the C calls (`_calls.c`; `compiled.C_MODULES`)."""
    try:
        from externref_harness.native import _calls  # noqa: F401
    except ImportError:
        return False
    return True


def addresses(library: NativeLibrary) -> dict[str, int]:
    """The address of each function the C calls cover (`_calls.SYMBOLS`, from the C module's own
    table) that the harness may call in `library`."""
    from externref_harness.native._calls import SYMBOLS

    out: dict[str, int] = {}
    for name in SYMBOLS:
        if library.has(name):
            address = ctypes.cast(getattr(library.cdll, name), ctypes.c_void_p).value
            if address:
                out[name] = address
    return out


def make_calls(library: NativeLibrary, use_c: bool = True) -> LibraryCalls:
    """The library's calls: in C when this process uses `_calls` (and `use_c`), else ctypes."""
    if use_c:
        try:
            from externref_harness.native._calls import Calls
        except ImportError:
            pass
        else:
            made: LibraryCalls = Calls(addresses(library))
            return made
    return CtypesCalls(library)


def stack_walker(classify: object, opaque_pc: int, with_lookup: bool) -> Walker | None:
    """The harness's stack as an `xr_stack` walked in C (`_calls.Walker`: no callback into Python
    per frame, pcs classified once by `classify(view, pc)`), where this process uses the C calls;
    None where it does not (the ctypes hooks walk it then). `with_lookup` false: the struct's
    `lookup` is NULL (`own-registry`)."""
    try:
        from externref_harness.native._calls import Walker
    except ImportError:
        return None
    return Walker(classify, opaque_pc, with_lookup)


#: Each loaded library's calls, made once (a `NativeLibrary` is hashed by identity).
_MADE: dict[NativeLibrary, LibraryCalls] = {}


def library_calls(library: NativeLibrary) -> LibraryCalls:
    """`make_calls(library)`, once per library per process."""
    made = _MADE.get(library)
    if made is None:
        made = _MADE[library] = make_calls(library)
    return made
