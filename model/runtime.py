"""The seed's runtime semantics, mirrored statement by statement on a mutable working copy.

`SeedRuntime` is `externref.rs` with refs as small ints: `VMExternRef` clone/drop, the
`VMExternRefActivationsTable` (bump chunk + `over_approximated_stack_roots` + `precise_stack_roots`)
and `gc`. Reading a method beside the seed's function of the same name should show the same steps
in the same order, including the oddities (documented where they occur).

A transition (`model.transition.step`) runs one operation on a copy-on-write working copy of an
immutable `State` and freezes the result, so the model as a whole stays a pure function. Only the
parts a step touches are thawed into lists and sets (on first access: `SeedRuntime`'s
properties), and freezing reuses the state's own tuples for every part left untouched, so a step
that does not touch the table costs nothing for the size of the bump chunk.

Faults a sanitizer would report (a count bumped in freed or non-ref memory, a double free) are
recorded in `faults` instead of crashing; debug assertions raise `DebugAssertion`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from mypy_extensions import mypyc_attr

from externref_harness.model import layout
from externref_harness.model.capabilities import CAPACITY_SLOTS
from externref_harness.model.observation import GC_NOT_OKAY
from externref_harness.model.protocol import RuntimeApi
from externref_harness.model.state import WORD, Box, Config, Scalar, Slot, State, Table
from externref_harness.vec import Vec

# Model-level seeded bugs (see `model.mutants`).
CVE_2021_39218 = "cve-2021-39218"
CVE_2022_24791 = "cve-2022-24791"
CVE_2022_31146 = "cve-2022-31146"
CVE_2022_23636 = "cve-2022-23636"
SWEEP_WITHOUT_CANARY = "sweep-without-canary"
PRECISE_ROOT_UNCOUNTED = "precise-root-uncounted"
HASHSET_DUPLICATE_LEAKS = "hashset-duplicate-leaks"


# Fault kinds: what a sanitizer would report.
FAULT_USE_AFTER_FREE = "use-after-free"
FAULT_DOUBLE_DROP = "double-drop"
FAULT_WILD_POINTER = "wild-pointer"


class MisuseError(Exception):
    """The caller broke the API's contract; the operation is refused as a whole."""

    def __init__(self, kind: str, detail: str = "") -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


class DebugAssertion(Exception):
    """A `debug_assert!` (or a `#[cfg(debug_assertions)] assert!`) of the seed fired."""


@mypyc_attr(acyclic=True)
class WalkedFrame:
    """One frame as `backtrace::trace` and `ModuleInfoLookup` present it to `gc`.

    `mapped_words` are the words read at `sp + i * 8` for every set bit `i` of the stack map the
    lookup returned (None: not a Wasm pc, or a Wasm pc with no stack map). A plain class with
    read-only fields rather than a frozen dataclass: `gc` builds one per frame it walks, and a
    compiled class is built several times faster.
    """

    __slots__ = ("is_wasm", "mapped_words", "sp")

    def __init__(self, sp: int, is_wasm: bool, mapped_words: tuple[Slot, ...] | None) -> None:
        self.sp: Final = sp
        self.is_wasm: Final = is_wasm
        self.mapped_words: Final = mapped_words

    def __eq__(self, other: object) -> bool:
        if type(other) is not WalkedFrame:
            return NotImplemented
        assert isinstance(other, WalkedFrame)
        return (
            self.sp == other.sp
            and self.is_wasm == other.is_wasm
            and self.mapped_words == other.mapped_words
        )

    def __hash__(self) -> int:
        return hash((self.sp, self.is_wasm, self.mapped_words))

    def __repr__(self) -> str:
        return (
            f"WalkedFrame(sp={self.sp!r}, is_wasm={self.is_wasm!r}, "
            f"mapped_words={self.mapped_words!r})"
        )


