"""The embedder's host<->Wasm protocol around the activations table, written once.

These are the sequences `crates/wasmtime` (v0.37.0) runs around the seed's API. They are generic
over a `RuntimeApi`, so the reference model and every implementation run the very same protocol;
a protocol-level seeded bug (CVE-2021-39216) therefore reaches them all.

Under `no-gc-free-insert` (`model.capabilities`) the runtime has no `insert_without_gc`,
`bump_capacity_remaining` or `set_gc_okay`, so the seed's way of passing arguments in (a pre-GC,
then inserts that cannot GC) is not available. This module is also the one place of the protocol
that replaces it (`move_refs_counted`): the host keeps its own counted copy of every argument until
every insert is done, and puts back in what a GC inside a later insert swept:

    seed                                     no-gc-free-insert
    if n > bump_capacity_remaining(): gc()   copies = [clone(r) for r in refs]
    set_gc_okay(false)                       for each r: try_insert(r), or, on the first full chunk:
    for each r: insert_without_gc(r)             insert_with_gc(r)          (GCs: may sweep the
    set_gc_okay(previous)                        insert_with_gc(clone(e))   earlier e; the copies
                                                 for each earlier e         keep them alive)
                                                 insert_with_gc(rest)
                                             drop(copies)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from mypy_extensions import mypyc_attr

from externref_harness.model.capabilities import NO_GC_FREE_INSERT
from externref_harness.model.state import Config

R = TypeVar("R")

#: Host-to-Wasm arguments moved in one at a time with a GC-capable insert (GHSA-v4cp-h94r-m7xf).
CVE_2021_39216 = "cve-2021-39216"


@mypyc_attr(allow_interpreted_subclasses=True)
class RuntimeApi(Generic[R]):
    """The part of the seed's API the embedder calls. `R` is a ref: a model id or a real address.

    A base class rather than a `typing.Protocol`: the model's runtime (`SeedRuntime`) and the
    implementations' world (`impl.world.World`) both derive from it, so the compiled protocol
    below calls the model's methods directly instead of looking each one up by name.
    """

    def clone(self, r: R) -> R:
        raise NotImplementedError

    def drop(self, r: R) -> None:
        raise NotImplementedError

    def bump_capacity_remaining(self) -> int:
        raise NotImplementedError

    def gc(self) -> None:
        raise NotImplementedError

    def set_gc_okay(self, okay: bool) -> bool:
        raise NotImplementedError

    def insert_with_gc(self, r: R) -> None:
        raise NotImplementedError

    def insert_without_gc(self, r: R) -> None:
        raise NotImplementedError

    def try_insert(self, r: R) -> bool:
        raise NotImplementedError

    def stack_canary(self) -> int | None:
        raise NotImplementedError

    def set_stack_canary(self, canary: int | None) -> None:
        raise NotImplementedError


def move_refs_into_table(rt: RuntimeApi[R], refs: Sequence[R | None], cfg: Config) -> None:
    """`TypedFunc::_call` / `Func::call_impl` params and `Func::invoke` results.

    `refs` holds one entry per externref-typed value, `None` for a null one: the pre-GC check
    counts the externref *types* (a null result still counts), and only non-null refs are inserted.

    Oddity mirrored from the embedder: that count is compared with `bump_capacity_remaining()`,
    which the seed returns in *bytes*, not slots. That only makes the pre-GC rarer; it stays safe
    because `insert_without_gc` falls back to the hash set.

    Under `no-gc-free-insert`, `move_refs_counted` instead.
    """
    if cfg.has(NO_GC_FREE_INSERT):
        move_refs_counted(rt, refs)
        return
    if cfg.mutant == CVE_2021_39216:
        for r in refs:
            if r is not None:
                rt.insert_with_gc(r)
        return
    if len(refs) > rt.bump_capacity_remaining():
        rt.gc()
    # `AutoAssertNoGc`: the refs are held only by the table until Wasm's stack maps see them.
    previous = rt.set_gc_okay(False)
    for r in refs:
        if r is not None:
            rt.insert_without_gc(r)
    rt.set_gc_okay(previous)


def move_refs_counted(rt: RuntimeApi[R], refs: Sequence[R | None]) -> None:
    """The arguments' protocol without GC-free inserts (`no-gc-free-insert`, see the module's text).

    Each non-null ref carries one count, which the table takes. Inserts go in order with
    `try_insert`; at the first full chunk, `insert_with_gc` GCs. That GC may sweep the refs this
    call already put in the chunk (no Wasm frame holds them yet): the host's counted copies keep
    them alive, and each goes in again with a count of its own. Either the GC swept (the chunk is
    then empty) or it swept nothing (the canary was not found; the table kept everything), so one
    GC's round suffices when the rest fits an empty chunk: at most `chunk_size + 1` refs
    (`model.host.check_counted_args`). Extra entries of a ref that was not swept are counts the
    table owns, dropped by a later sweep: nothing leaks.
    """
    held = [r for r in refs if r is not None]
    copies = [rt.clone(r) for r in held]
    for i, r in enumerate(held):
        if rt.try_insert(r):
            continue
        rt.insert_with_gc(r)
        for earlier in held[:i]:
            rt.insert_with_gc(rt.clone(earlier))
        for later in held[i + 1 :]:
            rt.insert_with_gc(later)
        break
    for copy in copies:
        rt.drop(copy)


def enter_wasm(rt: RuntimeApi[R], youngest_host_sp: int) -> bool:
    """`invoke_wasm_and_catch_traps`: set the canary on the first host-to-Wasm call.

    Returns whether this call set it (the RAII guard that resets it on return).
    """
    if rt.stack_canary() is None:
        rt.set_stack_canary(youngest_host_sp)
        return True
    return False


def exit_wasm(rt: RuntimeApi[R], resets_canary: bool) -> None:
    if resets_canary:
        rt.set_stack_canary(None)


def libcall_global_get(rt: RuntimeApi[R], value: R | None, cfg: Config) -> R | None:
    """`global.get` of an externref: clone into the table, keeping it alive across a possible GC.

    The original stays in the global while `insert_with_gc` may GC, and a clone is in the table
    before it does, so the stack-root invariant holds at the GC. Under `no-gc-free-insert` only the
    GC-capable insert is left: the global's own count keeps the value alive across its GC, and the
    clone is in the table (chunk or hash set) once it returns.
    """
    if value is None:
        return None
    if cfg.has(NO_GC_FREE_INSERT):
        rt.insert_with_gc(rt.clone(value))
        return value
    externref = rt.clone(value)
    rt.insert_without_gc(rt.clone(externref))
    rt.insert_with_gc(externref)
    return value


def global_set(rt: RuntimeApi[R], old: R | None, new: R | None) -> None:
    """`global.set`: the new value's count goes up before the old one's goes down.

    The caller stores `new` into the global; this only does the counting. `new` is borrowed
    (a Wasm slot or a host handle), so it is cloned.
    """
    if new is not None:
        rt.clone(new)
    if old is not None:
        rt.drop(old)
