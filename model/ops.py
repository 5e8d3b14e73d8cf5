"""Operations: everything the host, the compiled Wasm code and the embedder can do, as plain data.

Every operation is a small frozen dataclass whose fields are ints, bools, None or tuples of those,
so a trace is printable, JSON-serialisable and replayable on both the model and the implementation.
Handles (`h`) index `State.handles`, raw pointers (`p`) index `State.raws`, slots index the youngest
Wasm frame's slots, and `g` indexes the externref globals.

`TAG` names the path an operation exercises, for coverage counting.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

from externref_harness.errors import json_type, shown_json
from externref_harness.model import capabilities


@dataclass(frozen=True, slots=True)
class Op:
    TAG: ClassVar[str] = "op"
    #: Host ops run in a host frame, Wasm ops in the youngest Wasm frame.
    WASM: ClassVar[bool] = False

    def __str__(self) -> str:
        """`WasmCallHost(args=(1,), ret_slot=2, unwind_info=True)`: fields named as in the JSON."""
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
        return f"{type(self).__name__}({args})"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How Hypothesis prints a drawn operation in a falsifying example."""
        printer.text(str(self))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"op": type(self).__name__}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out


# --- VMExternRef, from the host -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class New(Op):
    """`VMExternRef::new_with` for a value of this size and alignment."""

    TAG = "new"
    size: int
    align: int


@dataclass(frozen=True, slots=True)
class Clone(Op):
    TAG = "clone"
    h: int


@dataclass(frozen=True, slots=True)
class Drop(Op):
    TAG = "drop"
    h: int


@dataclass(frozen=True, slots=True)
class AsRaw(Op):
    TAG = "as_raw"
    h: int


@dataclass(frozen=True, slots=True)
class IntoRaw(Op):
    TAG = "into_raw"
    h: int


@dataclass(frozen=True, slots=True)
class FromRaw(Op):
    TAG = "from_raw"
    p: int


@dataclass(frozen=True, slots=True)
class CloneFromRaw(Op):
    TAG = "clone_from_raw"
    p: int


@dataclass(frozen=True, slots=True)
class StrongCount(Op):
    TAG = "strong_count"
    h: int


@dataclass(frozen=True, slots=True)
class Eq(Op):
    """`VMExternRef::eq` (pointer equality)."""

    TAG = "eq"
    a: int
    b: int


@dataclass(frozen=True, slots=True)
class Cmp(Op):
    """`VMExternRef::cmp`: the model answers whether it is `Equal`; address order is the impl's."""

    TAG = "cmp"
    a: int
    b: int


@dataclass(frozen=True, slots=True)
class Deref(Op):
    """`Deref for VMExternRef`: the value's identity (the ref it was created as) and layout."""

    TAG = "deref"
    h: int


# --- VMExternRefActivationsTable, from the host -----------------------------------------------


@dataclass(frozen=True, slots=True)
class TryInsert(Op):
    """Moves handle `h` into the table; on `Err` the handle is given back."""

    TAG = "try_insert"
    h: int


@dataclass(frozen=True, slots=True)
class InsertWithGc(Op):
    TAG = "insert_with_gc"
    h: int


@dataclass(frozen=True, slots=True)
class InsertWithoutGc(Op):
    TAG = "insert_without_gc"
    h: int


@dataclass(frozen=True, slots=True)
class InsertMany(Op):
    """A host loop: `count` clones of handle `h` moved into the table one after another, each with
    `insert_with_gc` (`gc`) or `insert_without_gc`; the handle itself stays the host's.

    One step, so a full 512-slot chunk (and the slow paths and GCs it leads to) is a few steps
    away, as it is for an embedder that passes many refs in a loop."""

    TAG = "insert_many"
    h: int
    count: int
    gc: bool


@dataclass(frozen=True, slots=True)
class BumpCapacityRemaining(Op):
    TAG = "bump_capacity_remaining"


@dataclass(frozen=True, slots=True)
class NumFilledInBumpChunk(Op):
    TAG = "num_filled_in_bump_chunk"


@dataclass(frozen=True, slots=True)
class Elements(Op):
    TAG = "elements"


@dataclass(frozen=True, slots=True)
class SetStackCanary(Op):
    """`set_stack_canary(Some(sp of frames[frame]))`, or `None`."""

    TAG = "set_stack_canary"
    frame: int | None


@dataclass(frozen=True, slots=True)
class StackCanary(Op):
    TAG = "stack_canary"


