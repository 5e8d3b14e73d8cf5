"""The seam between the host world and a runtime: the seed's API as one declared interface.

The host world (`impl.world.World`) is harness code: handles, raw pointers, globals, Wasm slots,
the stack region, the code registry and its stack maps, the embedder protocol. The runtime is what
is checked: `VMExternRef`, the `VMExternRefActivationsTable` and `gc`. The world composes a
`RuntimeBackend` and drives it through exactly these calls, whichever runtime it is:

    World ──▶ RuntimeBackend ──┬─ PythonRuntime   (impl/externref.py, on the checking heap)
      │                        └─ NativeRuntime   (native/backend.py, a library behind the C ABI)
      │ builds and owns
      ├─ CheckingHeap   ◀── Hooks.alloc / dealloc      (the runtime allocates through them)
      ├─ DropLog        ◀── Hooks.value_dropped        (which values were dropped, and when)
      └─ NativeStack + CodeRegistry ──▶ StackView      (handed to `gc` and `insert_with_gc`)

Refs are words: the address of a ref's `VMExternData`, which is also its raw pointer. A panic or a
failed assertion inside the runtime comes back as `model.runtime.DebugAssertion`; the seed's own
`Err` of `try_insert` is `False`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from externref_harness.impl.code import Module
from externref_harness.impl.heap import CheckingHeap
from externref_harness.impl.stack import CodeRegistry, NativeStack
from externref_harness.model.state import WORD, Config


class ContractViolation(Exception):
    """The runtime answered something the ABI rules out (e.g. `as_raw(r) != r`)."""


@dataclass(frozen=True, slots=True)
class BackendDescription:
    """What a runtime says of itself (`xr_describe` for a native library)."""

    name: str
    version: str
    debug: bool
    chunk_size: int
    has_num_filled_in_bump_chunk: bool
    has_elements: bool
    #: A table can be made with a chunk of any size (the optional `set_chunk_size`).
    has_set_chunk_size: bool


class StackMapRecord:
    """A stack map in memory: `mapped_words`, then the bitmap words from `bits_address`. Never
    changed once made; a plain class, not a dataclass: one is made per lookup during a GC, and a
    compiled dataclass's `__init__` is generated Python that runs interpreted."""

    __slots__ = ("bits_address", "mapped_words")

    def __init__(self, mapped_words: int, bits_address: int) -> None:
        self.mapped_words = mapped_words
        self.bits_address = bits_address

    def __repr__(self) -> str:
        return f"StackMapRecord(mapped_words={self.mapped_words}, bits_address={self.bits_address:#x})"


#: `lookup(pc)` for a Wasm pc without a stack map.
NO_STACK_MAP = StackMapRecord(0, 0)


class StackView:
    """What `gc` sees of the harness's stack: `backtrace::trace` and `ModuleInfoLookup`."""

    def __init__(self, cfg: Config, stack: NativeStack, registry: CodeRegistry) -> None:
        self._cfg = cfg
        self._stack = stack
        self._registry = registry

    def trace(self) -> Iterator[tuple[int, int]]:
        """`(pc, sp)` of each frame, youngest first, as far as the unwinder can go."""
        return self._stack.walk(self._registry.has_unwind_info)

    def top_frame(self) -> tuple[int, int, int, int, int]:
        """The youngest frame's pc, sp and fp, and the stack region's base and top: where a walk
        made in C (`native._calls.Walker`) starts, to go as `trace` goes."""
        top = self._stack.youngest
        return top.pc, top.sp, top.fp, self._stack.base, self._stack.top

    def lookup(self, pc: int) -> StackMapRecord | None:
        """None: a host pc. `NO_STACK_MAP`: Wasm code with no map at `pc`. Else the map."""
        if not self._registry.is_wasm(pc):
            return None
        record = self._registry.lookup_stack_map(self._cfg, pc)
        if record is None:
            return NO_STACK_MAP
        return StackMapRecord(ctypes.c_uint64.from_address(record).value, record + WORD)


@dataclass
class DropLog:
    """The values whose destructor ran, by address, in order."""

    dropped: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Hooks:
    """What the harness hands a runtime: allocation on the checking heap, and drop notification."""

    heap: CheckingHeap
    #: Called with a value's address when its destructor runs.
    value_dropped: Callable[[int], None]


class RuntimeBackend(Protocol):
    """The seed's API as the host world calls it. See `native/externref_abi.h` for each call."""

    description: BackendDescription

    @property
    def table_address(self) -> int:
        """The address of the table structure (the seed's `repr(C)` layout at the strict level)."""
        ...

    # VMExternRef
    def new(self, size: int, align: int, fill: int) -> int: ...
    def clone(self, r: int) -> int: ...
    def drop(self, r: int) -> None: ...
    def as_raw(self, r: int) -> int: ...
    def into_raw(self, r: int) -> int: ...
    def from_raw(self, raw: int) -> int: ...
    def clone_from_raw(self, raw: int) -> int: ...
    def strong_count(self, r: int) -> int | None: ...
    def eq(self, a: int, b: int) -> bool: ...
    def hash(self, r: int) -> int: ...
    def cmp(self, a: int, b: int) -> int: ...
    def deref(self, r: int) -> int | None:
        """The value's address (None: the runtime could not read it)."""
        ...

    # VMExternRefActivationsTable
    def bump_capacity_remaining(self) -> int: ...
    def try_insert(self, r: int) -> bool: ...
    def insert_with_gc(self, r: int, stack: StackView) -> None: ...
    def insert_without_gc(self, r: int) -> None: ...
    def stack_canary(self) -> int | None: ...
    def set_stack_canary(self, canary: int | None) -> None: ...
    def enter_wasm(self, canary: int) -> None:
        """`canary-guard`: the oldest host-to-Wasm call enters the canary's scope."""
        ...

    def leave_wasm(self) -> None:
        """`canary-guard`: that call returned; the scope is left."""
        ...

    def set_gc_okay(self, okay: bool) -> bool: ...
    def gc(self, stack: StackView) -> None: ...
    def num_filled_in_bump_chunk(self) -> int:
        """Optional: raises `Unsupported` when the runtime does not offer it."""
        ...

    def elements(self) -> list[int]:
        """Optional: raises `Unsupported` when the runtime does not offer it."""
        ...

    def drop_table(self) -> None:
        """`Drop for VMExternRefActivationsTable`."""
        ...

    def register_module(self, module: Module) -> int:
        """`own-registry`: the module's code, call sites and stack maps; returns its id.
        Raises `Unsupported` when the runtime takes a `ModuleInfoLookup` instead."""
        ...

    def unregister_module(self, module_id: int) -> None:
        """`own-registry`: the module was dropped."""
        ...

    def close(self) -> None:
        """Let go of the runtime (after `drop_table`, or after a failure). Idempotent."""
        ...


class Unsupported(Exception):
    """An optional function the runtime does not offer."""


BackendFactory = Callable[[Config, Hooks], RuntimeBackend]
