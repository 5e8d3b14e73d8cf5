"""Which moves a run makes: coverage, and a run's chain planned on the model alone.

`exhaustive.execute` runs a lockstep from the initial state along `plan_chain`'s moves: the tree
path to a class with uncovered moves, then uncovered moves, each from the class the last one
reached, and short walks through covered moves to the nearest class with uncovered ones:

    root ──path(c)──▶ x_c ──uncovered──▶ y ──uncovered──▶ z ──covered──▶ ·──covered──▶ w ──uncovered──▶ …
                                                          (a walk of at most WALK_RADIUS moves to the
                                                           nearest class with uncovered moves; else stop)

The states a run reaches after the first step need not be the plan's concrete states of their
classes (a clone then its drop leaves a tombstone: same class, other handle numbers), so
`corresponding_move` makes the plan's move i of class d from such a state: the plan's move with its
handles and raw pointers renamed to those at the same live positions, checked not to be refused
and to lead to the class the plan's move i leads to, or the run stops there. Planning is the
parent's share of every step of the run (a breadth-first search per walk, not made again from a
class where one found nothing: `Coverage.stranded`), so this module is compiled with the model
(`compiled.COMPILED_MODULES`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from externref_harness.exhaustive.plan import Plan
from externref_harness.model.moves import renamed_indices
from externref_harness.model.observation import Misuse, Observation
from externref_harness.model.ops import HANDLE_FIELDS, RAW_FIELDS, Op
from externref_harness.model.state import State
from externref_harness.model.transition import step

#: How far a run walks through covered moves to reach a class with uncovered ones, instead of
#: ending (a new run's tree path is about as long as the class is deep).
WALK_RADIUS = 4
#: ... and gives up looking once it has seen this many classes (the search is Python, per run).
WALK_SEARCH_LIMIT = 300


class Coverage:
    """Which transitions are covered: one byte per (class, move), offsets per class."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.offset = plan.offsets
        self.done = bytearray(plan.transitions)
        #: The lowest move index of each class that may still be uncovered.
        self.cursor = [0] * plan.classes
        #: How many moves of each class are not covered yet.
        self.left = list(plan.moves)
        self.covered = 0
        #: Classes from which the last walk search (`_way_to_uncovered`) found no uncovered move.
        #: Such a search finds none again while moves only become covered: it sees the same
        #: classes in the same order, none with a move left. So a run that ends in one of these
        #: classes does not search again (at `--refs 2 --frames 1`, 8,986 runs end in 983
        #: classes). Cleared when a move is taken back (`unmark`).
        self.stranded: set[int] = set()

    def mark(self, c: int, move: int) -> bool:
        """Count the move as covered; whether it was not already."""
        i = self.offset[c] + move
        if self.done[i]:
            return False
        self.done[i] = 1
        self.covered += 1
        self.left[c] -= 1
        return True

    def unmark(self, c: int, move: int) -> None:
        i = self.offset[c] + move
        if self.done[i]:
            self.stranded.clear()
            self.done[i] = 0
            self.covered -= 1
            self.left[c] += 1
            self.cursor[c] = min(self.cursor[c], move)

    def next_uncovered(self, c: int) -> int | None:
        base, n = self.offset[c], self.plan.moves[c]
        i = self.cursor[c]
        while i < n and self.done[base + i]:
            i += 1
        self.cursor[c] = i
        return i if i < n else None


#: A step of a run's chain: its class and move, the operation, whether it is the first to cover
#: the move, and the model's step (the state after it and its observation: the lockstep looks
#: them up instead of stepping the model again, `Lockstep.foresee`).
Planned = tuple[int, int, Op, bool, State, Observation]


def plan_chain(plan: Plan, coverage: Coverage, c: int) -> tuple[list[Planned], State]:
    """From class `c`'s concrete state: the steps of uncovered moves, each from the class the last
    one reached, and of walks through covered moves to a class with uncovered ones (at most
    `WALK_RADIUS` moves); and the state they end in. Planned on the model alone; the moves it
    takes are counted as covered (`execute` takes back those of a run that does not pass)."""
    state = plan.states[c]
    out: list[Planned] = []

    def take(at: int, move: int, made: tuple[Op, State, Observation]) -> int:
        nonlocal state
        op, state, observed = made
        out.append((at, move, op, coverage.mark(at, move), state, observed))
        return plan.target(at, move)

    while coverage.next_uncovered(c) is not None:
        move = _next_move(plan, coverage, c)
        made = corresponding_move(plan, c, move, state)
        if made is None:
            break  # not the class's state, nor one whose moves correspond to it: a new run
        c = take(c, move, made)
        if coverage.next_uncovered(c) is not None:
            continue
        # Every move of this class is covered: walk (covered moves) to a nearby class with
        # uncovered ones, when one is closer than a new run's tree path would be.
        way = _way_to_uncovered(plan, coverage, c, WALK_RADIUS)
        if way is None:
            break
        for at, move in way:
            made = corresponding_move(plan, at, move, state)
            if made is None:
                return out, state
            c = take(at, move, made)
    return out, state


