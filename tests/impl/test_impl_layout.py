"""The ctypes structures and the real memory placement against the seed's layout and `model.layout`."""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import replace

import pytest

from externref_harness.impl import mutants
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.code import WASM_CODE
from externref_harness.impl.externref import (
    DANGLING,
    PythonRuntime,
    VMExternData,
    VMExternRefActivationsTableDebug,
    VMExternRefActivationsTableRelease,
    VMExternRefTableAlloc,
)
from externref_harness.impl.heap import CheckingHeap
from externref_harness.impl.interface import plain_config, plain_op
from externref_harness.impl.stack import wasm_frame_bytes
from externref_harness.impl.values import AnyVTable
from externref_harness.impl.world import World
from externref_harness.lockstep.memory_checks import memory_problems
from externref_harness.lockstep.projection import RefMap
from externref_harness.model import layout, ops
from externref_harness.model.state import STACK_TOP, Config, HostFrame, WasmFrame, frame_sps
from externref_harness.model.transition import run
from externref_harness.search.space import MACHINE_BOUNDS

CFG = Config(chunk_size=2, slots=3, n_globals=2)


@pytest.fixture
def world() -> Iterator[World]:
    heap = CheckingHeap()
    yield World(CFG, heap, PythonRuntime)
    heap.release()


def _runtime(world: World) -> PythonRuntime:
    assert isinstance(world.rt, PythonRuntime)
    return world.rt


def _new(world: World, size: int, align: int) -> int:
    """`New` as the host does it: the value filled and watched, the allocation recorded."""
    h = world.op_New(ops.New(size, align))
    r = world.host.handles[h]
    assert r is not None
    world.host.clear(h)
    return r


def test_vm_extern_data_matches_the_seed_and_vm_offsets() -> None:
    assert ctypes.sizeof(VMExternData) == layout.EXTERN_DATA_SIZE
    assert ctypes.alignment(VMExternData) == layout.EXTERN_DATA_ALIGN
    assert VMExternData.ref_count.offset == layout.REF_COUNT_OFFSET == 0
    assert VMExternData.value_ptr.offset == layout.VALUE_PTR_OFFSET


@pytest.mark.parametrize("table", [VMExternRefActivationsTableDebug, VMExternRefActivationsTableRelease])
def test_table_alloc_comes_first_as_compiled_code_expects(table: type[ctypes.Structure]) -> None:
    # `VMOffsets::vm_extern_ref_activation_table_next()` = 0 and `_end()` = 8 (pointer size 8).
    assert table.alloc.offset == 0
    assert VMExternRefTableAlloc.next.offset == 0
    assert VMExternRefTableAlloc.end.offset == 8
    assert VMExternRefTableAlloc.chunk.offset == 16


def test_a_new_table_has_an_empty_chunk(world: World) -> None:
    alloc = _runtime(world).table.alloc
    assert (alloc.next, alloc.end, alloc.chunk.ptr, alloc.chunk.len) == (DANGLING,) * 3 + (0,)
    assert world.bump_capacity_remaining() == 0
    assert world.heap.live_blocks() == []


def test_vtables_are_laid_out_as_rustc_does() -> None:
    assert [AnyVTable.drop_in_place.offset, AnyVTable.size.offset, AnyVTable.align.offset] == [0, 8, 16]


@pytest.mark.parametrize("size,align", [*MACHINE_BOUNDS.layouts, (64, 64), (4096, 4096)])
def test_new_with_places_value_and_footer_by_layout_for(world: World, size: int, align: int) -> None:
    footer = _new(world, size, align)
    lay = layout.layout_for(size, align)
    ((_, start),) = world.allocations
    block = world.heap.block_at(footer)
    assert block is not None and block.live
    assert (block.start, block.size, block.align) == (start, lay.alloc_size, lay.alloc_align)
    assert start % lay.alloc_align == 0
    assert footer == start + lay.footer_offset and footer % layout.EXTERN_DATA_ALIGN == 0
    assert world.heap.peek(footer + layout.REF_COUNT_OFFSET) == 1
    assert world.heap.peek(footer + layout.VALUE_PTR_OFFSET) == start
    vtable = AnyVTable.from_address(world.heap.peek(footer + layout.VALUE_PTR_OFFSET + 8))
    assert (vtable.size, vtable.align) == (size, align)
    world.drop(footer)
    assert world.dropped == [start]
    assert world.heap.status(footer) == "freed"
    assert world.heap.reports == []