@dataclass(frozen=True, slots=True)
class SetGcOkay(Op):
    TAG = "set_gc_okay"
    okay: bool


@dataclass(frozen=True, slots=True)
class Gc(Op):
    """`Store::gc()` from a host frame."""

    TAG = "gc"


# --- globals and the embedder protocol ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InitGlobals(Op):
    """Instantiation writes globals `0..count` (null); it stopped there if `count < n_globals`."""

    TAG = "init_globals"
    count: int


@dataclass(frozen=True, slots=True)
class HostGlobalSet(Op):
    """`Global::set` from the host: handle `h` (None: null) is cloned in, the old value dropped."""

    TAG = "host_global_set"
    g: int
    h: int | None


@dataclass(frozen=True, slots=True)
class HostGlobalGet(Op):
    TAG = "host_global_get"
    g: int


@dataclass(frozen=True, slots=True)
class TeardownGlobals(Op):
    """The instance is dropped: every initialised externref global is dropped."""

    TAG = "teardown_globals"


@dataclass(frozen=True, slots=True)
class CallWasm(Op):
    """Host calls Wasm (`TypedFunc::call`), moving handles `args` in as the first slots."""

    TAG = "call_wasm"
    args: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class ReturnToWasm(Op):
    """The host function on top returns handle `h` (None: null) to its Wasm caller (`Func::invoke`)."""

    TAG = "return_to_wasm"
    h: int | None


# --- compiled Wasm code, in the youngest Wasm frame --------------------------------------------


@dataclass(frozen=True, slots=True)
class WasmMove(Op):
    """`local.get src; local.set dst`: a borrowed copy, no count change."""

    TAG = "wasm_move"
    WASM = True
    src: int
    dst: int


@dataclass(frozen=True, slots=True)
class WasmNull(Op):
    """`ref.null extern; local.set dst`."""

    TAG = "wasm_null"
    WASM = True
    dst: int


@dataclass(frozen=True, slots=True)
class WasmScalar(Op):
    """The register allocator reuses slot `dst` for an i64."""

    TAG = "wasm_scalar"
    WASM = True
    dst: int


@dataclass(frozen=True, slots=True)
class WasmGlobalGet(Op):
    """`global.get g` into slot `dst` through the `externref_global_get` libcall (may GC)."""

    TAG = "wasm_global_get"
    WASM = True
    g: int
    dst: int


@dataclass(frozen=True, slots=True)
class WasmGlobalSet(Op):
    TAG = "wasm_global_set"
    WASM = True
    g: int
    src: int


@dataclass(frozen=True, slots=True)
class WasmCallWasm(Op):
    """Call a Wasm function, passing slots `args`; its result lands in `ret_slot`."""

    TAG = "wasm_call_wasm"
    WASM = True
    args: tuple[int, ...]
    ret_slot: int


@dataclass(frozen=True, slots=True)
class WasmCallHost(Op):
    """Call a host function with slots `args`. `unwind_info=False`: the unwinder cannot step past it."""

    TAG = "wasm_call_host"
    WASM = True
    args: tuple[int, ...]
    ret_slot: int
    unwind_info: bool = True


@dataclass(frozen=True, slots=True)
class WasmReturn(Op):
    """Return slot `slot` (None: nothing / null) to the caller, Wasm or host."""

    TAG = "wasm_return"
    WASM = True
    slot: int | None


ALL_OPS: tuple[type[Op], ...] = (
    New, Clone, Drop, AsRaw, IntoRaw, FromRaw, CloneFromRaw, StrongCount, Eq, Cmp, Deref,
    TryInsert, InsertWithGc, InsertWithoutGc, InsertMany, BumpCapacityRemaining, NumFilledInBumpChunk,
    Elements, SetStackCanary, StackCanary, SetGcOkay, Gc,
    InitGlobals, HostGlobalSet, HostGlobalGet, TeardownGlobals, CallWasm, ReturnToWasm,
    WasmMove, WasmNull, WasmScalar, WasmGlobalGet, WasmGlobalSet, WasmCallWasm, WasmCallHost,
    WasmReturn,
)  # fmt: skip
OPS_BY_NAME: dict[str, type[Op]] = {cls.__name__: cls for cls in ALL_OPS}


