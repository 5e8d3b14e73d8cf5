"""The compiled code's static layout, and the non-ref words suspended frames hold where no map is.

The layout is what makes a registry lookup bug visible: several functions per module, a call site
per stack map and call sites without one, a function's first call site unmapped right after the
previous function's last mapped one. The non-ref words are what the wrong map then reads, and
touching any of them must be seen by the lockstep.
"""

from __future__ import annotations

import ctypes

import pytest

from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.code import (
    FUNCTIONS_PER_MODULE,
    MAX_LAYOUT_SLOTS,
    MODULES,
    PC_STEP,
    all_maps,
    code_layout,
)
from externref_harness.impl.heap import LIVE
from externref_harness.impl.nonref import KINDS
from externref_harness.impl.stack import CodeRegistry
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, Lockstep
from externref_harness.model import ops
from externref_harness.model.runtime import CVE_2021_39218
from externref_harness.model.state import Config, WasmFrame
from externref_harness.model.world import lookup_stack_map


@pytest.mark.parametrize("slots", [1, 3, 4])
def test_modules_have_several_functions_with_a_call_site_per_map_and_unmapped_ones(slots: int) -> None:
    layout = code_layout(slots)
    assert len(layout.modules) == MODULES >= 2
    assert all(len(m.functions) == FUNCTIONS_PER_MODULE >= 3 for m in layout.modules)
    for function in layout.functions:
        pcs = [s.pc for s in function.call_sites]
        assert pcs == sorted(set(pcs)) and function.start < pcs[0] and pcs[-1] < function.end
        maps = [s.stack_map for s in function.call_sites if s.stack_map is not None]
        assert set(maps) == set(all_maps(slots))
        assert sum(s.stack_map is None for s in function.call_sites) > len(maps) // 2
        # The first call site has no map: a pc before the function's first entry.
        assert function.call_sites[0].stack_map is None
    for module in layout.modules:
        for before, after in zip(module.functions, module.functions[1:], strict=False):
            # Ranges are adjacent; the previous function's last call site is mapped and is the
            # last pc before this function's first call site.
            assert before.end == after.start
            assert before.call_sites[-1].stack_map is not None
            assert after.call_sites[0].pc - before.call_sites[-1].pc == 2 * PC_STEP
    with pytest.raises(ValueError, match="1 to 8 slots"):
        code_layout(MAX_LAYOUT_SLOTS + 1)


def test_a_frame_stops_at_the_call_site_with_exactly_its_map() -> None:
    layout = code_layout(3)
    for function in range(len(layout.functions)):
        for stack_map in all_maps(3):
            for turn in (0, 1):
                pc = layout.call_site(function, stack_map, None, turn)
                assert layout.exact_map(pc) == stack_map
                assert layout.function_at(pc) is layout.functions[function]
            # Without a map: after the call site of its last map (no exact entry, the nearest
            # earlier one in the function is that map) or, never mapped, the first call site.
            pc = layout.call_site(function, None, stack_map, 0)
            assert layout.exact_map(pc) is None and layout.nearest_earlier_map(pc) == stack_map
        first = layout.call_site(function, None, None, 0)
        assert first == layout.functions[function].call_sites[0].pc
        assert layout.exact_map(first) is None and layout.nearest_earlier_map(first) is None
    # The map of every slot has two call sites; the turn picks one, deterministically.
    full = (0, 1, 2)
    assert layout.call_site(0, full, None, 0) != layout.call_site(0, full, None, 1)
    assert layout.function_at(layout.functions[-1].end) is None
    assert layout.function_at(layout.functions[0].start - 1) is None


def test_the_host_world_s_lookup_agrees_with_the_model_under_cve_2021_39218() -> None:
    """The layout places the no-map call site after the frame's last map, so the fallback lookup
    of the host world's mutant reads the model's `previous_stack_map`."""
    cfg = Config(slots=3, mutant=CVE_2021_39218)
    registry = CodeRegistry(cfg)
    layout = registry.layout
    for last in (None, *all_maps(3)):
        pc = layout.call_site(1, None, last, 0)
        model = lookup_stack_map(cfg, WasmFrame(slots=(None,) * 3, previous_stack_map=last))
        assert registry.stack_map_at(cfg, pc) == model
        assert registry.stack_map_at(Config(slots=3), pc) is None


def _suspended(steps: list[ops.Op]) -> InProcessImpl:
    adapter = InProcessImpl()
    run = Lockstep(LOCKSTEP_CONFIG, adapter)
    for op in steps:
        check = run.step(op)
        assert check.impl_problem is None and check.model_problem is None, op
    return adapter


def _calls(turns: int) -> list[ops.Op]:
    """Two refs made, one freed; a frame holding the other in slot 0 calls out `turns` times."""
    start: list[ops.Op] = [ops.New(24, 8), ops.New(8, 8), ops.Drop(1), ops.CallWasm((0,))]
    return start + [ops.WasmCallHost((), 1), ops.ReturnToWasm(None)] * turns


def test_every_slot_without_a_live_ref_holds_a_non_ref_word_while_suspended() -> None:
    kinds: set[str] = set()
    for turns in range(1, 6):
        adapter = _suspended(_calls(turns)[:-1])
        world = adapter.world
        frame = world.stack.frames[-2]
        assert frame.wasm and set(frame.planted) == {1, 2}  # slot 0 holds the live ref
        (live,) = [f for f, _ in world.allocations if world.heap.status(f) == LIVE]
        for i, (own, planted, kind) in frame.planted.items():
            assert planted not in (0, live) and own == 0
            assert world.stack.load(frame.sp + 8 * i) == planted
            kinds.add(kind)
    assert kinds == set(KINDS)
    # Back in the frame, its slots hold their own words.
    adapter.step(("ReturnToWasm", None))
    frame = world.stack.frames[-1]
    assert not frame.planted and world.stack.load(frame.sp + 8) == 0


@pytest.mark.parametrize("turns", range(1, 6))
def test_a_runtime_that_touches_a_non_ref_word_is_caught(turns: int) -> None:
    """What a runtime that reads a frame with the wrong map does to a word it takes for a ref:
    increments its count (a clone into the precise roots). Every kind is seen at the next step."""
    steps = _calls(turns)
    run = Lockstep(LOCKSTEP_CONFIG, adapter := InProcessImpl())
    for op in steps[:-1]:
        assert run.step(op).impl_problem is None
    frame = adapter.world.stack.frames[-2]
    for _, word, kind in frame.planted.values():
        if kind == "scalar":
            continue  # in no mapping: a native runtime would crash on it (a child's failure)
        cell = ctypes.c_uint64.from_address(word)
        cell.value = (cell.value + 1) & (2**64 - 1)
        check = run.step(ops.StackCanary())
        assert check.impl_problem is not None, kind
    run.close()
