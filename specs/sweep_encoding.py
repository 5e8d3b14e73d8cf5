"""The model's `gc` (`model.runtime.SeedRuntime.gc`) as z3 terms over a symbolic state.

Every step of `gc`, `sweep`, `insert_precise_stack_root`, `_hashset_insert`, `clone_from_raw` and
`drop` has its counterpart here, in the same order and with the same mutant switches, so a reader
can hold the two side by side. The per-ref steps (`increment_ref_count`, `drop`, ...) act on one
`Cell` (one ref's count, freed flag and hash-set memberships) and are shared by the bounded proof
(one cell per ref) and the unbounded one (one cell for an arbitrary ref ρ).

A symbolic `GcState` holds what `gc` reads: the frames youngest first (what `walk_stack` yields,
with the registered stack maps as bits), the canary, the bump chunk, both hash sets, the heap,
and each ref's owners outside the table (handles, owned raws, globals: `other_owners`), which `gc`
never touches but the refcount invariant I2 counts. `GcState.from_model` plugs a concrete model
state in, so the encoding can be cross-checked against the model on random reachable states.

Slot and chunk words are ints: a ref id `r >= 0`, `NULL`, or `SCALAR` (a non-ref stack word).
`evaluate` and `Scenario` read a result back as plain values (a counterexample, or the outcome on a
concrete state).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, fields, replace
from typing import Any

import z3

from externref_harness.model.runtime import (
    HASHSET_DUPLICATE_LEAKS,
    PRECISE_ROOT_UNCOUNTED,
    SWEEP_WITHOUT_CANARY,
)
from externref_harness.model.state import (
    WORD,
    Config,
    HostFrame,
    Scalar,
    Slot,
    State,
    WasmFrame,
    frame_sps,
    owners,
    table_elements,
)
from externref_harness.model.world import lookup_stack_map
from externref_harness.specs.proving import value_of

NULL = -1
SCALAR = -2

Term = Any  # a z3 ArithRef / BoolRef

#: The largest F, S, R or C the command line accepts (the proof's cost grows with F*S*R).
MAX_BOUND = 8

_ZERO = z3.IntVal(0)


def _count(cond: Term) -> Term:
    return z3.If(cond, 1, 0)


def any_of(terms: list[Term]) -> Term:
    return z3.Or(*terms) if terms else z3.BoolVal(False)


def all_of(terms: list[Term]) -> Term:
    return z3.And(*terms) if terms else z3.BoolVal(True)


def sum_of(terms: list[Term]) -> Term:
    return z3.Sum(*terms) if terms else z3.IntVal(0)


@dataclass(frozen=True)
class Bounds:
    """The size of a bounded state: F frames of S slots, R refs, a chunk of C slots."""

    frames: int
    slots: int
    refs: int
    chunk: int

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"bounds: {f.name} must be a positive int, got {value!r}")

    @staticmethod
    def parse(text: str) -> Bounds:
        """`"F,S,R,C"`, e.g. `"4,4,4,4"`, each in `1..MAX_BOUND`."""
        parts = text.split(",")
        if len(parts) != 4:
            raise ValueError(f"bounds must be F,S,R,C (four ints), got {text!r}")
        try:
            values = [int(p.strip()) for p in parts]
        except ValueError:
            raise ValueError(f"bounds must be F,S,R,C (four ints), got {text!r}") from None
        for name, value in zip("FSRC", values, strict=True):
            if not 1 <= value <= MAX_BOUND:
                raise ValueError(f"bounds: {name}={value} is outside 1..{MAX_BOUND}")
        return Bounds(*values)

    def __str__(self) -> str:
        return f"(F, S, R, C) = ({self.frames}, {self.slots}, {self.refs}, {self.chunk})"


@dataclass(frozen=True)
class Switches:
    """The build and the seeded bug the encoding runs with (`Config.build`, `Config.mutant`)."""

    debug: bool = True
    mutant: str | None = None

    @staticmethod
    def of(cfg: Config) -> Switches:
        return Switches(cfg.debug, cfg.mutant)


# --- one ref: `Box` and its hash-set memberships ------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One ref's part of the runtime state, plus the faults recorded against it."""

    ref_count: Term
    freed: Term
    #: The ref is in `precise_stack_roots`.
    precise: Term
    #: The ref is in `over_approximated_stack_roots`.
    over: Term
    use_after_free: Term = _ZERO
    double_drop: Term = _ZERO

    def select(self, cond: Term, other: Cell) -> Cell:
        """`other` where `cond` holds, else `self`."""
        return Cell(*(z3.If(cond, getattr(other, f.name), getattr(self, f.name)) for f in fields(self)))


