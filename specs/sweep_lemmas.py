"""The per-ref bookkeeping of `gc`, stated once.

These are the loop invariants of the seed's `gc` for one ref: the bounded proof uses them as cuts
between consecutive steps of the unrolled encoding (each cut is itself proven), and the unbounded
proof uses them as the invariants of its inductive steps. `pre` is the ref's cell before `gc`,
`walked` its cell after the stack walk, `cur` the cell at the point the invariant describes.
"""

from __future__ import annotations

import z3

from externref_harness.specs.sweep_encoding import Cell, Term


def _one_if(b: Term) -> Term:
    return z3.If(b, 1, 0)


def _no_fault(c: Cell) -> Term:
    return z3.And(c.use_after_free == 0, c.double_drop == 0)


def walk_invariant(pre: Cell, cur: Cell, in_table: Term) -> Term:
    """During the walk a live ref's count is its count before gc, plus one once it is a precise
    root (the clone of its first occurrence; later ones are cloned and dropped again); a freed ref
    is never touched; only refs of the table become roots; nothing faults."""
    return z3.And(
        z3.Implies(
            z3.Not(pre.freed),
            z3.And(z3.Not(cur.freed), cur.ref_count == pre.ref_count + _one_if(cur.precise)),
        ),
        z3.Implies(pre.freed, z3.And(cur.freed, cur.ref_count == pre.ref_count)),
        z3.Implies(cur.precise, in_table),
        cur.over == pre.over,
        _no_fault(cur),
    )


def kept(other_owners: Term, walked: Cell) -> Term:
    """What a live ref's count comes down to once the sweep has dropped the table's old entries."""
    return other_owners + _one_if(walked.precise)


def _counted_down(pre: Cell, cur: Cell, rest: Term) -> Term:
    """A live ref's count is `rest`; it is freed (count 0) exactly when `rest` reached 0."""
    return z3.Implies(
        z3.Not(pre.freed),
        z3.Or(
            z3.And(z3.Not(cur.freed), cur.ref_count == rest),
            z3.And(cur.freed, cur.ref_count == 0, rest == 0),
        ),
    )


def chunk_invariant(pre: Cell, walked: Cell, cur: Cell, other_owners: Term, remaining: Term) -> Term:
    """While the chunk is swept, `remaining` entries of the ref are still to be dropped: the count
    is what will be kept plus those plus the old set's entry; it reaches 0 (and the ref is freed)
    only when nothing is kept and nothing remains."""
    rest = kept(other_owners, walked) + _one_if(pre.over) + remaining
    return z3.And(
        _counted_down(pre, cur, rest),
        z3.Implies(pre.freed, z3.And(cur.freed, cur.ref_count == pre.ref_count, remaining == 0)),
        cur.precise == walked.precise,
        cur.over == pre.over,
        _no_fault(cur),
    )


def swept_invariant(pre: Cell, walked: Cell, cur: Cell, other_owners: Term) -> Term:
    """After `sweep`: the precise roots are the new over-approximated set, and a live ref keeps
    exactly its other owners plus that set's entry; it is freed only if it kept nothing."""
    return z3.And(
        _counted_down(pre, cur, kept(other_owners, walked)),
        z3.Implies(pre.freed, z3.And(cur.freed, cur.ref_count == pre.ref_count)),
        cur.over == walked.precise,
        z3.Not(cur.precise),
        _no_fault(cur),
    )


def cleared_invariant(pre: Cell, cur: Cell) -> Term:
    """After the canary-not-found branch: every clone of the walk was dropped again."""
    return z3.And(
        cur.ref_count == pre.ref_count,
        cur.freed == pre.freed,
        cur.over == pre.over,
        z3.Not(cur.precise),
        _no_fault(cur),
    )
