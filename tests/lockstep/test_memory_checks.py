"""The memory checks' kept comparisons (`memory_checks.ChunkCompare`): after a step that passed, the
next one compares only the positions that changed, on either side. A change on the
implementation's side alone (the model's vectors the very same objects) must still be found.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

import pytest

from externref_harness.impl import heap as checking_heap
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import Probe, plain_config, plain_op
from externref_harness.lockstep.memory_checks import ChunkCompare, memory_problems
from externref_harness.lockstep.projection import RefMap
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG
from externref_harness.model import ops
from externref_harness.model.state import State, WasmFrame
from externref_harness.model.transition import run

STEPS = [ops.New(8, 8), ops.New(8, 8), ops.New(8, 8)]


@pytest.fixture
def passed() -> Iterator[tuple[State, Probe, RefMap, ChunkCompare]]:
    """A run of `STEPS` on the Python port, its probe checked once (and passing) with `chunk`."""
    impl = InProcessImpl()
    impl.start(plain_config(LOCKSTEP_CONFIG))
    try:
        refs = RefMap()
        for op in STEPS:
            for word, value in impl.step(plain_op(op)).allocated:
                refs.add(word, value)
        state = run(LOCKSTEP_CONFIG, STEPS)[-1][0]
        probe, chunk = impl.probe(), ChunkCompare()
        assert memory_problems(LOCKSTEP_CONFIG, state, probe, refs, chunk) == []
        yield state, probe, refs, chunk
    finally:
        impl.close()


def test_a_handle_only_the_implementation_changed_is_found(
    passed: tuple[State, Probe, RefMap, ChunkCompare],
) -> None:
    state, probe, refs, chunk = passed
    wrong = probe._replace(handles=probe.handles.set(1, probe.handles[0]))
    assert "host.handles" in {p.check for p in memory_problems(LOCKSTEP_CONFIG, state, wrong, refs, chunk)}


@pytest.mark.parametrize("model_sound", [False, True])
def test_a_ref_whose_facts_only_the_implementation_changed_is_checked_again(
    passed: tuple[State, Probe, RefMap, ChunkCompare], model_sound: bool
) -> None:
    """Whether or not the model's invariants held (`model_sound`: a ref the model freed is not
    searched for), a ref the model has live and the implementation freed is found."""
    state, probe, refs, chunk = passed
    freed = probe.refs[2]._replace(status=checking_heap.FREED)
    wrong = probe._replace(refs=probe.refs.set(2, freed))
    problems = memory_problems(LOCKSTEP_CONFIG, state, wrong, refs, chunk, model_sound=model_sound)
    assert [p.check for p in problems] == ["refs.reachable-freed"] and "ref 2" in problems[0].text



#: A run with a raw pointer, an initialised global and a Wasm frame whose slot 0 holds ref 1.
HOST_STEPS = [
    ops.New(8, 8),
    ops.New(8, 8),
    ops.AsRaw(0),
    ops.InitGlobals(2),
    ops.HostGlobalSet(0, 0),
    ops.CallWasm((1,)),
]


@pytest.fixture
def passed_host() -> Iterator[tuple[State, Probe, RefMap, ChunkCompare]]:
    """`HOST_STEPS` on the Python port, its probe checked once (and passing) with `chunk`."""
    impl = InProcessImpl()
    impl.start(plain_config(LOCKSTEP_CONFIG))
    try:
        refs = RefMap()
        for op in HOST_STEPS:
            for word, value in impl.step(plain_op(op)).allocated:
                refs.add(word, value)
        state = run(LOCKSTEP_CONFIG, HOST_STEPS)[-1][0]
        probe, chunk = impl.probe(), ChunkCompare()
        frame = state.frames[-1]
        assert isinstance(frame, WasmFrame) and frame.slots[0] == 1, "the Wasm frame holds ref 1"
        assert memory_problems(LOCKSTEP_CONFIG, state, probe, refs, chunk) == []
        yield state, probe, refs, chunk
    finally:
        impl.close()


def test_the_same_memory_passes_again(passed_host: tuple[State, Probe, RefMap, ChunkCompare]) -> None:
    state, probe, refs, chunk = passed_host
    assert memory_problems(LOCKSTEP_CONFIG, state, probe, refs, chunk) == []
    assert chunk.last_stack is not None and chunk.last_raws is not None and chunk.last_globals is not None


def test_a_stack_word_only_the_implementation_changed_is_found(
    passed_host: tuple[State, Probe, RefMap, ChunkCompare],
) -> None:
    state, probe, refs, chunk = passed_host
    frame = probe.frames[-1]
    wrong = probe._replace(frames=(*probe.frames[:-1], frame._replace(words=(0, *frame.words[1:]))))
    problems = memory_problems(LOCKSTEP_CONFIG, state, wrong, refs, chunk)
    assert [p.check for p in problems] == ["stack.slots"]


def test_a_raw_pointer_only_the_implementation_changed_is_found(
    passed_host: tuple[State, Probe, RefMap, ChunkCompare],
) -> None:
    state, probe, refs, chunk = passed_host
    (raw,) = probe.raws
    assert raw is not None
    wrong = probe._replace(raws=((raw[0], not raw[1]),))
    assert [p.check for p in memory_problems(LOCKSTEP_CONFIG, state, wrong, refs, chunk)] == ["host.raws"]


def test_a_global_only_the_implementation_changed_is_found(
    passed_host: tuple[State, Probe, RefMap, ChunkCompare],
) -> None:
    state, probe, refs, chunk = passed_host
    wrong = probe._replace(globals=(probe.globals[1], probe.globals[0]))
    assert [p.check for p in memory_problems(LOCKSTEP_CONFIG, state, wrong, refs, chunk)] == ["host.globals"]


def test_a_word_given_to_another_ref_is_checked_again(
    passed_host: tuple[State, Probe, RefMap, ChunkCompare],
) -> None:
    """The very same probe and state, but the words of refs 0 and 1 now name a third ref (a handle
    given out again, as `opaque-refs` may): the global and the frame's slot are checked again."""
    state, probe, refs, chunk = passed_host
    for word in refs.footers[:2]:
        refs.add(word, 0x1000 + word)
    problems = memory_problems(LOCKSTEP_CONFIG, state, probe, refs, chunk)
    assert {"host.globals", "stack.slots"} <= {p.check for p in problems}


