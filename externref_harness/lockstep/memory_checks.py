"""Raw memory against the model's state, read by address and offset.

Two levels of check, each named, so a report can say which rule an implementation broke and an
expectations file can name a known divergence:

    conformant  what any correct implementation of this design must satisfy: the host's handles,
                raw pointers, globals and Wasm slots hold the model's refs; no ref the model has
                live (above all, none it can reach) is freed by the checking heap; values sit at
                their alignment
    strict      the seed's layout: `ref_count` at footer offset 0, the footer where `layout_for`
                puts it, the block's size and alignment, a fat `value_ptr` whose vtable reads as
                rustc lays out a `dyn Any` vtable (drop, size, align), and the table's `alloc.next`
                / `alloc.end` / chunk at the offsets compiled code uses

A ref is the address of its `VMExternData`; the table is the address `RuntimeBackend.table_address`
gives. Nothing here looks at a runtime's objects.

A declared capability can rule checks out: `checks_ruled_out` is the one place that says which,
and why. Under `opaque-refs` a ref word is a handle, not a footer's address, so nothing is read at
it: the `layout.*` checks and the words' order (`observed.cmp-order`) do not apply, and a ref's
liveness is read off its value instead (the block holding the value, and whether `value_dropped`
has run for it: `impl.adapter`). Every behavioural check still applies.

The chunk is compared incrementally: its bytes are read in one go, and the slot-by-slot comparison
runs only over the slots that can hold a ref (below either side's bump finger); the rest must be
null bytes on the implementation's side and `None` in the model. After a chunk that matched, only
the slots either side changed since (`changes.changed_words` of the two reads, `changed_positions`
of the model's two tuples) and those a bump finger moved over are compared again: at chunk 512 a
step that fills one slot compares one, not 512.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

from externref_harness.changes import changed_positions, changed_words
from externref_harness.impl import heap as checking_heap
from externref_harness.impl.interface import FrameFacts, Probe, RefFacts
from externref_harness.lockstep.projection import RefMap
from externref_harness.model import capabilities, layout
from externref_harness.model.capabilities import OPAQUE_REFS
from externref_harness.model.state import (
    SCALAR,
    STACK_TOP,
    UNINIT,
    WORD,
    Box,
    Config,
    Frame,
    GlobalValue,
    RawPtr,
    State,
    WasmFrame,
    frame_sps,
)
from externref_harness.report import slot_runs
from externref_harness.specs.invariants import is_reachable, reachable_refs
from externref_harness.vec import Vec

Level = Literal["conformant", "strict"]
CONFORMANT: Level = "conformant"
STRICT: Level = "strict"

#: Every named check of this module and the projection, with its level.
CHECKS: dict[str, Level] = {
    # The observable projection (see `projection.py`).
    "observed.result": CONFORMANT,
    "observed.dropped": CONFORMANT,
    "observed.canary": CONFORMANT,
    "observed.faults": CONFORMANT,
    "observed.identity": CONFORMANT,
    "observed.cmp-order": CONFORMANT,
    # Capacity in slots is a choice to declare (`capacity-slots`); undeclared it fails every level.
    "observed.bump-capacity-bytes": CONFORMANT,
    "observed.drop-order": STRICT,
    # What the implementation says of itself (`xr_describe`).
    "seed.chunk-size": STRICT,
    # A misuse sent to the implementation too (`model.assertions`): the seed's assertion fires...
    "assert.fires": STRICT,
    # ... and whatever it did, nothing it can be asked about afterwards was corrupted or lost.
    "assert.state-kept": CONFORMANT,
    "observed.allocations": CONFORMANT,
    "heap.report": CONFORMANT,
    "heap.leak": CONFORMANT,
    # Refs.
    "refs.distinct": CONFORMANT,
    "refs.reachable-freed": CONFORMANT,
    "refs.liveness": CONFORMANT,
    "refs.value-alignment": CONFORMANT,
    "layout.footer-alignment": STRICT,
    "layout.block-alignment": STRICT,
    "layout.footer-offset": STRICT,
    "layout.block-size": STRICT,
    "layout.ref-count-offset": STRICT,
    "layout.value-ptr": STRICT,
    "layout.vtable": STRICT,
    # The table.
    "table.chunk-length": STRICT,
    "table.capacity-bytes": STRICT,
    "table.end": STRICT,
    "table.chunk-slots": STRICT,
    # The host's side, in memory.
    "host.handles": CONFORMANT,
    "host.raws": CONFORMANT,
    "host.globals": CONFORMANT,
    "stack.frames": CONFORMANT,
    "stack.slots": CONFORMANT,
    # Each declared capability (`model.capabilities`) is a choice the seed did not make: at the
    # strict level its `seed.<capability>` case of the gate fails (an expectations file may list it).
    **{f"seed.{name}": STRICT for name in capabilities.NAMES},
}


#: The checks that read the seed's `VMExternData` at a ref's word (the ref is the footer's address).
FOOTER_LAYOUT_CHECKS: tuple[str, ...] = (
    "layout.footer-alignment",
    "layout.block-alignment",
    "layout.footer-offset",
    "layout.block-size",
    "layout.ref-count-offset",
    "layout.value-ptr",
    "layout.vtable",
)


@dataclass(frozen=True, slots=True)
class RuledOut:
    """A check that does not apply to an implementation, and the capability that rules it out."""

    check: str
    capability: str
    reason: str

    def __str__(self) -> str:
        return f"{self.check} ({self.capability}: {self.reason})"


def checks_ruled_out(capabilities: Iterable[str]) -> tuple[RuledOut, ...]:
    """Every check the declared capabilities rule out, with why: such a check is not run (its
    problems never fail a step) and the gate lists it among what did not apply."""
    declared = set(capabilities)
    out: list[RuledOut] = []
    if OPAQUE_REFS in declared:
        out += [
            RuledOut(name, OPAQUE_REFS, "a ref word is a handle, not the address of a VMExternData footer")
            for name in FOOTER_LAYOUT_CHECKS
        ]
        out.append(
            RuledOut(
                "observed.cmp-order",
                OPAQUE_REFS,
                "cmp need not follow the words' order; it must be a total order consistent with eq "
                "(observed.identity)",
            )
        )
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Problem:
    """One failed check: its name (a key of `CHECKS`) and what was seen."""

    check: str
    text: str

    @property
    def level(self) -> Level:
        return CHECKS[self.check]

    def __str__(self) -> str:
        return f"[{self.check}] {self.text}"


class ChunkCompare:
    """What the last steps verified, so unchanged memory costs one comparison: the last chunk
    compared, each ref whose facts and model box passed every check, and the handles, raw
    pointers, globals and stack that last matched (the name is the first of these it kept).

    Invariant relied on: a ref whose (facts, box) pair passed the per-ref checks passes them again
    while the pair is unchanged (the checks are functions of the pair, and of reachability only
    for a ref that fails). So a step re-checks only the refs whose box or facts changed since the
    last step (`Vec.changed_positions` of the two heaps and the two facts vectors) and the refs
    that did not pass last time: its cost follows what it touched, not the heap's size. Every
    other ref was checked with the same pair before, which is what `verified` used to re-confirm
    one ref at a time."""

    def __init__(self) -> None:
        #: The last chunk that matched the model's: its bytes, the model's slots, how many slots
        #: were compared as refs (below either bump finger), and `RefMap.remapped` then.
        self._last: tuple[bytes, Sequence[object], int, int] | None = None
        #: Ref id -> the (facts, box) that last passed; the same pair again needs no re-check.
        self.verified: dict[int, tuple[RefFacts, Box]] = {}
        #: The model's heap and the implementation's facts the last step checked.
        self.last_heap: Vec[Box] = Vec()
        self.last_facts: Vec[RefFacts] = Vec()
        #: Refs checked last step that did not pass.
        self.unverified: set[int] = set()
        #: The (model, implementation) handles that last matched, if the last step's did.
        self.last_handles: tuple[Vec[int | None], Vec[int | None]] | None = None
        #: The (model, implementation) raw pointers that last matched, if the last step's did.
        self.last_raws: tuple[tuple[RawPtr | None, ...], tuple[tuple[int, bool] | None, ...]] | None = None
        #: The globals that last matched, if the last step's did, and `RefMap.remapped` then.
        self.last_globals: tuple[tuple[GlobalValue, ...], tuple[int | None, ...], int] | None = None
        #: The stack that last matched, if the last step's did: the model's frames, the probe's
        #: frames and stack top, and `RefMap.remapped` then (`_stack_problems`).
        self.last_stack: tuple[tuple[Frame, ...], tuple[FrameFacts, ...], int, int] | None = None

    def problems(
        self, chunk: bytes, model_chunk: Sequence[object], filled: int, refs: RefMap
    ) -> list[Problem]:
        slots = len(chunk) // 8
        k = min(slots, filled)
        last, self._last = self._last, None
        if last is not None and len(last[0]) == len(chunk) and last[3] == refs.remapped:
            # Only the slots either side changed, and those the bump fingers moved over, can
            # differ from a comparison that passed (`RefMap` names the other words as it did).
            positions = set(changed_words(last[0], chunk))
            positions.update(changed_positions(last[1], model_chunk))
            positions.update(range(min(last[2], k), max(last[2], k)))
            if all(_slot_matches(chunk, model_chunk, i, k, refs) for i in positions):
                self._last = (chunk, model_chunk, k, refs.remapped)
                return []
        head = tuple(refs.slot(w) for w in struct.unpack_from(f"<{k}Q", chunk))
        same = (
            head == tuple(model_chunk[:k])
            and chunk.count(0, k * 8) == (slots - k) * 8
            and all(x is None for x in model_chunk[k:])
        )
        if same:
            self._last = (chunk, model_chunk, k, refs.remapped)
            return []
        full = tuple(refs.slot(w) for w in struct.unpack(f"<{slots}Q", chunk))
        first = next(
            (i for i in range(max(len(full), len(model_chunk))) if _at(full, i) != _at(model_chunk, i)),
            None,
        )
        where = "" if first is None else f" (first difference at slot {first})"
        text = f"model {_cut(model_chunk)}, impl {_cut(full)}{where}"
        return [Problem("table.chunk-slots", text)]


def _slot_matches(chunk: bytes, model_chunk: Sequence[object], i: int, k: int, refs: RefMap) -> bool:
    """Slot `i` as `ChunkCompare.problems` compares it whole: below `k` the word names the model's
    ref (or is null where the model's slot is None); from `k` on both are empty."""
    word = int.from_bytes(chunk[8 * i : 8 * i + 8], "little")
    model = model_chunk[i] if i < len(model_chunk) else "(absent)"
    if i < k:
        return refs.slot(word) == model
    return word == 0 and model is None


def _at(slots: Sequence[object], i: int) -> object:
    return slots[i] if i < len(slots) else "(absent)"


def _cut(slots: Sequence[object], keep: int = 8) -> str:
    """A long chunk summarised as runs of equal slots (`report.slot_runs`)."""
    if len(slots) <= 2 * keep:
        return repr(tuple(slots))
    return slot_runs(slots)


def memory_problems(
    cfg: Config,
    state: State,
    probe: Probe,
    refs: RefMap,
    chunk: ChunkCompare | None = None,
    model_sound: bool = False,
) -> list[Problem]:
    """Every way the implementation's memory disagrees with the model's state. `model_sound`: the
    model's invariants were checked at `state` and held, so by I1 no ref its heap has freed is
    reachable (a ref both sides freed is then not searched for among the handles)."""
    chunk = chunk or ChunkCompare()
    out = _ref_problems(state, probe, chunk, seed_layout=not cfg.has(OPAQUE_REFS), model_sound=model_sound)
    out += _table_problems(cfg, state, probe, refs, chunk)
    out += _handle_problems(state, probe, refs, chunk)
    out += _raw_problems(state, probe, refs, chunk)
    out += _global_problems(state, probe, refs, chunk)
    out += _stack_problems(state, probe, refs, chunk)
    return out


def _raw_problems(state: State, probe: Probe, refs: RefMap, chunk: ChunkCompare) -> list[Problem]:
    """`host.raws`. Raw pointers that matched at the last step match again while both sides' are
    the same objects: the check compares words with `RefMap.footers`, which only grows."""
    last = chunk.last_raws
    if last is not None and last[0] is state.raws and last[1] is probe.raws:
        return []
    chunk.last_raws = None
    if _same_raws(state.raws, probe.raws, refs):
        chunk.last_raws = (state.raws, probe.raws)
        return []
    # Shown as the model's `RawPtr`s are; a word no ref has reads as `?0x...`.
    raws = ", ".join(
        "None" if p is None else f"RawPtr(ref={refs.ref(p[0])}, owned={p[1]})" for p in probe.raws
    )
    return [Problem("host.raws", f"model {state.raws}, impl ({raws}{',' if len(probe.raws) == 1 else ''})")]


def _global_problems(state: State, probe: Probe, refs: RefMap, chunk: ChunkCompare) -> list[Problem]:
    """`host.globals`. Globals that matched at the last step match again while both sides' are
    the same objects and no known word was given to another ref (`RefMap.remapped`, as for the
    stack in `_stack_problems`)."""
    key = (state.globals, probe.globals, refs.remapped)
    last = chunk.last_globals
    if last is not None and last[0] is key[0] and last[1] is key[1] and last[2] == key[2]:
        return []
    chunk.last_globals = None
    globals_ = tuple(UNINIT if g is None else refs.slot(g) for g in probe.globals)
    if globals_ != state.globals:
        return [Problem("host.globals", f"model {state.globals}, impl {globals_}")]
    chunk.last_globals = key
    return []


def _same_raws(model: Sequence[RawPtr | None], impl: Sequence[tuple[int, bool] | None], refs: RefMap) -> bool:
    """Each raw pointer holds the word of the model's ref. Compared as words, not as the ids the
    words map to: a borrowed raw pointer outlives its ref, and under `opaque-refs` a later ref may
    be given the dead ref's handle (its word then maps to the new id)."""
    if len(model) != len(impl):
        return False
    for m, i in zip(model, impl, strict=True):
        if m is None or i is None:
            if (m is None) != (i is None):
                return False
        elif i[1] != m.owned or not 0 <= m.ref < len(refs.footers) or refs.footers[m.ref] != i[0]:
            return False
    return True


def _handle_problems(state: State, probe: Probe, refs: RefMap, chunk: ChunkCompare) -> list[Problem]:
    """`host.handles`; after a step whose handles matched, only the positions either side changed
    are translated and compared (an address names one ref for the whole run)."""
    last = chunk.last_handles
    if last is not None and last[0] is state.handles and last[1] is probe.handles:
        return []  # neither side changed: the same pair matched last step
    chunk.last_handles = None
    if last is not None and len(state.handles) == len(probe.handles):
        positions = set(state.handles.changed_positions(last[0]))
        positions.update(probe.handles.changed_positions(last[1]))
        if all(_handle(probe.handles[i], refs) == state.handles[i] for i in positions):
            chunk.last_handles = (state.handles, probe.handles)
            return []
    handles = tuple(_handle(a, refs) for a in probe.handles)
    if handles != state.handles:
        return [Problem("host.handles", f"model {state.handles}, impl {handles}")]
    chunk.last_handles = (state.handles, probe.handles)
    return []


def _handle(address: int | None, refs: RefMap) -> int | str | None:
    return None if address is None else refs.ref(address)


def _ref_problems(
    state: State, probe: Probe, chunk: ChunkCompare, seed_layout: bool = True, model_sound: bool = False
) -> list[Problem]:
    verified = chunk.verified
    out: list[Problem] = []
    if len(probe.refs) != len(state.heap):
        out.append(
            Problem(
                "observed.allocations",
                f"the model allocated {len(state.heap)} refs, the implementation {len(probe.refs)}",
            )
        )
    heap, facts_now = state.heap, probe.refs
    if heap is chunk.last_heap and facts_now is chunk.last_facts and not chunk.unverified:
        return out  # neither side changed, and every ref passed last step
    asked: list[int] = []
    reachable_set: list[set[int]] = []

    def reachable(r: int) -> bool:
        # A ref the model freed in a state that holds I1 is not reachable: no search (it costs
        # as many comparisons as there are handles). Otherwise a step frees a ref or two: each is
        # searched for in place. A sweep that frees many builds the set once instead (a search
        # costs about a tenth of building the set).
        if model_sound and heap[r].freed:
            return False
        if reachable_set:
            return r in reachable_set[0]
        asked.append(r)
        if len(asked) > 8:
            reachable_set.append(reachable_refs(state))
            return r in reachable_set[0]
        return is_reachable(state, r)

    candidates = set(heap.changed_positions(chunk.last_heap))
    candidates.update(facts_now.changed_positions(chunk.last_facts))
    candidates |= chunk.unverified
    chunk.last_heap, chunk.last_facts = heap, facts_now
    unverified: set[int] = set()
    for r in sorted(candidates):
        if r >= len(heap) or r >= len(facts_now):
            continue
        box, facts = heap[r], facts_now[r]
        if verified.get(r) == (facts, box):
            continue
        found = len(out)
        _one_ref_problems(r, box, facts, reachable, out, seed_layout)
        if len(out) == found and (facts.status == checking_heap.LIVE) != box.freed:
            verified[r] = (facts, box)
        else:
            unverified.add(r)
    chunk.unverified = unverified
    return out


def _one_ref_problems(
    r: int,
    box: Box,
    facts: RefFacts,
    is_reachable: Callable[[int], bool],
    out: list[Problem],
    seed_layout: bool = True,
) -> None:
    at = f"ref {r} (footer {facts.footer:#x})" if seed_layout else f"ref {r} (handle {facts.footer:#x})"
    if facts.value % box.align:
        out.append(Problem("refs.value-alignment", f"{at}: value at {facts.value:#x}, align {box.align}"))
    if facts.status != checking_heap.LIVE:
        # Asked of the checking heap (and, for a handle, of the drop log), not of the
        # implementation (nor of the model).
        if is_reachable(r):
            text = f"{at}: reachable, yet the checking heap says {facts.status}"
            out.append(Problem("refs.reachable-freed", text))
        elif not box.freed:
            text = f"{at}: the model has it live, the checking heap says {facts.status}"
            out.append(Problem("refs.liveness", text))
        return
    if box.freed:
        out.append(
            Problem("refs.liveness", f"{at}: the model freed it, the checking heap says {facts.status}")
        )
        return
    if seed_layout:
        out += _seed_layout_problems(at, box.size, box.align, box.ref_count, facts)


def new_ref_problems(before: State, allocated: Sequence[tuple[int, int]], refs: RefMap) -> list[Problem]:
    """A ref a step made has a word and a value address no ref the model has live has
    (`refs.distinct`): a footer address or a handle names one box, and a value address one value
    (its identity: `value_dropped` names it), for as long as it lives; only a freed ref's may be
    given out again."""

    def live(r: int | str) -> bool:
        return isinstance(r, int) and r < len(before.heap) and not before.heap[r].freed

    out = []
    for word, value in allocated:
        r, v = refs.ref(word), refs.value(value)
        if live(r):
            text = f"the new ref's word {word:#x} is that of ref {r}, which is live: the two alias one box"
            out.append(Problem("refs.distinct", text))
        elif live(v):
            text = f"the new ref's value is at {value:#x}, where live ref {v}'s value is"
            out.append(Problem("refs.distinct", text))
    return out


def _seed_layout_problems(at: str, size: int, align: int, ref_count: int, facts: RefFacts) -> list[Problem]:
    out: list[Problem] = []
    lay = _layout_for(size, align)
    if facts.footer % layout.EXTERN_DATA_ALIGN:
        out.append(
            Problem("layout.footer-alignment", f"{at}: the footer is not {layout.EXTERN_DATA_ALIGN}-aligned")
        )
    if facts.block_start % lay.alloc_align:
        out.append(
            Problem(
                "layout.block-alignment",
                f"{at}: the block at {facts.block_start:#x} is not {lay.alloc_align}-aligned",
            )
        )
    if facts.footer - facts.block_start != lay.footer_offset:
        out.append(
            Problem(
                "layout.footer-offset",
                f"{at}: the footer is at offset {facts.footer - facts.block_start}, "
                f"layout_for({size}, {align}) puts it at {lay.footer_offset}",
            )
        )
    if facts.block_size != lay.alloc_size:
        out.append(
            Problem(
                "layout.block-size",
                f"{at}: a block of {facts.block_size} bytes, layout_for says {lay.alloc_size}",
            )
        )
    if facts.ref_count != ref_count:
        out.append(
            Problem(
                "layout.ref-count-offset",
                f"{at}: the word at footer offset {layout.REF_COUNT_OFFSET} is {facts.ref_count}, "
                f"the model's ref_count is {ref_count}",
            )
        )
    if facts.value_ptr_data != facts.block_start:
        out.append(
            Problem(
                "layout.value-ptr", f"{at}: value_ptr is {facts.value_ptr_data:#x}, not the block's start"
            )
        )
    if (facts.vtable_size, facts.vtable_align) != (size, align):
        out.append(
            Problem(
                "layout.vtable",
                f"{at}: value_ptr's vtable says size {facts.vtable_size} align "
                f"{facts.vtable_align}, the value has size {size} align {align}",
            )
        )
    return out


@cache
def _layout_for(value_size: int, value_align: int) -> layout.ExternLayout[int]:
    return layout.layout_for(value_size, value_align)


def _table_problems(
    cfg: Config, state: State, probe: Probe, refs: RefMap, chunk: ChunkCompare
) -> list[Problem]:
    table, facts = state.table, probe.table
    if facts.chunk_len != len(table.chunk) or facts.chunk is None:
        return [
            Problem(
                "table.chunk-length", f"the chunk has {facts.chunk_len} slots, the model's {len(table.chunk)}"
            )
        ]
    out: list[Problem] = []
    # The words compiled code reads are addresses, so their difference is in bytes whatever unit
    # `bump_capacity_remaining` answers in (`capacity-slots` changes only the answer).
    capacity = (len(table.chunk) - table.next) * WORD
    if facts.end - facts.next != capacity:
        out.append(
            Problem(
                "table.capacity-bytes",
                f"end - next = {facts.end - facts.next}, the model's capacity is {capacity} bytes",
            )
        )
    if facts.chunk_len and facts.end != facts.chunk_ptr + facts.chunk_len * layout.EXTERN_DATA_ALIGN:
        out.append(
            Problem("table.end", f"end {facts.end:#x} is not just after the chunk at {facts.chunk_ptr:#x}")
        )
    impl_filled = (facts.next - facts.chunk_ptr) // 8 if facts.chunk_len else 0
    filled = max(table.next, impl_filled)
    out += chunk.problems(facts.chunk, table.chunk, filled, refs)
    return out


def _stack_problems(state: State, probe: Probe, refs: RefMap, chunk: ChunkCompare) -> list[Problem]:
    """`stack.frames` and `stack.slots`. A stack that matched at the last step matches again while
    the model's frames are the same object, the probe's frames and stack top are equal, and no
    known word was given to another ref (`RefMap.remapped`: a handle given out again under
    `opaque-refs`). The checks are functions of those and of what `RefMap` says of the frames'
    words, and in a stack that matched every word is null, a scalar, or a known ref's: a ref
    added under a new word changes what no such word says."""
    key = (state.frames, probe.frames, probe.stack_top, refs.remapped)
    last = chunk.last_stack
    if last is not None and last[0] is key[0] and last[1:] == key[1:]:
        return []
    out = _stack_problems_now(state, probe, refs)
    chunk.last_stack = None if out else key
    return out


def _stack_problems_now(state: State, probe: Probe, refs: RefMap) -> list[Problem]:
    if len(probe.frames) != len(state.frames):
        return [
            Problem(
                "stack.frames", f"{len(state.frames)} frames in the model, {len(probe.frames)} on the stack"
            )
        ]
    out: list[Problem] = []
    for i, (frame, sp, facts) in enumerate(
        zip(state.frames, frame_sps(state.frames), probe.frames, strict=True)
    ):
        if isinstance(frame, WasmFrame) != facts.wasm:
            out.append(Problem("stack.frames", f"frame {i}: Wasm in one, host in the other"))
            continue
        if STACK_TOP - sp != probe.stack_top - facts.sp:
            out.append(
                Problem(
                    "stack.frames",
                    f"frame {i}: sp is {probe.stack_top - facts.sp} bytes below the top, "
                    f"the model's {STACK_TOP - sp}",
                )
            )
        if isinstance(frame, WasmFrame):
            words = tuple(
                SCALAR if not typed else refs.slot(w)
                for w, typed in zip(facts.words, facts.ref_typed, strict=True)
            )
            if words != frame.slots:
                out.append(Problem("stack.slots", f"frame {i} slots: model {frame.slots}, impl {words}"))
    return out