def increment_ref_count(c: Cell, on: Term) -> Cell:
    """`SeedRuntime.increment_ref_count` when `on`: a freed box records a use-after-free."""
    return replace(
        c,
        ref_count=z3.If(z3.And(on, z3.Not(c.freed)), c.ref_count + 1, c.ref_count),
        use_after_free=c.use_after_free + _count(z3.And(on, c.freed)),
    )


def drop(c: Cell, on: Term) -> Cell:
    """`SeedRuntime.drop` when `on`: `fetch_sub(1) == 1` frees; a freed box records a double drop."""
    live = z3.And(on, z3.Not(c.freed))
    last = z3.And(live, c.ref_count == 1)
    return replace(
        c,
        ref_count=z3.If(last, 0, z3.If(live, c.ref_count - 1, c.ref_count)),
        freed=z3.Or(c.freed, last),
        double_drop=c.double_drop + _count(z3.And(on, c.freed)),
    )


def hashset_insert_precise(c: Cell, on: Term, mutant: str | None) -> Cell:
    """`_hashset_insert(precise_stack_roots, r)`: a duplicate is dropped (or leaked, by the mutant)."""
    duplicate = z3.And(on, c.precise)
    if mutant != HASHSET_DUPLICATE_LEAKS:
        c = drop(c, duplicate)
    return replace(c, precise=z3.Or(c.precise, on))


def insert_precise_stack_root(c: Cell, on: Term, mutant: str | None) -> Cell:
    """`insert_precise_stack_root(word)` for a word that is this ref: `clone_from_raw`, then insert."""
    if mutant == PRECISE_ROOT_UNCOUNTED:
        return replace(c, precise=z3.Or(c.precise, on))
    return hashset_insert_precise(increment_ref_count(c, on), on, mutant)


def sweep_old_root(c: Cell) -> Cell:
    """`sweep`'s tail for one ref: swap the two sets, then drop every old over-approximated root."""
    was_over = c.over
    return drop(replace(c, over=c.precise, precise=z3.BoolVal(False)), was_over)


def clear_precise_root(c: Cell) -> Cell:
    """`gc`'s canary-not-found branch for one ref: `precise_stack_roots` is drained and dropped."""
    was_precise = c.precise
    return drop(replace(c, precise=z3.BoolVal(False)), was_precise)


def num_filled_in_bump_chunk(chunk_len: Term, next_: Term) -> Term:
    """`chunk.len().saturating_sub((end - next) / size_of::<TableElem>())`, with `next` as a slot index."""
    bytes_unused = (chunk_len - next_) * WORD
    slots_unused = bytes_unused / WORD
    filled = chunk_len - slots_unused
    return z3.If(filled > 0, filled, 0)


def found_canary_at(last_sp: Term, stack_canary: Term, sp: Term) -> Term:
    """The seed's rule, evaluated at each frame after the youngest: `last_sp <= canary <= sp`."""
    return z3.And(last_sp <= stack_canary, stack_canary <= sp)


# --- the state `gc` reads -----------------------------------------------------------------------


@dataclass(frozen=True)
class FrameTerms:
    """One frame as `walk_stack` yields it; `mapped[i]` is bit i of the registered stack map."""

    wasm: Term
    unwind_info: Term
    sp: Term
    slots: tuple[Term, ...]
    mapped: tuple[Term, ...]


