"""Ref identity, judged through behaviour: what `eq`, `cmp` and `hash` must answer.

The seed's `VMExternRef` is a pointer, and its identity is the pointer's: `eq` compares the
words, `cmp` orders them, `hash` feeds the word to the hasher. Under `opaque-refs` a ref word is a
handle, and a runtime may order and hash its refs by whatever it likes (the box's address, an
index, a serial number); what it may not do is break identity. The rules, per step that runs
`Eq` or `Cmp` (the host also asks for both refs' hashes then):

    rule                                             seed                   opaque-refs
    ───────────────────────────────────────────────  ─────────────────────  ─────────────────────
    eq(a, b) iff a and b are the same ref (word)     observed.identity      observed.identity
    cmp(a, b) == 0 iff eq(a, b)                      observed.cmp-order     observed.identity
    cmp is the words' numeric order                  observed.cmp-order     ruled out
    cmp a total order, stable while both live        (implied)              observed.identity
    a ref's hash never changes while it lives        observed.identity      observed.identity

Equal refs have equal hashes because a ref has one word and one hash for its whole life. Every
rule is keyed by model ids, never by words: a handle may be given out again once its ref is freed
(`projection.RefMap`), and the new ref owes nothing to the old one's hash or order. The order of
refs that are no longer live is kept: any three refs compared pairwise were all live at one
moment (their lifetimes pairwise overlap), so a cycle through a dead ref is a real violation.
"""

from __future__ import annotations

from externref_harness.impl.interface import Probe, StepOutcome
from externref_harness.lockstep.memory_checks import Problem
from externref_harness.lockstep.projection import RefMap
from externref_harness.model import ops


def _sign(x: int) -> int:
    return (x > 0) - (x < 0)


class IdentityChecks:
    """One run's identity rules, across its steps: each ref's first hash and, under
    `opaque-refs`, every order `cmp` has shown (as edges `smaller -> larger` between model ids)."""

    def __init__(self, opaque: bool) -> None:
        self.opaque = opaque
        self._hashes: dict[int | str, int] = {}
        #: Model id -> the ids `cmp` said are larger.
        self._larger: dict[int, set[int]] = {}

    def problems(self, op: ops.Op, outcome: StepOutcome, probe: Probe, refs: RefMap) -> list[Problem]:
        if outcome.result[0] != "ok" or not isinstance(op, ops.Eq | ops.Cmp):
            return []
        a, b = probe.handles[op.a], probe.handles[op.b]
        if a is None or b is None:
            return [Problem("observed.identity", f"{op} answered for a dropped handle")]
        got = outcome.result[1]
        out: list[Problem] = []
        if isinstance(op, ops.Eq):
            if got != (a == b):
                out.append(Problem("observed.identity", f"{op} answered {got!r}; the words say {a == b!r}"))
        elif not self.opaque:
            expected = _sign(a - b)
            if got != expected:
                text = f"{op} answered {got!r}; the words' order says {expected!r}"
                out.append(Problem("observed.cmp-order", text))
        else:
            out += self._order(op, got, refs.ref(a), refs.ref(b))
        for word, h in probe.hashes:
            r = refs.ref(word)
            first = self._hashes.setdefault(r, h)
            if first != h:
                text = f"{op}: the hash of ref {r} changed from {first:#x} to {h:#x}"
                out.append(Problem("observed.identity", text))
        return out

    def _order(self, op: ops.Cmp, got: int, a: int | str, b: int | str) -> list[Problem]:
        """`cmp` under `opaque-refs`: 0 exactly for the same ref, and one total order over the run."""
        if (got == 0) != (a == b):
            return [Problem("observed.identity", f"{op} answered {got}, yet eq(a, b) is {a == b}")]
        if a == b or not isinstance(a, int) or not isinstance(b, int):
            return []
        small, large = (a, b) if got < 0 else (b, a)
        if small in self._larger.get(large, ()):
            return [
                Problem(
                    "observed.identity",
                    f"{op}: cmp now puts ref {small} below ref {large}, earlier above it",
                )
            ]
        if large in self._larger.get(small, ()):
            return []
        cycle = self._path(large, small)
        self._larger.setdefault(small, set()).add(large)
        if cycle is None:
            return []
        chain = " < ".join(str(r) for r in (small, *cycle))
        return [Problem("observed.identity", f"{op}: cmp is not a total order: refs {chain}")]

    def _path(self, start: int, goal: int) -> list[int] | None:
        """A chain `start < ... < goal` of orders already shown, if there is one."""
        came: dict[int, int | None] = {start: None}
        todo = [start]
        while todo:
            r = todo.pop()
            if r == goal:
                path = [r]
                while (prev := came[path[-1]]) is not None:
                    path.append(prev)
                return path[::-1]
            for nxt in self._larger.get(r, ()):
                if nxt not in came:
                    came[nxt] = r
                    todo.append(nxt)
        return None
