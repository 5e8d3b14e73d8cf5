"""Unbounded z3 proof of sweep safety: an inductive argument over `gc`'s loops for one ref ρ.

Nothing here has a size. ρ is any ref (an Int); the frames, their slot counts, slot words and
stack-map bits, the stack pointers, the chunk and its length are uninterpreted functions of Int
indices (arrays of any length); `rem(i)` is the ghost count of ρ's entries in chunk slots
`i..next`. The steps of `gc` are the very functions of `specs.sweep_encoding` (`insert_precise_stack_root`,
`drop`, `sweep_old_root`, `clear_precise_root`, `found_canary_at`, `num_filled_in_bump_chunk`), applied
to ρ's `Cell`; the invariants are `specs.sweep_lemmas`.

Each lemma is one inductive step, valid for every index:

    walk-start   the invariants hold before the walk
    walk-word    one mapped word of a visited Wasm frame keeps them (and fires no assertion)
    walk-frame   leaving frame k keeps them; if the canary is found there, every Wasm frame
                 younger than the canary was visited, so ρ's witness slot made it a precise root
    clear        the canary-not-found branch gives every count back
    sweep-start / sweep-slot / sweep-end   the chunk loop and the old roots' drops
    sweep-leftover                         the sweep's debug assertion holds
    A, B, C, D   the properties, from the invariants at the loops' exits

By induction on the walk (frames, then slots) and on the chunk loop, the invariants hold at every
iteration for states of any size; the properties then hold for ρ, and ρ is arbitrary. A panic on
another ref's word is covered by the same lemmas for that ref (`walk-word` for ρ := that ref); the
no-canary assertion ("no Wasm frame on the stack") is I7 itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import z3

from externref_harness.model.runtime import CVE_2022_24791, CVE_2022_31146, SWEEP_WITHOUT_CANARY
from externref_harness.specs.mutants import DROP_ROOTS_IN_TABLE
from externref_harness.specs.proving import DEFAULT_TIMEOUT_MS, Verdict, as_bool, as_int, check_valid, verdict
from externref_harness.specs.sweep_encoding import (
    NULL,
    SCALAR,
    Cell,
    Term,
    clear_precise_root,
    drop,
    found_canary_at,
    insert_precise_stack_root,
    num_filled_in_bump_chunk,
    sweep_old_root,
)
from externref_harness.specs.sweep_lemmas import (
    chunk_invariant,
    cleared_invariant,
    swept_invariant,
    walk_invariant,
)
from externref_harness.specs.sweep_proofs import VARIANTS, Variant

INT = z3.IntSort()
BOOL = z3.BoolSort()


def same_cell(a: Cell, b: Cell) -> Term:
    return z3.And(*(getattr(a, f.name) == getattr(b, f.name) for f in fields(a)))


def _cell(name: str) -> Cell:
    return Cell(
        z3.Int(f"{name}.ref_count"),
        z3.Bool(f"{name}.freed"),
        z3.Bool(f"{name}.precise"),
        z3.Bool(f"{name}.over"),
        z3.Int(f"{name}.use_after_free"),
        z3.Int(f"{name}.double_drop"),
    )


@dataclass(frozen=True)
class World:
    """A state of any size, seen from one ref ρ."""

    rho: Term
    pre: Cell
    other_owners: Term
    # the bump chunk
    chunk: Any
    chunk_len: Term
    chunk_size: Term
    next: Term
    rem: Any
    # the stack, youngest first
    n_frames: Term
    wasm: Any
    unwind_info: Any
    sp: Any
    n_slots: Any
    slot: Any
    mapped: Any
    stack_canary_set: Term
    stack_canary: Term
    # a slot of a Wasm frame younger than the canary that holds ρ (property A's subject)
    jw: Term
    iw: Term
    # the mutants' exemptions from the stack-map contract
    exempt: Any
    lower: Any

    @staticmethod
    def fresh() -> World:
        F = z3.Function
        return World(
            rho=z3.Int("rho"),
            pre=Cell(z3.Int("pre.ref_count"), z3.Bool("pre.freed"), z3.BoolVal(False), z3.Bool("pre.over")),
            other_owners=z3.Int("other_owners"),
            chunk=F("chunk", INT, INT),
            chunk_len=z3.Int("chunk_len"),
            chunk_size=z3.Int("chunk_size"),
            next=z3.Int("next"),
            rem=F("rem", INT, INT),
            n_frames=z3.Int("n_frames"),
            wasm=F("wasm", INT, BOOL),
            unwind_info=F("unwind_info", INT, BOOL),
            sp=F("sp", INT, INT),
            n_slots=F("n_slots", INT, INT),
            slot=F("slot", INT, INT, INT),
            mapped=F("mapped", INT, INT, BOOL),
            stack_canary_set=z3.Bool("stack_canary_set"),
            stack_canary=z3.Int("stack_canary"),
            jw=z3.Int("jw"),
            iw=z3.Int("iw"),
            exempt=F("exempt", INT, INT, BOOL),
            lower=F("lower", INT, INT, INT),
        )

    # --- the assumptions, at the indices a step touches ------------------------------------------

    def in_table(self) -> Term:
        """ρ is among `table_elements` (and so in the debug build's `activations_table_set`)."""
        return z3.Or(self.pre.over, self.rem(0) >= 1)

    def base(self, variant: Variant) -> list[Term]:
        """W, I1, I2, I6 for ρ (everything `gc` reads about ρ before the walk)."""
        p = self.pre
        return [
            self.rho >= 0,
            p.ref_count >= 0,
            self.other_owners >= 0,
            self.chunk_size >= 1,
            z3.Or(self.chunk_len == 0, self.chunk_len == self.chunk_size),
            0 <= self.next,
            self.next <= self.chunk_len,
            self.rem(self.next) == 0,
            self.rem(0) >= 0,
            self.n_frames >= 1,
            # I1 (outside the stack) and I2 for ρ
            z3.Implies(z3.Or(self.other_owners >= 1, self.in_table()), z3.Not(p.freed)),
            z3.Implies(
                z3.Not(p.freed),
                p.ref_count == self.other_owners + self.rem(0) + z3.If(p.over, 1, 0),
            ),
        ]

    def rem_step(self, i: Term) -> list[Term]:
        """`rem`'s definition at slot i: `rem(i) = [chunk[i] = ρ] + rem(i + 1)` below `next`."""
        return [
            z3.Implies(
                i < self.next,
                self.rem(i) == z3.If(self.chunk(i) == self.rho, 1, 0) + self.rem(i + 1),
            ),
            self.rem(i + 1) >= 0,
            self.rem(i) >= 0,
        ]

    def i6_at(self, i: Term) -> Term:
        return z3.And(
            z3.Implies(z3.And(0 <= i, i < self.next), self.chunk(i) != NULL),
            z3.Implies(z3.And(self.next <= i, i < self.chunk_len), self.chunk(i) == NULL),
            z3.Or(self.chunk(i) == NULL, self.chunk(i) >= 0),
        )

    def is_frame(self, k: Term) -> Term:
        return z3.And(0 <= k, k < self.n_frames)

    def is_slot(self, k: Term, i: Term) -> Term:
        return z3.And(self.is_frame(k), self.wasm(k), 0 <= i, i < self.n_slots(k))

    def i8_at(self, k: Term, i: Term, variant: Variant) -> Term:
        if variant.mutant == DROP_ROOTS_IN_TABLE:
            return z3.BoolVal(True)
        return z3.Implies(z3.And(self.is_slot(k, i), self.slot(k, i) == self.rho), self.in_table())

    def stack_map_at(self, k: Term, i: Term, variant: Variant) -> Term:
        """The stack-map contract (SM) at one slot, with the mutant's exemption."""
        word = self.slot(k, i)
        exempt: Term = z3.BoolVal(False)
        if variant.mutant == CVE_2022_31146:
            low = self.lower(k, i)
            exempt = z3.And(self.exempt(k, i), 0 <= low, low < i, self.slot(k, low) >= 0)
        elif variant.mutant == CVE_2022_24791:
            exempt = z3.And(k >= 1, self.wasm(k - 1))
        return z3.Implies(
            self.is_slot(k, i),
            z3.And(
                z3.Implies(z3.And(word >= 0, z3.Not(exempt)), self.mapped(k, i)),
                z3.Implies(self.mapped(k, i), word != SCALAR),
                word >= SCALAR,
            ),
        )

    def monotone_sp(self, a: Term, b: Term) -> Term:
        """W: frames youngest first at rising stack pointers."""
        return z3.Implies(z3.And(0 <= a, a < b, b < self.n_frames), self.sp(a) < self.sp(b))

    def witness(self) -> Term:
        """A slot of a Wasm frame younger than the canary holds ρ."""
        return z3.And(
            self.stack_canary_set,
            self.is_slot(self.jw, self.iw),
            self.slot(self.jw, self.iw) == self.rho,
            self.sp(self.jw) < self.stack_canary,
        )

    def covered(self, k: Term, i: Term, cur: Cell) -> Term:
        """Every witness slot the walk has passed made ρ a precise root."""
        passed = z3.Or(self.jw < k, z3.And(self.jw == k, self.iw < i))
        return z3.Implies(z3.And(self.witness(), passed), cur.precise)


@dataclass(frozen=True)
class InductiveLemma:
    name: str
    text: str
    premises: list[Term]
    conclusion: Term
    describe: Callable[[z3.ModelRef], str]


def lemmas(variant: Variant, debug: bool) -> list[InductiveLemma]:
    w = World.fresh()
    mutant = variant.mutant
    base = w.base(variant)
    pre = w.pre
    k, i = z3.Int("k"), z3.Int("i")
    cur = _cell("cur")
    walked = _cell("walked")
    inv = walk_invariant(pre, cur, w.in_table())
    out: list[InductiveLemma] = []

    def add(
        name: str, text: str, premises: list[Term], conclusion: Term, cells: list[tuple[str, Cell]]
    ) -> None:
        out.append(
            InductiveLemma(name, text, [*base, *premises], conclusion, lambda m: _describe(w, m, cells))
        )

    add(
        "walk-start",
        "before the walk, ρ's cell satisfies the walk invariant",
        [],
        walk_invariant(pre, pre, w.in_table()),
        [],
    )

    word = w.slot(k, i)
    on = z3.And(w.mapped(k, i), word != NULL)
    nxt = insert_precise_stack_root(cur, z3.And(on, word == w.rho), mutant)
    no_assertion = z3.Implies(on, word != SCALAR)
    if debug:
        no_assertion = z3.And(no_assertion, z3.Implies(z3.And(on, word == w.rho), w.in_table()))
    add(
        "walk-word",
        "insert_precise_stack_root of any mapped word of a visited Wasm frame keeps the walk "
        "invariant and the coverage of ρ's slots, and fires no assertion (I8, SM)",
        [
            w.stack_canary_set,
            w.is_slot(k, i),
            inv,
            w.covered(k, i, cur),
            w.i8_at(k, i, variant),
            w.stack_map_at(k, i, variant),
        ],
        z3.And(walk_invariant(pre, nxt, w.in_table()), w.covered(k, i + 1, nxt), no_assertion),
        [("before", cur), ("after", nxt)],
    )

    slots_done = z3.If(w.wasm(k), w.n_slots(k), 0)
    found_here = z3.And(k >= 1, found_canary_at(w.sp(k - 1), w.stack_canary, w.sp(k)))
    add(
        "walk-frame",
        "leaving frame k keeps the coverage; if the canary is found at k, every Wasm frame "
        "younger than the canary was visited (W: rising sps)",
        [w.is_frame(k), inv, w.covered(k, slots_done, cur), w.monotone_sp(k, w.jw)],
        z3.And(
            w.covered(k + 1, 0, cur),
            z3.Implies(z3.And(found_here, w.witness()), cur.precise),
        ),
        [("cell", cur)],
    )

    cleared = clear_precise_root(walked)
    add(
        "clear",
        "the canary-not-found branch drops every precise root: counts are as before gc (I2)",
        [walk_invariant(pre, walked, w.in_table())],
        cleared_invariant(pre, cleared),
        [("walked", walked), ("after", cleared)],
    )

    add(
        "sweep-start",
        "after the walk, the chunk invariant holds with all of ρ's chunk entries still to drop",
        [walk_invariant(pre, walked, w.in_table())],
        chunk_invariant(pre, walked, walked, w.other_owners, w.rem(0)),
        [("walked", walked)],
    )

    entry = w.chunk(i)
    taken = i < num_filled_in_bump_chunk(w.chunk_len, w.next)
    dropped = drop(cur, z3.And(taken, entry != NULL, entry == w.rho))
    add(
        "sweep-slot",
        "dropping chunk slot i keeps the chunk invariant (I6)",
        [
            0 <= i,
            taken,
            chunk_invariant(pre, walked, cur, w.other_owners, w.rem(i)),
            w.i6_at(i),
            *w.rem_step(i),
        ],
        chunk_invariant(pre, walked, dropped, w.other_owners, w.rem(i + 1)),
        [("walked", walked), ("before", cur), ("after", dropped)],
    )

    add(
        "sweep-leftover",
        "after the filled slots are cleared no slot holds a ref: the sweep's assertion holds (I6)",
        [z3.Not(taken), 0 <= i, i < w.chunk_len, w.i6_at(i)],
        entry == NULL,
        [],
    )

    old = sweep_old_root(cur)
    add(
        "sweep-end",
        "dropping the old over-approximated roots leaves ρ with its other owners and its new set entry",
        [chunk_invariant(pre, walked, cur, w.other_owners, w.rem(w.next))],
        swept_invariant(pre, walked, old, w.other_owners),
        [("walked", walked), ("before", cur), ("after", old)],
    )

    # The exits of the walk: `found` (and then the coverage of walk-frame), or not found.
    found = z3.Bool("found")
    final = _cell("final")
    sweeps = z3.Or(found, z3.BoolVal(mutant == SWEEP_WITHOUT_CANARY))
    swept = z3.Or(z3.Not(w.stack_canary_set), sweeps)
    exits = [
        walk_invariant(pre, walked, w.in_table()),
        z3.Implies(z3.Not(w.stack_canary_set), z3.And(same_cell(walked, pre), z3.Not(found))),
        z3.Implies(z3.And(found, w.witness()), walked.precise),
        z3.Implies(swept, swept_invariant(pre, walked, final, w.other_owners)),
        z3.Implies(z3.Not(swept), cleared_invariant(pre, final)),
        w.i8_at(w.jw, w.iw, variant),
    ]
    entries_after = z3.If(swept, 0, w.rem(0))
    owners_after = w.other_owners + entries_after + z3.If(final.over, 1, 0) + z3.If(final.precise, 1, 0)
    properties = {
        "A": ("ρ in a slot of a Wasm frame younger than the canary is not freed (I1)",
              z3.Implies(w.witness(), z3.Not(final.freed))),
        "B": ("a live ρ's count equals its owners after gc (I2)",
              z3.Implies(z3.Not(final.freed), final.ref_count == owners_after)),
        "C": ("canary not found: ρ is neither freed nor recounted",
              z3.Implies(z3.And(w.stack_canary_set, z3.Not(found)),
                         z3.And(final.freed == pre.freed, final.ref_count == pre.ref_count))),
        "D": ("no use-after-free or double drop of ρ (I3, I4)",
              z3.And(final.use_after_free == 0, final.double_drop == 0)),
    }  # fmt: skip
    for pid, (text, formula) in properties.items():
        add(pid, text, exits, formula, [("walked", walked), ("after gc", final)])
    return out


def _describe(w: World, m: z3.ModelRef, cells: list[tuple[str, Cell]]) -> str:
    def cell(c: Cell) -> str:
        return (
            f"count={as_int(m, c.ref_count)} freed={as_bool(m, c.freed)} "
            f"precise={as_bool(m, c.precise)} over={as_bool(m, c.over)}"
        )

    k, i = z3.Int("k"), z3.Int("i")
    parts = [
        f"ρ={as_int(m, w.rho)}",
        f"pre: {cell(w.pre)} others={as_int(m, w.other_owners)} rem(0)={as_int(m, w.rem(0))}",
        f"k={as_int(m, k)} i={as_int(m, i)} slot[k][i]={as_int(m, w.slot(k, i))} "
        f"mapped={as_bool(m, w.mapped(k, i))}",
        f"witness frame {as_int(m, w.jw)} slot {as_int(m, w.iw)}: "
        f"word={as_int(m, w.slot(w.jw, w.iw))} mapped={as_bool(m, w.mapped(w.jw, w.iw))}",
    ]
    parts += [f"{name}: {cell(c)}" for name, c in cells]
    return "; ".join(parts)


#: What the lemmas assume, at the indices each step touches (I7 is the no-canary assertion itself;
#: `gc_okay` needs no assumption here: a refused gc changes nothing).
UNBOUNDED_ASSUMPTIONS = ("W", "I1", "I2", "I6", "I7", "I8", "SM")


def prove_unbounded(
    variant: Variant = VARIANTS[None], debug: bool = True, timeout_ms: int = DEFAULT_TIMEOUT_MS
) -> list[Verdict]:
    """One verdict per inductive lemma; all proven means A-D hold for states of any size."""
    build = "debug" if debug else "release"
    out = []
    for lemma in lemmas(variant, debug):
        outcome = check_valid(lemma.premises, lemma.conclusion, timeout_ms, nonvacuous=True)
        out.append(
            verdict(
                f"sweep.unbounded.{lemma.name} ({build})",
                outcome,
                lemma.describe,
                tuple(a for a in UNBOUNDED_ASSUMPTIONS if a != "I8" or variant.mutant != DROP_ROOTS_IN_TABLE),
                lemma.text,
            )
        )
    return out
