"""The narrow interface through which the lockstep machine drives an implementation: plain data only.

An implementation is started with a plain config, given operations as plain tuples
(`("New", 8, 8)`, `("CallWasm", (0, 1))`), and answers with `StepOutcome`s; `probe()` reports the
raw memory facts the lockstep checks (footer words, table words, stack words), and `finish()` tears
it down and returns what the checking heap found. Nothing but ints, strings, bools, None and tuples
crosses, so the same machine can drive an implementation in another process through a C ABI.
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol

from externref_harness.impl.heap import Report
from externref_harness.model.ops import OPS_BY_NAME, Op
from externref_harness.model.state import Config
from externref_harness.vec import Vec

PlainOp = tuple[Any, ...]


def _fields_getter(names: tuple[str, ...]) -> Callable[[Op], tuple[Any, ...]]:
    """`op`'s fields `names` as a tuple (`attrgetter` gives a bare value for one name)."""
    if not names:
        return lambda op: ()
    if len(names) == 1:
        one = operator.attrgetter(names[0])
        return lambda op: (one(op),)
    return operator.attrgetter(*names)
#: `(kind, address, access, detail)`, see `impl.heap.Report`.
PlainReport = tuple[str, int, str, str]

#: Each op class's name, and a getter of its fields as a tuple, in declaration order.
_PLAIN: dict[type[Op], tuple[str, Callable[[Op], tuple[Any, ...]]]] = {
    cls: (cls.__name__, _fields_getter(tuple(f.name for f in dataclasses.fields(cls))))
    for cls in OPS_BY_NAME.values()
}


def plain_op(op: Op) -> PlainOp:
    name, fields = _PLAIN[type(op)]
    return (name, *fields(op))


def op_from_plain(plain: PlainOp) -> Op:
    return OPS_BY_NAME[plain[0]](*plain[1:])


def plain_config(cfg: Config) -> dict[str, Any]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(Config)}


def plain_report(report: Report) -> PlainReport:
    return (report.kind, report.address, report.access, report.detail)


def format_report(report: PlainReport) -> str:
    return str(Report(*report))


#: Makes one of the records below (or any NamedTuple) as `tuple` does, its fields in declaration
#: order: a NamedTuple's own `__new__` is a lambda `collections.namedtuple` makes with `eval`, so it
#: runs interpreted under compiled callers (0.39 µs to make a `RefFacts`, 0.17 µs this way). For
#: the records every step makes (`impl.adapter`, `lockstep.projection`, `lockstep.runner`).
record = tuple.__new__


class StepOutcome(NamedTuple):
    #: `("ok", value)`, `("err", kind)`, `("misuse", kind, detail)` (in a debug build, with a
    #: fourth item `("panic", message)` or `("returned",)` when the misuse was also sent to the
    #: runtime: `model.assertions`), `("panic", message)`, or
    #: `("unsupported", name)` for an optional function the runtime does not offer.
    result: tuple[Any, ...]
    #: Addresses of the values whose destructor ran during the step, in order.
    dropped: tuple[int, ...]
    #: `(footer, value)` addresses of every ref the step created, in order.
    allocated: tuple[tuple[int, int], ...]
    #: What the checking heap reported during the step.
    reports: tuple[PlainReport, ...]


#: A `RefFacts.status` under `opaque-refs`: the value's destructor ran, its block (if the hooks
#: gave it) is not freed yet.
DROPPED = "dropped (value_dropped ran)"


class RefFacts(NamedTuple):
    """One allocation as memory shows it. The words are read at the canonical footer offsets.

    Under `opaque-refs` `footer` is the ref's handle and nothing is read at it: `status` is `freed` once
    the block holding the value is (if the hooks gave it), else `DROPPED` once the value's
    destructor ran, else `live`; the footer words are 0."""

    footer: int
    value: int
    #: `impl.heap` status of the footer's block: live, freed, ...
    status: str
    ref_count: int
    value_ptr_data: int
    value_ptr_vtable: int
    #: `size` and `align` read from the vtable `value_ptr` points at (0, 0: not a vtable).
    vtable_size: int
    vtable_align: int
    block_start: int
    block_size: int
    block_align: int