@dataclass(frozen=True)
class GcState:
    bounds: Bounds
    #: Frames present: `frames[k]` exists iff `k < n_frames` (youngest first).
    n_frames: Term
    frames: tuple[FrameTerms, ...]
    stack_canary_set: Term
    stack_canary: Term
    chunk_len: Term
    chunk: tuple[Term, ...]
    next: Term
    cells: tuple[Cell, ...]
    #: Counted owners of each ref outside the table: handles, owned raws, globals.
    other_owners: tuple[Term, ...]
    gc_okay: Term

    def present(self, k: int) -> Term:
        return z3.IntVal(k) < self.n_frames

    def wasm(self, k: int) -> Term:
        return z3.And(self.present(k), self.frames[k].wasm)

    @staticmethod
    def symbolic(bounds: Bounds, prefix: str = "") -> GcState:
        p = prefix

        def ints(name: str, n: int) -> tuple[Term, ...]:
            return tuple(z3.Int(f"{p}{name}[{i}]") for i in range(n))

        def bools(name: str, n: int) -> tuple[Term, ...]:
            return tuple(z3.Bool(f"{p}{name}[{i}]") for i in range(n))

        frames = tuple(
            FrameTerms(
                wasm=z3.Bool(f"{p}frame[{k}].wasm"),
                unwind_info=z3.Bool(f"{p}frame[{k}].unwind_info"),
                sp=z3.Int(f"{p}frame[{k}].sp"),
                slots=ints(f"frame[{k}].slot", bounds.slots),
                mapped=bools(f"frame[{k}].mapped", bounds.slots),
            )
            for k in range(bounds.frames)
        )
        counts, freed = ints("ref_count", bounds.refs), bools("freed", bounds.refs)
        precise, over = bools("precise", bounds.refs), bools("over", bounds.refs)
        return GcState(
            bounds=bounds,
            n_frames=z3.Int(f"{p}n_frames"),
            frames=frames,
            stack_canary_set=z3.Bool(f"{p}stack_canary_set"),
            stack_canary=z3.Int(f"{p}stack_canary"),
            chunk_len=z3.Int(f"{p}chunk_len"),
            chunk=ints("chunk", bounds.chunk),
            next=z3.Int(f"{p}next"),
            cells=tuple(Cell(counts[r], freed[r], precise[r], over[r]) for r in range(bounds.refs)),
            other_owners=ints("other_owners", bounds.refs),
            gc_okay=z3.Bool(f"{p}gc_okay"),
        )

    @staticmethod
    def from_model(cfg: Config, state: State) -> GcState:
        """The concrete model state as z3 constants, frames youngest first as `walk_stack` sees them."""
        t = state.table
        bounds = Bounds(len(state.frames), cfg.slots, max(len(state.heap), 1), cfg.chunk_size)
        if len(t.chunk) > cfg.chunk_size:
            raise ValueError(f"chunk of {len(t.chunk)} slots, more than {cfg.chunk_size}")
        sps = frame_sps(state.frames)
        frames = []
        for frame, sp in zip(reversed(state.frames), reversed(sps), strict=True):
            if isinstance(frame, WasmFrame):
                stack_map = lookup_stack_map(cfg, frame) or ()
                words = tuple(_word(s) for s in frame.slots)
                bits = tuple(i in stack_map for i in range(cfg.slots))
                frames.append(_const_frame(True, True, sp, words, bits))
            else:
                assert isinstance(frame, HostFrame)
                frames.append(
                    _const_frame(False, frame.unwind_info, sp, (NULL,) * cfg.slots, (False,) * cfg.slots)
                )
        held = owners(state)
        in_table = Counter(table_elements(t))
        cells, other = [], []
        for r in range(bounds.refs):
            box = state.heap[r] if r < len(state.heap) else None
            precise = r in t.precise_stack_roots
            cells.append(
                Cell(
                    z3.IntVal(box.ref_count if box else 0),
                    z3.BoolVal(box.freed if box else True),
                    z3.BoolVal(precise),
                    z3.BoolVal(r in t.over_approximated_stack_roots),
                )
            )
            other.append(z3.IntVal(held.get(r, 0) - in_table[r] - int(precise)))
        chunk = tuple(NULL if s is None else s for s in t.chunk)
        chunk += (NULL,) * (cfg.chunk_size - len(chunk))
        return GcState(
            bounds=bounds,
            n_frames=z3.IntVal(len(state.frames)),
            frames=tuple(frames),
            stack_canary_set=z3.BoolVal(t.stack_canary is not None),
            stack_canary=z3.IntVal(t.stack_canary or 0),
            chunk_len=z3.IntVal(len(t.chunk)),
            chunk=tuple(z3.IntVal(v) for v in chunk),
            next=z3.IntVal(t.next),
            cells=tuple(cells),
            other_owners=tuple(other),
            gc_okay=z3.BoolVal(t.gc_okay),
        )