def test_the_chunk_is_allocated_by_the_first_sweep_and_freed_with_the_table(world: World) -> None:
    world.gc()
    alloc = _runtime(world).table.alloc
    assert alloc.chunk.len == CFG.chunk_size
    assert alloc.next == alloc.chunk.ptr and alloc.end == alloc.chunk.ptr + 8 * CFG.chunk_size
    assert world.bump_capacity_remaining() == 8 * CFG.chunk_size  # bytes, as the seed computes it
    world.drop_table()
    assert world.heap.live_blocks() == [] and world.heap.reports == []


def test_frames_sit_where_the_model_puts_them_and_the_walk_follows_them() -> None:
    steps = [
        ops.New(8, 8),
        ops.CallWasm((0,)),
        ops.WasmCallWasm((0,), 1),
        ops.WasmCallHost((0,), 2, unwind_info=False),
    ]
    impl = InProcessImpl()
    impl.start(plain_config(CFG))
    try:
        for op in steps:
            assert impl.step(plain_op(op)).result[0] == "ok"
        state = run(CFG, steps)[-1][0]
        probe = impl.probe()
        assert [STACK_TOP - sp for sp in frame_sps(state.frames)] == [
            probe.stack_top - f.sp for f in probe.frames
        ]
        assert [isinstance(f, WasmFrame) for f in state.frames] == [f.wasm for f in probe.frames]
        assert wasm_frame_bytes(CFG.slots) == CFG.slots * 8 + 16
        world = impl.world
        walked = list(world.stack.walk(world.registry.has_unwind_info))
        assert [sp for _, sp in walked] == [f.sp for f in reversed(world.stack.frames)][:1]
        # The youngest host frame has no unwind info: the walk stops there, as `backtrace` would.
        assert isinstance(state.frames[-1], HostFrame) and not state.frames[-1].unwind_info
        # Slot 0 of each Wasm frame holds the footer at sp + 0.
        ((footer, _),) = world.allocations
        assert [world.stack.load(f.sp) for f in world.stack.frames if f.wasm] == [footer, footer]
        # Each Wasm frame is suspended at a safepoint pc its callee saved as the return address.
        assert all(f.pc >= WASM_CODE for f in world.stack.frames if f.wasm)
    finally:
        impl.close()


def test_the_full_walk_reaches_the_host_main_frame() -> None:
    impl = InProcessImpl()
    impl.start(plain_config(CFG))
    try:
        for op in (ops.CallWasm(()), ops.WasmCallWasm((), 0), ops.WasmCallHost((), 0)):
            impl.step(plain_op(op))
        world = impl.world
        walked = [sp for _, sp in world.stack.walk(world.registry.has_unwind_info)]
        assert walked == [f.sp for f in reversed(world.stack.frames)]
    finally:
        impl.close()


@pytest.mark.parametrize("mutant", [mutants.FOOTER_VALUE_ALIGNED, mutants.FOOTER_ROUNDED_DOWN])
def test_the_raw_layout_check_fails_on_a_misplaced_footer(mutant: str) -> None:
    cfg = replace(CFG, mutant=mutant)
    impl = InProcessImpl()
    impl.start(plain_config(cfg))
    try:
        outcome = impl.step(plain_op(ops.New(1, 1)))
        refs = RefMap()
        for footer, value in outcome.allocated:
            refs.add(footer, value)
        state = run(cfg, [ops.New(1, 1)])[-1][0]
        problems = memory_problems(cfg, state, impl.probe(), refs)
        assert any("layout_for(1, 1) puts it at 8" in p.text for p in problems), problems
        assert {p.check for p in problems} >= {"layout.footer-offset"}
    finally:
        impl.close()


def test_dropping_the_table_drops_every_entry_once_then_frees_the_chunk(world: World) -> None:
    world.gc()  # allocates the chunk
    in_chunk, in_set = _new(world, 8, 8), _new(world, 16, 8)
    assert world.rt.try_insert(in_chunk)
    _runtime(world).insert_slow_without_gc(in_set)
    world.drop_table()
    assert sorted(world.dropped) == sorted(start for _, start in world.allocations)
    assert world.heap.live_blocks() == [] and world.heap.reports == []
