"""Immutable, hashable states of the reference model.

A `State` is everything the seed's runtime and the world around it hold between two operations:

    State
    ├── heap: Vec[Box]                     every `VMExternRef` allocation, by ref id (allocation order;
    │                                        a persistent vector, `externref_harness.vec`)
    ├── table: Table                       the `VMExternRefActivationsTable`
    │     ├── chunk: (ref|None, ...)       the bump chunk; `()` until the first `sweep` (lazy;
    │     │                                  full-size from the start under `eager-chunk`)
    │     ├── next                         bump finger, as a slot index into `chunk`
    │     ├── over_approximated_stack_roots, precise_stack_roots
    │     └── stack_canary, gc_okay
    ├── handles: Vec[ref|None]             host-owned `VMExternRef`s; None marks a dropped handle
    ├── raws: (RawPtr|None, ...)           raw pointers the host got from `as_raw` / `into_raw`
    ├── globals: (ref|None|UNINIT, ...)    externref globals (`VMGlobalDefinition`)
    ├── frames: (HostFrame|WasmFrame, ...) the native stack, oldest first; frames[0] is the host's main
    └── faults / panic                     memory-safety faults and debug assertions that fired

The records (`Box`, `Table`, `WasmFrame`, ...) are plain classes with read-only (`Final`) fields
and explicit equality and hashing, not dataclasses: a compiled step (`externref_harness.compiled`)
then builds and hashes them in C; the bigger ones keep their hash once computed (`_hash`, -1 until
then, the one field that changes). They are immutable trees of tuples, so they can never be part of
a reference cycle (`acyclic`: the collector need not track them). `FIELDS` names each record's
fields in order, for reports, and `replaced` is their `dataclasses.replace`.

Stack addresses are derived, never stored: the stack grows down from `STACK_TOP`, so older frames sit
at higher addresses, exactly as `backtrace::trace` sees them.

    STACK_TOP ─┬──────────────┐ high addresses (older)
               │ host main    │ sp0 = STACK_TOP - HOST_FRAME_BYTES
               ├──────────────┤
               │ wasm frame   │ slots at sp + i*8, i = 0..S-1 (slot 0 closest to sp)
               ├──────────────┤
               │ ...          │ low addresses (younger)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, TypeVar

from mypy_extensions import mypyc_attr

from externref_harness.model.capabilities import EAGER_CHUNK, NAMES, canonical
from externref_harness.vec import Vec

WORD = 8
#: Highest stack address of the model's native stack; frames are carved below it.
STACK_TOP = 0x7FFF_0000_0000
#: Size of a host frame in bytes.
HOST_FRAME_BYTES = 4 * WORD
#: A Wasm frame's bytes are its slots plus the return address and saved frame pointer.
WASM_FRAME_OVERHEAD_BYTES = 2 * WORD
#: The seed's `CHUNK_SIZE`: `4096 / size_of::<usize>()`.
SEED_CHUNK_SIZE = 4096 // WORD

Build = Literal["debug", "release"]


def check_config_types(values: Mapping[str, object]) -> None:
    """The type rules of `Config`'s fields, with its messages, for values not typed yet (a trace
    file's). A compiled `Config` refuses a mistyped field with a bare TypeError before its own
    checks run, so what reads untyped input calls this first (`Config.from_untyped`)."""
    for name in ("chunk_size", "slots", "n_globals"):
        if name in values:
            value = values[name]
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")
    mutant = values.get("mutant")
    if mutant is not None and not isinstance(mutant, str):
        raise ValueError(f"mutant must be a name or null, got {mutant!r}")
    build = values.get("build", "debug")
    if build not in ("debug", "release"):
        raise ValueError(f"build must be 'debug' or 'release', got {build!r}")
    capabilities = values.get("capabilities", ())
    if not isinstance(capabilities, (list, tuple)) or not all(isinstance(c, str) for c in capabilities):
        raise ValueError(f"capabilities must be a list of names, got {capabilities!r}")
    if tuple(capabilities) != canonical(capabilities):  # unknown names raise UnknownCapability
        raise ValueError(
            f"capabilities must be listed once each in the order {list(NAMES)}, got {list(capabilities)}"
        )


@dataclass(frozen=True, slots=True)
class Config:
    """Fixed parameters of one run. `mutant` names a seeded bug (None: the seed as it is).

    Compiled (a native class: every step reads it), so a mistyped field is a TypeError at
    construction; untyped input goes through `from_untyped`, which says what is wrong.
    """

    chunk_size: int = SEED_CHUNK_SIZE
    build: Build = "debug"
    slots: int = 4
    n_globals: int = 2
    mutant: str | None = None
    #: The implementation's declared design choices (`model.capabilities`, in bit order); the
    #: seed has none.
    capabilities: tuple[str, ...] = ()

    @staticmethod
    def from_untyped(values: Mapping[str, Any]) -> Config:
        """A `Config` from values read from a file: each type checked first, with a precise error."""
        check_config_types(values)
        if "capabilities" in values:
            values = {**values, "capabilities": tuple(values["capabilities"])}
        return Config(**values)

    def __post_init__(self) -> None:
        names = ("chunk_size", "slots", "n_globals", "mutant", "build", "capabilities")
        check_config_types({name: getattr(self, name) for name in names})
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        if self.n_globals < 0:
            raise ValueError(f"n_globals must be >= 0, got {self.n_globals}")

    @property
    def debug(self) -> bool:
        return self.build == "debug"

    def has(self, capability: str) -> bool:
        """Whether the implementation declared this capability (`model.capabilities`)."""
        return capability in self.capabilities


@mypyc_attr(acyclic=True)
class Box:
    """One `VMExternData` allocation: its value's layout, `ref_count`, and whether it was freed."""

    __slots__ = ("_hash", "align", "freed", "ref_count", "size")
    FIELDS: ClassVar[tuple[str, ...]] = ("size", "align", "ref_count", "freed")

    def __init__(self, size: int, align: int, ref_count: int = 1, freed: bool = False) -> None:
        self.size: Final = size
        self.align: Final = align
        self.ref_count: Final = ref_count
        self.freed: Final = freed
        self._hash = -1

    def __eq__(self, other: object) -> bool:
        if type(other) is not Box:
            return NotImplemented
        assert isinstance(other, Box)
        return (
            self.size == other.size
            and self.align == other.align
            and self.ref_count == other.ref_count
            and self.freed == other.freed
        )

    def __hash__(self) -> int:
        if self._hash == -1:  # a successor's heap shares most boxes with its state's
            self._hash = hash((self.size, self.align, self.ref_count, self.freed))
        return self._hash

    def __repr__(self) -> str:
        return (
            f"Box(size={self.size!r}, align={self.align!r}, "
            f"ref_count={self.ref_count!r}, freed={self.freed!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (Box, (self.size, self.align, self.ref_count, self.freed))


class Scalar:
    """A non-reference word in a Wasm stack slot (an i64 spill). Never a valid `VMExternData*`.

    One instance, `SCALAR` (a pickled copy comes back as it).
    """

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is Scalar

    def __hash__(self) -> int:
        return 0x5CA1A4

    def __repr__(self) -> str:
        return "SCALAR"

    def __reduce__(self) -> str:
        return "SCALAR"


SCALAR = Scalar()

#: What a Wasm stack slot holds: null, a live ref (by id) the compiled code still uses, or a scalar.
Slot = int | Scalar | None


class Uninit:
    """The bytes of a `VMGlobalDefinition` that instantiation never wrote. One instance, `UNINIT`."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return type(other) is Uninit

    def __hash__(self) -> int:
        return 0x0717

    def __repr__(self) -> str:
        return "UNINIT"

    def __reduce__(self) -> str:
        return "UNINIT"


UNINIT = Uninit()
GlobalValue = int | Uninit | None


@mypyc_attr(acyclic=True)
class RawPtr:
    """A raw `*mut u8` the host holds. `owned` pointers (from `into_raw`) carry one count."""

    __slots__ = ("owned", "ref")
    FIELDS: ClassVar[tuple[str, ...]] = ("ref", "owned")

    def __init__(self, ref: int, owned: bool) -> None:
        self.ref: Final = ref
        self.owned: Final = owned

    def __eq__(self, other: object) -> bool:
        if type(other) is not RawPtr:
            return NotImplemented
        assert isinstance(other, RawPtr)
        return self.ref == other.ref and self.owned == other.owned

    def __hash__(self) -> int:
        return hash((self.ref, self.owned))

    def __repr__(self) -> str:
        return f"RawPtr(ref={self.ref!r}, owned={self.owned!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (RawPtr, (self.ref, self.owned))


@mypyc_attr(acyclic=True)
class HostFrame:
    """A host frame. `ret_slot` is where a Wasm caller expects this host function's result."""

    __slots__ = ("_hash", "called_from_wasm", "ret_slot", "unwind_info")
    FIELDS: ClassVar[tuple[str, ...]] = ("unwind_info", "called_from_wasm", "ret_slot")

    def __init__(
        self, unwind_info: bool = True, called_from_wasm: bool = False, ret_slot: int | None = None
    ) -> None:
        self.unwind_info: Final = unwind_info
        self.called_from_wasm: Final = called_from_wasm
        self.ret_slot: Final = ret_slot
        self._hash = -1

    def __eq__(self, other: object) -> bool:
        if type(other) is not HostFrame:
            return NotImplemented
        assert isinstance(other, HostFrame)
        return (
            self.unwind_info == other.unwind_info
            and self.called_from_wasm == other.called_from_wasm
            and self.ret_slot == other.ret_slot
        )

    def __hash__(self) -> int:
        if self._hash == -1:
            self._hash = hash((self.unwind_info, self.called_from_wasm, self.ret_slot))
        return self._hash

    def __repr__(self) -> str:
        return (
            f"HostFrame(unwind_info={self.unwind_info!r}, "
            f"called_from_wasm={self.called_from_wasm!r}, ret_slot={self.ret_slot!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (HostFrame, (self.unwind_info, self.called_from_wasm, self.ret_slot))


StackMap = tuple[int, ...]


@mypyc_attr(acyclic=True)
class WasmFrame:
    """A Wasm activation suspended at (or executing towards) a safepoint.

    `slots` is the ground truth. `stack_map` is what the compiler registered for the pc this frame
    is suspended at (None: no map), computed when the frame last made a call; `previous_stack_map`
    is the map of the safepoint before that, which a buggy lookup may fall back to.
    """

    __slots__ = (
        "_hash", "called_from_wasm", "previous_stack_map", "resets_canary", "ret_slot", "slots",
        "stack_map",
    )  # fmt: skip
    FIELDS: ClassVar[tuple[str, ...]] = (
        "slots", "stack_map", "previous_stack_map", "called_from_wasm", "ret_slot", "resets_canary"
    )  # fmt: skip

    def __init__(
        self,
        slots: tuple[Slot, ...],
        stack_map: StackMap | None = None,
        previous_stack_map: StackMap | None = None,
        called_from_wasm: bool = False,
        ret_slot: int | None = None,
        resets_canary: bool = False,
    ) -> None:
        self.slots: Final = slots
        self.stack_map: Final = stack_map
        self.previous_stack_map: Final = previous_stack_map
        self.called_from_wasm: Final = called_from_wasm
        self.ret_slot: Final = ret_slot
        self.resets_canary: Final = resets_canary
        self._hash = -1

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not WasmFrame:
            return NotImplemented
        assert isinstance(other, WasmFrame)
        return (
            self.slots == other.slots
            and self.stack_map == other.stack_map
            and self.previous_stack_map == other.previous_stack_map
            and self.called_from_wasm == other.called_from_wasm
            and self.ret_slot == other.ret_slot
            and self.resets_canary == other.resets_canary
        )

    def __hash__(self) -> int:
        if self._hash == -1:  # computed once: successors share most records of their state
            self._hash = hash((
                self.slots, self.stack_map, self.previous_stack_map,
                self.called_from_wasm, self.ret_slot, self.resets_canary,
            ))  # fmt: skip
        return self._hash

    def __repr__(self) -> str:
        return (
            f"WasmFrame(slots={self.slots!r}, stack_map={self.stack_map!r}, "
            f"previous_stack_map={self.previous_stack_map!r}, "
            f"called_from_wasm={self.called_from_wasm!r}, ret_slot={self.ret_slot!r}, "
            f"resets_canary={self.resets_canary!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (WasmFrame, (
            self.slots, self.stack_map, self.previous_stack_map,
            self.called_from_wasm, self.ret_slot, self.resets_canary,
        ))  # fmt: skip


Frame = HostFrame | WasmFrame


@mypyc_attr(acyclic=True)
class Table:
    """`VMExternRefActivationsTable` with the bump finger as a slot index into `chunk`."""

    __slots__ = (
        "_hash", "chunk", "gc_okay", "next", "over_approximated_stack_roots", "precise_stack_roots",
        "stack_canary",
    )  # fmt: skip
    FIELDS: ClassVar[tuple[str, ...]] = (
        "chunk", "next", "over_approximated_stack_roots", "precise_stack_roots", "stack_canary",
        "gc_okay",
    )  # fmt: skip

    def __init__(
        self,
        chunk: tuple[int | None, ...] = (),
        next: int = 0,
        over_approximated_stack_roots: frozenset[int] = frozenset(),
        precise_stack_roots: frozenset[int] = frozenset(),
        stack_canary: int | None = None,
        gc_okay: bool = True,
    ) -> None:
        self.chunk: Final = chunk
        self.next: Final = next
        self.over_approximated_stack_roots: Final = over_approximated_stack_roots
        self.precise_stack_roots: Final = precise_stack_roots
        self.stack_canary: Final = stack_canary
        self.gc_okay: Final = gc_okay
        self._hash = -1

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not Table:
            return NotImplemented
        assert isinstance(other, Table)
        return (
            self.chunk == other.chunk
            and self.next == other.next
            and self.over_approximated_stack_roots == other.over_approximated_stack_roots
            and self.precise_stack_roots == other.precise_stack_roots
            and self.stack_canary == other.stack_canary
            and self.gc_okay == other.gc_okay
        )

    def __hash__(self) -> int:
        if self._hash == -1:
            self._hash = hash((
                self.chunk, self.next, self.over_approximated_stack_roots, self.precise_stack_roots,
                self.stack_canary, self.gc_okay,
            ))  # fmt: skip
        return self._hash

    def __repr__(self) -> str:
        return (
            f"Table(chunk={self.chunk!r}, next={self.next!r}, "
            f"over_approximated_stack_roots={self.over_approximated_stack_roots!r}, "
            f"precise_stack_roots={self.precise_stack_roots!r}, "
            f"stack_canary={self.stack_canary!r}, gc_okay={self.gc_okay!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (Table, (
            self.chunk, self.next, self.over_approximated_stack_roots, self.precise_stack_roots,
            self.stack_canary, self.gc_okay,
        ))  # fmt: skip

    def with_(self, **changes: Any) -> Table:
        return replaced(self, **changes)


