"""A native implementation behind the C ABI as a `RuntimeBackend` the host world drives.

    World ──(RuntimeBackend calls)──▶ NativeRuntime ──native.calls──▶ xr_* in the library
      ▲                                    │   (C when built, else ctypes; once-a-run calls: ctypes)
      └──── xr_hooks: alloc / dealloc ─────┤  (the checking heap; "not mine" for foreign blocks)
      └──── xr_hooks: value_dropped ───────┤  (the World's drop log)
      └──── xr_stack: trace / lookup ──────┘  (the World's StackView, during gc and insert_with_gc:
                                               walked in C by `_calls.Walker` where it is built,
                                               its pcs classified once each; else these hooks)

The hooks are installed when the runtime is made and uninstalled by `close()`. A status of
`XR_PANIC` becomes `DebugAssertion` with the library's message, which the World maps to the
model's `Panic`. Anything a callback raises is kept and re-raised after the call returns: an
exception never crosses the C frames.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from externref_harness.errors import RunsOverlap
from externref_harness.impl.backend import (
    NO_STACK_MAP,
    BackendDescription,
    BackendFactory,
    ContractViolation,
    Hooks,
    StackView,
    Unsupported,
)
from externref_harness.impl.code import Module
from externref_harness.impl.heap import LIVE, WILD, HeapExhausted
from externref_harness.impl.stack import OPAQUE_HOST_CODE
from externref_harness.model.capabilities import OPAQUE_REFS, OWN_REGISTRY
from externref_harness.model.runtime import DebugAssertion
from externref_harness.model.state import Config
from externref_harness.native.calls import library_calls, stack_walker
from externref_harness.native.library import (
    XR_ERR,
    XR_OK,
    XR_PANIC,
    XR_PC_HOST,
    XR_PC_WASM,
    XR_PC_WASM_MAPPED,
    AllocFn,
    DeallocFn,
    Description,
    ElementsFn,
    LookupFn,
    NativeLibrary,
    TraceFn,
    ValueDroppedFn,
    XrCallSite,
    XrFunction,
    XrHooks,
    XrModule,
    XrStack,
    XrStackMap,
    load_library,
)

_U64P = ctypes.POINTER(ctypes.c_uint64)
#: A ref points at its `VMExternData` footer: `ref_count`, then the fat `value_ptr`.
_FOOTER_BYTES = 24


def classify(stack: StackView, pc: int) -> tuple[int, int, int]:
    """What `StackView.lookup` says of `pc`, as the C walker keeps it (`native._calls.Walker`):
    the `XR_PC_*`, and a map's words and bits address. The same answer `_on_lookup` gives."""
    record = stack.lookup(pc)
    if record is None:
        return XR_PC_HOST, 0, 0
    if record == NO_STACK_MAP:
        return XR_PC_WASM, 0, 0
    return XR_PC_WASM_MAPPED, record.mapped_words, record.bits_address


#: The runtime whose hooks each loaded library has installed, by the library's handle: the hooks
#: are one per library in a process (`xr_set_hooks`), so one run at a time may have them.
_HOOKED: dict[int, NativeRuntime] = {}