class TraceFormatError(ValueError):
    """A trace step that does not describe a known operation."""


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _field_value(op: str, field: str, annotation: str, v: object) -> object:
    """A JSON value checked against the field's annotation (as written in this module)."""
    where = f"{op}.{field}"
    if annotation == "bool":
        if not isinstance(v, bool):
            raise TraceFormatError(f"{where}: expected true or false, got {shown_json(v)}")
        return v
    if annotation.startswith("tuple"):
        if not isinstance(v, list) or not all(_is_int(x) for x in v):
            raise TraceFormatError(f"{where}: expected a list of ints, got {shown_json(v)}")
        return tuple(v)
    if v is None and "None" in annotation:
        return None
    if not _is_int(v):
        nullable = " or null" if "None" in annotation else ""
        raise TraceFormatError(f"{where}: expected an int{nullable}, got {shown_json(v)}")
    return v


def op_from_json(obj: object) -> Op:
    """Inverse of `Op.to_json`, with precise errors for malformed input."""
    if not isinstance(obj, dict):
        raise TraceFormatError(f"a step must be an object, got {json_type(obj)}")
    name = obj.get("op")
    cls = OPS_BY_NAME.get(name) if isinstance(name, str) else None
    if cls is None:
        raise TraceFormatError(f"unknown operation {shown_json(name)}")
    kwargs: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(cls)}
    extra = set(obj) - set(fields) - {"op"}
    if extra:
        raise TraceFormatError(f"{name}: unexpected field(s) {shown_json(sorted(extra))}")
    for fname, f in fields.items():
        if fname not in obj:
            if f.default is not dataclasses.MISSING:
                continue
            raise TraceFormatError(f"{name}: missing field {fname!r}")
        kwargs[fname] = _field_value(cls.__name__, fname, str(f.type), obj[fname])
    return cls(**kwargs)


#: The operations a capability takes away, because each calls a function the implementation then
#: lacks (`native.library.REMOVED`): they are never generated, and a trace holding one does not run
#: against such an implementation (`unavailable`). `InsertMany` without GC loops over
#: `insert_without_gc`. `SetStackCanary` stays under `canary-guard`: the host maps it onto the
#: scope's enter and leave; only the getter is gone.
REMOVED_BY: dict[str, tuple[type[Op], ...]] = {
    capabilities.NO_GC_FREE_INSERT: (InsertWithoutGc, BumpCapacityRemaining, SetGcOkay),
    capabilities.CANARY_GUARD: (StackCanary,),
    capabilities.NO_RAW: (IntoRaw, FromRaw, CloneFromRaw),
    capabilities.NO_STRONG_COUNT: (StrongCount,),
}


#: The removed operations that only observe: no later step depends on what they answered, so a
#: corpus trace of the seed runs on an implementation without them with those steps left out
#: (`left_out`), instead of not at all. A saved trace still replays exactly, or is refused.
OBSERVING_ONLY: tuple[type[Op], ...] = (StrongCount, BumpCapacityRemaining, StackCanary)


def left_out(op: Op, declared: tuple[str, ...]) -> bool:
    """Whether a corpus run on an implementation with these capabilities leaves `op` out: it only
    observes, and calls a function the implementation lacks."""
    return isinstance(op, OBSERVING_ONLY) and unavailable(op, declared) is not None


def unavailable(op: Op, declared: tuple[str, ...]) -> str | None:
    """Why `op` cannot run on an implementation with these capabilities (None: it can)."""
    for capability in declared:
        if isinstance(op, REMOVED_BY.get(capability, ())):
            return f"{type(op).__name__} calls a function a {capability} implementation lacks"
    if isinstance(op, InsertMany) and not op.gc and capabilities.NO_GC_FREE_INSERT in declared:
        lacking = capabilities.NO_GC_FREE_INSERT
        return f"InsertMany(gc=False) calls insert_without_gc, which a {lacking} implementation lacks"
    return None


#: Fields that index the host's handle table, per operation (everything else is a slot, a global,
#: a frame, a size or a flag). A trace edit that removes a handle renumbers these.
HANDLE_FIELDS: dict[type[Op], tuple[str, ...]] = {
    Clone: ("h",), Drop: ("h",), AsRaw: ("h",), IntoRaw: ("h",), StrongCount: ("h",),
    Eq: ("a", "b"), Cmp: ("a", "b"), Deref: ("h",), TryInsert: ("h",), InsertWithGc: ("h",),
    InsertWithoutGc: ("h",), InsertMany: ("h",), HostGlobalSet: ("h",), CallWasm: ("args",),
    ReturnToWasm: ("h",),
}  # fmt: skip
#: Fields that index the host's raw pointers.
RAW_FIELDS: dict[type[Op], tuple[str, ...]] = {FromRaw: ("p",), CloneFromRaw: ("p",)}