def _way_to_uncovered(plan: Plan, coverage: Coverage, c: int, radius: int) -> list[tuple[int, int]] | None:
    """The (class, move) steps of a shortest way, at most `radius` moves, from class `c` to a class
    with an uncovered move; None if there is none that close (remembered in `Coverage.stranded`:
    always searched with the same `radius`, `WALK_RADIUS`)."""
    if c in coverage.stranded:
        return None
    targets, offsets, moves, left = plan.targets, plan.offsets, plan.moves, coverage.left
    came: dict[int, tuple[int, int]] = {c: (c, -1)}
    level = [c]
    for _ in range(radius):
        if len(came) > WALK_SEARCH_LIMIT:
            coverage.stranded.add(c)
            return None  # nothing uncovered near a well-covered region: a new run is cheaper
        grown: list[int] = []
        for at in level:
            base = offsets[at]
            for move, to in enumerate(targets[base : base + moves[at]]):
                if to in came:
                    continue
                came[to] = (at, move)
                if left[to]:
                    way = []
                    while to != c:
                        at, move = came[to]
                        way.append((at, move))
                        to = at
                    way.reverse()
                    return way
                grown.append(to)
        level = grown
    coverage.stranded.add(c)
    return None


def _next_move(plan: Plan, coverage: Coverage, c: int) -> int:
    """An uncovered move of class `c`: one into a class with uncovered moves of its own if there
    is one (the run goes on there), else the first."""
    first = coverage.next_uncovered(c)
    assert first is not None
    base = coverage.offset[c]
    for move in range(first, plan.moves[c]):
        if not coverage.done[base + move] and coverage.left[plan.target(c, move)]:
            return move
    return first


def corresponding_move(plan: Plan, c: int, move: int, state: State) -> tuple[Op, State, Observation] | None:
    """Move `move` of class `c` as made from `state`, a concrete state of class `c`, and the model's
    step by it (the state it leads to, of the class the plan's move leads to, and what the model
    observed); None when it cannot be told which of `state`'s moves that is.

    The plan's moves of `c` are those of its concrete state `plan.states[c]`, and from that state
    each leads where the plan says by construction (`build_plan` made that very step). Another
    state of the class differs from it by the symmetry (`explore.symmetry`): renamed refs,
    tombstones, chunk order, dead stack maps. `flat_moves` names handles and raw pointers by
    position among the live ones and everything else (slots, globals, frames, layouts) alike in
    both, so the corresponding move is the plan's with each handle and raw pointer renamed to the
    one at the same live position in `state` (`_renamed`): the move `flat_moves` lists at the same
    index, without listing them all (`tests/exhaustive` checks that it is). That it corresponds is
    checked, not assumed: the model must not refuse it (`Misuse`: a refused move leaves the state
    as it was, which a move that loops would not tell apart) and it must lead to the class the
    plan's move leads to; otherwise the run stops there and a new one reaches the class by its tree
    path."""
    search = plan.search
    base = plan.states[c]
    op = plan.ops[c][move]
    if state is base:
        after, observed = step(search.cfg, state, op)
        return op, after, observed
    made = _renamed(op, base, state)
    if made is None:
        return None
    successor, observed = step(search.cfg, state, made)
    if type(observed.result) is Misuse:
        return None
    if plan.index.get(search.fingerprint(search.key(successor))) != plan.target(c, move):
        return None
    return made, successor, observed


#: Renamed moves, by (move, its new handle and raw pointer fields): a move is a frozen value, and
#: building one (an interpreted dataclass) costs more than the look-up.
_RENAMED: dict[tuple[Op, tuple[object, ...]], Op] = {}


def _renamed(op: Op, base: State, state: State) -> Op | None:
    """`op`, a move of `base`, with its handles and raw pointers (`ops.HANDLE_FIELDS`,
    `ops.RAW_FIELDS`) renamed to those at the same live position in `state`; None if `state` has
    none there."""
    kind = type(op)
    handle_fields = HANDLE_FIELDS.get(kind, ())
    raw_fields = RAW_FIELDS.get(kind, ())
    if not handle_fields and not raw_fields:
        return op
    changes: dict[str, object] = {}
    for fields, before, after in (
        (handle_fields, base.handles, state.handles),
        (raw_fields, base.raws, state.raws),
    ):
        if not fields:
            continue
        renamed = renamed_indices(op, fields, _live_renaming(before, after).get)
        if renamed is None:
            return None
        changes.update(renamed)
    key = (op, tuple(changes.values()))
    made = _RENAMED.get(key)
    if made is None:
        made = _RENAMED[key] = replace(op, **changes)
    return made


def _live_renaming(before: Iterable[object | None], after: Iterable[object | None]) -> dict[int, int]:
    """Position in `before` to position in `after` of the k-th live (not None) entry, for each k."""
    live_after = [i for i, x in enumerate(after) if x is not None]
    out: dict[int, int] = {}
    k = 0
    for i, x in enumerate(before):
        if x is not None:
            if k < len(live_after):
                out[i] = live_after[k]
            k += 1
    return out
