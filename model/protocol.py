"""The embedder's host<->Wasm protocol around the activations table, written once.

These are the sequences `crates/wasmtime` (v0.37.0) runs around the seed's API. They are generic
over a `RuntimeApi`, so the reference model and every implementation run the very same protocol;
a protocol-level seeded bug (CVE-2021-39216) therefore reaches them all.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Generic, TypeVar

from mypy_extensions import mypyc_attr

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

    def stack_canary(self) -> int | None:
        raise NotImplementedError

    def set_stack_canary(self, canary: int | None) -> None:
        raise NotImplementedError


def move_refs_into_table(rt: RuntimeApi[R], refs: Sequence[R | None], mutant: str | None) -> None:
    """`TypedFunc::_call` / `Func::call_impl` params and `Func::invoke` results.

    `refs` holds one entry per externref-typed value, `None` for a null one: the pre-GC check
    counts the externref *types* (a null result still counts), and only non-null refs are inserted.

    Oddity mirrored from the embedder: that count is compared with `bump_capacity_remaining()`,
    which the seed returns in *bytes*, not slots. That only makes the pre-GC rarer; it stays safe
    because `insert_without_gc` falls back to the hash set.
    """
    if mutant == CVE_2021_39216:
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


def libcall_global_get(rt: RuntimeApi[R], value: R | None) -> R | None:
    """`global.get` of an externref: clone into the table, keeping it alive across a possible GC.

    The original stays in the global while `insert_with_gc` may GC, and a clone is in the table
    before it does, so the stack-root invariant holds at the GC.
    """
    if value is None:
        return None
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
