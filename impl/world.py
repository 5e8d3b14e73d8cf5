"""The host around a runtime: its handle table, raw pointers, the instance's globals in memory,
and compiled Wasm code working on real stack slots.

This is the embedder's side, so it does the embedder's bookkeeping: which handles are live, which raw
pointers it owns, which globals instantiation wrote. It refuses misuse with the kinds of
`model.observation` before the runtime is called (a dropped handle, GC while `gc_okay` is false in a
debug build), and runs the embedder protocol (`model.protocol`) and the compiler's stack maps
(`model.world.emit_stack_map`) by their one rule.

The runtime is composed, not inherited: `World` builds the checking heap's hooks, the stack region
and the code registry, and drives any `impl.backend.RuntimeBackend` (the Python port or a native
library) through the same calls; `World` itself is the `RuntimeApi[int]` the protocol runs on.

A step's result is plain data: `("ok", value)`, `("err", kind)`, `("misuse", kind, detail)` or
`("panic", message)`. In a debug build, a refused misuse that reaches one of the seed's own
assertions is sent to the runtime too (`model.assertions`), and its result says what the
runtime did: `("misuse", kind, detail, ("panic", message) | ("returned",))`. Refs in results
are words: footers (handles under `opaque-refs`), or a value's address for `Deref`.

Under `opaque-refs` the host cannot ask the checking heap whether a ref is freed (its word is a
handle, in no block), and a freed ref's handle may be given out again. So the world keeps each
ref's identity as the host knows it: which allocation each word and each value address belongs
to, which allocations' values were dropped, and which allocation each raw pointer was made from
(a raw pointer of a freed ref whose handle a new ref now has is still a raw pointer of a freed ref).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from externref_harness.impl.backend import (
    BackendFactory,
    ContractViolation,
    Hooks,
    RuntimeBackend,
    StackView,
    Unsupported,
)
from externref_harness.impl.code import Module
from externref_harness.impl.heap import FREED, CheckingHeap
from externref_harness.impl.nonref import SCALAR_WORD, NonRefWords
from externref_harness.impl.stack import CodeRegistry, Frame, NativeStack
from externref_harness.impl.values import fill_byte
from externref_harness.model import ops, protocol
from externref_harness.model.assertions import probed_assertion
from externref_harness.model.capabilities import CANARY_GUARD, NO_GC_FREE_INSERT, OPAQUE_REFS, OWN_REGISTRY
from externref_harness.model.host import (
    HostBookkeeping,
    check_arity,
    check_counted_args,
    check_insert_count,
    check_instantiation,
    check_stack_canary,
    check_value_layout,
)
from externref_harness.model.observation import (
    BAD_FRAME,
    BAD_GLOBAL,
    BAD_SLOT,
    FREED_RAW,
    GC_NOT_OKAY,
    UNINIT_GLOBAL,
    WRONG_FRAME,
)
from externref_harness.model.runtime import CVE_2022_23636, DebugAssertion, MisuseError
from externref_harness.model.state import SCALAR, WORD, Config, Slot
from externref_harness.model.world import emit_stack_map
from externref_harness.vec import Vec

__all__ = ["SCALAR_WORD", "World"]
#: The bytes of a `VMGlobalDefinition` instantiation never wrote.
UNINIT_GLOBAL_WORD = 0xBEBE_BEBE_BEBE_BEBE

PlainResult = tuple[Any, ...]


class SeedErr(Exception):
    """The seed's own `Err` (only `try_insert`'s chunk full)."""


class World(protocol.RuntimeApi[int]):
    def __init__(self, cfg: Config, heap: CheckingHeap, runtime: BackendFactory) -> None:
        self.cfg = cfg
        self.mutant = cfg.mutant
        self.heap = heap
        self.stack = NativeStack()
        self.registry = CodeRegistry(cfg)
        self.stack_view = StackView(cfg, self.stack, self.registry)
        #: Addresses of the values whose destructor ran, in order.
        self.dropped: list[int] = []
        #: `(footer, value)` of every allocation of the run, for the harness's inspection.
        self.allocations: list[tuple[int, int]] = []
        #: What the embedder last set with `set_gc_okay` (it refuses GC while false, in debug).
        self.gc_okay = True
        #: The capacity the embedder's next pre-GC check uses instead of the runtime's answer.
        self.embedder_capacity: int | None = None
        #: Under `canary-guard`: the canary of the scope the host entered (None: not entered).
        self.guard_canary: int | None = None
        self.rt: RuntimeBackend = runtime(cfg, Hooks(heap, self._value_dropped))
        self.host = HostBookkeeping(Vec(), [], self._is_freed)
        n = cfg.n_globals
        self.globals_memory = (ctypes.c_uint64 * max(n, 1))(*[UNINIT_GLOBAL_WORD] * n)
        self.global_initialised = [False] * n
        self.panic: str | None = None
        #: The value layout of each ref `New` made.
        self.layouts: dict[int, tuple[int, int]] = {}
        #: `VMExternRef::hash` of the two refs the last `Eq` / `Cmp` compared, `(ref, hash)`.
        self.hashes: list[tuple[int, int]] = []
        #: A ref word is a handle, not a footer's address (`model.capabilities.OPAQUE_REFS`).
        self.opaque = cfg.has(OPAQUE_REFS)
        #: Index in `allocations` of the latest ref with each word, and of each value address.
        self._allocation_of_word: dict[int, int] = {}
        self._allocation_of_value: dict[int, int] = {}
        #: Indices in `allocations` of the refs whose value was dropped.
        self.dead: set[int] = set()
        #: Raw pointer -> index in `allocations` of the ref it was made from.
        self._raw_allocation: dict[int, int] = {}
        #: The non-ref words suspended frames hold in the slots no map covers (`impl.nonref`).
        self.nonref = NonRefWords(self.allocations, heap.status, lambda r: self.layouts[r][0])
        heap.watch_foreign(
            self.nonref.decoy_address,
            self.nonref.decoy_bytes,
            "the host's decoy region (a non-ref stack word)",
        )
        #: Counters of the run that place frames in the code layout and choose non-ref words.
        self.frames_entered = 0
        self.safepoints = 0
        #: With `own-registry`: the id the runtime gave each registered module (`register_modules`).
        self.module_ids: list[int] = []
        if cfg.has(OWN_REGISTRY):
            try:
                self.register_modules(self.registry.layout.modules)
            except BaseException:
                self.rt.close()  # a start that failed leaves the library's hooks to the next run
                raise

    def _value_dropped(self, address: int) -> None:
        """The runtime ran a value's destructor: its bytes must still be intact."""
        self.heap.unwatch_value(address, "drop_in_place")
        self.dropped.append(address)
        allocation = self._allocation_of_value.get(address)
        if allocation is not None:
            self.dead.add(allocation)

    # --- the runtime, as the embedder protocol calls it (`RuntimeApi[int]`) --------------------

    def clone(self, r: int) -> int:
        return self.rt.clone(r)

    def drop(self, r: int) -> None:
        self.rt.drop(r)

    def bump_capacity_remaining(self) -> int:
        """What the embedder's pre-GC check compares with: the runtime's answer, or (once per
        step, when the lockstep supplies it) the model's capacity in the seed's unit, so an
        implementation that counts in another unit is not charged for the embedder's choice."""
        if self.embedder_capacity is not None:
            capacity, self.embedder_capacity = self.embedder_capacity, None
            return capacity
        return self.rt.bump_capacity_remaining()

    def _refuse_gc(self, what: str) -> None:
        """The embedder never lets a GC happen while it has asserted none may (debug builds)."""
        if self.cfg.debug and not self.gc_okay:
            raise MisuseError(GC_NOT_OKAY, f"{what} while gc_okay is false")

    def gc(self) -> None:
        self._refuse_gc("gc")
        self.rt.gc(self.stack_view)

    def set_gc_okay(self, okay: bool) -> bool:
        previous = self.rt.set_gc_okay(okay)
        self.gc_okay = okay
        return previous

    def insert_with_gc(self, r: int) -> None:
        self._refuse_gc("insert_with_gc")
        self.rt.insert_with_gc(r, self.stack_view)

    def insert_without_gc(self, r: int) -> None:
        self.rt.insert_without_gc(r)

    def try_insert(self, r: int) -> bool:
        return self.rt.try_insert(r)

    def stack_canary(self) -> int | None:
        """The canary: the runtime's answer, or under `canary-guard` (no getter) the scope the host
        entered, which it knows itself."""
        if self.cfg.has(CANARY_GUARD):
            return self.guard_canary
        return self.rt.stack_canary()

    def set_stack_canary(self, canary: int | None) -> None:
        """`set_stack_canary`; under `canary-guard` setting it enters the scope and clearing it
        leaves it (`xr_table_enter_wasm` / `xr_table_leave_wasm`), and re-setting what is already
        true (which the embedder may do, `model.host.check_stack_canary`) calls nothing."""
        if not self.cfg.has(CANARY_GUARD):
            self.rt.set_stack_canary(canary)
            return
        if canary == self.guard_canary:
            return
        if canary is None:
            self.rt.leave_wasm()
        else:
            if self.guard_canary is not None:
                self.rt.leave_wasm()  # moving the canary: misuse the host refuses first
            self.rt.enter_wasm(canary)
        self.guard_canary = canary

    def drop_table(self) -> None:
        # The instance's modules are dropped with it, before the store's table.
        while self.module_ids:
            self.rt.unregister_module(self.module_ids.pop())
        self.rt.drop_table()

    def register_modules(self, modules: tuple[Module, ...]) -> None:
        """`own-registry`: the runtime learns the code of each module when it is instantiated."""
        for module in modules:
            self.module_ids.append(self.rt.register_module(module))

    # --- dispatch -----------------------------------------------------------------------------

    def apply(self, op: ops.Op) -> PlainResult:
        if self.panic is not None:
            return ("panic", self.panic)
        self.hashes = []
        # Put back if the host refuses the op (misuse); the handles are a persistent vector, so
        # the one before the op is the copy.
        saved = (self.host.handles, list(self.host.raws), list(self.global_initialised))
        try:
            if op.WASM:
                self._wasm_frame()
            else:
                self._host_frame()
            handler: Callable[[Any], Any] = getattr(self, "op_" + type(op).__name__)
            return ("ok", handler(op))
        except MisuseError as e:
            self.host.handles = saved[0]
            self.host.raws, self.global_initialised = saved[1], saved[2]
            assertion = self._probe_assertion(op, e.kind)
            if assertion is None:
                return ("misuse", e.kind, e.detail)
            return ("misuse", e.kind, e.detail, assertion)
        # Each clause names its exception differently: compiled, one name keeps the first type.
        except SeedErr as err:
            return ("err", str(err))
        except Unsupported as missing:
            # An optional function the runtime does not offer: nothing to compare.
            return ("unsupported", str(missing))
        except DebugAssertion as fired:
            self.panic = str(fired)
            return ("panic", self.panic)

    def _probe_assertion(self, op: ops.Op, kind: str) -> tuple[str, ...] | None:
        """After refusing a misuse that reaches one of the seed's own assertions (debug builds,
        `model.assertions`), send it to the runtime anyway: `("panic", message)` if it panicked as
        the seed does, `("returned",)` if it went ahead. A panic here does not end the run (the
        assertion fires before the runtime changes anything); the canary is set back after the
        no-canary probe either way."""
        view = self.stack_view
        reaches_wasm = any(view.lookup(pc) is not None for pc, _ in view.trace())
        if not self.cfg.debug or probed_assertion(op, kind, reaches_wasm) is None:
            return None
        try:
            if isinstance(op, ops.SetStackCanary):
                saved = self.stack_canary()
                self.set_stack_canary(None)
                try:
                    self.rt.gc(self.stack_view)
                finally:
                    self.set_stack_canary(saved)
            else:
                self.rt.gc(self.stack_view)
        except DebugAssertion as fired:
            return ("panic", str(fired))
        return ("returned",)

    # --- the host's bookkeeping -----------------------------------------------------------------

    def _host_frame(self) -> Frame:
        top = self.stack.youngest
        if top.wasm:
            raise MisuseError(WRONG_FRAME, "host code runs only in a host frame")
        return top

    def _wasm_frame(self) -> Frame:
        top = self.stack.youngest
        if not top.wasm:
            raise MisuseError(WRONG_FRAME, "compiled code runs only in a Wasm frame")
        return top

    def _is_freed(self, r: int) -> bool:
        """Whether ref word `r`'s ref is freed: its footer's block, or (a handle) its value dropped."""
        if self.opaque:
            return self._allocation_of_word.get(r) in self.dead
        return self.heap.status(r) == FREED

    def _raw_made(self, p: int, r: int) -> int:
        """Raw pointer `p` was made from ref word `r`: remember which ref that is."""
        allocation = self._allocation_of_word.get(r)
        if allocation is not None:
            self._raw_allocation[p] = allocation
        return p

    def _global(self, g: int) -> int | None:
        """The externref in global `g` (None: null)."""
        if not 0 <= g < len(self.global_initialised):
            raise MisuseError(BAD_GLOBAL, f"global {g}")
        if not self.global_initialised[g]:
            raise MisuseError(UNINIT_GLOBAL, f"global {g} was never initialised")
        return self.globals_memory[g] or None

    def _slot(self, frame: Frame, i: int) -> None:
        if not 0 <= i < len(frame.ref_typed):
            raise MisuseError(BAD_SLOT, f"slot {i} of a frame with {len(frame.ref_typed)}")

    def _read(self, frame: Frame, i: int) -> tuple[int, bool]:
        """Slot `i`'s word and whether the compiler typed it externref."""
        return self.stack.load(frame.sp + i * WORD), frame.ref_typed[i]

    def _write(self, frame: Frame, i: int, word: int, is_ref: bool) -> None:
        self.stack.store(frame.sp + i * WORD, word)
        frame.ref_typed[i] = is_ref

    def _safepoint(self, frame: Frame, at_wasm_call: bool) -> None:
        """The youngest Wasm frame calls out: it stops at the call site of its function whose map
        is the one the compiler emits here, and each externref slot that holds no live ref (null)
        and that no map the lookup gives for that pc covers holds a non-ref word until the frame
        resumes (the null is rematerialised after the call). An i64 slot keeps its own word, a
        non-ref word already: a live i64 is not overwritten by a call."""
        view: list[Slot] = []
        for i in range(len(frame.ref_typed)):
            word, is_ref = self._read(frame, i)
            view.append((word or None) if is_ref else SCALAR)
        stack_map = emit_stack_map(self.cfg, tuple(view), at_wasm_call)
        self.safepoints += 1
        frame.pc = self.registry.layout.call_site(frame.function, stack_map, frame.last_map, self.safepoints)
        if stack_map is not None:
            frame.last_map = stack_map
        covered = self.registry.stack_map_at(self.cfg, frame.pc) or ()
        empty = [i for i, slot in enumerate(view) if slot is None and i not in covered]
        if empty:
            chosen = self.nonref.words([self.safepoints + i for i in empty])
            for i, (kind, word) in zip(empty, chosen, strict=True):
                frame.planted[i] = (self._read(frame, i)[0], word, kind)
                self.stack.store(frame.sp + i * WORD, word)

    def _resume(self, frame: Frame) -> None:
        """The frame's call returned: its slots hold their own words again."""
        for i, (own, planted, _) in frame.planted.items():
            address = frame.sp + i * WORD
            if self.stack.load(address) == planted:
                self.stack.store(address, own)
        frame.planted.clear()

    def _enter_wasm_frame(self, words: list[int], ref_typed: list[bool]) -> Frame:
        """A new frame runs the next function of the code layout, in turn."""
        padding = self.cfg.slots - len(words)
        functions = self.registry.layout.functions
        function = self.frames_entered % len(functions)
        self.frames_entered += 1
        return self.stack.push_wasm(
            words + [0] * padding, ref_typed + [True] * padding, function, functions[function].start
        )

    # --- VMExternRef ----------------------------------------------------------------------------

    def op_New(self, op: ops.New) -> int:
        check_value_layout(op.size, op.align)
        fill = fill_byte(len(self.allocations) + 1)
        r = self.rt.new(op.size, op.align, fill)
        value = self.rt.deref(r)
        if not value or value % op.align:
            raise ContractViolation(f"new({op.size}, {op.align}) made a value at {value!r}")
        self.heap.watch_value(value, bytes([fill]) * op.size)
        self._allocation_of_word[r] = self._allocation_of_value[value] = len(self.allocations)
        self.allocations.append((r, value))
        self.layouts[r] = (op.size, op.align)
        return self.host.new_handle(r)

    def op_Clone(self, op: ops.Clone) -> int:
        return self.host.new_handle(self.clone(self.host.handle(op.h)))

    def op_Drop(self, op: ops.Drop) -> None:
        self.drop(self.host.take(op.h))

    def _same_word(self, what: str, r: int, raw: int) -> int:
        """A ref is its raw pointer: compiled code keeps exactly these words in slots and globals."""
        if raw != r:
            raise ContractViolation(f"{what} of ref {r:#x} returned {raw:#x}")
        return raw

    def op_AsRaw(self, op: ops.AsRaw) -> int:
        r = self.host.handle(op.h)
        self._same_word("as_raw", r, self.rt.as_raw(r))
        return self._raw_made(self.host.as_raw(op.h), r)

    def op_IntoRaw(self, op: ops.IntoRaw) -> int:
        p = self.host.into_raw(op.h)
        raw = self.host.raws[p]
        assert raw is not None
        self._same_word("into_raw", raw.ref, self.rt.into_raw(raw.ref))
        return self._raw_made(p, raw.ref)

    def op_FromRaw(self, op: ops.FromRaw) -> int:
        h = self.host.from_raw(op.p)
        r = self.host.handle(h)
        self._same_word("from_raw", r, self.rt.from_raw(r))
        return h

    def op_CloneFromRaw(self, op: ops.CloneFromRaw) -> int:
        if self.opaque and self._raw_allocation.get(op.p, -1) in self.dead:
            # Its ref was freed, whichever ref has its handle now.
            word = self.host.raw(op.p).ref
            raise MisuseError(FREED_RAW, f"raw pointer {op.p} points at freed ref {word:#x}")
        raw = self.host.clone_from_raw_target(op.p)
        return self.host.new_handle(self._same_word("clone_from_raw", raw, self.rt.clone_from_raw(raw)))

    def op_StrongCount(self, op: ops.StrongCount) -> int | None:
        return self.rt.strong_count(self.host.handle(op.h))

    def op_Eq(self, op: ops.Eq) -> bool:
        a, b = self.host.handle(op.a), self.host.handle(op.b)
        self.hashes = [(a, self.rt.hash(a)), (b, self.rt.hash(b))]
        return self.rt.eq(a, b)

    def op_Cmp(self, op: ops.Cmp) -> int:
        a, b = self.host.handle(op.a), self.host.handle(op.b)
        self.hashes = [(a, self.rt.hash(a)), (b, self.rt.hash(b))]
        return self.rt.cmp(a, b)

    def op_Deref(self, op: ops.Deref) -> tuple[int, int, int] | None:
        """The value's address from the runtime; its layout is what `New` asked for."""
        r = self.host.handle(op.h)
        value = self.rt.deref(r)
        return None if value is None else (value, *self.layouts[r])

    # --- VMExternRefActivationsTable ----------------------------------------------------------

    def op_TryInsert(self, op: ops.TryInsert) -> None:
        if not self.rt.try_insert(self.host.handle(op.h)):
            raise SeedErr("chunk-full")
        self.host.clear(op.h)

    def op_InsertWithGc(self, op: ops.InsertWithGc) -> None:
        self.insert_with_gc(self.host.take(op.h))

    def op_InsertWithoutGc(self, op: ops.InsertWithoutGc) -> None:
        self.insert_without_gc(self.host.take(op.h))

    def op_InsertMany(self, op: ops.InsertMany) -> None:
        r = self.host.handle(op.h)
        check_insert_count(op.count)
        if op.gc:
            self._refuse_gc("insert_with_gc")
        for _ in range(op.count):
            if op.gc:
                self.insert_with_gc(self.clone(r))
            else:
                self.insert_without_gc(self.clone(r))

    def op_BumpCapacityRemaining(self, op: ops.BumpCapacityRemaining) -> int:
        return self.rt.bump_capacity_remaining()

    def op_NumFilledInBumpChunk(self, op: ops.NumFilledInBumpChunk) -> int:
        return self.rt.num_filled_in_bump_chunk()

    def op_Elements(self, op: ops.Elements) -> tuple[int, ...]:
        return tuple(sorted(self.rt.elements()))

    def op_SetStackCanary(self, op: ops.SetStackCanary) -> None:
        frames = self.stack.frames
        canary = None
        if op.frame is not None:
            if not 0 <= op.frame < len(frames):
                raise MisuseError(BAD_FRAME, f"frame {op.frame} of {len(frames)}")
            canary = frames[op.frame].sp
        check_stack_canary(canary, self.stack_canary(), any(f.wasm for f in frames))
        self.set_stack_canary(canary)

    def op_StackCanary(self, op: ops.StackCanary) -> int | None:
        return self.stack_canary()

    def op_SetGcOkay(self, op: ops.SetGcOkay) -> bool:
        return self.set_gc_okay(op.okay)

    def op_Gc(self, op: ops.Gc) -> None:
        self.gc()

    # --- globals and the embedder protocol ----------------------------------------------------

    def op_InitGlobals(self, op: ops.InitGlobals) -> None:
        check_instantiation(op.count, self.global_initialised)
        for g in range(op.count):
            self.globals_memory[g] = 0
            self.global_initialised[g] = True

    def op_HostGlobalSet(self, op: ops.HostGlobalSet) -> None:
        old = self._global(op.g)
        new = None if op.h is None else self.host.handle(op.h)
        protocol.global_set(self, old, new)
        self.globals_memory[op.g] = new or 0

    def op_HostGlobalGet(self, op: ops.HostGlobalGet) -> int | None:
        value = self._global(op.g)
        return None if value is None else self.host.new_handle(self.clone(value))

    def op_TeardownGlobals(self, op: ops.TeardownGlobals) -> None:
        """The instance is dropped, and with it every externref global it holds."""
        for g, initialised in enumerate(self.global_initialised):
            word = self.globals_memory[g]
            if (initialised and word) or (not initialised and self.mutant == CVE_2022_23636):
                self.drop(word)
            self.globals_memory[g] = UNINIT_GLOBAL_WORD
            self.global_initialised[g] = False

    def op_CallWasm(self, op: ops.CallWasm) -> None:
        if self.cfg.has(NO_GC_FREE_INSERT):
            check_counted_args(len(op.args), self.cfg.chunk_size)
        refs = self.host.take_args(op.args, self.cfg.slots)
        protocol.move_refs_into_table(self, refs, self.cfg)
        resets = protocol.enter_wasm(self, self.stack.youngest.sp)
        frame = self._enter_wasm_frame(refs, [True] * len(refs))
        frame.resets_canary = resets

    def op_ReturnToWasm(self, op: ops.ReturnToWasm) -> None:
        top = self._host_frame()
        if not top.called_from_wasm:
            raise MisuseError(WRONG_FRAME, "this host frame was not called from Wasm")
        r = None if op.h is None else self.host.take(op.h)
        # The host function's one externref result counts for the pre-GC even when it is null.
        protocol.move_refs_into_table(self, [r], self.cfg)
        self.stack.pop()
        caller = self._wasm_frame()
        self._resume(caller)
        assert top.ret_slot is not None
        self._write(caller, top.ret_slot, r or 0, True)

    # --- compiled Wasm code ---------------------------------------------------------------------

    def op_WasmMove(self, op: ops.WasmMove) -> None:
        frame = self._wasm_frame()
        self._slot(frame, op.src)
        self._slot(frame, op.dst)
        self._write(frame, op.dst, *self._read(frame, op.src))

    def op_WasmNull(self, op: ops.WasmNull) -> None:
        frame = self._wasm_frame()
        self._slot(frame, op.dst)
        self._write(frame, op.dst, 0, True)

    def op_WasmScalar(self, op: ops.WasmScalar) -> None:
        frame = self._wasm_frame()
        self._slot(frame, op.dst)
        self._write(frame, op.dst, SCALAR_WORD, False)

    def op_WasmGlobalGet(self, op: ops.WasmGlobalGet) -> None:
        frame = self._wasm_frame()
        self._slot(frame, op.dst)
        value = self._global(op.g)
        self._safepoint(frame, at_wasm_call=False)
        self.stack.push_host(unwind_info=True, called_from_wasm=False, ret_slot=None)  # libcall
        try:
            got = protocol.libcall_global_get(self, value, self.cfg)
        finally:
            self.stack.pop()
            self._resume(frame)
        self._write(frame, op.dst, got or 0, True)

    def op_WasmGlobalSet(self, op: ops.WasmGlobalSet) -> None:
        frame = self._wasm_frame()
        self._slot(frame, op.src)
        old = self._global(op.g)
        word, is_ref = self._read(frame, op.src)
        if not is_ref:
            raise MisuseError(BAD_SLOT, f"slot {op.src} holds no externref")
        protocol.global_set(self, old, word or None)
        self.globals_memory[op.g] = word

    def op_WasmCallWasm(self, op: ops.WasmCallWasm) -> None:
        frame = self._wasm_frame()
        for i in (*op.args, op.ret_slot):
            self._slot(frame, i)
        check_arity(len(op.args), self.cfg.slots)
        args = [self._read(frame, i) for i in op.args]
        self._safepoint(frame, at_wasm_call=True)
        callee = self._enter_wasm_frame([w for w, _ in args], [t for _, t in args])
        callee.called_from_wasm, callee.ret_slot = True, op.ret_slot

    def op_WasmCallHost(self, op: ops.WasmCallHost) -> tuple[int | None, ...]:
        frame = self._wasm_frame()
        for i in (*op.args, op.ret_slot):
            self._slot(frame, i)
        args = [self._read(frame, i) for i in op.args]
        self._safepoint(frame, at_wasm_call=False)
        self.stack.push_host(op.unwind_info, called_from_wasm=True, ret_slot=op.ret_slot)
        # `Func::invoke` reads each externref argument with `clone_from_raw`.
        got: list[int | None] = []
        for word, is_ref in args:
            got.append(self.host.new_handle(self.clone(word)) if is_ref and word else None)
        return tuple(got)

    def op_WasmReturn(self, op: ops.WasmReturn) -> int | None:
        frame = self._wasm_frame()
        if op.slot is not None:
            self._slot(frame, op.slot)
        word, is_ref = (0, True) if op.slot is None else self._read(frame, op.slot)
        self.stack.pop()
        if frame.called_from_wasm:
            caller = self._wasm_frame()
            self._resume(caller)
            assert frame.ret_slot is not None
            self._write(caller, frame.ret_slot, word, is_ref)
            return None
        protocol.exit_wasm(self, frame.resets_canary)
        # The host takes the result out of the table's borrow: `clone_from_raw`.
        return self.host.new_handle(self.clone(word)) if is_ref and word else None
