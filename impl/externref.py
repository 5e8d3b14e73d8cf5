"""`externref.rs` in real memory: `VMExternData` blocks from the C allocator, the activations table as
a `repr(C)` ctypes structure, and `gc` reading the mapped words from a real stack.

Refs are footer addresses (`VMExternRef` is the address of its `VMExternData`). Every access to a
block goes through the checking heap, which refuses (and reports) what a sanitizer would flag.
Methods carry the seed's names and run its steps in its order. `PythonRuntime` is one
`impl.backend.RuntimeBackend`: the host world drives it exactly as it drives a native library, and
hands `gc` the harness's stack (`StackView`) the way the seed's `gc` gets `backtrace::trace` and
`ModuleInfoLookup`.

Where an access is refused, the code carries on as the seed would with the value it could not read
or write left out, so the run stays comparable with the model after a report.
"""

from __future__ import annotations

import ctypes
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from externref_harness.impl import mutants
from externref_harness.impl.backend import (
    BackendDescription,
    Hooks,
    StackMapRecord,
    StackView,
    Unsupported,
)
from externref_harness.impl.code import Module
from externref_harness.impl.heap import DECREMENT, WILD_ACCESS
from externref_harness.impl.values import AnyVTable, Values, call_drop_in_place
from externref_harness.model import layout
from externref_harness.model.runtime import DebugAssertion
from externref_harness.model.state import WORD, Config

#: `NonNull::<TableElem>::dangling()`: where `Box::new([])` points.
DANGLING = WORD


class DynAnyPtr(ctypes.Structure):
    """`NonNull<dyn Any + Send + Sync>`: a fat pointer, data then vtable."""

    _fields_ = (("data", ctypes.c_size_t), ("vtable", ctypes.c_size_t))


class VMExternData(ctypes.Structure):
    """`#[repr(C)] struct VMExternData { ref_count: AtomicUsize, value_ptr: NonNull<dyn Any> }`."""

    _fields_ = (("ref_count", ctypes.c_size_t), ("value_ptr", DynAnyPtr))


class VMExternDataRefCountLast(ctypes.Structure):
    """The field order of the `impl-refcount-offset` mutant."""

    _fields_ = (("value_ptr", DynAnyPtr), ("ref_count", ctypes.c_size_t))


class BoxedSlice(ctypes.Structure):
    """`Box<[TableElem]>`: pointer and length."""

    _fields_ = (("ptr", ctypes.c_size_t), ("len", ctypes.c_size_t))


class VMExternRefTableAlloc(ctypes.Structure):
    """`#[repr(C)] struct VMExternRefTableAlloc { next, end, chunk }` (read by compiled code)."""

    _fields_ = (("next", ctypes.c_size_t), ("end", ctypes.c_size_t), ("chunk", BoxedSlice))


class OptionUsize(ctypes.Structure):
    _fields_ = (("is_some", ctypes.c_size_t), ("value", ctypes.c_size_t))


class VMExternRefActivationsTableRelease(ctypes.Structure):
    """`#[repr(C)]`, `alloc` first. The two `HashSet`s are kept beside it, keyed by address."""

    _fields_ = (("alloc", VMExternRefTableAlloc), ("stack_canary", OptionUsize))


class VMExternRefActivationsTableDebug(ctypes.Structure):
    """The debug build adds `#[cfg(debug_assertions)] gc_okay: bool`."""

    _fields_ = (
        ("alloc", VMExternRefTableAlloc),
        ("stack_canary", OptionUsize),
        ("gc_okay", ctypes.c_bool),
    )


@dataclass(frozen=True, slots=True)
class Layout:
    alloc_size: int
    alloc_align: int
    footer_offset: int


