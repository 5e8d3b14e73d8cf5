"""Bounded z3 proofs that the model's `gc` never frees a stack-reachable ref.

For every state within `Bounds` (up to F frames of S slots, R refs, a chunk of C slots; any
over-approximated set, any stack maps within the compiler's contract, any canary position, any
frame kinds and stack pointers), under the state invariants of `specs/SPEC.md` (`assumptions`),
`specs.sweep_encoding.gc` satisfies each of `properties`.

A variant (`VARIANTS`) switches on one seeded bug, in the encoding of `gc` (a model mutant), in the
stack-map contract (a compiler mutant) or in the assumptions (a proof-only variant). Each variant
must yield a counterexample: that is what shows the proofs can fail.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import z3

from externref_harness.model.runtime import (
    CVE_2022_24791,
    CVE_2022_31146,
    HASHSET_DUPLICATE_LEAKS,
    PRECISE_ROOT_UNCOUNTED,
    SWEEP_WITHOUT_CANARY,
)
from externref_harness.specs.mutants import DROP_ROOTS_IN_TABLE
from externref_harness.specs.proving import DEFAULT_TIMEOUT_MS, Verdict, check_valid, verdict
from externref_harness.specs.sweep_encoding import (
    NULL,
    SCALAR,
    Bounds,
    GcResult,
    GcState,
    Namer,
    Scenario,
    Switches,
    Term,
    all_of,
    any_of,
    gc,
    sum_of,
)
from externref_harness.specs.sweep_lemmas import (
    chunk_invariant,
    cleared_invariant,
    swept_invariant,
    walk_invariant,
)


@dataclass(frozen=True)
class Variant:
    """A seeded bug as the proofs see it. `mutant=None` is the seed.

    The mutant's name is handed to the `gc` encoding (which acts on the model's runtime switches),
    to the stack-map contract (the compiler's) and to `assumptions` (the proof-only one).
    """

    mutant: str | None
    description: str
    #: The property whose counterexample the variant's trace demonstrates (None: the seed).
    breaks: str | None = None


VARIANTS: dict[str | None, Variant] = {
    None: Variant(None, "the seed"),
    SWEEP_WITHOUT_CANARY: Variant(SWEEP_WITHOUT_CANARY, "gc sweeps although the canary was not found", "A"),
    PRECISE_ROOT_UNCOUNTED: Variant(PRECISE_ROOT_UNCOUNTED, "a precise root is taken without a clone", "A"),
    HASHSET_DUPLICATE_LEAKS: Variant(HASHSET_DUPLICATE_LEAKS, "a duplicate precise root leaks a count", "B"),
    CVE_2022_31146: Variant(CVE_2022_31146, "the stack map omits the highest live ref slot", "A"),
    CVE_2022_24791: Variant(CVE_2022_24791, "no stack map at Wasm-to-Wasm call safepoints", "A"),
    DROP_ROOTS_IN_TABLE: Variant(DROP_ROOTS_IN_TABLE, "I8 (stack roots are in the table) not assumed", "A"),
}
#: The variants with a seeded bug.
SEEDED = tuple(m for m in VARIANTS if m is not None)


# --- the assumptions: the state invariants, restated over a `GcState` ----------------------------


@dataclass(frozen=True)
class Assumption:
    id: str
    text: str
    formula: Term


def holds_ref(word: Term) -> Term:
    return word >= 0


def table_count(s: GcState, r: int, chunk: tuple[Term, ...] | None = None, next_: Term | None = None) -> Term:
    """How many times `r` is among `table_elements`: the chunk's slots before `next`, plus the set."""
    words = s.chunk if chunk is None else chunk
    limit = s.next if next_ is None else next_
    return sum_of([z3.If(z3.And(i < limit, w == r), 1, 0) for i, w in enumerate(words)])


def in_table(s: GcState, r: int) -> Term:
    return z3.Or(s.cells[r].over, table_count(s, r) > 0)


def stack_slots(s: GcState) -> list[tuple[int, int, Term, Term]]:
    """(frame, slot, word, mapped) for every slot of every present Wasm frame, youngest first."""
    return [
        (k, i, w, m)
        for k, f in enumerate(s.frames)
        for i, (w, m) in enumerate(zip(f.slots, f.mapped, strict=True))
    ]


def well_formed(s: GcState) -> Term:
    """What every model state looks like: frames youngest first at rising sps, words in range."""
    b = s.bounds
    parts = [1 <= s.n_frames, s.n_frames <= b.frames, s.frames[0].sp >= 0, s.stack_canary >= 0]
    for k in range(b.frames - 1):
        parts.append(z3.Implies(s.present(k + 1), s.frames[k].sp < s.frames[k + 1].sp))
    for _, _, w, _ in stack_slots(s):
        parts.append(z3.And(SCALAR <= w, w < b.refs))
    for w in s.chunk:
        parts.append(z3.And(NULL <= w, w < b.refs))
    for c, other in zip(s.cells, s.other_owners, strict=True):
        parts += [c.ref_count >= 0, other >= 0]
    return all_of(parts)


def i1_outside_the_stack(s: GcState) -> Term:
    return all_of(
        [
            z3.Implies(z3.Or(other >= 1, in_table(s, r), c.precise), z3.Not(c.freed))
            for r, (c, other) in enumerate(zip(s.cells, s.other_owners, strict=True))
        ]
    )


def i2_exact_refcounts(s: GcState) -> Term:
    return all_of([exact_count(s, r, s.cells[r].ref_count, s.cells[r].freed) for r in range(s.bounds.refs)])


def exact_count(
    s: GcState,
    r: int,
    count: Term,
    freed: Term,
    result: GcResult | None = None,
) -> Term:
    """I2 for ref `r`: a live ref's count is its owners: others, table entries, set memberships."""
    cell = s.cells[r] if result is None else result.cells[r]
    entries = table_count(s, r) if result is None else table_count(s, r, result.chunk, result.next)
    owned = s.other_owners[r] + entries + z3.If(cell.over, 1, 0) + z3.If(cell.precise, 1, 0)
    return z3.Implies(z3.Not(freed), count == owned)


def i6_table_shape(s: GcState) -> Term:
    parts = [
        z3.Or(s.chunk_len == 0, s.chunk_len == s.bounds.chunk),
        0 <= s.next,
        s.next <= s.chunk_len,
    ]
    for i, w in enumerate(s.chunk):
        parts.append(z3.If(z3.IntVal(i) < s.next, w != NULL, w == NULL))
    parts += [z3.Not(c.precise) for c in s.cells]
    return all_of(parts)


def i7_wasm_frames_have_a_canary(s: GcState) -> Term:
    return z3.Implies(z3.Not(s.stack_canary_set), all_of([z3.Not(s.wasm(k)) for k in range(s.bounds.frames)]))


def i8_stack_roots_in_table(s: GcState) -> Term:
    return all_of(
        [
            z3.Implies(z3.And(s.wasm(k), w == r), in_table(s, r))
            for k, _, w, _ in stack_slots(s)
            for r in range(s.bounds.refs)
        ]
    )


def stack_map_exemption(s: GcState, k: int, i: int, mutant: str | None) -> Term:
    """Slot i of frame k may hold a live ref and still be unmapped: only under a compiler mutant.

    CVE-2022-31146 omits the highest live slot of a frame holding two or more; CVE-2022-24791
    emits no map at all at a Wasm-to-Wasm call (the younger frame k-1 is Wasm).
    """
    f = s.frames[k]
    if mutant == CVE_2022_31146:
        highest = all_of([z3.Not(holds_ref(v)) for v in f.slots[i + 1 :]])
        return z3.And(highest, any_of([holds_ref(v) for v in f.slots[:i]]))
    if mutant == CVE_2022_24791 and k >= 1:
        return s.wasm(k - 1)
    return z3.BoolVal(False)


def stack_map_contract(s: GcState, mutant: str | None) -> Term:
    """`model.world.emit_stack_map`'s promise: every live ref slot is mapped, no scalar slot is
    (up to a compiler mutant's `stack_map_exemption`)."""
    parts = []
    for k, f in enumerate(s.frames):
        for i, (w, m) in enumerate(zip(f.slots, f.mapped, strict=True)):
            exempt = stack_map_exemption(s, k, i, mutant)
            live_mapped = z3.Implies(z3.And(holds_ref(w), z3.Not(exempt)), m)
            parts.append(z3.Implies(s.wasm(k), z3.And(live_mapped, z3.Implies(m, w != SCALAR))))
    return all_of(parts)


def assumptions(s: GcState, variant: Variant) -> list[Assumption]:
    out = [
        Assumption("W", "a model state: frames youngest first at rising sps, words in range", well_formed(s)),
        Assumption("G", "gc_okay (gc is refused as misuse otherwise)", s.gc_okay),
        Assumption(
            "I1", "no ref held by a handle, raw, global or the table is freed", i1_outside_the_stack(s)
        ),
        Assumption("I2", "exact refcounts", i2_exact_refcounts(s)),
        Assumption("I6", "table shape (precise_stack_roots empty outside gc)", i6_table_shape(s)),
        Assumption(
            "I7", "no Wasm frame without a canary (its position is free)", i7_wasm_frames_have_a_canary(s)
        ),
        Assumption("I8", "every stack root is in the table", i8_stack_roots_in_table(s)),
        Assumption(
            "SM",
            "stack maps map every live ref slot and no scalar slot",
            stack_map_contract(s, variant.mutant),
        ),
    ]
    if variant.mutant == DROP_ROOTS_IN_TABLE:
        out = [a for a in out if a.id != "I8"]
    return out


# --- the properties -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepProperty:
    id: str
    name: str
    invariants: str
    formula: Callable[[GcState, GcResult], Term]


def younger_than_canary(s: GcState, k: int) -> Term:
    return z3.And(s.wasm(k), s.stack_canary_set, s.frames[k].sp < s.stack_canary)


def no_stack_root_freed(s: GcState, out: GcResult) -> Term:
    return all_of(
        [
            z3.Implies(z3.And(younger_than_canary(s, k), w == r), z3.Not(out.cells[r].freed))
            for k, _, w, _ in stack_slots(s)
            for r in range(s.bounds.refs)
        ]
    )


def exact_accounting(s: GcState, out: GcResult) -> Term:
    return all_of([exact_count(s, r, c.ref_count, c.freed, out) for r, c in enumerate(out.cells)])


def nothing_freed_without_canary(s: GcState, out: GcResult) -> Term:
    unchanged = all_of(
        [
            z3.And(after.freed == before.freed, after.ref_count == before.ref_count)
            for before, after in zip(s.cells, out.cells, strict=True)
        ]
    )
    return z3.Implies(z3.And(s.stack_canary_set, z3.Not(out.found_canary)), unchanged)


def no_fault(s: GcState, out: GcResult) -> Term:
    return z3.And(z3.Not(out.panicked), out.faults() == 0)


PROPERTIES: tuple[SweepProperty, ...] = (
    SweepProperty(
        "A",
        "never frees a ref held in a slot of a Wasm frame younger than the canary",
        "I1",
        no_stack_root_freed,
    ),
    SweepProperty("B", "keeps the refcount accounting exact", "I2", exact_accounting),
    SweepProperty(
        "C",
        "frees nothing and changes no count when the canary is not found",
        "I1, I2",
        nothing_freed_without_canary,
    ),
    SweepProperty("D", "records no memory fault and fires no debug assertion", "I3, I4, I9", no_fault),
)


# --- running the proofs -------------------------------------------------------------------------


@dataclass(frozen=True)
class Lemma:
    """A cut: proven from the assumptions, the encoding's definitions and the lemmas it names."""

    name: str
    formula: Term
    after: tuple[str, ...] = ()


def remaining(s: GcState, r: int, start: int) -> Term:
    """Entries of `r` in chunk slots `start..next`: what the sweep has still to drop."""
    return sum_of([z3.If(z3.And(i < s.next, w == r), 1, 0) for i, w in enumerate(s.chunk) if i >= start])


def bounded_lemmas(s: GcState, out: GcResult) -> list[Lemma]:
    """One cut per step of the unrolled `gc`: the per-ref invariants of `specs.sweep_lemmas`."""
    refs = range(s.bounds.refs)
    pre, other = s.cells, s.other_owners
    younger = [younger_than_canary(s, k) for k in range(s.bounds.frames)]
    visits_younger = all_of([z3.Implies(y, v) for y, v in zip(younger, out.visited, strict=True)])
    covered = [
        z3.Implies(z3.And(w.on, s.frames[w.frame].slots[w.slot] == r), out.walked[r].precise)
        for w in out.words
        for r in refs
    ]
    lemmas = [
        Lemma("walk-order", z3.Implies(out.found_canary, visits_younger)),
        Lemma("coverage", all_of(covered)),
        Lemma("no-panic", z3.Not(out.panicked)),
    ]
    previous: tuple[str, ...] = ()
    for w in out.words:
        name = f"walk[{w.frame}][{w.slot}]"
        step = [walk_invariant(pre[r], w.cells[r], in_table(s, r)) for r in refs]
        lemmas.append(Lemma(name, all_of(step), previous))
        previous = (name,)
    walked_by = previous
    start = [
        chunk_invariant(pre[r], out.walked[r], out.walked[r], other[r], remaining(s, r, 0)) for r in refs
    ]
    lemmas.append(Lemma("sweep-start", all_of(start), walked_by))
    previous = ("sweep-start",)
    for i, cells in enumerate(out.swept_slots):
        name = f"sweep[{i}]"
        step = [
            chunk_invariant(pre[r], out.walked[r], cells[r], other[r], remaining(s, r, i + 1)) for r in refs
        ]
        lemmas.append(Lemma(name, all_of(step), previous))
        previous = (name,)
    swept = [swept_invariant(pre[r], out.walked[r], out.after_sweep[r], other[r]) for r in refs]
    lemmas.append(Lemma("old-roots", all_of(swept), previous))
    cleared = [cleared_invariant(pre[r], out.after_clear[r]) for r in refs]
    lemmas.append(Lemma("cleared", all_of(cleared), walked_by))
    return lemmas


@dataclass(frozen=True)
class LemmaResult:
    name: str
    #: A solver status, or "skipped" when a lemma it builds on was not proven.
    status: str
    seconds: float


def prove_lemmas(
    premises: list[Term], lemmas: list[Lemma], timeout_ms: int
) -> tuple[list[Term], list[LemmaResult]]:
    """Prove each lemma in order from the premises and the lemmas it names (if those were proven)."""
    proven: dict[str, Term] = {}
    results = []
    for lemma in lemmas:
        if not all(name in proven for name in lemma.after):
            results.append(LemmaResult(lemma.name, "skipped", 0.0))
            continue
        outcome = check_valid([*premises, *(proven[n] for n in lemma.after)], lemma.formula, timeout_ms)
        results.append(LemmaResult(lemma.name, outcome.status, outcome.seconds))
        if outcome.proven:
            proven[lemma.name] = lemma.formula
    return list(proven.values()), results


def describe_state(s: GcState, out: GcResult, model: z3.ModelRef) -> str:
    """A counterexample in one paragraph: frames (youngest first), canary, table, heap, result."""
    return Scenario.read(s, out, model).describe()


class BoundedProof:
    """The bounded proof of one variant and build: the encoding in SSA form, its cuts, then one
    query per property.

    Every step of the unrolled `gc` is cut by the per-ref invariants of `specs.sweep_lemmas`; each
    cut is proven before it is used, so a property proven with them is proven outright, and a
    model of a property's query is a genuine counterexample. A cut that fails (under a seeded
    bug) is simply not used.
    """

    def __init__(
        self,
        bounds: Bounds,
        variant: Variant = VARIANTS[None],
        debug: bool = True,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
    ) -> None:
        self.bounds, self.variant, self.debug, self.timeout_ms = bounds, variant, debug, timeout_ms
        namer = Namer()
        self.state = GcState.symbolic(bounds)
        self.result = gc(self.state, Switches(debug, variant.mutant), namer)
        assumed = assumptions(self.state, variant)
        self.assumption_ids = tuple(a.id for a in assumed)
        self.premises = [a.formula for a in assumed] + namer.definitions
        self.cuts: list[Term] = []
        self.lemmas: list[LemmaResult] = []

    @property
    def build(self) -> str:
        return "debug" if self.debug else "release"

    def prove_cuts(self) -> list[LemmaResult]:
        self.cuts, self.lemmas = prove_lemmas(
            self.premises, bounded_lemmas(self.state, self.result), self.timeout_ms
        )
        return self.lemmas

    def prove(self, prop: SweepProperty) -> Verdict:
        s, out = self.state, self.result
        outcome = check_valid(
            [*self.premises, *self.cuts], prop.formula(s, out), self.timeout_ms, nonvacuous=True
        )
        return verdict(
            f"sweep.bounded.{prop.id} ({self.build})",
            outcome,
            lambda m: describe_state(s, out, m),
            self.assumption_ids,
            f"{prop.name} ({prop.invariants}) for every state within {self.bounds}",
        )


def prove_bounded(
    bounds: Bounds,
    variant: Variant = VARIANTS[None],
    debug: bool = True,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
    only: tuple[str, ...] | None = None,
) -> list[Verdict]:
    """One verdict per property (those in `only`, if given), for every state within `bounds`."""
    proof = BoundedProof(bounds, variant, debug, timeout_ms)
    proof.prove_cuts()
    return [proof.prove(p) for p in PROPERTIES if only is None or p.id in only]
