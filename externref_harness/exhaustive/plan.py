"""The bounded model graph as concrete operation sequences: what `--exhaustive` executes.

The explorer (`explore.partition`) expands one canonical representative per symmetry class. A
representative need not be a state any operation sequence reaches (its refs are renamed, its chunk
sorted), so the implementation cannot be put into it. `build_plan` searches the same classes,
breadth-first, with the same bounds, constraint and depth limit, but keeps for each class the first
*concrete* state that reached it (from `State.initial`, by real operations) and expands that one:

    class c ── its concrete state x_c = the state after path(c) ── moves(x_c) = the transitions of c

so every transition it counts is a move of a concrete state that `path(c)` reaches exactly, and the
implementation can be driven there. Moves are symmetric within a class (`explore.symmetry`: a
bisimulation), so a class has as many moves from its concrete state as from its representative and
the total equals the explorer's transition count; `tests/exhaustive` checks that it does.

The plan keeps a spanning tree (each class's parent class and the index of the move that first
reached it, breadth-first, so a path is a shortest one) and, per class, its moves and the class each
leads to. The executor (`exhaustive.execute`) re-derives each concrete state by running the path on
the model, in lockstep with the implementation, and walks the class graph from there.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

from externref_harness.explore.partition import Search
from externref_harness.explore.symmetry import live_handles
from externref_harness.model.ops import Op
from externref_harness.model.state import State
from externref_harness.model.transition import step
from externref_harness.specs.invariants import first_violation

#: `Plan.parent` of the root class.
NO_PARENT = -1


@dataclass(frozen=True)
class Plan:
    """The spanning tree of a bounded search over concrete states (breadth-first class numbers).

    A class that breaks an invariant is not expanded (only a model bug makes one; the run that
    reaches it fails there), so a buggy model's space stays as bounded as the seed's.

    Invariants: class 0 is the initial state; `parent[c] < c` and `depth[c] == depth[parent[c]] + 1`;
    `ops[c]` are the moves of class c's concrete state, `moves[c] == len(ops[c])` its number of
    transitions (0 for a class the constraint or the depth limit leaves unexpanded), and
    `targets[offsets[c] + i]` the class its move i leads to.
    """

    search: Search
    #: The fingerprint of each class's representative (`Search.key`, `Search.fingerprint`).
    fingerprints: array  # type: ignore[type-arg]
    parent: array  # type: ignore[type-arg]
    #: The index, among its parent's moves, of the move that first reached each class.
    via: array  # type: ignore[type-arg]
    depth: array  # type: ignore[type-arg]
    moves: array  # type: ignore[type-arg]
    transitions: int
    #: Classes checked but not expanded: beyond the live-handle constraint, at the depth limit.
    constrained: int
    depth_cut: int
    #: Each class's concrete state (the one its path reaches, whose moves are its transitions).
    states: tuple[State, ...]
    #: Class number by representative fingerprint.
    index: dict[int, int]
    #: Classes that break an invariant (a model bug): not expanded.
    violating: int
    #: Each class's moves, as made from its concrete state (empty for an unexpanded class).
    ops: tuple[tuple[Op, ...], ...]
    #: The class each transition leads to: `targets[offsets[c] + i]` for move i of class c.
    targets: array  # type: ignore[type-arg]
    #: Where each class's moves start in `targets` (`offsets[c + 1] - offsets[c] == moves[c]`).
    offsets: array  # type: ignore[type-arg]

    @property
    def classes(self) -> int:
        return len(self.parent)

    def path(self, c: int) -> list[tuple[int, int]]:
        """The (class, move index) pairs of the tree path from the root to class `c`."""
        out: list[tuple[int, int]] = []
        while self.parent[c] != NO_PARENT:
            out.append((self.parent[c], self.via[c]))
            c = self.parent[c]
        out.reverse()
        return out

    def target(self, c: int, move: int) -> int:
        """The class move `move` of class `c` leads to."""
        return int(self.targets[self.offsets[c] + move])

    def ops_to(self, c: int) -> list[Op]:
        """The real operations that reach class `c`'s concrete state from `State.initial`."""
        return [self.ops[at][move] for at, move in self.path(c)]


def build_plan(search: Search) -> Plan:
    """Every class of `search`, each expanded from the first concrete state reaching it."""
    cfg = search.cfg
    limit = search.depth
    max_live = search.max_live_handles
    root = State.initial(cfg)
    root_fp = search.fingerprint(search.key(root))
    seen: dict[int, int] = {root_fp: 0}
    fps = array("Q", [root_fp])
    parent, via, depth = array("i", [NO_PARENT]), array("i", [0]), array("i", [0])
    frontier: list[tuple[int, State]] = [(0, root)]
    states: list[State] = [root]
    constrained = depth_cut = violating = 0
    targets = array("i")
    class_ops: list[tuple[Op, ...]] = []
    level = 0
    while frontier:
        grown: list[tuple[int, State]] = []
        for c, state in frontier:
            if limit is not None and level >= limit:
                depth_cut += 1
                class_ops.append(())
                continue
            if first_violation(cfg, state) is not None:
                # A seeded bug of the model: the run reaching it fails there; beyond it the
                # space need not be bounded (the explorer stops at the first one).
                violating += 1
                class_ops.append(())
                continue
            if live_handles(state) > max_live:
                constrained += 1
                class_ops.append(())
                continue
            moves = tuple(search.moves(state))
            class_ops.append(moves)
            for i, op in enumerate(moves):
                succ = step(cfg, state, op)[0]
                fp = search.fingerprint(search.key(succ))
                known = seen.get(fp)
                targets.append(len(parent) if known is None else known)
                if known is not None:
                    continue
                seen[fp] = len(parent)
                fps.append(fp)
                parent.append(c)
                via.append(i)
                depth.append(level + 1)
                grown.append((len(parent) - 1, succ))
                states.append(succ)
        frontier = grown
        level += 1
    n_moves = array("i", [len(m) for m in class_ops])
    offsets = array("q", [0])
    for n in n_moves:
        offsets.append(offsets[-1] + n)
    return Plan(
        search,
        fps,
        parent,
        via,
        depth,
        n_moves,
        len(targets),
        constrained,
        depth_cut,
        tuple(states),
        seen,
        violating,
        tuple(class_ops),
        targets,
        offsets,
    )