_HOST_MAIN = HostFrame()


@mypyc_attr(acyclic=True)
class State:
    __slots__ = ("_hash", "faults", "frames", "globals", "handles", "heap", "panic", "raws", "table")
    FIELDS: ClassVar[tuple[str, ...]] = (
        "heap", "table", "handles", "raws", "globals", "frames", "faults", "panic"
    )  # fmt: skip

    def __init__(
        self,
        heap: Iterable[Box] = (),
        table: Table | None = None,
        handles: Iterable[int | None] = (),
        raws: tuple[RawPtr | None, ...] = (),
        globals: tuple[GlobalValue, ...] = (),
        frames: tuple[Frame, ...] = (_HOST_MAIN,),
        faults: tuple[str, ...] = (),
        panic: str | None = None,
    ) -> None:
        # `Vec`s (any other sequence is made one): a step writes one of their leaves, not all.
        self.heap: Final[Vec[Box]] = Vec.of(heap)
        self.table: Final[Table] = Table() if table is None else table
        self.handles: Final[Vec[int | None]] = Vec.of(handles)
        self.raws: Final = raws
        self.globals: Final = globals
        self.frames: Final = frames
        #: Memory-safety faults (what a sanitizer would report), in order of occurrence.
        self.faults: Final = faults
        #: The message of a debug assertion that fired; the run cannot continue past it.
        self.panic: Final = panic
        self._hash = -1

    def __eq__(self, other: object) -> bool:
        if self is other:
            return True
        if type(other) is not State:
            return NotImplemented
        assert isinstance(other, State)
        return (
            self.heap == other.heap
            and self.table == other.table
            and self.handles == other.handles
            and self.raws == other.raws
            and self.globals == other.globals
            and self.frames == other.frames
            and self.faults == other.faults
            and self.panic == other.panic
        )

    def __hash__(self) -> int:
        if self._hash == -1:
            self._hash = hash((
                self.heap, self.table, self.handles, self.raws, self.globals, self.frames,
                self.faults, self.panic,
            ))  # fmt: skip
        return self._hash

    def __repr__(self) -> str:
        return (
            f"State(heap={self.heap!r}, table={self.table!r}, handles={self.handles!r}, "
            f"raws={self.raws!r}, globals={self.globals!r}, frames={self.frames!r}, "
            f"faults={self.faults!r}, panic={self.panic!r})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (State, (
            self.heap, self.table, self.handles, self.raws, self.globals, self.frames,
            self.faults, self.panic,
        ))  # fmt: skip

    @staticmethod
    def initial(cfg: Config) -> State:
        """The state before the first operation. The seed's table starts with no chunk (the first
        `sweep` allocates it); under `eager-chunk` (`model.capabilities`) `new` has allocated a
        full-size empty one, so capacity and inserts before the first GC follow from it."""
        table = Table(chunk=(None,) * cfg.chunk_size) if cfg.has(EAGER_CHUNK) else None
        return State(table=table, globals=(UNINIT,) * cfg.n_globals)

    def with_(self, **changes: Any) -> State:
        return replaced(self, **changes)