def _word(slot: Slot) -> int:
    if slot is None:
        return NULL
    if isinstance(slot, Scalar):
        return SCALAR
    return slot


def _const_frame(
    wasm: bool, unwind: bool, sp: int, words: tuple[int, ...], bits: tuple[bool, ...]
) -> FrameTerms:
    return FrameTerms(
        z3.BoolVal(wasm),
        z3.BoolVal(unwind),
        z3.IntVal(sp),
        tuple(z3.IntVal(w) for w in words),
        tuple(z3.BoolVal(b) for b in bits),
    )


# --- gc -----------------------------------------------------------------------------------------


class Namer:
    """Names intermediate terms with fresh constants and records their definitions (SSA form).

    With a namer, every step's result is a constant defined by one equation over the previous
    step's constants, so a proof can reason about one step at a time. Without one (`None`), terms
    are built inline, which is what evaluating a concrete state wants.
    """

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.definitions: list[Term] = []
        self._n = 0

    def __call__(self, term: Term, hint: str) -> Term:
        self._n += 1
        name = f"{self.prefix}{hint}!{self._n}"
        fresh = z3.Bool(name) if z3.is_bool(term) else z3.Int(name)
        self.definitions.append(fresh == term)
        return fresh

    def cell(self, c: Cell, hint: str) -> Cell:
        return Cell(*(self(getattr(c, f.name), f"{hint}.{f.name}") for f in fields(c)))


def _name(namer: Namer | None, term: Term, hint: str) -> Term:
    return term if namer is None else namer(term, hint)


def _name_cells(namer: Namer | None, cells: tuple[Cell, ...], hint: str) -> tuple[Cell, ...]:
    if namer is None:
        return cells
    return tuple(namer.cell(c, f"{hint}[{r}]") for r, c in enumerate(cells))


@dataclass(frozen=True)
class WordStep:
    """One mapped word read by the walk: frame k, slot i, and whether it was taken as a root."""

    frame: int
    slot: int
    #: The walk visited the frame, the bit is set and the word is not null.
    on: Term
    #: The cells after `insert_precise_stack_root` of this word.
    cells: tuple[Cell, ...]


@dataclass(frozen=True)
class GcResult:
    """The state after `gc` (the state before it when gc panicked or was refused), with the
    intermediate states a step-by-step proof needs."""

    cells: tuple[Cell, ...]
    chunk_len: Term
    chunk: tuple[Term, ...]
    next: Term
    found_canary: Term
    swept: Term
    #: A debug assertion fired (the model leaves the state as it was, marked `panic`).
    panicked: Term
    #: `gc` with `gc_okay` false in a debug build: refused as misuse.
    misuse: Term
    wild_pointer: Term
    #: Which frames the stack walk visited.
    visited: tuple[Term, ...]
    #: Every word the walk may read, in the walk's order.
    words: tuple[WordStep, ...]
    #: The cells after the walk (before `sweep` or the canary-not-found branch).
    walked: tuple[Cell, ...]
    #: The cells after each slot of the bump chunk was swept (index i: after slot i).
    swept_slots: tuple[tuple[Cell, ...], ...]
    #: The cells after the whole `sweep` / after the canary-not-found branch.
    after_sweep: tuple[Cell, ...]
    after_clear: tuple[Cell, ...]

    def faults(self) -> Term:
        return sum_of([c.use_after_free + c.double_drop for c in self.cells]) + self.wild_pointer


