"""`native.calls`: the C calls (`_calls.c`) answer every call as the ctypes ones do.

The same table is driven by both, call by call, on the C reference's builds: each changing call
made by one then the other, and after each, every query asked of both and compared exactly.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator

import pytest

from externref_harness.native import build, calls, library
from externref_harness.native.calls import CtypesCalls, LibraryCalls
from externref_harness.native.library import XR_ERR, XR_OK, NativeLibrary, TraceFn, XrStack

pytestmark = pytest.mark.skipif(
    not calls.c_calls_available(), reason="the C calls are not used in this process (interpreted install)"
)


@pytest.fixture(params=build.BUILDS)
def lib(request: pytest.FixtureRequest) -> Iterator[NativeLibrary]:
    loaded = library.load_library(build.build_reference(request.param))
    loaded.cdll.xr_set_hooks(None)  # the library allocates on its own
    yield loaded


def _both(lib: NativeLibrary) -> tuple[LibraryCalls, LibraryCalls]:
    c_calls, py_calls = calls.make_calls(lib), calls.make_calls(lib, use_c=False)
    assert type(c_calls).__name__ == "Calls" and type(py_calls) is CtypesCalls
    return c_calls, py_calls


def _queries(each: LibraryCalls, table: int, refs: list[int]) -> list[object]:
    out: list[object] = [
        each.table_bump_capacity_remaining(table),
        each.table_num_filled_in_bump_chunk(table),
        each.table_stack_canary(table),
    ]
    for r in refs:
        out += [each.ref_strong_count(r), each.ref_hash(r), each.ref_deref(r), each.ref_as_raw(r)]
        out += [(each.ref_eq(r, other), each.ref_cmp(r, other)) for other in refs]
    return out


def test_every_call_answers_alike(lib: NativeLibrary) -> None:
    c_calls, py_calls = _both(lib)
    table_out = ctypes.c_void_p()
    assert lib.cdll.xr_table_new_with_chunk_size(4, ctypes.byref(table_out)) == XR_OK
    table = int(table_out.value or 0)
    # A stack with no frames: gc finds no roots on it and, with no canary, sweeps nothing.
    stack = XrStack(None, TraceFn(lambda _ctx, _visit, _walk: None), library.LookupFn())
    stack_address = ctypes.addressof(stack)
    refs: list[int] = []
    inserted: list[int] = []

    def agree() -> None:
        assert _queries(c_calls, table, refs) == _queries(py_calls, table, refs)

    for i, each in enumerate((c_calls, py_calls, c_calls, py_calls)):
        status, r = each.ref_new(8 * (i + 1), 8, 0xA0 + i)
        assert status == XR_OK and r, lib.panic_message()
        refs.append(r)
        agree()
        status, clone = each.ref_clone(r)
        assert (status, clone) == (XR_OK, r)
        inserted.append(each.table_try_insert(table, clone))
        agree()
        status, raw = each.ref_into_raw(each.ref_clone(r)[1])
        assert status == XR_OK
        assert each.ref_clone_from_raw(raw) == (XR_OK, r)
        assert each.ref_from_raw(raw) == (XR_OK, r)
        assert each.ref_drop(r) == XR_OK  # the two refs the raw gave back
        assert each.ref_drop(r) == XR_OK
        agree()
    # (status, the previous okay), from the same state (a release build keeps no okay flag).
    okays = [
        (each.table_set_gc_okay(table, 0), each.table_set_gc_okay(table, 1)) for each in (c_calls, py_calls)
    ]
    assert okays[0] == okays[1] and okays[0][0][0] == XR_OK
    for each in (c_calls, py_calls):
        assert each.table_insert_without_gc(table, each.ref_clone(refs[0])[1]) == XR_OK
        agree()
        assert each.table_set_stack_canary(table, 1, 0x1000) == XR_OK
        agree()
        assert each.table_set_stack_canary(table, 0, 0) == XR_OK
        assert each.table_insert_with_gc(table, each.ref_clone(refs[1])[1], stack_address) == XR_OK
        agree()
        assert each.gc(stack_address, table) == XR_OK
        agree()
    # The seed allocates the chunk lazily: before the first gc, try_insert has no room (the ref's
    # count stays its caller's); after it, it has.
    assert inserted == [XR_ERR] * 4
    for each in (c_calls, py_calls):
        assert each.table_try_insert(table, each.ref_clone(refs[2])[1]) == XR_OK
        agree()
    for r in refs:
        assert c_calls.ref_drop(r) == XR_OK
    assert py_calls.table_drop(table) == XR_OK


def test_an_absent_function_raises_and_calls_nothing(lib: NativeLibrary) -> None:
    from externref_harness.native._calls import Calls

    given = {k: v for k, v in calls.addresses(lib).items() if k != "xr_table_stack_canary"}
    with pytest.raises(RuntimeError, match="xr_table_stack_canary was not given"):
        Calls(given).table_stack_canary(0)


def test_arguments_wrap_modulo_two_to_the_64_as_ctypes_takes_them(lib: NativeLibrary) -> None:
    c_calls, py_calls = _both(lib)
    r = c_calls.ref_new(8, 8, 0x1FF)[1]  # the fill byte is taken modulo 256 by both
    for each in (c_calls, py_calls):
        assert each.ref_strong_count(r - 2**64) == each.ref_strong_count(r) == (XR_OK, 1)
    assert ctypes.c_uint8.from_address(c_calls.ref_deref(r)[1]).value == 0xFF
    assert c_calls.ref_drop(r) == XR_OK