R = TypeVar("R", Box, RawPtr, HostFrame, WasmFrame, Table, State)


def replaced(record: R, **changes: Any) -> R:
    """A copy of a state record with the named fields changed, as `dataclasses.replace` does."""
    unknown = set(changes) - set(record.FIELDS)
    if unknown:
        raise TypeError(f"{type(record).__name__} has no field {', '.join(sorted(unknown))}")
    copy: R = type(record)(**{f: changes.get(f, getattr(record, f)) for f in record.FIELDS})
    return copy


#: The record types of a `State`, each with its field names in order (`FIELDS`).
Record = Box | RawPtr | HostFrame | WasmFrame | Table | State


def record_fields(value: object) -> tuple[str, ...] | None:
    """The field names of a state record (`Box`, `Table`, ...), None for anything else."""
    fields: object = getattr(type(value), "FIELDS", None)
    return fields if isinstance(fields, tuple) else None


def frame_bytes(frame: Frame) -> int:
    if isinstance(frame, HostFrame):
        return HOST_FRAME_BYTES
    return len(frame.slots) * WORD + WASM_FRAME_OVERHEAD_BYTES


def frame_sps(frames: tuple[Frame, ...]) -> tuple[int, ...]:
    """The stack pointer of every frame, oldest first (strictly decreasing)."""
    sps: list[int] = []
    sp = STACK_TOP
    for frame in frames:
        sp -= frame_bytes(frame)
        sps.append(sp)
    return tuple(sps)