def in_activations_table(s: GcState, word: Term) -> Term:
    """`activations_table_set.contains(word)`: the debug build's set of `elements()`."""
    filled = num_filled_in_bump_chunk(s.chunk_len, s.next)
    return any_of(
        [
            z3.And(
                word == r,
                z3.Or(
                    c.over,
                    any_of([z3.And(i < filled, s.chunk[i] == r) for i in range(s.bounds.chunk)]),
                ),
            )
            for r, c in enumerate(s.cells)
        ]
    )


def reachable_by_walk(s: GcState) -> list[Term]:
    """Frame k is yielded by `walk_stack`: present, and no younger host frame stopped the walk."""
    out, stopped = [], z3.BoolVal(False)
    for k, f in enumerate(s.frames):
        out.append(z3.And(s.present(k), z3.Not(stopped)))
        stopped = z3.Or(stopped, z3.And(s.present(k), z3.Not(f.wasm), z3.Not(f.unwind_info)))
    return out


@dataclass(frozen=True)
class _Swept:
    slots: tuple[tuple[Cell, ...], ...]
    cells: tuple[Cell, ...]
    chunk_len: Term
    chunk: tuple[Term, ...]
    panicked: Term


def sweep(s: GcState, cells: tuple[Cell, ...], sw: Switches, namer: Namer | None) -> _Swept:
    """`SeedRuntime.sweep`: clear the filled slots, lazily allocate, reset `next`, swap, drop."""
    num_filled = num_filled_in_bump_chunk(s.chunk_len, s.next)
    chunk, slots = [], []
    for i, entry in enumerate(s.chunk):
        taken = z3.IntVal(i) < num_filled
        chunk.append(z3.If(taken, NULL, entry))
        on = z3.And(taken, entry != NULL)
        cells = tuple(drop(c, z3.And(on, entry == r)) for r, c in enumerate(cells))
        cells = _name_cells(namer, cells, f"sweep.slot[{i}]")
        slots.append(cells)
    leftover = any_of([z3.And(z3.IntVal(i) < s.chunk_len, e != NULL) for i, e in enumerate(chunk)])
    panicked = z3.And(z3.BoolVal(sw.debug), leftover)
    chunk_len = z3.If(s.chunk_len == 0, s.bounds.chunk, s.chunk_len)
    cells = _name_cells(namer, tuple(sweep_old_root(c) for c in cells), "sweep.old_roots")
    return _Swept(tuple(slots), cells, chunk_len, tuple(chunk), panicked)


