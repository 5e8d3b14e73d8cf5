"""Capabilities: the declared design choices of an implementation that differ from the seed's.

The seed is one codebase; an implementation of the same design (deferred reference counting, an
activations table of a bump chunk plus hash sets, a GC that walks the stack and takes precise
roots from stack maps) may make other choices that are just as correct. Each such choice is a
capability: a name, one rule, declared by the library (ABI version 2, `XR_CAP_*` bits of
`xr_description.capabilities`) and carried by `Config.capabilities`, so that the model, the
generators and the checks each consult it in one place. A version 1 library, like the seed, has
none (`SEED`).

    capability           the seed                               the implementation
    ───────────────────  ─────────────────────────────────────  ──────────────────────────────────
    own-registry         ModuleInfoLookup from the embedder     its own registry of modules
    eager-chunk          chunk allocated by the first sweep     chunk allocated by `new`
    no-gc-free-insert    insert_without_gc, set_gc_okay, ...    none of them
    canary-guard         set_stack_canary / stack_canary        a scope: enter and leave
    single-threaded      atomic counts (Send + Sync)            plain counts
    no-raw               into_raw / from_raw / clone_from_raw   none of them
    capacity-slots       capacity in bytes                      capacity in slots
    opaque-refs          a ref is its VMExternData's address    a ref is a handle (an index)
    no-strong-count      strong_count                           counts not observable

`CAPABILITIES` lists them in the order of their ABI bits (bit i is the i-th). This module is the one
place that names them; what each changes lives where the rule is applied, and says so.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

OWN_REGISTRY = "own-registry"
EAGER_CHUNK = "eager-chunk"
NO_GC_FREE_INSERT = "no-gc-free-insert"
CANARY_GUARD = "canary-guard"
SINGLE_THREADED = "single-threaded"
NO_RAW = "no-raw"
CAPACITY_SLOTS = "capacity-slots"
OPAQUE_REFS = "opaque-refs"
NO_STRONG_COUNT = "no-strong-count"


@dataclass(frozen=True, slots=True)
class Capability:
    """One declared design choice: its name and how it differs from the seed."""

    name: str
    #: What differs from the seed, in one line.
    differs: str


#: Every capability the harness models, in the order of their `XR_CAP_*` bits.
CAPABILITIES: tuple[Capability, ...] = (
    Capability(OWN_REGISTRY, "the runtime keeps its own code registry and looks pcs up itself"),
    Capability(EAGER_CHUNK, "the table allocates its chunk in new, not lazily in the first sweep"),
    Capability(NO_GC_FREE_INSERT, "no insert_without_gc, bump_capacity_remaining or set_gc_okay"),
    Capability(CANARY_GUARD, "the stack canary is a scope entered and left, with no getter"),
    Capability(SINGLE_THREADED, "reference counts are not atomic"),
    Capability(NO_RAW, "no into_raw, from_raw or clone_from_raw"),
    Capability(CAPACITY_SLOTS, "bump_capacity_remaining counts slots, not bytes"),
    Capability(OPAQUE_REFS, "a ref word is a handle, not the address of a VMExternData footer"),
    Capability(NO_STRONG_COUNT, "reference counts are not observable"),
)

NAMES: tuple[str, ...] = tuple(c.name for c in CAPABILITIES)
#: Capabilities that only take operations or checks away: the seed (and its Python port) meets
#: them as it is. The others change what the runtime does, so only a library declaring them runs
#: a trace recorded with them.
RELAXATIONS: frozenset[str] = frozenset((SINGLE_THREADED, NO_RAW, OPAQUE_REFS, NO_STRONG_COUNT))
#: The seed's own set: none. A version 1 library is described with it.
SEED: tuple[str, ...] = ()


class UnknownCapability(ValueError):
    """A capability the harness cannot model; the message names it."""


def bit(name: str) -> int:
    """The `XR_CAP_*` bit of a capability."""
    return 1 << NAMES.index(name)


def from_bits(bits: int) -> tuple[str, ...]:
    """The capabilities of an `xr_description.capabilities` word (unknown bits: `UnknownCapability`)."""
    unknown = bits & ~((1 << len(NAMES)) - 1)
    if unknown:
        positions = ", ".join(str(i) for i in range(unknown.bit_length()) if unknown >> i & 1)
        raise UnknownCapability(
            f"unknown capability bit(s) {positions} ({unknown:#x}): the harness models only "
            f"{', '.join(NAMES)}"
        )
    return tuple(name for i, name in enumerate(NAMES) if bits >> i & 1)


def canonical(names: Iterable[str]) -> tuple[str, ...]:
    """A set of capability names in bit order, each once (an unknown name: `UnknownCapability`)."""
    given = set(names)
    unknown = sorted(given - set(NAMES))
    if unknown:
        raise UnknownCapability(
            f"unknown capability {', '.join(unknown)}: the harness models only {', '.join(NAMES)}"
        )
    return tuple(name for name in NAMES if name in given)
