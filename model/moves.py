"""The well-formed operations available in a state, under bounds.

One enumerator serves every driver: the hypothesis state machines pick among these moves, and the
explorer takes all of them. Moves never include API misuse (see `misuse_moves` for those), so a
violation found through them is a bug in the runtime, not in its caller.

Moves are grouped by kind (`Op.TAG`) so a random driver can pick a kind first and an instance
second; otherwise the many slot-to-slot moves of a frame would crowd out a rare `gc`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from externref_harness.model import ops
from externref_harness.model.capabilities import NO_GC_FREE_INSERT
from externref_harness.model.host import check_value_layout
from externref_harness.model.runtime import MisuseError
from externref_harness.model.state import (
    Config,
    HostFrame,
    Scalar,
    State,
    Uninit,
    WasmFrame,
    frame_sps,
)

_Add = Callable[[ops.Op], None]


# Interpreted even in a compiled build: it validates its own fields (a compiled class would
# refuse a mistyped one with a bare TypeError first), and it is built once per run.
@mypyc_attr(native_class=False)
@dataclass(frozen=True, slots=True)
class Bounds:
    """Limits that keep the reachable state space finite."""

    #: Allocations (`VMExternRef::new`) over the whole run.
    refs: int = 3
    #: Live host handles at once.
    handles: int = 3
    #: Live raw pointers at once (0: never take raw pointers).
    raws: int = 1
    #: Wasm frames on the stack at once.
    frames: int = 2
    #: Refs passed in one call.
    args: int = 2
    #: Value layouts `New` may use.
    layouts: tuple[tuple[int, int], ...] = ((8, 8),)
    #: Include operations that never change the state: the observers, and the embedder's
    #: idempotent re-set of the stack canary (`SetStackCanary` of the value it already has).
    observers: bool = True
    #: Include `set_gc_okay` (which makes GC-capable operations misuse while it is false).
    gc_okay_toggles: bool = True
    #: Include `SCALAR` spills into Wasm slots.
    scalars: bool = True
    #: Include host frames without unwind info (the walk stops there; the canary is not found).
    opaque_host_frames: bool = True
    #: Include instantiation and teardown of the externref globals.
    globals: bool = True
    #: Include host loops of inserts (`InsertMany`) sized to fill the chunk: what reaches the
    #: full-chunk and slow paths when the chunk has the seed's 512 slots.
    insert_many: bool = False

    def __post_init__(self) -> None:
        """Eager, precise errors, as `Config` gives them: a bound nobody can meet is a typo."""
        for name in ("refs", "handles", "raws", "frames", "args"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        for name in (
            "observers", "gc_okay_toggles", "scalars", "opaque_host_frames", "globals", "insert_many"
        ):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        layouts: object = getattr(self, "layouts")  # noqa: B009 (untyped: compiled code checks a type)
        if not isinstance(layouts, tuple):
            raise ValueError(f"layouts must be a tuple of (size, align) pairs, got {layouts!r}")
        pair: object
        for i, pair in enumerate(layouts):
            if not (
                isinstance(pair, tuple)
                and len(pair) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
            ):
                raise ValueError(f"layouts[{i}] must be a (size, align) pair of ints, got {pair!r}")
            try:
                check_value_layout(*pair)
            except MisuseError as e:
                raise ValueError(f"layouts[{i}] = {pair}: {e.detail}") from None


def moves(cfg: Config, bounds: Bounds, state: State) -> dict[str, list[ops.Op]]:
    """Every well-formed move from `state`, grouped by kind. Empty when the state has panicked."""
    if state.panic is not None:
        return {}
    out: dict[str, list[ops.Op]] = {}

    def add(op: ops.Op) -> None:
        group = out.get(op.TAG)
        if group is None:
            out[op.TAG] = [op]
        else:
            group.append(op)

    top = state.frames[-1]
    n_wasm = sum(isinstance(f, WasmFrame) for f in state.frames)
    if isinstance(top, HostFrame):
        _host_moves(cfg, bounds, state, top, n_wasm, add)
    else:
        _wasm_moves(cfg, bounds, state, top, n_wasm, add)
    if cfg.capabilities:
        return _available(cfg, out)
    return out


def _available(cfg: Config, groups: dict[str, list[ops.Op]]) -> dict[str, list[ops.Op]]:
    """The moves an implementation with `cfg`'s capabilities can run: none that calls a function
    it lacks (`ops.unavailable`), and under `no-gc-free-insert` no call with more refs than the
    counted protocol carries across a GC (`model.host.check_counted_args`). The seed has no
    capabilities and never comes here, so its move counts are what they always were."""
    out: dict[str, list[ops.Op]] = {}
    for kind, group in groups.items():
        kept = [op for op in group if _runs_on(cfg, op)]
        if kept:
            out[kind] = kept
    return out


def _runs_on(cfg: Config, op: ops.Op) -> bool:
    if ops.unavailable(op, cfg.capabilities) is not None:
        return False
    if isinstance(op, ops.CallWasm) and cfg.has(NO_GC_FREE_INSERT):
        return len(op.args) <= cfg.chunk_size + 1
    return True


#: Kinds in the order a random driver should prefer them: what changes the state first, pure
#: observers last (Hypothesis shrinks towards the front of the list).
KIND_ORDER: tuple[str, ...] = (
    "new", "call_wasm", "wasm_call_host", "gc", "wasm_global_get", "wasm_call_wasm",
    "wasm_return", "return_to_wasm", "wasm_move", "wasm_null", "wasm_scalar", "wasm_global_set",
    "init_globals", "host_global_set", "host_global_get", "teardown_globals", "clone", "drop",
    "insert_with_gc", "insert_without_gc", "insert_many", "try_insert", "as_raw", "into_raw", "from_raw",
    "clone_from_raw", "set_gc_okay", "set_stack_canary", "strong_count", "deref", "eq", "cmp",
    "elements", "bump_capacity_remaining", "num_filled_in_bump_chunk", "stack_canary",
)  # fmt: skip


def ordered_kinds(groups: dict[str, list[ops.Op]]) -> list[str]:
    return sorted(groups, key=KIND_ORDER.index)


def flat_moves(cfg: Config, bounds: Bounds, state: State) -> list[ops.Op]:
    return [op for group in moves(cfg, bounds, state).values() for op in group]


#: Every move made so far, by (kind, fields): a move is a frozen value, and building one (an
#: interpreted dataclass) costs several times the look-up, once per move of every state explored.
_INTERNED: dict[tuple[object, ...], ops.Op] = {}


def renamed_indices(
    op: ops.Op, fields: tuple[str, ...], rename: Callable[[int], int | None]
) -> dict[str, object] | None:
    """The values of `op`'s index `fields` (`ops.HANDLE_FIELDS` or `ops.RAW_FIELDS`: each an int, None
    or a tuple of ints) with every index renamed by `rename`; None if `rename` has no name for one
    (None: a field's None stays). What the shrinker's renumbering after a removed step and the
    exhaustive runs' corresponding moves share; compiled with the moves, for the planner's sake."""
    out: dict[str, object] = {}
    for name in fields:
        value = getattr(op, name)
        values = value if isinstance(value, tuple) else (value,)
        renamed: list[int | None] = []
        for v in values:
            if v is None:
                renamed.append(None)
                continue
            to = rename(v)
            if to is None:
                return None
            renamed.append(to)
        out[name] = tuple(renamed) if isinstance(value, tuple) else renamed[0]
    return out


def _op(kind: Callable[..., ops.Op], *fields: object) -> ops.Op:
    """The move `kind(*fields)`, built once. Fields are positional and of one type per position
    (a bool field always gets a bool), so equal keys are equal moves."""
    key = (kind, *fields)
    op = _INTERNED.get(key)
    if op is None:
        op = _INTERNED[key] = kind(*fields)
    return op


def _host_moves(
    cfg: Config, bounds: Bounds, state: State, top: HostFrame, n_wasm: int, add: _Add
) -> None:
    live = [h for h, r in enumerate(state.handles) if r is not None]
    room = len(live) < bounds.handles
    live_raws = [p for p, raw in enumerate(state.raws) if raw is not None]
    raw_room = len(live_raws) < bounds.raws
    table = state.table
    # With `gc_okay` false, a debug build refuses anything that may GC: that is misuse.
    may_gc = table.gc_okay or not cfg.debug

    if len(state.heap) < bounds.refs and room:
        for size, align in bounds.layouts:
            add(_op(ops.New, size, align))
    for h in live:
        if room:
            add(_op(ops.Clone, h))
        add(_op(ops.Drop, h))
        if raw_room:
            add(_op(ops.AsRaw, h))
            add(_op(ops.IntoRaw, h))
        add(_op(ops.TryInsert, h))
        if may_gc:
            add(_op(ops.InsertWithGc, h))
        add(_op(ops.InsertWithoutGc, h))
        if bounds.insert_many:
            for count in _loop_counts(cfg, state):
                add(_op(ops.InsertMany, h, count, False))
                if may_gc:
                    add(_op(ops.InsertMany, h, count, True))
        if bounds.observers:
            add(_op(ops.StrongCount, h))
            add(_op(ops.Deref, h))
    if bounds.observers:
        for a, b in itertools.combinations(live, 2):
            add(_op(ops.Eq, a, b))
            add(_op(ops.Cmp, a, b))
        add(_op(ops.BumpCapacityRemaining))
        add(_op(ops.NumFilledInBumpChunk))
        add(_op(ops.Elements))
        add(_op(ops.StackCanary))
        # The embedder's guard may repeat what is already true (see `model.host.check_stack_canary`).
        canary_frame = _canary_frame(state)
        if n_wasm == 0 or canary_frame is not None:
            add(_op(ops.SetStackCanary, canary_frame if n_wasm else None))
    for p in live_raws:
        raw = state.raws[p]
        assert raw is not None
        if raw.owned:
            add(_op(ops.FromRaw, p))
        if room and not state.heap[raw.ref].freed:
            add(_op(ops.CloneFromRaw, p))
    if bounds.gc_okay_toggles:
        add(_op(ops.SetGcOkay, not table.gc_okay))
    if may_gc:
        add(_op(ops.Gc))

    if bounds.globals and state.globals:
        if all(isinstance(g, Uninit) for g in state.globals):
            for count in range(len(state.globals) + 1):
                add(_op(ops.InitGlobals, count))
        elif n_wasm == 0:
            add(_op(ops.TeardownGlobals))
        for g, value in enumerate(state.globals):
            if isinstance(value, Uninit):
                continue
            add(_op(ops.HostGlobalSet, g, None))
            for h in live:
                add(_op(ops.HostGlobalSet, g, h))
            if room:
                add(_op(ops.HostGlobalGet, g))

    if n_wasm < bounds.frames and may_gc:
        for k in range(min(bounds.args, cfg.slots, len(live)) + 1):
            for args in itertools.combinations(live, k):
                add(_op(ops.CallWasm, args))
    if top.called_from_wasm and may_gc:
        add(_op(ops.ReturnToWasm, None))
        for h in live:
            add(_op(ops.ReturnToWasm, h))


def _canary_frame(state: State) -> int | None:
    """The frame the current canary lies in (`SetStackCanary` names frames, not addresses)."""
    canary = state.table.stack_canary
    sps = frame_sps(state.frames)
    return next((i for i, sp in enumerate(sps) if sp == canary), None)


def _loop_counts(cfg: Config, state: State) -> list[int]:
    """Loop lengths that fill the chunk to one short of full, to full, and one past it."""
    table = state.table
    free = (len(table.chunk) if table.chunk else cfg.chunk_size) - table.next
    return sorted({c for c in (free - 1, free, free + 1) if c > 1})


def _wasm_moves(
    cfg: Config, bounds: Bounds, state: State, top: WasmFrame, n_wasm: int, add: _Add
) -> None:
    n = len(top.slots)
    slots = range(n)
    live = sum(r is not None for r in state.handles)
    for src in slots:
        for dst in slots:
            if src != dst and top.slots[src] != top.slots[dst]:
                add(_op(ops.WasmMove, src, dst))
    for dst in slots:
        if top.slots[dst] is not None:
            add(_op(ops.WasmNull, dst))
        if bounds.scalars and not isinstance(top.slots[dst], Scalar):
            add(_op(ops.WasmScalar, dst))
    for g, value in enumerate(state.globals if bounds.globals else ()):
        if isinstance(value, Uninit):
            continue
        for i in slots:
            add(_op(ops.WasmGlobalGet, g, i))
            if not isinstance(top.slots[i], Scalar):
                add(_op(ops.WasmGlobalSet, g, i))
    arg_sets = [
        args for k in range(min(bounds.args, n) + 1) for args in itertools.combinations(slots, k)
    ]
    if n_wasm < bounds.frames:
        for args in arg_sets:
            for ret in slots:
                add(_op(ops.WasmCallWasm, args, ret))
    ref_args = sum(isinstance(top.slots[i], int) for i in slots)
    if live + ref_args <= bounds.handles + bounds.args:
        for args in arg_sets:
            for ret in slots:
                add(_op(ops.WasmCallHost, args, ret))
                if bounds.opaque_host_frames:
                    add(_op(ops.WasmCallHost, args, ret, False))
    add(_op(ops.WasmReturn, None))
    for i in slots:
        add(_op(ops.WasmReturn, i))


def misuse_moves(cfg: Config, state: State) -> list[ops.Op]:
    """Operations that break the API contract in this state; each must be refused as `Misuse`.

    One or two instances of every kind of contract breach the worlds check (`model.host` and
    `Machine`'s validation): dead or unknown handles and raws, impossible value layouts, globals
    out of range or never initialised, calls with more arguments than the callee has slots or one
    handle twice, slots out of range, a canary outside the embedder's protocol, GC while it is not
    okay, and code run in the wrong kind of frame.
    """
    out: list[ops.Op] = []
    top = state.frames[-1]
    n_frames = len(state.frames)
    wasm_on_stack = any(isinstance(f, WasmFrame) for f in state.frames)
    dead = [h for h, r in enumerate(state.handles) if r is None]
    live = [h for h, r in enumerate(state.handles) if r is not None]
    uninit = [g for g, v in enumerate(state.globals) if isinstance(v, Uninit)]
    if isinstance(top, HostFrame):
        for h in dead[:2]:
            out += [ops.Clone(h), ops.Drop(h), ops.InsertWithGc(h)]
        out.append(ops.Clone(len(state.handles)))
        for p, raw in enumerate(state.raws):
            if raw is not None and not raw.owned:
                out.append(ops.FromRaw(p))
            if raw is not None and state.heap[raw.ref].freed:
                out.append(ops.CloneFromRaw(p))
        out.append(ops.WasmNull(0))
        out.append(ops.New(8, 3))  # an alignment that is not a power of two
        out.append(ops.New(12, 8))  # a size that is not a multiple of the alignment
        out.append(ops.HostGlobalGet(cfg.n_globals))
        for g in uninit[:1]:
            out += [ops.HostGlobalGet(g), ops.HostGlobalSet(g, None)]
        if live:
            out.append(ops.CallWasm((live[0], live[0])))
        if len(live) > cfg.slots:
            out.append(ops.CallWasm(tuple(live[: cfg.slots + 1])))
        out.append(ops.SetStackCanary(n_frames))
        if wasm_on_stack:
            out += [ops.SetStackCanary(None), ops.SetStackCanary(n_frames - 1)]
        else:
            out.append(ops.SetStackCanary(0))
        if not state.table.gc_okay and cfg.debug:
            out.append(ops.Gc())
            out += [ops.InsertWithGc(h) for h in live][:1]
    else:
        out += [ops.Gc(), ops.WasmMove(0, cfg.slots), ops.Drop(0)]
        out += [ops.WasmReturn(cfg.slots), ops.WasmReturn(-1), ops.WasmNull(-1)]
        out.append(ops.WasmCallWasm((0,) * (cfg.slots + 1), 0))
        out.append(ops.WasmGlobalGet(cfg.n_globals, 0))
        for g in uninit[:1]:
            out += [ops.WasmGlobalGet(g, 0), ops.WasmGlobalSet(g, 0)]
    if cfg.capabilities:
        return [op for op in out if ops.unavailable(op, cfg.capabilities) is None]
    return out


def next_quiesce_op(state: State) -> ops.Op | None:
    """One step towards quiescence: unwind every frame, drop everything the host holds, then GC.

    Repeated until it returns None, it leaves no handles, no raws, no globals, no Wasm frames and an
    empty table, where `I5` (no leak) has teeth. Used by every driver's teardown.
    """
    if state.panic is not None:
        return None
    top = state.frames[-1]
    if isinstance(top, HostFrame) and not state.table.gc_okay:
        return ops.SetGcOkay(True)  # returning a result to Wasm may GC
    if isinstance(top, WasmFrame):
        return ops.WasmReturn(None)
    if top.called_from_wasm:
        return ops.ReturnToWasm(None)
    for h, r in enumerate(state.handles):
        if r is not None:
            return ops.Drop(h)
    for p, raw in enumerate(state.raws):
        if raw is not None and raw.owned:
            return ops.FromRaw(p)
    if any(not isinstance(g, Uninit) for g in state.globals):
        return ops.TeardownGlobals()
    if state.table.next or state.table.over_approximated_stack_roots:
        return ops.Gc()
    return None


def quiesce_step_bound(state: State) -> int:
    """The most steps `next_quiesce_op` needs from `state` to reach quiescence.

    Each frame but the host's is popped by one step (`WasmReturn(None)` and `ReturnToWasm(None)`
    hand out no handle), each handle dropped by one, each owned raw takes two (`FromRaw`, then
    `Drop` of the handle it gives); besides those, at most one `SetGcOkay(True)` (nothing sets it
    false again), one `TeardownGlobals` and one `Gc` (with no Wasm frame it sweeps the whole
    table). A teardown that has not reached
    quiescence within this many steps never will: a driver says so instead of checking for leaks.
    """
    handles = sum(r is not None for r in state.handles)
    raws = sum(raw is not None and raw.owned for raw in state.raws)
    return handles + 2 * raws + len(state.frames) - 1 + 3