def _stack_map_bits(record: StackMapRecord) -> Iterator[int]:
    """The set bits of a stack map, lowest first (`get_bit(i)` for each `i < mapped_words`)."""
    for i in range(record.mapped_words):
        if ctypes.c_uint64.from_address(record.bits_address + WORD * (i // 64)).value >> (i % 64) & 1:
            yield i


class PythonRuntime:
    """The seed's runtime for one run, refs being footer addresses (a `RuntimeBackend`)."""

    def __init__(self, cfg: Config, hooks: Hooks) -> None:
        self.cfg = cfg
        self.mutant = cfg.mutant
        self.debug = cfg.debug
        self.heap = hooks.heap
        self.values = Values(hooks.heap, hooks.value_dropped)
        self.description = BackendDescription(
            name="externref-harness Python port",
            version="0.37.0",
            debug=cfg.debug,
            chunk_size=cfg.chunk_size,
            has_num_filled_in_bump_chunk=True,
            has_elements=True,
            has_set_chunk_size=True,
        )
        data = VMExternDataRefCountLast if self.mutant == mutants.REFCOUNT_OFFSET else VMExternData
        self.ref_count_offset: int = data.ref_count.offset
        self.value_ptr_offset: int = data.value_ptr.offset
        table_type = VMExternRefActivationsTableDebug if self.debug else VMExternRefActivationsTableRelease
        self.table = table_type()
        # `new()`: an empty chunk, so the first insert misses the fast path.
        alloc = self.table.alloc
        alloc.chunk.ptr, alloc.chunk.len = DANGLING, 0
        alloc.next = alloc.end = DANGLING
        if self.debug:
            self.table.gc_okay = True
        self.over_approximated_stack_roots: set[int] = set()
        self.precise_stack_roots: set[int] = set()

    @property
    def table_address(self) -> int:
        return ctypes.addressof(self.table)

    def close(self) -> None:
        """Nothing to let go of: every block is the checking heap's."""

    # --- VMExternData ---------------------------------------------------------------------------

    def layout_for(self, value_size: int, value_align: int) -> Layout:
        """`VMExternData::layout_for`, by `model.layout`'s rule unless a layout mutant is on."""
        lay = layout.layout_for(value_size, value_align)
        if lay.unwrap_panics:
            raise DebugAssertion("round_up_to_align(..).unwrap() on None in layout_for")
        footer = lay.footer_offset
        if self.mutant == mutants.FOOTER_VALUE_ALIGNED:
            footer = layout.round_up_to_align(value_size, value_align).value
        elif self.mutant == mutants.FOOTER_ROUNDED_DOWN:
            footer = value_size & ~(layout.EXTERN_DATA_ALIGN - 1)
        return Layout(footer + layout.EXTERN_DATA_SIZE, lay.alloc_align, footer)

    def new(self, size: int, align: int, fill: int) -> int:
        """`VMExternRef::new_with`: one allocation, the value at offset 0, the footer after it."""
        lay = self.layout_for(size, align)
        if self.debug and not layout.layout_is_valid(lay.alloc_size, lay.alloc_align):
            raise DebugAssertion("Layout::from_size_align(alloc_size, alloc_align).is_ok()")
        make_value = self.values.make(size, fill)
        alloc_ptr = self.heap.alloc(lay.alloc_size, lay.alloc_align, "VMExternData")
        make_value(alloc_ptr)
        footer = alloc_ptr + lay.footer_offset
        self.heap.store(footer + self.ref_count_offset, 1, "new_with writes ref_count")
        self.heap.store(footer + self.value_ptr_offset, alloc_ptr, "new_with writes value_ptr")
        vtable = self.values.vtable(size, align)
        self.heap.store(footer + self.value_ptr_offset + WORD, vtable, "new_with writes value_ptr")
        return footer

    def increment_ref_count(self, r: int) -> None:
        self.heap.fetch_add(r + self.ref_count_offset, 1, "increment ref_count")

    def clone(self, r: int) -> int:
        self.increment_ref_count(r)
        return r

    def drop(self, r: int) -> None:
        """`Drop for VMExternRef`: `fetch_sub(1) == 1` runs `drop_and_dealloc`."""
        old = self.heap.fetch_add(r + self.ref_count_offset, -1, DECREMENT)
        last = 2 if self.mutant == mutants.EARLY_FREE else 1
        if old is None or old != last:
            return
        self.drop_and_dealloc(r)

    def value_ptr(self, r: int, access: str) -> tuple[int, AnyVTable] | None:
        """`data.value_ptr`: the value's address and its vtable (None when the heap refused)."""
        data = self.heap.load(r + self.value_ptr_offset, access)
        vtable = self.heap.load(r + self.value_ptr_offset + WORD, access)
        if data is None or vtable is None:
            return None
        table = self.values.vtable_at(vtable)
        if table is None:
            self.heap.report(WILD_ACCESS, vtable, access, "value_ptr's vtable is not a vtable")
            return None
        return data, table

    def drop_and_dealloc(self, r: int) -> None:
        rc = self.heap.load(r + self.ref_count_offset, "drop_and_dealloc reads ref_count")
        if self.debug and rc is not None and rc != 0:
            raise DebugAssertion(f"assertion failed: ref_count == 0 (it is {rc})")
        value = self.value_ptr(r, "drop_and_dealloc reads value_ptr")
        if value is None:
            return
        data, vtable = value
        align = vtable.align
        if self.mutant == mutants.DEALLOC_IGNORES_VALUE_ALIGN:
            align = layout.EXTERN_DATA_ALIGN
        lay = self.layout_for(vtable.size, align)
        call_drop_in_place(vtable.drop_in_place, data)
        self.heap.free(data, lay.alloc_size, lay.alloc_align, "drop_and_dealloc")

    def strong_count(self, r: int) -> int | None:
        return self.heap.load(r + self.ref_count_offset, "strong_count")

    def deref(self, r: int) -> int | None:
        """`Deref for VMExternRef`: the value's address, read through `value_ptr`."""
        value = self.value_ptr(r, "deref reads value_ptr")
        return None if value is None else value[0]

    # `as_raw` / `into_raw` / `from_raw` / `clone_from_raw`: a ref is its raw pointer.
    @staticmethod
    def as_raw(r: int) -> int:
        return r

    @staticmethod
    def into_raw(r: int) -> int:
        return r

    @staticmethod
    def from_raw(raw: int) -> int:
        return raw

    def clone_from_raw(self, raw: int) -> int:
        return self.clone(raw)

    @staticmethod
    def eq(a: int, b: int) -> bool:
        """`VMExternRef::eq`: pointer equality."""
        return a == b

    @staticmethod
    def cmp(a: int, b: int) -> int:
        """`VMExternRef::cmp`: address order, as -1, 0 or 1."""
        return (a > b) - (a < b)

    @staticmethod
    def hash(r: int) -> int:
        """`VMExternRef::hash`: `ptr::hash` feeds the footer address, nothing else, to the hasher."""
        return int.from_bytes(hashlib.blake2b(r.to_bytes(8, "little"), digest_size=8).digest(), "little")

    # --- VMExternRefActivationsTable --------------------------------------------------------

    def bump_capacity_remaining(self) -> int:
        """`end - next` as raw addresses: bytes, not slots (the seed's own arithmetic)."""
        alloc = self.table.alloc
        return int(alloc.end - alloc.next)

    def try_insert(self, r: int) -> bool:
        alloc = self.table.alloc
        next_ = alloc.next
        if next_ == alloc.end and self.mutant != mutants.TRY_INSERT_IGNORES_END:
            return False
        if self.debug:
            slot = self.heap.load(next_, "try_insert reads the slot at next")
            if slot:
                raise DebugAssertion("slots >= the `next` bump finger are always `None`")
        self.heap.store(next_, r, "try_insert writes the slot at next")
        next_ += WORD
        if self.debug and next_ > alloc.end:
            raise DebugAssertion("assertion failed: next <= self.alloc.end")
        alloc.next = next_
        return True

    def insert_with_gc(self, r: int, stack: StackView) -> None:
        if self.debug and not self.table.gc_okay:
            raise DebugAssertion("assertion failed: self.gc_okay")
        if not self.try_insert(r):
            self.gc_and_insert_slow(r, stack)

    def gc_and_insert_slow(self, r: int, stack: StackView) -> None:
        self.gc(stack)
        self._hash_set_insert(self.over_approximated_stack_roots, r)

    def insert_without_gc(self, r: int) -> None:
        if not self.try_insert(r):
            self.insert_slow_without_gc(r)

    def insert_slow_without_gc(self, r: int) -> None:
        self._hash_set_insert(self.over_approximated_stack_roots, r)

    def _hash_set_insert(self, roots: set[int], r: int) -> None:
        """`HashSet::insert` keeps the element already present and drops the one passed in."""
        if r in roots:
            self.drop(r)
        else:
            roots.add(r)

    def num_filled_in_bump_chunk(self) -> int:
        alloc = self.table.alloc
        bytes_unused: int = alloc.end - alloc.next
        slots_unused = bytes_unused // WORD
        if self.mutant == mutants.NUM_FILLED_OFF_BY_ONE:
            slots_unused += 1
        return max(int(alloc.chunk.len) - slots_unused, 0)

    def _slot_address(self, i: int) -> int:
        return int(self.table.alloc.chunk.ptr) + i * WORD

    def elements(self) -> list[int]:
        out = sorted(self.over_approximated_stack_roots)
        for i in range(self.num_filled_in_bump_chunk()):
            elem = self.heap.load(self._slot_address(i), "elements reads a chunk slot")
            if elem:
                out.append(elem)
        return out

    def insert_precise_stack_root(self, root: int) -> None:
        self._hash_set_insert(self.precise_stack_roots, self.clone(root))

    def new_chunk(self, size: int) -> tuple[int, int]:
        if size < self.cfg.chunk_size:
            raise DebugAssertion("assertion failed: size >= Self::CHUNK_SIZE")
        ptr = self.heap.alloc(size * WORD, WORD, "chunk")
        ctypes.memset(ptr, 0, size * WORD)
        return ptr, size

    def sweep(self) -> None:
        alloc = self.table.alloc
        num_filled = self.num_filled_in_bump_chunk()
        alloc.next = alloc.end
        for i in range(num_filled):
            # `*slot.get() = None`: the old ref is dropped in place, then `None` is written.
            address = self._slot_address(i)
            old = self.heap.load(address, "sweep reads a chunk slot")
            if old:
                self.drop(old)
            self.heap.store(address, 0, "sweep clears a chunk slot")
        if self.debug:
            for i in range(alloc.chunk.len):
                if self.heap.load(self._slot_address(i), "sweep's debug_assert reads a slot"):
                    raise DebugAssertion("after sweeping the bump chunk, all slots should be `None`")
        # The first sweep allocates the chunk the table started without.
        if alloc.chunk.len == 0:
            alloc.chunk.ptr, alloc.chunk.len = self.new_chunk(self.cfg.chunk_size)
            alloc.end = alloc.chunk.ptr + alloc.chunk.len * WORD
        alloc.next = alloc.chunk.ptr
        if self.mutant != mutants.PRECISE_NOT_SWAPPED:
            self.precise_stack_roots, self.over_approximated_stack_roots = (
                self.over_approximated_stack_roots,
                self.precise_stack_roots,
            )
        old_roots = sorted(self.precise_stack_roots)
        self.precise_stack_roots.clear()
        for r in old_roots:
            self.drop(r)

    def stack_canary(self) -> int | None:
        canary = self.table.stack_canary
        return int(canary.value) if canary.is_some else None

    def set_stack_canary(self, canary: int | None) -> None:
        self.table.stack_canary.is_some = canary is not None
        self.table.stack_canary.value = canary or 0

    def enter_wasm(self, canary: int) -> None:
        """The seed has no scope: entering is `set_stack_canary(Some(canary))`."""
        self.set_stack_canary(canary)

    def leave_wasm(self) -> None:
        self.set_stack_canary(None)

    def set_gc_okay(self, okay: bool) -> bool:
        if self.debug:
            previous = bool(self.table.gc_okay)
            self.table.gc_okay = okay
            return previous
        return True

    def register_module(self, module: Module) -> int:
        raise Unsupported("the seed takes a ModuleInfoLookup from its embedder (no own-registry)")

    def unregister_module(self, module_id: int) -> None:
        raise Unsupported("the seed takes a ModuleInfoLookup from its embedder (no own-registry)")

    def drop_table(self) -> None:
        """`Drop for VMExternRefActivationsTable`, field by field in declaration order: `alloc`
        (every chunk slot, then the chunk), then `over_approximated_stack_roots`, then
        `precise_stack_roots`."""
        chunk = self.table.alloc.chunk
        for i in range(chunk.len):
            elem = self.heap.load(self._slot_address(i), "the table's drop reads a chunk slot")
            if elem:
                self.drop(elem)
        if chunk.len:
            self.heap.free(chunk.ptr, chunk.len * WORD, WORD, "the table's drop frees the chunk")
            chunk.ptr, chunk.len = DANGLING, 0
        for roots in (self.over_approximated_stack_roots, self.precise_stack_roots):
            for r in sorted(roots):
                self.drop(r)
            roots.clear()

    # --- gc -------------------------------------------------------------------------------------

    def gc(self, stack: StackView) -> None:
        """`gc(module_info_lookup, table)`: walk the real stack, read mapped words, then sweep."""
        if self.debug and not self.table.gc_okay:
            raise DebugAssertion("assertion failed: externref_activations_table.gc_okay")
        if self.debug and self.precise_stack_roots:
            raise DebugAssertion("precise_stack_roots is empty on entry to gc")

        stack_canary = self.stack_canary()
        walk = stack.trace()
        if stack_canary is None:
            if self.debug and any(stack.lookup(pc) is not None for pc, _ in walk):
                raise DebugAssertion("no canary, yet a Wasm frame is on the stack")
            self.sweep()
            return

        activations_table_set = set(self.elements()) if self.debug else set()
        shift = 1 if self.mutant == mutants.STACK_MAP_OFFSET else 0
        last_sp: int | None = None
        found_canary = False
        for pc, sp in walk:
            stack_map = stack.lookup(pc)
            if stack_map is not None:
                for i in _stack_map_bits(stack_map):
                    r = ctypes.c_uint64.from_address(sp + (i + shift) * WORD).value
                    if self.debug and r and r not in activations_table_set:
                        raise DebugAssertion(
                            "every on-stack externref inside a Wasm frame should have an entry "
                            f"in the VMExternRefActivationsTable; {r:#x} is not in the table"
                        )
                    if r:
                        self.insert_precise_stack_root(r)
            if last_sp is not None:
                found_canary |= last_sp <= stack_canary <= sp
            last_sp = sp
            if found_canary:
                break

        if found_canary or self.mutant == mutants.SWEEP_WITHOUT_CANARY:
            self.sweep()
        else:
            roots = sorted(self.precise_stack_roots)
            self.precise_stack_roots.clear()
            for r in roots:
                self.drop(r)