class NativeRuntime:
    """One run's table in a loaded library, with the harness's hooks installed.

    The library's hooks are one per process: a second run of the same library in this process
    while one is open would take them over, and the first run's allocations would go to the
    second's checking heap. So that start is refused (`errors.RunsOverlap`) until the first is
    closed; runs of one library in one process go one after another (the gate's child processes
    each have their own)."""

    def __init__(self, cfg: Config, hooks: Hooks, library: NativeLibrary) -> None:
        self.lib = library
        self._cdll: Any = library.cdll
        self._heap = hooks.heap
        self._value_dropped = hooks.value_dropped
        self._errors: list[BaseException] = []
        self._stack: StackView | None = None
        #: A ref word is a handle (`opaque-refs`): nothing can be read at it, only its value.
        self._opaque = cfg.has(OPAQUE_REFS)
        desc = library.description
        self.description = BackendDescription(
            name=desc.name,
            version=desc.version,
            debug=desc.debug,
            chunk_size=desc.chunk_size,
            has_num_filled_in_bump_chunk=desc.has_num_filled,
            has_elements=desc.has_elements,
            has_set_chunk_size=desc.has_set_chunk_size,
        )
        # The callbacks must outlive every call that may use them: they are fields of self.
        self._alloc = AllocFn(self._on_alloc)
        self._dealloc = DeallocFn(self._on_dealloc)
        self._dropped = ValueDroppedFn(self._on_value_dropped)
        self._hooks = XrHooks(None, self._alloc, self._dealloc, self._dropped)
        self._trace = TraceFn(self._on_trace)
        self._lookup = LookupFn(self._on_lookup)
        # With `own-registry` the runtime looks pcs up in what it was given (`register_module`):
        # the stack it is handed has only the frame walk.
        self._own_registry = cfg.has(OWN_REGISTRY)
        if self._own_registry != (OWN_REGISTRY in desc.capabilities):
            raise ContractViolation(
                f"the run's capabilities {list(cfg.capabilities)} are not those {desc.name} declares "
                f"({list(desc.capabilities)}): the host world would not register its modules as it expects"
            )
        self._xr_stack = XrStack(None, self._trace, LookupFn() if self._own_registry else self._lookup)
        #: The stack walked in C, where this process uses the C calls (`native.calls`); else the
        #: ctypes struct above, whose hooks call back into this object.
        self._walker = stack_walker(classify, OPAQUE_HOST_CODE, not self._own_registry)
        #: The struct's address, as the calls take it (the struct is kept alive by `self`).
        self._stack_address = (
            ctypes.addressof(self._xr_stack) if self._walker is None else self._walker.address
        )
        #: Every call of a step goes through these (`native.calls`: C when built, else ctypes).
        self._calls = library_calls(library)
        self._installed = False
        self._handle: int = self._cdll._handle
        holder = _HOOKED.get(self._handle)
        if holder is not None and holder._installed:
            raise RunsOverlap(
                f"a run of {desc.name} was started in this process while another run of it had not "
                "been closed: its hooks are one per process (close the first, or run each in a child)"
            )
        _HOOKED[self._handle] = self
        self._installed = True
        try:
            self._table: int | None = self._new_table(cfg, desc)
        except BaseException:
            self.close()  # a start that failed leaves the hooks to the next run
            raise

    def _new_table(self, cfg: Config, desc: Description) -> int:
        """Install the hooks and make the run's table (its chunk as `cfg` asks)."""
        self._cdll.xr_set_hooks(ctypes.byref(self._hooks))
        table = ctypes.c_void_p()
        if cfg.chunk_size == desc.chunk_size:
            self._check("xr_table_new", self._cdll.xr_table_new(ctypes.byref(table)))
        elif desc.has_set_chunk_size:
            status = self._cdll.xr_table_new_with_chunk_size(cfg.chunk_size, ctypes.byref(table))
            self._check("xr_table_new_with_chunk_size", status)
        else:
            raise ContractViolation(
                f"{desc.name} has a fixed chunk of {desc.chunk_size} slots and no "
                f"xr_table_new_with_chunk_size; the run asked for {cfg.chunk_size}"
            )
        if not table.value:
            raise ContractViolation("xr_table_new gave a NULL table")
        return table.value

    # --- the hooks ------------------------------------------------------------------------------

    def _on_alloc(self, _ctx: int | None, size: int, align: int) -> int | None:
        try:
            return self._heap.alloc(size, align, "native")
        except HeapExhausted:
            return None
        except BaseException as e:  # never across the C frames
            self._errors.append(e)
            return None

    def _on_dealloc(self, _ctx: int | None, ptr: int | None, size: int, align: int) -> int:
        try:
            if ptr is None or not self._heap.owns(ptr):
                return 0
            self._heap.free(ptr, size, align, "dealloc")
            return 1
        except BaseException as e:
            self._errors.append(e)
            return 1

    def _on_value_dropped(self, _ctx: int | None, value: int | None) -> None:
        try:
            self._value_dropped(value or 0)
        except BaseException as e:
            self._errors.append(e)

    def _on_trace(
        self, _ctx: int | None, visit: Callable[[int | None, int, int], int], walk: int | None
    ) -> None:
        try:
            assert self._stack is not None, "trace called outside gc / insert_with_gc"
            for pc, sp in self._stack.trace():
                if not visit(walk, pc, sp):
                    return
        except BaseException as e:
            self._errors.append(e)

    def _on_lookup(self, _ctx: int | None, pc: int, out: Any) -> int:
        try:
            assert self._stack is not None, "lookup called outside gc / insert_with_gc"
            record = self._stack.lookup(pc)
            if record is None:
                return XR_PC_HOST
            if record == NO_STACK_MAP:
                return XR_PC_WASM
            out[0] = XrStackMap(record.mapped_words, ctypes.cast(record.bits_address, _U64P))
            return XR_PC_WASM_MAPPED
        except BaseException as e:
            self._errors.append(e)
            return XR_PC_HOST

    # --- calling ----------------------------------------------------------------------------------

    def _check(self, name: str, status: int, allow_err: bool = False) -> bool:
        """Raise for a panic or a bad status; re-raise what a callback raised. True for XR_OK."""
        if self._errors:
            error = self._errors[0]
            self._errors.clear()
            raise RuntimeError(f"a harness callback failed during {name}: {error!r}") from error
        if status == XR_OK:
            return True
        if status == XR_PANIC:
            raise DebugAssertion(self.lib.panic_message())
        if status == XR_ERR and allow_err:
            return False
        raise ContractViolation(f"{name} returned status {status}")

    def _ref(self, name: str, answer: tuple[int, int]) -> int:
        """A ref the library returned, checked before anything uses it: a NULL or wild pointer is
        the implementation's invalid ref, never a fault of the harness that reads it (a new ref
        must be the footer of a live block it allocated through the hooks). Under `opaque-refs`
        the word is a handle and only NULL is invalid here: the harness never reads at it, and
        whether it names the right box is judged by behaviour (`refs.distinct`, the drops)."""
        status, r = answer
        self._check(name, status)
        if r == 0:
            raise ContractViolation(f"{name} returned an invalid ref: NULL")
        if self._opaque:
            return r
        held = self._heap.status(r, _FOOTER_BYTES)
        if held == WILD or (name == "xr_ref_new" and held != LIVE):
            where = "in no block" if held == WILD else f"{held} memory"
            raise ContractViolation(
                f"{name} returned an invalid ref {r:#x}: {where} of those it allocated through the hooks"
            )
        return r

    def _word(self, name: str, answer: tuple[int, int]) -> int:
        status, word = answer
        self._check(name, status)
        return word

    @property
    def table(self) -> int:
        if self._table is None:
            raise ContractViolation("the table was already dropped")
        return self._table

    @property
    def table_address(self) -> int:
        return self.table

    # --- VMExternRef --------------------------------------------------------------------------------

    def new(self, size: int, align: int, fill: int) -> int:
        return self._ref("xr_ref_new", self._calls.ref_new(size, align, fill))

    def clone(self, r: int) -> int:
        return self._ref("xr_ref_clone", self._calls.ref_clone(r))

    def drop(self, r: int) -> None:
        self._check("xr_ref_drop", self._calls.ref_drop(r))

    def as_raw(self, r: int) -> int:
        return self._word("xr_ref_as_raw", self._calls.ref_as_raw(r))

    def into_raw(self, r: int) -> int:
        return self._word("xr_ref_into_raw", self._calls.ref_into_raw(r))

    def from_raw(self, raw: int) -> int:
        return self._ref("xr_ref_from_raw", self._calls.ref_from_raw(raw))

    def clone_from_raw(self, raw: int) -> int:
        return self._ref("xr_ref_clone_from_raw", self._calls.ref_clone_from_raw(raw))

    def strong_count(self, r: int) -> int | None:
        status, count = self._calls.ref_strong_count(r)
        self._check("xr_ref_strong_count", status)
        return count

    def eq(self, a: int, b: int) -> bool:
        status, answer = self._calls.ref_eq(a, b)
        self._check("xr_ref_eq", status)
        if answer not in (0, 1):
            raise ContractViolation(f"xr_ref_eq answered {answer}, not 0 or 1")
        return bool(answer)

    def hash(self, r: int) -> int:
        status, hashed = self._calls.ref_hash(r)
        self._check("xr_ref_hash", status)
        return hashed

    def cmp(self, a: int, b: int) -> int:
        status, answer = self._calls.ref_cmp(a, b)
        self._check("xr_ref_cmp", status)
        if answer not in (-1, 0, 1):
            raise ContractViolation(f"xr_ref_cmp answered {answer}, not -1, 0 or 1")
        return int(answer)

    def deref(self, r: int) -> int | None:
        return self._word("xr_ref_deref", self._calls.ref_deref(r))

    # --- VMExternRefActivationsTable ------------------------------------------------------------

    def bump_capacity_remaining(self) -> int:
        status, remaining = self._calls.table_bump_capacity_remaining(self.table)
        self._check("xr_table_bump_capacity_remaining", status)
        return remaining

    def try_insert(self, r: int) -> bool:
        return self._check(
            "xr_table_try_insert", self._calls.table_try_insert(self.table, r), allow_err=True
        )

    def insert_with_gc(self, r: int, stack: StackView) -> None:
        self._walk_from(stack)
        try:
            status = self._calls.table_insert_with_gc(self.table, r, self._stack_address)
        finally:
            self._walked()
        self._check("xr_table_insert_with_gc", status)

    def insert_without_gc(self, r: int) -> None:
        self._check("xr_table_insert_without_gc", self._calls.table_insert_without_gc(self.table, r))

    def stack_canary(self) -> int | None:
        status, is_some, canary = self._calls.table_stack_canary(self.table)
        self._check("xr_table_stack_canary", status)
        return canary if is_some else None

    def set_stack_canary(self, canary: int | None) -> None:
        status = self._calls.table_set_stack_canary(self.table, int(canary is not None), canary or 0)
        self._check("xr_table_set_stack_canary", status)

    def enter_wasm(self, canary: int) -> None:
        self._check("xr_table_enter_wasm", self._calls.table_enter_wasm(self.table, canary))

    def leave_wasm(self) -> None:
        self._check("xr_table_leave_wasm", self._calls.table_leave_wasm(self.table))

    def set_gc_okay(self, okay: bool) -> bool:
        status, previous = self._calls.table_set_gc_okay(self.table, int(okay))
        self._check("xr_table_set_gc_okay", status)
        return bool(previous)

    def gc(self, stack: StackView) -> None:
        self._walk_from(stack)
        try:
            status = self._calls.gc(self._stack_address, self.table)
        finally:
            self._walked()
        self._check("xr_gc", status)

    def _walk_from(self, stack: StackView) -> None:
        """The stack the next call may walk: the hooks' (`_on_trace`, `_on_lookup`), or the C
        walker's (`stack.top_frame()` where it starts, `classify(stack, pc)` for its pcs)."""
        self._stack = stack
        if self._walker is not None:
            self._walker.walk_from(stack)

    def _walked(self) -> None:
        """The call is over: what the C walker met is kept as the hooks keep what they raise (a
        word outside the stack region, as `NativeStack.load` refuses it; what `classify` raised;
        a hook called outside a call), for `_check` to raise."""
        self._stack = None
        problem = None if self._walker is None else self._walker.take()
        if problem is not None:
            fault, error = problem
            if error is not None:
                self._errors.append(error)
            if fault:
                self._errors.append(IndexError(f"{fault:#x} is not a word of the stack region"))

    def num_filled_in_bump_chunk(self) -> int:
        if not self.description.has_num_filled_in_bump_chunk:
            raise Unsupported("xr_table_num_filled_in_bump_chunk")
        status, filled = self._calls.table_num_filled_in_bump_chunk(self.table)
        self._check("xr_table_num_filled_in_bump_chunk", status)
        return filled

    def elements(self) -> list[int]:
        if not self.description.has_elements:
            raise Unsupported("xr_table_elements")
        found: list[int] = []

        def each(_ctx: int | None, r: int) -> None:
            found.append(r)

        callback = ElementsFn(each)
        self._check("xr_table_elements", self._cdll.xr_table_elements(self.table, callback, None))
        return found

    def register_module(self, module: Module) -> int:
        if not self._own_registry:
            raise Unsupported("xr_table_register_module (the library does not declare own-registry)")
        out = ctypes.c_uint64()
        structs = _xr_module(module)
        status = self._cdll.xr_table_register_module(self.table, structs.pointer, ctypes.byref(out))
        self._check("xr_table_register_module", status)
        return int(out.value)

    def unregister_module(self, module_id: int) -> None:
        if not self._own_registry:
            raise Unsupported("xr_table_unregister_module (the library does not declare own-registry)")
        status = self._cdll.xr_table_unregister_module(self.table, module_id)
        self._check("xr_table_unregister_module", status)

    def drop_table(self) -> None:
        table, self._table = self.table, None
        self._check("xr_table_drop", self._calls.table_drop(table))

    def close(self) -> None:
        """Uninstall the hooks (the library then allocates on its own again)."""
        if self._installed:
            self._installed = False
            self._cdll.xr_set_hooks(None)
            if _HOOKED.get(self._handle) is self:
                del _HOOKED[self._handle]