def _chunk(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}Q", *words)


@pytest.fixture
def chunk_passed() -> tuple[ChunkCompare, RefMap]:
    """A chunk of 6 slots holding refs 0 and 1 in its first two (the bump finger at 2), compared
    once and matching."""
    refs = RefMap()
    refs.add(0x1000, 0x1008)
    refs.add(0x2000, 0x2008)
    chunk = ChunkCompare()
    assert chunk.problems(_chunk(0x1000, 0x2000, 0, 0, 0, 0), (0, 1, None, None, None, None), 2, refs) == []
    return chunk, refs


@pytest.mark.parametrize(
    "impl,model,filled,fails",
    [
        ((0x1000, 0x2000, 0, 0, 0, 0), (0, 1, None, None, None, None), 2, False),
        ((0x1000, 0x2000, 0x1000, 0, 0, 0), (0, 1, 0, None, None, None), 3, False),  # a slot filled
        ((0x1000, 0x2000, 0, 0, 0, 0x2000), (0, 1, None, None, None, None), 2, True),  # a wild word
        ((0x1000, 0x1000, 0, 0, 0, 0), (0, 1, None, None, None, None), 2, True),  # the impl's slot
        ((0x1000, 0x2000, 0, 0, 0, 0), (0, 0, None, None, None, None), 2, True),  # the model's slot
        ((0x1000, 0x2000, 0, 0, 0, 0), (0, 1, None, None, None, None), 1, True),  # the finger moved back
        ((0x1000, 0x2000, 0, 0, 0, 0), (0, 1, None, None, None, None), 4, False),  # forward, empty slots
    ],
)
def test_a_chunk_that_changed_since_one_matched_is_compared_where_it_changed(
    chunk_passed: tuple[ChunkCompare, RefMap],
    impl: tuple[int, ...],
    model: tuple[int | None, ...],
    filled: int,
    fails: bool,
) -> None:
    """Each verdict is the whole comparison's, made by a fresh `ChunkCompare` (`fails`)."""
    chunk, refs = chunk_passed
    whole = ChunkCompare().problems(_chunk(*impl), model, filled, refs)
    assert bool(whole) == fails
    assert [p.check for p in chunk.problems(_chunk(*impl), model, filled, refs)] == [p.check for p in whole]


def test_a_chunk_word_given_to_another_ref_is_compared_again(
    chunk_passed: tuple[ChunkCompare, RefMap],
) -> None:
    """The same bytes and slots, but the word in slot 1 now names a third ref (a handle given out
    again under `opaque-refs`): the slot no longer holds the model's ref 1."""
    chunk, refs = chunk_passed
    refs.add(0x2000, 0x3008)
    problems = chunk.problems(_chunk(0x1000, 0x2000, 0, 0, 0, 0), (0, 1, None, None, None, None), 2, refs)
    assert [p.check for p in problems] == ["table.chunk-slots"]