def gc(s: GcState, sw: Switches, namer: Namer | None = None) -> GcResult:
    """`SeedRuntime.gc` (seed lines 871-1004) over `s`."""
    debug = z3.BoolVal(sw.debug)
    misuse = z3.And(debug, z3.Not(s.gc_okay))
    panic_on_entry = z3.And(debug, any_of([c.precise for c in s.cells]))
    canary = s.stack_canary_set

    reachable = reachable_by_walk(s)
    panic_no_canary = z3.And(debug, any_of([z3.And(reachable[k], f.wasm) for k, f in enumerate(s.frames)]))

    cells = s.cells
    found = z3.BoolVal(False)
    panic_walk = z3.BoolVal(False)
    wild: Term = z3.IntVal(0)
    visited, words = [], []
    for k, f in enumerate(s.frames):
        visit = _name(namer, z3.And(canary, reachable[k], z3.Not(found)), f"visit[{k}]")
        visited.append(visit)
        for i, (word, mapped) in enumerate(zip(f.slots, f.mapped, strict=True)):
            on = _name(namer, z3.And(visit, f.wasm, mapped, word != NULL), f"on[{k}][{i}]")
            if sw.debug:
                panic_walk = z3.Or(panic_walk, z3.And(on, z3.Not(in_activations_table(s, word))))
            if sw.mutant != PRECISE_ROOT_UNCOUNTED:
                wild = wild + _count(z3.And(on, word == SCALAR))
            cells = tuple(
                insert_precise_stack_root(c, z3.And(on, word == r), sw.mutant) for r, c in enumerate(cells)
            )
            cells = _name_cells(namer, cells, f"walk[{k}][{i}]")
            words.append(WordStep(k, i, on, cells))
        if k >= 1:
            last_sp = s.frames[k - 1].sp
            found = z3.Or(found, z3.And(visit, found_canary_at(last_sp, s.stack_canary, f.sp)))
            found = _name(namer, found, f"found[{k}]")

    # Without a canary nothing was visited, so `cells` is still `s.cells`: the seed sweeps at once.
    do_sweep = z3.Or(found, z3.BoolVal(sw.mutant == SWEEP_WITHOUT_CANARY))
    swept = _name(namer, z3.If(canary, do_sweep, z3.BoolVal(True)), "swept")
    after_sweep = sweep(s, cells, sw, namer)
    cleared = _name_cells(namer, tuple(clear_precise_root(c) for c in cells), "cleared")

    panicked = z3.Or(
        panic_on_entry,
        z3.And(canary, panic_walk),
        z3.And(z3.Not(canary), panic_no_canary),
        z3.And(swept, after_sweep.panicked),
    )
    unchanged = _name(namer, z3.Or(misuse, panicked), "unchanged")
    done = tuple(
        before.select(z3.Not(unchanged), a.select(z3.Not(swept), b))
        for before, a, b in zip(s.cells, after_sweep.cells, cleared, strict=True)
    )
    keep_table = z3.Or(unchanged, z3.Not(swept))
    return GcResult(
        cells=done,
        chunk_len=z3.If(keep_table, s.chunk_len, after_sweep.chunk_len),
        chunk=tuple(z3.If(keep_table, old, new) for old, new in zip(s.chunk, after_sweep.chunk, strict=True)),
        next=z3.If(keep_table, s.next, 0),
        found_canary=z3.And(canary, found),
        swept=z3.And(z3.Not(unchanged), swept),
        panicked=z3.And(z3.Not(misuse), panicked),
        misuse=misuse,
        wild_pointer=z3.If(unchanged, 0, wild),
        visited=tuple(visited),
        words=tuple(words),
        walked=cells,
        swept_slots=after_sweep.slots,
        after_sweep=after_sweep.cells,
        after_clear=cleared,
    )


# --- reading results back -------------------------------------------------------------------------


@dataclass(frozen=True)
class GcOutcome:
    """A `GcResult` evaluated to plain values (in a z3 model, or of a concrete `GcState`)."""

    ref_counts: tuple[int, ...]
    freed: tuple[bool, ...]
    over_approximated_stack_roots: frozenset[int]
    precise_stack_roots: frozenset[int]
    chunk: tuple[int | None, ...]
    next: int
    swept: bool
    found_canary: bool
    panicked: bool
    use_after_free: int
    double_drop: int
    wild_pointer: int


def evaluate(result: GcResult, model: z3.ModelRef | None = None) -> GcOutcome:
    """Values of `result`: in `model`, or by simplification when the state was concrete."""

    def ev(term: Term) -> Any:
        return value_of(model, term)

    chunk_len = ev(result.chunk_len)
    words = [ev(w) for w in result.chunk[:chunk_len]]
    return GcOutcome(
        ref_counts=tuple(ev(c.ref_count) for c in result.cells),
        freed=tuple(ev(c.freed) for c in result.cells),
        over_approximated_stack_roots=frozenset(r for r, c in enumerate(result.cells) if ev(c.over)),
        precise_stack_roots=frozenset(r for r, c in enumerate(result.cells) if ev(c.precise)),
        chunk=tuple(None if w == NULL else w for w in words),
        next=ev(result.next),
        swept=ev(result.swept),
        found_canary=ev(result.found_canary),
        panicked=ev(result.panicked),
        use_after_free=sum(ev(c.use_after_free) for c in result.cells),
        double_drop=sum(ev(c.double_drop) for c in result.cells),
        wild_pointer=ev(result.wild_pointer),
    )