class TableFacts(NamedTuple):
    """The table's words at the seed's `repr(C)` offsets, and the chunk's bytes (None: unreadable)."""

    next: int
    end: int
    chunk_ptr: int
    chunk_len: int
    chunk: bytes | None


class FrameFacts(NamedTuple):
    wasm: bool
    sp: int
    words: tuple[int, ...]
    ref_typed: tuple[bool, ...]


class Probe(NamedTuple):
    """What an adapter read of the implementation's memory after a step (`ImplAdapter.probe`).

    The two parts as large as the heap are persistent vectors (`vec.Vec`), each the last probe's
    with the items the step changed: every ref's facts (the adapter reads a footer again only where
    the checking heap saw a write) and the host's handles. So neither making a probe nor finding
    what changed since the last one (`Vec.changed_positions`, in the memory checks) is a pass over
    every ref: as tuples, at 4,096 live refs, the copies and the comparisons cost a fifth of a
    step. Between processes a probe crosses as a `ProbeFrame`."""

    stack_top: int
    canary: int | None
    table: TableFacts
    refs: Vec[RefFacts]
    handles: Vec[int | None]
    #: `VMExternRef::hash` of the two refs the step's `Eq` / `Cmp` compared, as `(ref, hash)`.
    hashes: tuple[tuple[int, int], ...]
    raws: tuple[tuple[int, bool] | None, ...]
    #: Each global's word; None for one instantiation never wrote.
    globals: tuple[int | None, ...]
    frames: tuple[FrameFacts, ...]


class ProbeFrame(NamedTuple):
    """A `Probe` as the child process sends it (`isolation`), with only what changed of its two
    vectors since the last frame (the parent keeps the rest): `refs` is empty, the facts that
    changed cross beside it; the handles are their number and the ones that changed. At 4,096
    live refs a frame with every handle was about 70 KB, encoded, sent and decoded each step."""

    stack_top: int
    canary: int | None
    table: TableFacts
    refs: tuple[RefFacts, ...]
    n_handles: int
    #: `(position, word)` of each handle that changed since the last frame, ascending.
    changed_handles: tuple[tuple[int, int | None], ...]
    hashes: tuple[tuple[int, int], ...]
    raws: tuple[tuple[int, bool] | None, ...]
    globals: tuple[int | None, ...]
    frames: tuple[FrameFacts, ...]


# The child and the parent copy the fields after the handles as one slice (`isolation.child`,
# `isolation.pool`): they are the same, in the same order, in a probe and in its frame.
assert ProbeFrame._fields[:4] == Probe._fields[:4] and ProbeFrame._fields[6:] == Probe._fields[5:]


class Replayed(NamedTuple):
    """One step of a replay (`InProcessImpl.replay`): its outcome and the two stack facts its
    projection reads (`lockstep.projection.project_impl`), without the rest of a probe."""

    outcome: StepOutcome
    stack_top: int
    canary: int | None


class ImplAdapter(Protocol):
    """What the lockstep machine needs from an implementation."""

    def start(self, config: Mapping[str, Any]) -> None: ...
    def step(self, op: PlainOp, embedder_capacity: int | None = None) -> StepOutcome:
        """Run one operation. `embedder_capacity`, when given, is what the embedder's pre-GC check
        compares with instead of asking the runtime (see `World.embedder_capacity`)."""
        ...

    def probe(self) -> Probe: ...
    def finish(self) -> tuple[PlainReport, ...]:
        """Drop the runtime (table, chunk), check the heap is empty, and free everything."""
        ...

    def close(self) -> None:
        """Free everything without checks (after a failure). Idempotent."""
        ...
