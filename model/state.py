"""Immutable, hashable states of the reference model.

A `State` is everything the seed's runtime and the world around it hold between two operations:

    State
    ├── heap: (Box, ...)                   every `VMExternRef` allocation, by ref id (allocation order)
    ├── table: Table                       the `VMExternRefActivationsTable`
    │     ├── chunk: (ref|None, ...)       the bump chunk; `()` until the first `sweep` (lazy)
    │     ├── next                         bump finger, as a slot index into `chunk`
    │     ├── over_approximated_stack_roots, precise_stack_roots
    │     └── stack_canary, gc_okay
    ├── handles: (ref|None, ...)           host-owned `VMExternRef`s; None marks a dropped handle
    ├── raws: (RawPtr|None, ...)           raw pointers the host got from `as_raw` / `into_raw`
    ├── globals: (ref|None|UNINIT, ...)    externref globals (`VMGlobalDefinition`)
    ├── frames: (HostFrame|WasmFrame, ...) the native stack, oldest first; frames[0] is the host's main
    └── faults / panic                     memory-safety faults and debug assertions that fired

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

from dataclasses import dataclass, field, replace
from typing import Literal

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


@dataclass(frozen=True, slots=True)
class Config:
    """Fixed parameters of one run. `mutant` names a seeded bug (None: the seed as it is)."""

    chunk_size: int = SEED_CHUNK_SIZE
    build: Build = "debug"
    slots: int = 4
    n_globals: int = 2
    mutant: str | None = None

    def __post_init__(self) -> None:
        for name in ("chunk_size", "slots", "n_globals"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if self.mutant is not None and not isinstance(self.mutant, str):
            raise ValueError(f"mutant must be a name or null, got {self.mutant!r}")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {self.chunk_size}")
        if self.build not in ("debug", "release"):
            raise ValueError(f"build must be 'debug' or 'release', got {self.build!r}")
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        if self.n_globals < 0:
            raise ValueError(f"n_globals must be >= 0, got {self.n_globals}")

    @property
    def debug(self) -> bool:
        return self.build == "debug"


@dataclass(frozen=True, slots=True)
class Box:
    """One `VMExternData` allocation: its value's layout, `ref_count`, and whether it was freed."""

    size: int
    align: int
    ref_count: int = 1
    freed: bool = False


@dataclass(frozen=True, slots=True)
class Scalar:
    """A non-reference word in a Wasm stack slot (an i64 spill). Never a valid `VMExternData*`."""

    def __repr__(self) -> str:
        return "SCALAR"


SCALAR = Scalar()

#: What a Wasm stack slot holds: null, a live ref (by id) the compiled code still uses, or a scalar.
Slot = int | Scalar | None


@dataclass(frozen=True, slots=True)
class Uninit:
    """The bytes of a `VMGlobalDefinition` that instantiation never wrote."""

    def __repr__(self) -> str:
        return "UNINIT"


UNINIT = Uninit()
GlobalValue = int | Uninit | None


@dataclass(frozen=True, slots=True)
class RawPtr:
    """A raw `*mut u8` the host holds. `owned` pointers (from `into_raw`) carry one count."""

    ref: int
    owned: bool


@dataclass(frozen=True, slots=True)
class HostFrame:
    """A host frame. `ret_slot` is where a Wasm caller expects this host function's result."""

    unwind_info: bool = True
    called_from_wasm: bool = False
    ret_slot: int | None = None


StackMap = tuple[int, ...]


@dataclass(frozen=True, slots=True)
class WasmFrame:
    """A Wasm activation suspended at (or executing towards) a safepoint.

    `slots` is the ground truth. `stack_map` is what the compiler registered for the pc this frame
    is suspended at (None: no map), computed when the frame last made a call; `previous_stack_map`
    is the map of the safepoint before that, which a buggy lookup may fall back to.
    """

    slots: tuple[Slot, ...]
    stack_map: StackMap | None = None
    previous_stack_map: StackMap | None = None
    called_from_wasm: bool = False
    ret_slot: int | None = None
    resets_canary: bool = False


Frame = HostFrame | WasmFrame


@dataclass(frozen=True, slots=True)
class Table:
    """`VMExternRefActivationsTable` with the bump finger as a slot index into `chunk`."""

    chunk: tuple[int | None, ...] = ()
    next: int = 0
    over_approximated_stack_roots: frozenset[int] = frozenset()
    precise_stack_roots: frozenset[int] = frozenset()
    stack_canary: int | None = None
    gc_okay: bool = True


@dataclass(frozen=True, slots=True)
class State:
    heap: tuple[Box, ...] = ()
    table: Table = field(default_factory=Table)
    handles: tuple[int | None, ...] = ()
    raws: tuple[RawPtr | None, ...] = ()
    globals: tuple[GlobalValue, ...] = ()
    frames: tuple[Frame, ...] = (HostFrame(),)
    #: Memory-safety faults (what a sanitizer would report), in order of occurrence.
    faults: tuple[str, ...] = ()
    #: The message of a debug assertion that fired; the run cannot continue past it.
    panic: str | None = None

    @staticmethod
    def initial(cfg: Config) -> State:
        return State(globals=(UNINIT,) * cfg.n_globals)

    def with_(self, **changes: object) -> State:
        return replace(self, **changes)  # type: ignore[arg-type]


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


def owners(state: State) -> dict[int, int]:
    """How many counted owners hold each ref: handles, owned raws, globals and table entries.

    Wasm stack slots borrow from the table and are not counted; that is the point of deferred
    reference counting.
    """
    counts: dict[int, int] = {}

    def add(r: int) -> None:
        counts[r] = counts.get(r, 0) + 1

    for h in state.handles:
        if h is not None:
            add(h)
    for p in state.raws:
        if p is not None and p.owned:
            add(p.ref)
    for g in global_refs(state.globals):
        add(g)
    for r in table_elements(state.table):
        add(r)
    for r in state.table.precise_stack_roots:
        add(r)
    return counts