class _ModuleStructs:
    """One module as `struct xr_module` and everything it points to, kept alive together."""

    def __init__(self, module: Module) -> None:
        maps: dict[tuple[int, ...], Any] = {}
        self._keep: list[Any] = []
        functions = []
        for function in module.functions:
            sites = (XrCallSite * len(function.call_sites))()
            for i, site in enumerate(function.call_sites):
                sites[i].pc = site.pc
                if site.stack_map is not None:
                    if site.stack_map not in maps:
                        maps[site.stack_map] = _stack_map(site.stack_map, module)
                    sites[i].map = ctypes.pointer(maps[site.stack_map][0])
            self._keep.append(sites)
            functions.append(XrFunction(function.start, function.end, len(function.call_sites), sites))
        self._keep.append(maps)
        self._functions = (XrFunction * len(functions))(*functions)
        self.module = XrModule(len(functions), self._functions)
        self.pointer = ctypes.pointer(self.module)


def _stack_map(stack_map: tuple[int, ...], module: Module) -> tuple[XrStackMap, Any]:
    mapped_words = module.mapped_words
    bits = (ctypes.c_uint64 * ((mapped_words + 63) // 64))()
    for i in stack_map:
        bits[i // 64] |= 1 << (i % 64)
    return XrStackMap(mapped_words, ctypes.cast(bits, _U64P)), bits


#: The ctypes form of each module of the (static, cached) code layouts, by identity.
_MODULES: dict[int, tuple[Module, _ModuleStructs]] = {}


def _xr_module(module: Module) -> _ModuleStructs:
    entry = _MODULES.get(id(module))
    if entry is None or entry[0] is not module:
        entry = _MODULES[id(module)] = (module, _ModuleStructs(module))
    return entry[1]


_LOADED: dict[Path, NativeLibrary] = {}


def open_library(path: str | Path) -> NativeLibrary:
    """`load_library`, once per path per process (the dynamic loader caches by path anyway)."""
    key = Path(os.path.abspath(path))
    if key not in _LOADED:
        _LOADED[key] = load_library(path)
    return _LOADED[key]


def native_runtime(library: NativeLibrary) -> BackendFactory:
    """The factory the host world calls to make a run's runtime in `library`."""

    def make(cfg: Config, hooks: Hooks) -> NativeRuntime:
        return NativeRuntime(cfg, hooks, library)

    return make