def table_elements(table: Table) -> tuple[int, ...]:
    """`elements()`: the over-approximated set, then the filled part of the bump chunk (with duplicates)."""
    out = sorted(table.over_approximated_stack_roots)
    out.extend(r for r in table.chunk[: table.next] if r is not None)
    return tuple(out)


def wasm_live_refs(frames: tuple[Frame, ...]) -> tuple[int, ...]:
    """Every ref held live in a Wasm slot (the ground truth the stack maps should describe)."""
    return tuple(
        s for f in frames if isinstance(f, WasmFrame) for s in f.slots if isinstance(s, int)
    )


def global_refs(globals_: tuple[GlobalValue, ...]) -> tuple[int, ...]:
    return tuple(g for g in globals_ if isinstance(g, int))


def owned_refs(state: State) -> list[int]:
    """The ref of every counted owner, once per owner: handles, owned raws, globals and table
    entries (the one rule both `owners` and the invariants' counts use).

    Wasm stack slots borrow from the table and are not counted; that is the point of deferred
    reference counting.
    """
    out: list[int] = [h for h in state.handles if h is not None]
    for p in state.raws:
        if p is not None and p.owned:
            out.append(p.ref)
    out.extend(global_refs(state.globals))
    out.extend(table_owned_refs(state.table))
    return out


def table_owned_refs(table: Table) -> list[int]:
    """`owned_refs`' table part: over-approximated roots, the filled chunk, precise roots."""
    out = list(table.over_approximated_stack_roots)
    out.extend([r for r in table.chunk[: table.next] if r is not None])
    out.extend(table.precise_stack_roots)
    return out


def owners(state: State) -> dict[int, int]:
    """How many counted owners hold each ref (`owned_refs`, counted)."""
    counts: dict[int, int] = {}
    for r in owned_refs(state):
        counts[r] = counts.get(r, 0) + 1
    return counts
