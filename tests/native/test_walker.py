"""`_calls.Walker`: the harness's stack walked in C answers as the Python walk and lookup do.

The walker is driven as a library drives its `xr_stack`: its `trace` and `lookup` are called through
the struct at `walker.address`, with a visit callback that records the frames. Each answer is
compared with `StackView.trace` and `StackView.lookup` (through `native.backend.classify`) on the
same real stack region: frames of both kinds, a host frame without unwind info, a visit that
stops the walk, a frame pointer out of the region, a lookup that raises.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import pytest

from externref_harness.impl.backend import StackView
from externref_harness.impl.stack import OPAQUE_HOST_CODE, CodeRegistry, NativeStack
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG
from externref_harness.native import calls
from externref_harness.native.backend import classify
from externref_harness.native.library import XR_PC_HOST, VisitFn, XrStack, XrStackMap

if TYPE_CHECKING:
    from externref_harness.native._calls import Walker

pytestmark = pytest.mark.skipif(
    not calls.c_calls_available(), reason="the C calls are not used in this process (interpreted install)"
)

CFG = LOCKSTEP_CONFIG


def _made(classify_pc: Callable[[StackView, int], tuple[int, int, int]], with_lookup: bool = True) -> Walker:
    made = calls.stack_walker(classify_pc, OPAQUE_HOST_CODE, with_lookup)
    assert made is not None
    return made


def _view(opaque_at: int | None = None) -> StackView:
    """A stack of the initial host frame, then Wasm, host, Wasm, host, Wasm frames (the host frame
    at index `opaque_at` of those without unwind info)."""
    registry = CodeRegistry(CFG)
    stack = NativeStack()
    functions = registry.layout.functions
    for i in range(5):
        if i % 2 == 0:
            function = functions[i % len(functions)]
            stack.youngest.pc = function.call_sites[0].pc if stack.frames[-1].wasm else stack.youngest.pc
            stack.push_wasm([0x10 * i] * CFG.slots, [True] * CFG.slots, i % len(functions), function.start)
            stack.youngest.pc = function.call_sites[-1].pc
        else:
            stack.push_host(unwind_info=i != opaque_at, called_from_wasm=True, ret_slot=None)
    return StackView(CFG, stack, registry)


def _walk(walker: Walker, view: StackView, stop_after: int | None = None) -> list[tuple[int, int]]:
    """The frames the walker's trace visits (the first `stop_after`, if given)."""
    seen: list[tuple[int, int]] = []

    def visit(_walk: int | None, pc: int, sp: int) -> int:
        seen.append((pc, sp))
        return 0 if stop_after is not None and len(seen) >= stop_after else 1

    struct = ctypes.cast(walker.address, ctypes.POINTER(XrStack)).contents
    walker.walk_from(view)
    struct.trace(struct.ctx, VisitFn(visit), None)
    return seen


def _lookup(walker: Walker, pc: int) -> tuple[int, int, int]:
    struct = ctypes.cast(walker.address, ctypes.POINTER(XrStack)).contents
    out = XrStackMap()
    kind = struct.lookup(struct.ctx, pc, ctypes.byref(out))
    bits = ctypes.cast(out.bits, ctypes.c_void_p).value or 0
    return (kind, out.mapped_words, bits) if kind == 2 else (kind, 0, 0)


@pytest.fixture
def walker() -> Iterator[Walker]:
    yield _made(classify)


@pytest.mark.parametrize("opaque_at", [None, 1, 3])
def test_the_walk_visits_the_frames_the_python_walk_does(walker: Walker, opaque_at: int | None) -> None:
    view = _view(opaque_at)
    expected = list(view.trace())
    assert len(expected) == (6 if opaque_at is None else 5 - opaque_at)
    assert _walk(walker, view) == expected
    assert walker.take() is None
    assert _walk(walker, view, stop_after=2) == expected[:2]


def test_a_frame_pointer_out_of_the_region_ends_the_walk_where_the_python_walk_raises(walker: Walker) -> None:
    view = _view()
    stack = view._stack
    frame = stack.frames[-2]
    stack.store(frame.fp, stack.top + 4096)  # the saved fp of the frame below the youngest
    expected: list[tuple[int, int]] = []
    with pytest.raises(IndexError) as raised:
        for pc_sp in view.trace():
            expected.append(pc_sp)
    assert _walk(walker, view) == expected
    taken = walker.take()
    assert taken is not None
    fault, error = taken
    assert error is None and str(raised.value) == f"{fault:#x} is not a word of the stack region"


def test_each_pc_is_classified_as_the_registry_says_and_asked_once(walker: Walker) -> None:
    view = _view()
    asked: list[int] = []

    def counting(stack: StackView, pc: int) -> tuple[int, int, int]:
        asked.append(pc)
        return classify(stack, pc)

    counted = _made(counting)
    functions = view._registry.layout.functions
    sites = [s.pc for f in functions for s in f.call_sites]
    # Every call site (more than the walker keeps: those past its cache are asked each time),
    # then a walk's few pcs, each asked once however often it is looked up.
    few = [pc for pc, _ in view.trace()] + [0, 0x1234]
    for pcs in (sites, few):
        for each in (walker, counted):
            each.walk_from(view)
            assert [_lookup(each, pc) for pc in pcs] == [classify(view, pc) for pc in pcs]
            assert [_lookup(each, pc) for pc in pcs] == [classify(view, pc) for pc in pcs]
            assert each.take() is None
        if pcs is sites:
            asked.clear()
            counted = _made(counting)
    assert sorted(asked) == sorted(set(few))
    pcs = sites + few
    assert {classify(view, pc)[0] for pc in pcs} == {0, 1, 2}  # host, Wasm without a map, mapped


def test_what_a_lookup_raises_is_kept_and_the_pc_is_the_hosts(walker: Walker) -> None:
    def broken(stack: StackView, pc: int) -> tuple[int, int, int]:
        raise ValueError(f"no code at {pc:#x}")

    made = _made(broken)
    view = _view()
    made.walk_from(view)
    assert _lookup(made, 0x42)[0] == XR_PC_HOST
    taken = made.take()
    assert taken is not None
    fault, error = taken
    assert fault == 0 and isinstance(error, ValueError) and str(error) == "no code at 0x42"


def test_a_hook_called_outside_a_call_is_kept_as_the_python_hooks_keep_it(walker: Walker) -> None:
    struct = ctypes.cast(walker.address, ctypes.POINTER(XrStack)).contents
    struct.trace(struct.ctx, VisitFn(lambda *_: 1), None)
    taken = walker.take()
    assert taken is not None
    fault, error = taken
    assert fault == 0 and isinstance(error, AssertionError)
    assert str(error) == "trace called outside gc / insert_with_gc"


def test_without_lookup_the_struct_has_none() -> None:
    made = _made(classify, with_lookup=False)
    struct = ctypes.cast(made.address, ctypes.POINTER(XrStack)).contents
    assert ctypes.cast(struct.lookup, ctypes.c_void_p).value is None