@mypyc_attr(acyclic=True)
class HeapView:
    """A step's heap: the state's `Vec`, read in place, with the step's writes kept apart (a box
    replaced, by ref id; boxes allocated, in order) until `frozen` makes the next state's `Vec`
    from them in one go (each leaf written copied once, `Vec.updated`). Its own object (not the
    runtime's attributes) so that a closure can read the heap as it is during a step (the host's
    `is_freed`) without a reference cycle."""

    __slots__ = ("added", "base", "writes")

    def __init__(self, base: Vec[Box]) -> None:
        self.base = base
        #: Boxes the step replaced, by ref id (ids of the base only); None until the first.
        self.writes: dict[int, Box] | None = None
        #: Boxes the step allocated: ref ids `len(base)` on; None until the first.
        self.added: list[Box] | None = None

    def box(self, r: int) -> Box:
        added = self.added
        if added is not None and r >= self.base.n:
            return added[r - self.base.n]
        writes = self.writes
        if writes is not None:
            box = writes.get(r)
            if box is not None:
                return box
        return self.base[r]

    def put(self, r: int, box: Box) -> None:
        n = self.base.n
        if r >= n:
            added = self.added
            if added is None:
                raise IndexError(f"no ref {r}")
            added[r - n] = box
        elif self.writes is None:
            self.writes = {r: box}
        else:
            self.writes[r] = box

    def add(self, box: Box) -> int:
        """Allocate: the new box's ref id."""
        if self.added is None:
            self.added = [box]
        else:
            self.added.append(box)
        return self.base.n + len(self.added) - 1

    def frozen(self) -> Vec[Box]:
        """The heap after the step: the state's own `Vec` if nothing was written."""
        writes, added = self.writes, self.added
        if writes is None and added is None:
            return self.base
        return self.base.updated(writes or {}, added or [])