def _frame(f: FrameTerms) -> str:
    if not f.wasm:
        return f"host(sp={f.sp}{'' if f.unwind_info else ', no unwind info'})"
    words = ", ".join(f"{_word_text(w)}{'*' if m else ''}" for w, m in zip(f.slots, f.mapped, strict=True))
    return f"wasm(sp={f.sp}: {words})"


def _word_text(w: int) -> str:
    if w == NULL:
        return "null"
    if w == SCALAR:
        return "scalar"
    return f"r{w}"


@dataclass(frozen=True)
class Scenario:
    """A concrete state before `gc` and `gc`'s outcome on it: the encoding's own `FrameTerms` and
    `Cell`s, holding plain ints and bools (frames youngest first, present ones only)."""

    frames: tuple[FrameTerms, ...]
    stack_canary: int | None
    chunk: tuple[int, ...]
    next: int
    cells: tuple[Cell, ...]
    other_owners: tuple[int, ...]
    outcome: GcOutcome

    @staticmethod
    def read(s: GcState, out: GcResult, model: z3.ModelRef) -> Scenario:
        def v(term: Term) -> Any:
            return value_of(model, term)

        frames = tuple(
            FrameTerms(
                v(f.wasm),
                v(f.unwind_info),
                v(f.sp),
                tuple(v(w) for w in f.slots),
                tuple(v(m) for m in f.mapped),
            )
            for f in s.frames[: v(s.n_frames)]
        )
        cells = tuple(Cell(*(v(getattr(c, f.name)) for f in fields(c))) for c in s.cells)
        return Scenario(
            frames=frames,
            stack_canary=v(s.stack_canary) if v(s.stack_canary_set) else None,
            chunk=tuple(v(w) for w in s.chunk[: v(s.chunk_len)]),
            next=v(s.next),
            cells=cells,
            other_owners=tuple(v(o) for o in s.other_owners),
            outcome=evaluate(out, model),
        )

    def in_table(self, r: int) -> bool:
        return r in self.chunk[: self.next] or bool(self.cells[r].over)

    def describe(self) -> str:
        frames = " < ".join(_frame(f) for f in self.frames)
        canary = "none" if self.stack_canary is None else str(self.stack_canary)
        chunk = "[" + ", ".join(_word_text(w) for w in self.chunk) + f"] next={self.next}"
        refs = "; ".join(
            f"r{r}: count={c.ref_count}{' freed' if c.freed else ''}"
            f"{' in-over' if c.over else ''}{' in-precise' if c.precise else ''}"
            f" others={other}"
            for r, (c, other) in enumerate(zip(self.cells, self.other_owners, strict=True))
        )
        o = self.outcome
        result = ", ".join(
            f"r{r}: count={c}{' FREED' if f and not self.cells[r].freed else ''}"
            for r, (c, f) in enumerate(zip(o.ref_counts, o.freed, strict=True))
        )
        flags = [
            "swept" if o.swept else "not swept",
            "canary found" if o.found_canary else "canary not found",
        ]
        if o.panicked:
            flags.append("debug assertion")
        faults = o.use_after_free + o.double_drop + o.wild_pointer
        if faults:
            flags.append(
                f"faults: {o.use_after_free} use-after-free, {o.double_drop} double drop, "
                f"{o.wild_pointer} wild pointer"
            )
        return (
            f"frames (youngest first; * = mapped): {frames}; canary={canary}; chunk={chunk}; "
            f"{refs} | after gc ({', '.join(flags)}): {result}; "
            f"over={sorted(o.over_approximated_stack_roots)}"
        )
