"""`InProcessImpl`: the interface of `impl.interface` served in this process, by a runtime backend
(the Python port, or a native library) and the host world on a fresh checking heap.

The gate's child process serves the same interface through one of these
(`isolation.child`), so what it reports is what an in-process run reports.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, TypeVar

from mypy_extensions import mypyc_attr

from externref_harness.changes import same
from externref_harness.impl.backend import BackendFactory
from externref_harness.impl.externref import PythonRuntime
from externref_harness.impl.heap import LIVE, Block, CheckingHeap
from externref_harness.impl.interface import (
    DROPPED,
    FrameFacts,
    PlainOp,
    PlainReport,
    Probe,
    RefFacts,
    Replayed,
    StepOutcome,
    TableFacts,
    op_from_plain,
    plain_report,
    record,
)
from externref_harness.impl.memory import reader
from externref_harness.impl.stack import Frame
from externref_harness.impl.world import World
from externref_harness.model import layout
from externref_harness.model.ops import Op
from externref_harness.model.state import Config, RawPtr
from externref_harness.vec import Vec

T = TypeVar("T")

#: `ref_count`, `value_ptr.data`, `value_ptr.vtable`: the footer's three words.
_FOOTER = struct.Struct("<3Q")
#: A vtable's `size` and `align` words, after its `drop_in_place` pointer.
_VTABLE = struct.Struct("<2Q")
#: The table's first four words, as `TableFacts` names them: `next`, `end`, the chunk's pointer and length.
_TABLE = struct.Struct("<4Q")
#: Largest chunk the probe reads (a wild chunk length must not make it read the address space).
MAX_PROBED_CHUNK_SLOTS = 1 << 16


@mypyc_attr(allow_interpreted_subclasses=True)  # tests derive lying adapters from it
class InProcessImpl:
    """A runtime backend (the Python port by default) driven by the host world in this process, on
    a fresh checking heap per run."""

    def __init__(self, runtime: BackendFactory = PythonRuntime) -> None:
        self._runtime = runtime
        self._heap: CheckingHeap | None = None
        self._world: World | None = None
        self._reported = 0
        self._dropped = 0
        self._allocated = 0
        #: The last config given to `start`, and the `Config` made of it.
        self._given: tuple[dict[str, Any], Config] | None = None

    @property
    def world(self) -> World:
        if self._world is None:
            raise RuntimeError("start() the implementation first")
        return self._world

    def start(self, config: Mapping[str, Any]) -> None:
        self.close()
        self._heap = CheckingHeap()
        self._world = World(self._config(config), self._heap, self._runtime)
        self._blocks: list[Block | None] = []
        self._vtables: dict[int, tuple[int, int]] = {}
        self._freed: dict[int, RefFacts] = {}
        #: Every ref's facts as the last probe read them.
        self._facts: list[RefFacts] = []
        #: Block start -> the refs whose footer words lie in that block (user bytes or redzone).
        self._refs_in: dict[int, list[int]] = {}
        #: Refs whose footer words no single block covers: read again by every probe.
        self._unblocked: list[int] = []
        self._reported = self._dropped = self._allocated = 0
        #: The last probe's facts of every ref (`Probe.refs`): each probe changes the items it read
        #: again and shares the rest.
        self._refs: Vec[RefFacts] = Vec()
        self._hashes: tuple[tuple[int, int], ...] = ()
        #: The last probe's table facts, and the blocks of the checking heap that hold all of them
        #: (the table's words, the chunk's slots); None: they are not all in blocks of this heap.
        self._table: TableFacts | None = None
        self._table_blocks: frozenset[int] | None = None
        self._table_at = 0
        #: The host's raw pointers and the globals as the last probe read them, and its facts of them.
        self._raws: tuple[tuple[RawPtr | None, ...], tuple[tuple[int, bool] | None, ...]] = ((), ())
        self._globals: tuple[list[int], tuple[bool, ...], tuple[int | None, ...]] = ([], (), ())

    def _config(self, config: Mapping[str, Any]) -> Config:
        """`config` checked and made a `Config`; the last one again when it is given again (every
        run of a search, and a child serves many: checking one costs a quarter of a start)."""
        if self._given is None or config != self._given[0]:
            self._given = (dict(config), Config.from_untyped(config))
        return self._given[1]

    def step(self, op: PlainOp, embedder_capacity: int | None = None) -> StepOutcome:
        return self._step(op_from_plain(op), embedder_capacity, verify=True)

    def step_op(self, op: Op, embedder_capacity: int | None = None) -> StepOutcome:
        """`step` given the op itself, by a lockstep in this process (`Lockstep._step_op`)."""
        return self._step(op, embedder_capacity, verify=True)

    def _step(self, op: Op, embedder_capacity: int | None, verify: bool) -> StepOutcome:
        world = self.world
        world.embedder_capacity = embedder_capacity
        result = world.apply(op)
        if verify or result[0] not in ("ok", "err"):
            world.heap.verify()
        dropped = world.dropped[self._dropped :]
        allocated = world.allocations[self._allocated :]
        self._dropped += len(dropped)
        self._allocated += len(allocated)
        return record(StepOutcome, (result, tuple(dropped), tuple(allocated), self._new_reports()))

    def replay(self, steps: Sequence[tuple[PlainOp, int | None]]) -> Iterator[Replayed]:
        """The steps, each as `step` runs it, without a probe between them (`probe()` after the
        last one reads the memory they left): how the lockstep reaches a run's start again along
        transitions already checked (`lockstep.runner.Lockstep.replay`). The caller stops taking
        steps where it wants; a step is run only when it is taken.

        The checking heap's `verify` (the writes its accessors did not see) runs after the last
        step, and after any step that did not return (a panic), not after each: it compares the
        heap with its shadow, so it finds at the end what a write left behind at any step. What
        the accessors see (a use after free, a double free) is reported at its step, as ever."""
        last = len(steps) - 1
        for i, (op, capacity) in enumerate(steps):
            outcome = self._step(op_from_plain(op), capacity, verify=i == last)
            yield record(Replayed, (outcome, self.world.stack.top, self.world.stack_canary()))

    def _new_reports(self) -> tuple[PlainReport, ...]:
        reports = self.world.heap.reports[self._reported :]
        self._reported += len(reports)
        return tuple(plain_report(r) for r in reports)

    def probe(self) -> Probe:
        """Memory by address and offset: footers, vtables, the table's words, the stack.

        A ref's footer, and the table's words and chunk (`_table_facts`), are read again only when
        the checking heap's write record says a block holding them changed
        (`CheckingHeap.take_changed`, after the step's `verify`): any other holds the bytes it held
        when last read, so its facts are the same."""
        world = self.world
        facts = self._facts
        allocations = world.allocations
        read: dict[int, RefFacts] = {}
        changed = world.heap.take_changed()
        for start in changed:
            for i in self._refs_in.get(start, ()):
                facts[i] = read[i] = self._ref_facts(i, *allocations[i])
        for i in self._unblocked:
            facts[i] = read[i] = self._ref_facts(i, *allocations[i])
        added: list[RefFacts] = []
        for i in range(len(facts), len(allocations)):
            footer, value = allocations[i]
            facts.append(self._ref_facts(i, footer, value))
            added.append(facts[i])
            block = self._blocks[i]
            if block is not None and block.holds_to(footer, _FOOTER.size):
                self._refs_in.setdefault(block.start, []).append(i)
            else:
                self._unblocked.append(i)
        # The heap-sized parts are persistent vectors: the refs' facts with the items read again
        # written (the leaves they fall in copied), the handles the host world's own; the
        # hashes are compared in place.
        if read or added:
            self._refs = self._refs.updated(read, added)
        self._hashes = _frozen(world.hashes, self._hashes)
        frames = tuple(
            record(
                FrameFacts,
                (
                    f.wasm,
                    f.sp,
                    _own_words(f, world.stack.words(f.sp, len(f.ref_typed))),
                    tuple(f.ref_typed),
                ),
            )
            for f in world.stack.frames
        )
        return record(
            Probe,
            (
                world.stack.top,  # stack_top
                world.stack_canary(),  # canary
                self._table_facts(changed),  # table
                self._refs,  # refs
                world.host.handles,  # handles
                self._hashes,  # hashes
                self._raw_facts(world.host.raws),  # raws
                self._global_facts(world),  # globals
                frames,
            ),
        )

    def _raw_facts(self, raws: list[RawPtr | None]) -> tuple[tuple[int, bool] | None, ...]:
        """The host's raw pointers as `(word, owned)`: the last probe's while the host holds the
        same `RawPtr`s (they are immutable, and the host's own: no memory of the implementation's)."""
        last, facts = self._raws
        if same(raws, last):
            return facts
        facts = tuple(None if p is None else (p.ref, p.owned) for p in raws)
        self._raws = (tuple(raws), facts)
        return facts

    def _global_facts(self, world: World) -> tuple[int | None, ...]:
        """Each global's word as the instance's memory holds it (None: never initialised), read
        again every probe; the last probe's tuple while the words and what is initialised are
        the same."""
        words = world.globals_memory[: len(world.global_initialised)]
        last_words, last_init, facts = self._globals
        if words == last_words and same(world.global_initialised, last_init):
            return facts
        initialised = tuple(world.global_initialised)
        facts = tuple(w if init else None for w, init in zip(words, initialised, strict=True))
        self._globals = (words, initialised, facts)
        return facts

    def _ref_facts(self, i: int, footer: int, value: int) -> RefFacts:
        """One allocation's facts. Its block is looked up once (blocks never move: freed ones are
        quarantined); the footer words of a live block are read as `_read` reads (directly where
        the checking heap maps them), and a vtable's size and align once per vtable address
        (vtables are static)."""
        heap = self.world.heap
        if i == len(self._blocks):
            self._blocks.append(heap.block_at(value if self.world.opaque else footer))
        block = self._blocks[i]
        known = self._freed.get(i)
        if known is not None:
            return known
        if self.world.opaque:
            return self._handle_facts(i, footer, value, block)
        if block is None:
            return record(RefFacts, (footer, value, heap.status(footer), 0, 0, 0, 0, 0, 0, 0, 0))
        status = LIVE if block.live else heap.status(footer)
        count = data = vtab = size = align = 0
        if status == LIVE:
            words = self._read(footer + layout.REF_COUNT_OFFSET, _FOOTER.size)
            count, data, vtab = (0, 0, 0) if words is None else _FOOTER.unpack(words)
            size, align = self._vtable(vtab)
        facts = record(
            RefFacts,
            (footer, value, status, count, data, vtab, size, align, block.start, block.size, block.align),
        )
        if not block.live:
            # A freed block stays freed (quarantined, poisoned): its facts never change again.
            self._freed[i] = facts
        return facts

    def _handle_facts(self, i: int, handle: int, value: int, block: Block | None) -> RefFacts:
        """`opaque-refs`: a ref's liveness read off its value, never at its handle: freed when the
        block the hooks gave for it is, dropped once `value_dropped` ran for it, live otherwise (a
        value outside the hooks' blocks is judged by its drop alone)."""
        if block is not None and not block.live:
            status = self.world.heap.status(value)
        elif i in self.world.dead:
            status = DROPPED
        else:
            status = LIVE
        start, size, align = (0, 0, 0) if block is None else (block.start, block.size, block.align)
        facts = record(RefFacts, (handle, value, status, 0, 0, 0, 0, 0, start, size, align))
        if block is not None and not block.live:
            self._freed[i] = facts
        return facts

    def _vtable(self, address: int) -> tuple[int, int]:
        """`size` and `align` of the vtable at `address` ((0, 0): not readable)."""
        got = self._vtables.get(address)
        if got is None:
            words = self._read(address + 8, _VTABLE.size) if address else None
            got = (0, 0) if words is None else _VTABLE.unpack(words)
            self._vtables[address] = got
        return got

    def _read(self, address: int, size: int) -> bytes | None:
        """`size` bytes at `address` (None: not all mapped readable). Straight from memory when
        this run's checking heap maps them all (`CheckingHeap.maps`: the table and chunk of a
        runtime that allocates through the hooks), else through `/proc/self/mem`
        (`impl.memory`), which answers None for an address nothing maps."""
        if size > 0 and self.world.heap.maps(address, size):
            return ctypes.string_at(address, size)
        return reader().read(address, size)

    def _table_facts(self, changed: set[int]) -> TableFacts:
        """The table's words and its chunk's slots. Read again only when the checking heap's write
        record says a block holding them changed (`changed`, as for the footers in `probe`):
        otherwise they hold the bytes they held at the last probe, and its facts are the same."""
        address = self.world.rt.table_address
        last, blocks = self._table, self._table_blocks
        if last is not None and blocks is not None and address == self._table_at:
            if blocks.isdisjoint(changed):
                return last
        self._table_at = address
        table = self._read(address, _TABLE.size)
        next_, end, chunk_ptr, chunk_len = (0, 0, 0, 0) if table is None else _TABLE.unpack(table)
        chunk = b""
        held: frozenset[int] | None = None
        if table is not None:
            held = self._held_by(address, _TABLE.size, frozenset())
        if chunk_len:
            ok = chunk_len <= MAX_PROBED_CHUNK_SLOTS
            chunk = (self._read(chunk_ptr, chunk_len * 8) if ok else None) or b""
            if len(chunk) != chunk_len * 8:
                self._table, self._table_blocks = None, None
                return record(TableFacts, (next_, end, chunk_ptr, chunk_len, None))
            held = None if held is None else self._held_by(chunk_ptr, chunk_len * 8, held)
        facts = record(TableFacts, (next_, end, chunk_ptr, chunk_len, chunk))
        self._table, self._table_blocks = facts, held
        return facts

    def _held_by(self, address: int, size: int, blocks: frozenset[int]) -> frozenset[int] | None:
        """`blocks` and the block of this run's checking heap whose user bytes and redzone hold
        all `size` bytes at `address` (its writes are in the write record); None if none does."""
        block = self.world.heap.block_at(address)
        if block is None or not block.holds_to(address, size):
            return None
        return blocks | {block.start}

    def finish(self) -> tuple[PlainReport, ...]:
        world = self.world
        world.drop_table()
        world.heap.verify()
        reports = self._new_reports() + tuple(plain_report(r) for r in world.heap.leaks())
        self.close()
        return reports

    def close(self) -> None:
        if self._world is not None:
            self._world.rt.close()
            self._world.stack.release()
        if self._heap is not None:
            self._heap.release()
        self._heap = None
        self._world = None


def _frozen(now: list[T], last: tuple[T, ...]) -> tuple[T, ...]:
    """`last` while `now` holds the same items, else `now` as a tuple."""
    return last if same(now, last) else tuple(now)


def _own_words(frame: Frame, words: tuple[int, ...]) -> tuple[int, ...]:
    """A frame's slots as the program holds them (`Frame.own_word`); the words as they are when
    no non-ref word stands in for a slot."""
    if not frame.planted:
        return words
    return tuple(frame.own_word(i, w) for i, w in enumerate(words))