@mypyc_attr(allow_interpreted_subclasses=True)
class SeedRuntime(RuntimeApi[int]):
    """Mutable working copy of the runtime half of a `State`.

    Copy-on-write: the bump chunk, the two root sets and the faults are thawed into a list or a set
    the first time the step reads them (the properties below), and `frozen_table` gives the
    thawed table back untouched when the step left it alone. The heap is a persistent vector
    (`HeapView`): a step that only reads it (a count asked, a GC that frees nothing) copies
    nothing, and a write copies one leaf of it, where a copy, comparison or release of the whole
    heap is a pass over 4,096 pointers at 4,096 refs.
    """

    def __init__(self, cfg: Config, state: State) -> None:
        self.cfg = cfg
        self._thawed = state
        self.heap_view = HeapView(state.heap)
        t = self._thawed_table = state.table
        self.next = t.next
        self._stack_canary = t.stack_canary
        self.gc_okay = t.gc_okay
        self.dropped: list[int] = []
        self.events: list[str] = []
        self._chunk: list[int | None] | None = None
        self._over: set[int] | None = None
        self._precise: set[int] | None = None
        self._faults: list[str] | None = None

    @property
    def chunk(self) -> list[int | None]:
        if self._chunk is None:
            self._chunk = list(self._thawed_table.chunk)
        return self._chunk

    @chunk.setter
    def chunk(self, value: list[int | None]) -> None:
        self._chunk = value

    @property
    def over_approximated_stack_roots(self) -> set[int]:
        if self._over is None:
            self._over = set(self._thawed_table.over_approximated_stack_roots)
        return self._over

    @over_approximated_stack_roots.setter
    def over_approximated_stack_roots(self, value: set[int]) -> None:
        self._over = value

    @property
    def precise_stack_roots(self) -> set[int]:
        if self._precise is None:
            self._precise = set(self._thawed_table.precise_stack_roots)
        return self._precise

    @precise_stack_roots.setter
    def precise_stack_roots(self, value: set[int]) -> None:
        self._precise = value

    @property
    def faults(self) -> list[str]:
        if self._faults is None:
            self._faults = list(self._thawed.faults)
        return self._faults

    def faults_if_touched(self) -> list[str] | None:
        """The thawed faults, None if the step never read them (so they are the state's own)."""
        return self._faults

    # --- hooks the world provides -----------------------------------------------------------

    def walk_stack(self) -> Iterator[WalkedFrame]:
        """`backtrace::trace`, youngest frame first; stops where the unwinder cannot go on."""
        raise NotImplementedError

    def frozen_table(self) -> Table:
        """The table as a value; the very one thawed when nothing changed (sharing makes `==` cheap)."""
        t = self._thawed_table
        chunk = self._chunk
        over = self._over
        precise = self._precise
        if (
            chunk is None
            and over is None
            and precise is None
            and self.next == t.next
            and self._stack_canary == t.stack_canary
            and self.gc_okay == t.gc_okay
        ):
            return t
        frozen_chunk = t.chunk if chunk is None else tuple(chunk)
        if frozen_chunk == t.chunk:
            frozen_chunk = t.chunk
            if (
                self.next == t.next
                and (over is None or over == t.over_approximated_stack_roots)
                and (precise is None or precise == t.precise_stack_roots)
                and self._stack_canary == t.stack_canary
                and self.gc_okay == t.gc_okay
            ):
                return t
        return Table(
            chunk=frozen_chunk,
            next=self.next,
            over_approximated_stack_roots=_frozen(over, t.over_approximated_stack_roots),
            precise_stack_roots=_frozen(precise, t.precise_stack_roots),
            stack_canary=self._stack_canary,
            gc_okay=self.gc_okay,
        )

    def event(self, name: str) -> None:
        self.events.append(name)

    def fault(self, kind: str, message: str) -> None:
        """Record what a sanitizer would report. `kind` is one of the `FAULT_*` constants."""
        self.faults.append(f"{kind}: {message}")

    # --- VMExternRef --------------------------------------------------------------------------

    def new_with(self, size: int, align: int) -> int:
        """`VMExternRef::new_with`: one allocation, `ref_count` 1."""
        lay = layout.layout_for(size, align)
        if lay.unwrap_panics:
            raise DebugAssertion("round_up_to_align(..).unwrap() on None in layout_for")
        if self.cfg.debug and not layout.layout_is_valid(lay.alloc_size, lay.alloc_align):
            raise DebugAssertion("Layout::from_size_align(alloc_size, alloc_align).is_ok()")
        return self.heap_view.add(Box(size=size, align=align))

    def increment_ref_count(self, r: int) -> None:
        box = self.heap_view.box(r)
        if box.freed:
            self.fault(FAULT_USE_AFTER_FREE, f"ref_count of freed ref {r} incremented")
            return
        self.heap_view.put(r, Box(box.size, box.align, box.ref_count + 1, False))

    def clone(self, r: int) -> int:
        self.increment_ref_count(r)
        return r

    def drop(self, r: int) -> None:
        """`Drop for VMExternRef`: `fetch_sub(1) == 1` runs `drop_and_dealloc`."""
        box = self.heap_view.box(r)
        if box.freed:
            self.fault(FAULT_DOUBLE_DROP, f"ref_count of freed ref {r} decremented")
            return
        if box.ref_count != 1:
            self.heap_view.put(r, Box(box.size, box.align, box.ref_count - 1, False))
            return
        # `drop_and_dealloc`: the value is dropped, then the allocation freed.
        self.heap_view.put(r, Box(box.size, box.align, 0, True))
        self.dropped.append(r)

    def strong_count(self, r: int) -> int:
        return self.heap_view.box(r).ref_count

    def clone_from_raw(self, word: Slot) -> int | None:
        """`VMExternRef::clone_from_raw` on a word read from memory: bumps whatever it points at."""
        if isinstance(word, Scalar):
            self.fault(FAULT_WILD_POINTER, "ref_count incremented through a non-ref stack word")
            return None
        assert word is not None
        self.increment_ref_count(word)
        return word

    # --- VMExternRefActivationsTable ------------------------------------------------------------

    def bump_capacity_remaining(self) -> int:
        """`end - next` as raw addresses: a number of *bytes*, not slots (mirrored as is); in
        slots under `capacity-slots` (`model.capabilities`), the one place that unit is decided."""
        slots = len(self.chunk) - self.next
        return slots if self.cfg.has(CAPACITY_SLOTS) else slots * WORD

    def try_insert(self, r: int) -> bool:
        if self.next == len(self.chunk):
            return False
        if self.cfg.debug and self.chunk[self.next] is not None:
            raise DebugAssertion("slots >= the `next` bump finger are always `None`")
        self.chunk[self.next] = r
        self.next += 1
        return True

    def insert_with_gc(self, r: int) -> None:
        if self.cfg.debug and not self.gc_okay:
            raise MisuseError(GC_NOT_OKAY, "insert_with_gc while gc_okay is false")
        if not self.try_insert(r):
            self.gc_and_insert_slow(r)

    def gc_and_insert_slow(self, r: int) -> None:
        self.event("insert:gc-and-insert-slow")
        self.gc()
        self._hashset_insert(self.over_approximated_stack_roots, r)

    def insert_without_gc(self, r: int) -> None:
        if not self.try_insert(r):
            self.insert_slow_without_gc(r)

    def insert_slow_without_gc(self, r: int) -> None:
        self.event("insert:slow-without-gc")
        self._hashset_insert(self.over_approximated_stack_roots, r)

    def _hashset_insert(self, roots: set[int], r: int) -> None:
        """`HashSet::insert` of an element already present keeps the old one and drops the new."""
        if r in roots:
            self.event("hashset:duplicate-dropped")
            if self.cfg.mutant != HASHSET_DUPLICATE_LEAKS:
                self.drop(r)
            return
        roots.add(r)

    def num_filled_in_bump_chunk(self) -> int:
        bytes_unused = (len(self.chunk) - self.next) * WORD
        slots_unused = bytes_unused // WORD
        return max(len(self.chunk) - slots_unused, 0)

    def elements(self) -> list[int]:
        out = sorted(self.over_approximated_stack_roots)
        for slot in self.chunk[: self.num_filled_in_bump_chunk()]:
            if slot is not None:
                out.append(slot)
        return out

    def insert_precise_stack_root(self, word: Slot) -> None:
        if self.cfg.mutant == PRECISE_ROOT_UNCOUNTED:
            if isinstance(word, int):
                self.precise_stack_roots.add(word)
            return
        root = self.clone_from_raw(word)
        if root is not None:
            self._hashset_insert(self.precise_stack_roots, root)

    def sweep(self) -> None:
        """The seed's order: `next = end`, clear the filled slots, lazily allocate, reset, swap, clear."""
        num_filled = self.num_filled_in_bump_chunk()
        self.next = len(self.chunk)
        for i in range(num_filled):
            old, self.chunk[i] = self.chunk[i], None
            if old is not None:
                self.drop(old)
        if self.cfg.debug and any(s is not None for s in self.chunk):
            raise DebugAssertion("after sweeping the bump chunk, all slots should be `None`")
        if not self.chunk:
            self.event("sweep:lazy-chunk-allocation")
            # `new_chunk(CHUNK_SIZE)`: its `assert!(size >= CHUNK_SIZE)` holds by construction.
            self.chunk = [None] * self.cfg.chunk_size
        self.next = 0
        self.precise_stack_roots, self.over_approximated_stack_roots = (
            self.over_approximated_stack_roots,
            self.precise_stack_roots,
        )
        old_roots = sorted(self.precise_stack_roots)
        self.precise_stack_roots.clear()
        for r in old_roots:
            self.drop(r)

    def stack_canary(self) -> int | None:
        return self._stack_canary

    def set_stack_canary(self, canary: int | None) -> None:
        self._stack_canary = canary

    def set_gc_okay(self, okay: bool) -> bool:
        """Debug builds swap the flag; release builds have no flag and always answer `true`."""
        if self.cfg.debug:
            previous, self.gc_okay = self.gc_okay, okay
            return previous
        return True

    # --- gc -----------------------------------------------------------------------------------

    def gc(self) -> None:
        """`gc(module_info_lookup, table)`, seed lines 871-1004."""
        if self.cfg.debug and not self.gc_okay:
            raise MisuseError(GC_NOT_OKAY, "gc while gc_okay is false")
        if self.cfg.debug and self.precise_stack_roots:
            raise DebugAssertion("precise_stack_roots is empty on entry to gc")

        stack_canary = self._stack_canary
        if stack_canary is None:
            self.event("gc:no-canary")
            if self.cfg.debug and any(f.is_wasm for f in self.walk_stack()):
                raise DebugAssertion("no canary, yet a Wasm frame is on the stack")
            self.sweep()
            return

        activations_table_set = set(self.elements()) if self.cfg.debug else set()
        last_sp: int | None = None
        found_canary = False
        wasm_frames = 0
        for frame in self.walk_stack():
            if frame.is_wasm:
                wasm_frames += 1
                self.event("gc:wasm-frame" if wasm_frames == 1 else "gc:nested-wasm-frame")
                if frame.mapped_words is None:
                    self.event("gc:wasm-frame-without-stack-map")
                for word in frame.mapped_words or ():
                    if self.cfg.debug and word is not None and word not in activations_table_set:
                        raise DebugAssertion(
                            "every on-stack externref inside a Wasm frame should have an entry "
                            f"in the VMExternRefActivationsTable; {word!r} is not in the table"
                        )
                    if word is not None:
                        self.event("gc:stack-map-root")
                        self.insert_precise_stack_root(word)
            if last_sp is not None:
                found_canary |= last_sp <= stack_canary <= frame.sp
            last_sp = frame.sp
            if found_canary:
                break

        if found_canary:
            self.event("gc:canary-found")
            self.sweep()
        elif self.cfg.mutant == SWEEP_WITHOUT_CANARY:
            self.event("gc:canary-not-found")
            self.sweep()
        else:
            self.event("gc:canary-not-found")
            roots = sorted(self.precise_stack_roots)
            self.precise_stack_roots.clear()
            for r in roots:
                self.drop(r)


def _frozen(thawed: set[int] | None, original: frozenset[int]) -> frozenset[int]:
    return original if thawed is None or thawed == original else frozenset(thawed)
