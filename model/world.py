"""The world the seed assumes: host handles, raw pointers, globals, the native stack, the compiler's
stack maps and the module registry's lookup, and every operation of `model.ops` on top of them.

Ground truth and stack maps are separate. A Wasm frame's `slots` say what each word really holds;
the stack map is what the compiler *registered* for the safepoint the frame is suspended at,
derived from the slots by `emit_stack_map` when the frame makes a call. A compiler bug changes only
what is registered, so the invariants (which read the ground truth) catch it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from mypy_extensions import mypyc_attr

from externref_harness.changes import same
from externref_harness.model import ops, protocol
from externref_harness.model.capabilities import NO_GC_FREE_INSERT
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
    UNINIT_GLOBAL,
    WRONG_FRAME,
    Err,
    Ok,
    Result,
)
from externref_harness.model.runtime import (
    CVE_2021_39218,
    CVE_2022_23636,
    CVE_2022_24791,
    CVE_2022_31146,
    FAULT_USE_AFTER_FREE,
    FAULT_WILD_POINTER,
    MisuseError,
    SeedRuntime,
    WalkedFrame,
)
from externref_harness.model.state import (
    SCALAR,
    UNINIT,
    Config,
    Frame,
    GlobalValue,
    HostFrame,
    Scalar,
    Slot,
    StackMap,
    State,
    Uninit,
    WasmFrame,
    frame_sps,
)


def emit_stack_map(cfg: Config, slots: tuple[Slot, ...], at_wasm_call: bool) -> StackMap | None:
    """What the compiler registers for a safepoint: the live ref slots, or no map if there are none."""
    live = tuple(i for i, s in enumerate(slots) if isinstance(s, int))
    if cfg.mutant == CVE_2022_24791 and at_wasm_call:
        return None
    if cfg.mutant == CVE_2022_31146 and len(live) >= 2:
        live = live[:-1]
    return live or None


def lookup_stack_map(cfg: Config, frame: WasmFrame) -> StackMap | None:
    """`ModuleInfo::lookup_stack_map(pc)` for the pc `frame` is suspended at."""
    if frame.stack_map is None and cfg.mutant == CVE_2021_39218:
        return frame.previous_stack_map
    return frame.stack_map


def live_stack_maps(
    cfg: Config, frame: WasmFrame, executing: bool
) -> tuple[StackMap | None, StackMap | None]:
    """The (stack_map, previous_stack_map) that `lookup_stack_map` can still be asked about.

    Only `gc` reads the maps, and it runs in a host frame, so the executing (youngest) Wasm frame
    will make a safepoint (`Machine._safepoint`) before any lookup sees it: its own map is dead then,
    except as the fallback the next safepoint keeps under CVE-2021-39218. A suspended frame's
    previous map is read only by that mutant, and only while the frame has no map. Frames that
    agree on this pair and on their slots behave alike in every future, which is what lets the
    explorer merge states that differ only in dead maps.
    """
    fallback = cfg.mutant == CVE_2021_39218
    if executing:
        if not fallback:
            return None, None
        kept = frame.stack_map if frame.stack_map is not None else frame.previous_stack_map
        return None, kept
    if fallback and frame.stack_map is None:
        return None, frame.previous_stack_map
    return frame.stack_map, None


@mypyc_attr(allow_interpreted_subclasses=True)
class Machine(SeedRuntime):
    """A `State` thawed for one transition: the seed's runtime, and (composed) the host's handles
    and raw pointers (`host`) and the world around them."""

    def __init__(self, cfg: Config, state: State) -> None:
        super().__init__(cfg, state)
        # Copy-on-write, as the runtime's table: thawed on first access (the properties below).
        self._host: HostBookkeeping | None = None
        self._globals: list[GlobalValue] | None = None
        self._frames: list[Frame] | None = None

    @property
    def host(self) -> HostBookkeeping:
        if self._host is None:
            heap = self.heap_view
            # A closure over the heap, not a bound method: no cycle for a disabled collector.
            self._host = HostBookkeeping(
                self._thawed.handles, list(self._thawed.raws), lambda r: heap.box(r).freed
            )
        return self._host

    @property
    def globals(self) -> list[GlobalValue]:
        if self._globals is None:
            self._globals = list(self._thawed.globals)
        return self._globals

    @property
    def frames(self) -> list[Frame]:
        if self._frames is None:
            self._frames = list(self._thawed.frames)
        return self._frames

    def _frames_as_they_are(self) -> tuple[Frame, ...]:
        """The frames, without thawing them for a step that only reads them."""
        return self._thawed.frames if self._frames is None else tuple(self._frames)

    def freeze(self) -> State:
        """The state after the step; parts the step did not touch, or left equal, are the thawed
        state's own objects, so successive states share them and compare fast."""
        s = self._thawed
        host = self._host
        handles = s.handles if host is None else host.handles
        raws = s.raws if host is None else _same(host.raws, s.raws)
        globals_ = s.globals if self._globals is None else _same(self._globals, s.globals)
        frames = s.frames if self._frames is None else _same(self._frames, s.frames)
        faults = self.faults_if_touched()
        return State(
            self.heap_view.frozen(),
            self.frozen_table(),
            handles,
            raws,
            globals_,
            frames,
            s.faults if faults is None or faults == list(s.faults) else tuple(faults),
        )

    # --- the stack, as gc sees it ---------------------------------------------------------------

    def walk_stack(self) -> Iterator[WalkedFrame]:
        frames = self._frames_as_they_are()
        sps = frame_sps(frames)
        for frame, sp in zip(reversed(frames), reversed(sps), strict=True):
            if isinstance(frame, WasmFrame):
                stack_map = lookup_stack_map(self.cfg, frame)
                words = None if stack_map is None else tuple(frame.slots[i] for i in stack_map)
                yield WalkedFrame(sp=sp, is_wasm=True, mapped_words=words)
            else:
                yield WalkedFrame(sp=sp, is_wasm=False, mapped_words=None)
                if not frame.unwind_info:
                    self.event("gc:unwinder-stopped")
                    return

    def youngest_sp(self) -> int:
        return frame_sps(self._frames_as_they_are())[-1]

    # --- validation -----------------------------------------------------------------------------

    def _host_frame(self) -> HostFrame:
        top = self._frames_as_they_are()[-1] if self._frames is None else self._frames[-1]
        if not isinstance(top, HostFrame):
            raise MisuseError(WRONG_FRAME, "host code runs only in a host frame")
        return top

    def _wasm_frame(self) -> WasmFrame:
        top = self._frames_as_they_are()[-1] if self._frames is None else self._frames[-1]
        if not isinstance(top, WasmFrame):
            raise MisuseError(WRONG_FRAME, "compiled code runs only in a Wasm frame")
        return top

    def _slot(self, frame: WasmFrame, i: int) -> None:
        if not 0 <= i < len(frame.slots):
            raise MisuseError(BAD_SLOT, f"slot {i} of a frame with {len(frame.slots)}")

    def _global(self, g: int) -> GlobalValue:
        if not 0 <= g < len(self.globals):
            raise MisuseError(BAD_GLOBAL, f"global {g}")
        value = self.globals[g]
        if isinstance(value, Uninit):
            raise MisuseError(UNINIT_GLOBAL, f"global {g} was never initialised")
        return value

    def _set_top(self, frame: Frame) -> None:
        self.frames[-1] = frame

    def _safepoint(self, frame: WasmFrame, at_wasm_call: bool) -> WasmFrame:
        """The youngest Wasm frame calls out: its pc becomes this safepoint, with this stack map."""
        previous = frame.stack_map if frame.stack_map is not None else frame.previous_stack_map
        frame = WasmFrame(
            slots=frame.slots,
            stack_map=emit_stack_map(self.cfg, frame.slots, at_wasm_call),
            previous_stack_map=previous,
            called_from_wasm=frame.called_from_wasm,
            ret_slot=frame.ret_slot,
            resets_canary=frame.resets_canary,
        )
        self._set_top(frame)
        return frame

    # --- dispatch -------------------------------------------------------------------------------

    def apply(self, op: ops.Op) -> Result:
        if op.WASM:
            self._wasm_frame()
        else:
            self._host_frame()
        kind = (type(self), type(op))
        handler = _HANDLERS.get(kind)
        if handler is None:
            handler = _HANDLERS[kind] = getattr(type(self), "op_" + type(op).__name__)
        return handler(self, op)

    # VMExternRef

    def op_New(self, op: ops.New) -> Result:
        check_value_layout(op.size, op.align)
        return Ok(self.host.new_handle(self.new_with(op.size, op.align)))

    def op_Clone(self, op: ops.Clone) -> Result:
        return Ok(self.host.new_handle(self.clone(self.host.handle(op.h))))

    def op_Drop(self, op: ops.Drop) -> Result:
        self.drop(self.host.take(op.h))
        return Ok()

    def op_AsRaw(self, op: ops.AsRaw) -> Result:
        return Ok(self.host.as_raw(op.h))

    def op_IntoRaw(self, op: ops.IntoRaw) -> Result:
        return Ok(self.host.into_raw(op.h))

    def op_FromRaw(self, op: ops.FromRaw) -> Result:
        return Ok(self.host.from_raw(op.p))

    def op_CloneFromRaw(self, op: ops.CloneFromRaw) -> Result:
        return Ok(self.host.new_handle(self.clone(self.host.clone_from_raw_target(op.p))))

    def op_StrongCount(self, op: ops.StrongCount) -> Result:
        return Ok(self.strong_count(self.host.handle(op.h)))

    def op_Eq(self, op: ops.Eq) -> Result:
        return Ok(self.host.handle(op.a) == self.host.handle(op.b))

    def op_Cmp(self, op: ops.Cmp) -> Result:
        return Ok(self.host.handle(op.a) == self.host.handle(op.b))

    def op_Deref(self, op: ops.Deref) -> Result:
        r = self.host.handle(op.h)
        box = self.heap_view.box(r)
        if box.freed:
            self.fault(FAULT_USE_AFTER_FREE, f"deref of freed ref {r}")
        return Ok((r, box.size, box.align))

    # VMExternRefActivationsTable

    def op_TryInsert(self, op: ops.TryInsert) -> Result:
        r = self.host.handle(op.h)
        if not self.try_insert(r):
            return Err("chunk-full")
        self.host.clear(op.h)
        return Ok()

    def op_InsertWithGc(self, op: ops.InsertWithGc) -> Result:
        self.insert_with_gc(self.host.take(op.h))
        return Ok()

    def op_InsertWithoutGc(self, op: ops.InsertWithoutGc) -> Result:
        self.insert_without_gc(self.host.take(op.h))
        return Ok()

    def op_InsertMany(self, op: ops.InsertMany) -> Result:
        r = self.host.handle(op.h)
        check_insert_count(op.count)
        for _ in range(op.count):
            if op.gc:
                self.insert_with_gc(self.clone(r))
            else:
                self.insert_without_gc(self.clone(r))
        return Ok()

    def op_BumpCapacityRemaining(self, op: ops.BumpCapacityRemaining) -> Result:
        return Ok(self.bump_capacity_remaining())

    def op_NumFilledInBumpChunk(self, op: ops.NumFilledInBumpChunk) -> Result:
        return Ok(self.num_filled_in_bump_chunk())

    def op_Elements(self, op: ops.Elements) -> Result:
        return Ok(tuple(sorted(self.elements())))

    def op_SetStackCanary(self, op: ops.SetStackCanary) -> Result:
        canary = None
        if op.frame is not None:
            if not 0 <= op.frame < len(self.frames):
                raise MisuseError(BAD_FRAME, f"frame {op.frame} of {len(self.frames)}")
            canary = frame_sps(tuple(self.frames))[op.frame]
        wasm_on_stack = any(isinstance(f, WasmFrame) for f in self.frames)
        check_stack_canary(canary, self.stack_canary(), wasm_on_stack)
        self.set_stack_canary(canary)
        return Ok()

    def op_StackCanary(self, op: ops.StackCanary) -> Result:
        return Ok(self.stack_canary())

    def op_SetGcOkay(self, op: ops.SetGcOkay) -> Result:
        return Ok(self.set_gc_okay(op.okay))

    def op_Gc(self, op: ops.Gc) -> Result:
        self.gc()
        return Ok()

    # globals and the embedder protocol

    def op_InitGlobals(self, op: ops.InitGlobals) -> Result:
        check_instantiation(op.count, [not isinstance(g, Uninit) for g in self.globals])
        for g in range(op.count):
            self.globals[g] = None
        return Ok()

    def op_HostGlobalSet(self, op: ops.HostGlobalSet) -> Result:
        old = self._global(op.g)
        new = None if op.h is None else self.host.handle(op.h)
        protocol.global_set(self, _ref(old), new)
        self.globals[op.g] = new
        return Ok()

    def op_HostGlobalGet(self, op: ops.HostGlobalGet) -> Result:
        value = _ref(self._global(op.g))
        return Ok(None if value is None else self.host.new_handle(self.clone(value)))

    def op_TeardownGlobals(self, op: ops.TeardownGlobals) -> Result:
        for g, value in enumerate(self.globals):
            if isinstance(value, int):
                self.drop(value)
            elif isinstance(value, Uninit) and self.cfg.mutant == CVE_2022_23636:
                self.fault(FAULT_WILD_POINTER, f"teardown dropped uninitialised global {g}")
            self.globals[g] = UNINIT
        return Ok()

    def op_CallWasm(self, op: ops.CallWasm) -> Result:
        if self.cfg.has(NO_GC_FREE_INSERT):
            check_counted_args(len(op.args), self.cfg.chunk_size)
        refs = self.host.take_args(op.args, self.cfg.slots)
        protocol.move_refs_into_table(self, refs, self.cfg)
        resets = protocol.enter_wasm(self, self.youngest_sp())
        slots: tuple[Slot, ...] = (*refs, *([None] * (self.cfg.slots - len(refs))))
        self.frames.append(WasmFrame(slots=slots, resets_canary=resets))
        return Ok()

    def op_ReturnToWasm(self, op: ops.ReturnToWasm) -> Result:
        top = self._host_frame()
        if not top.called_from_wasm:
            raise MisuseError(WRONG_FRAME, "this host frame was not called from Wasm")
        r = None if op.h is None else self.host.take(op.h)
        # The host function's one externref result counts for the pre-GC even when it is null.
        protocol.move_refs_into_table(self, [r], self.cfg)
        self.frames.pop()
        caller = self._wasm_frame()
        assert top.ret_slot is not None
        self._set_top(_write(caller, top.ret_slot, r))
        return Ok()

    # compiled Wasm code

    def op_WasmMove(self, op: ops.WasmMove) -> Result:
        frame = self._wasm_frame()
        self._slot(frame, op.src)
        self._slot(frame, op.dst)
        self._set_top(_write(frame, op.dst, frame.slots[op.src]))
        return Ok()

    def op_WasmNull(self, op: ops.WasmNull) -> Result:
        frame = self._wasm_frame()
        self._slot(frame, op.dst)
        self._set_top(_write(frame, op.dst, None))
        return Ok()

    def op_WasmScalar(self, op: ops.WasmScalar) -> Result:
        frame = self._wasm_frame()
        self._slot(frame, op.dst)
        self._set_top(_write(frame, op.dst, SCALAR))
        return Ok()

    def op_WasmGlobalGet(self, op: ops.WasmGlobalGet) -> Result:
        frame = self._wasm_frame()
        self._slot(frame, op.dst)
        value = _ref(self._global(op.g))
        self._safepoint(frame, at_wasm_call=False)
        self.frames.append(HostFrame())  # the libcall's own frame
        got = protocol.libcall_global_get(self, value, self.cfg)
        self.frames.pop()
        self._set_top(_write(self._wasm_frame(), op.dst, got))
        return Ok()

    def op_WasmGlobalSet(self, op: ops.WasmGlobalSet) -> Result:
        frame = self._wasm_frame()
        self._slot(frame, op.src)
        old = self._global(op.g)
        new = frame.slots[op.src]
        if isinstance(new, Scalar):
            raise MisuseError(BAD_SLOT, f"slot {op.src} holds no externref")
        protocol.global_set(self, _ref(old), new)
        self.globals[op.g] = new
        return Ok()

    def op_WasmCallWasm(self, op: ops.WasmCallWasm) -> Result:
        frame = self._wasm_frame()
        for i in (*op.args, op.ret_slot):
            self._slot(frame, i)
        check_arity(len(op.args), self.cfg.slots)
        frame = self._safepoint(frame, at_wasm_call=True)
        args = tuple(frame.slots[i] for i in op.args)
        slots: tuple[Slot, ...] = (*args, *([None] * (self.cfg.slots - len(args))))
        self.frames.append(WasmFrame(slots=slots, called_from_wasm=True, ret_slot=op.ret_slot))
        return Ok()

    def op_WasmCallHost(self, op: ops.WasmCallHost) -> Result:
        frame = self._wasm_frame()
        for i in (*op.args, op.ret_slot):
            self._slot(frame, i)
        frame = self._safepoint(frame, at_wasm_call=False)
        self.frames.append(
            HostFrame(unwind_info=op.unwind_info, called_from_wasm=True, ret_slot=op.ret_slot)
        )
        # `Func::invoke` reads each externref argument with `clone_from_raw`.
        got: list[int | None] = []
        for i in op.args:
            word = frame.slots[i]
            got.append(self.host.new_handle(self.clone(word)) if isinstance(word, int) else None)
        return Ok(tuple(got))

    def op_WasmReturn(self, op: ops.WasmReturn) -> Result:
        frame = self._wasm_frame()
        if op.slot is not None:
            self._slot(frame, op.slot)
        value = None if op.slot is None else frame.slots[op.slot]
        self.frames.pop()
        if frame.called_from_wasm:
            caller = self._wasm_frame()
            assert frame.ret_slot is not None
            self._set_top(_write(caller, frame.ret_slot, value))
            return Ok()
        protocol.exit_wasm(self, frame.resets_canary)
        if isinstance(value, int):
            # The host takes the result out of the table's borrow: `clone_from_raw`.
            return Ok(self.host.new_handle(self.clone(value)))
        return Ok(None)


def _same(now: list[Any], before: tuple[Any, ...]) -> tuple[Any, ...]:
    """`before` itself when a thawed part came back equal (sharing keeps comparisons cheap), else
    the part frozen (compared in place first: most steps leave most parts equal)."""
    return before if same(now, before) else tuple(now)


def _ref(value: GlobalValue) -> int | None:
    return value if isinstance(value, int) else None


def _write(frame: WasmFrame, i: int, value: Slot) -> WasmFrame:
    slots = list(frame.slots)
    slots[i] = value
    return WasmFrame(
        slots=tuple(slots),
        stack_map=frame.stack_map,
        previous_stack_map=frame.previous_stack_map,
        called_from_wasm=frame.called_from_wasm,
        ret_slot=frame.ret_slot,
        resets_canary=frame.resets_canary,
    )


#: `Machine.apply`'s dispatch: (machine class, operation class) to its `op_<Name>` handler, filled
#: on first use (a subclass may override a handler).
_HANDLERS: dict[tuple[type[Machine], type[ops.Op]], Callable[[Machine, Any], Result]] = {}
