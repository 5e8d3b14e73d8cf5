"""The explorer's search core: one breadth-first level over the states one process owns.

`Search` says what is searched; `Partition` is the part of it one process owns (the fingerprints
`fingerprints.owner` gives it) and does the work of every transition: take each move of each
frontier state (`Search.moves_of`, in order), step the model, count the op and the paths it took,
canonicalise the successor (`symmetry.canonical`), fingerprint it, keep it if it is new and owned
here (else hand it to its owner), and check every invariant of each new state. `explore` drives
one partition; `workers` drives several, one per process, with exactly the same counts.

This is the explorer's hot path, so the module is compiled, and written for that:
- the model, the canonical form, the seen-set and the invariants are called directly, never
  through a `functools.partial` or a patched module global (a compiled caller does not see one);
  the two seams a test needs, the moves of a state and the fingerprint of a state, are explicit
  fields of `Search` that default to the real functions, and the real ones are still called
  directly;
- op kinds are counted per run of equal kinds in a state's move list (moves come grouped by
  kind), path labels only for the rare step that reports a path, and a successor owned by
  another partition allocates its hand-over record only the first time it is seen in a level.
The counts are exactly those of taking, counting and checking one transition at a time.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from externref_harness.explore.fingerprints import ROOT_MOVE, FingerprintStore, fingerprint, owner
from externref_harness.explore.symmetry import canonical, live_handles
from externref_harness.model.moves import Bounds, flat_moves
from externref_harness.model.observation import Misuse, Observation
from externref_harness.model.ops import Op
from externref_harness.model.state import Config, State
from externref_harness.model.transition import step
from externref_harness.search.path_labels import path_labels, reports_paths
from externref_harness.specs.invariants import first_violation

#: The well-formed moves of a state, in the order the search takes them (`model.moves.flat_moves`).
MovesFn = Callable[[Config, Bounds, State], list[Op]]
#: A state's nonzero 64-bit fingerprint (`fingerprints.fingerprint`).
FingerprintFn = Callable[[object], int]


@dataclass(frozen=True, slots=True)
class Search:
    """One bounded search: the model's config, the move bounds and a depth limit (None: none).

    `moves_of` and `fingerprint_of` are the transition relation's enumerator and the seen-set's
    hash: the real ones unless a test seeds a bug through them (a broken enumerator, a weak
    fingerprint), which every part of the search, the trace rebuild included, then uses.
    """

    cfg: Config
    bounds: Bounds
    depth: int | None = None
    symmetry: bool = True
    moves_of: MovesFn = flat_moves
    fingerprint_of: FingerprintFn = fingerprint

    def __post_init__(self) -> None:
        if self.depth is not None and self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")

    @property
    def max_live_handles(self) -> int:
        """The state constraint: a state holding more live handles is checked, not expanded.

        `WasmReturn` to the host hands out a new handle whatever `Bounds.handles` says; this is
        the most any guarded move creates.
        """
        return self.bounds.handles + self.bounds.args

    def key(self, state: State) -> State:
        """The state the search stores for `state`: its representative, or itself without symmetry."""
        return canonical(self.cfg, state) if self.symmetry else state

    def moves(self, state: State) -> list[Op]:
        if self.moves_of is flat_moves:
            return flat_moves(self.cfg, self.bounds, state)
        return self.moves_of(self.cfg, self.bounds, state)

    def fingerprint(self, state: State) -> int:
        if self.fingerprint_of is fingerprint:
            return fingerprint(state)
        return self.fingerprint_of(state)


class Found:
    """Where a violation was seen: a new state `fp` that breaks an invariant, or (when `refused`
    is a move index) the state `fp` whose move of that index the model refused."""

    __slots__ = ("fp", "refused")

    def __init__(self, fp: int, refused: int | None = None) -> None:
        self.fp: Final = fp
        self.refused: Final = refused

    def __eq__(self, other: object) -> bool:
        if type(other) is not Found:
            return NotImplemented
        assert isinstance(other, Found)
        return self.fp == other.fp and self.refused == other.refused

    def __hash__(self) -> int:
        return hash((self.fp, self.refused))

    def __repr__(self) -> str:
        return f"Found(fp={self.fp!r}, refused={self.refused!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Found, (self.fp, self.refused))


#: What crosses between partitions: (fingerprint, parent fingerprint, move index, state).
Item = tuple[int, int, int, State]
#: Successors owned by another partition: fingerprint to the first (parent, move, state) reaching it.
Outbox = dict[int, tuple[int, int, State]]
#: Called every `TICK` expanded states with the number expanded so far; True stops the search.
Tick = Callable[[int], bool]
TICK: Final = 64


class Partition:
    """The part of a search one process owns: the fingerprints `owner` gives it, its frontier.

    Breadth-first, a level at a time: `expand` takes every move of every frontier state, keeps the
    successors it owns and returns the others by owner; `admit` stores successors handed over by
    other partitions; `advance` makes the states new in this level the next frontier. A single
    process search is one partition that owns everything.
    """

    def __init__(self, search: Search, index: int = 0, count: int = 1) -> None:
        self.search = search
        self.cfg = search.cfg
        self.index = index
        self.count = count
        self.store = FingerprintStore()
        self.frontier: list[tuple[int, State]] = []
        self.grown: list[tuple[int, State]] = []
        self.found: Found | None = None
        self.stopped = False
        self.unexpanded = 0
        self.transitions = 0
        self.constrained = 0
        self.op_counts: dict[str, int] = {}
        self.path_counts: dict[str, int] = {}
        self.root = search.key(State.initial(search.cfg))
        self.root_fp = search.fingerprint(self.root)
        if owner(self.root_fp, count) == index:
            self.admit(self.root_fp, 0, ROOT_MOVE, self.root)

    def admit(self, fp: int, parent: int, move: int, state: State) -> bool:
        """Store a successor if new, check it against every invariant, queue it for expansion."""
        if not self.store.add(fp, parent, move):
            return False
        self.grown.append((fp, state))
        if self.found is None and first_violation(self.cfg, state) is not None:
            self.found = Found(fp)
        return True

    def admit_all(self, items: list[Item]) -> None:
        for fp, parent, move, state in items:
            self.admit(fp, parent, move, state)

    def advance(self) -> int:
        self.frontier, self.grown = self.grown, []
        return len(self.frontier)

    def claim(self, offers: list[bytes]) -> list[bytes]:
        """Of the fingerprints each other partition offers (packed `array("Q")` bytes), those not
        stored here yet, each claimed from the first partition that offers it."""
        store = self.store
        claimed: set[int] = set()
        wanted: list[bytes] = []
        for offer in offers:
            fps = array("Q")
            fps.frombytes(offer)
            mine = array("Q")
            for fp in fps:
                if fp not in claimed and fp not in store:
                    claimed.add(fp)
                    mine.append(fp)
            wanted.append(mine.tobytes())
        return wanted

    @staticmethod
    def hand_over(outbox: Outbox, want: bytes) -> list[Item]:
        """The items of `outbox` its owner claimed (`claim`), in the order it claimed them."""
        fps = array("Q")
        fps.frombytes(want)
        items: list[Item] = []
        for fp in fps:
            parent, move, state = outbox[fp]
            items.append((fp, parent, move, state))
        return items

    def expand(self, tick: Tick) -> list[Outbox]:
        """Every move of every frontier state; stops at the first violation or when `tick` says so.

        Returns the successors owned by other partitions, one dict per partition (fingerprint to
        the first (parent, move, state) that reached it in this level).
        """
        search = self.search
        cfg = self.cfg
        bounds = search.bounds
        symmetry = search.symmetry
        real_moves = search.moves_of is flat_moves
        real_fingerprint = search.fingerprint_of is fingerprint
        count = self.count
        index = self.index
        max_live = search.max_live_handles
        store = self.store
        grown = self.grown
        frontier = self.frontier
        outboxes: list[Outbox] = [{} for _ in range(count)]
        counter = _Counter(self.op_counts, self.path_counts)
        try:
            done = 0
            for fp, state in frontier:
                if done and not done % TICK and tick(done):
                    self.stopped = True
                    self.unexpanded = len(frontier) - done
                    return outboxes
                done += 1
                if live_handles(state) > max_live:
                    self.constrained += 1
                    continue
                moves = (
                    flat_moves(cfg, bounds, state)
                    if real_moves
                    else search.moves_of(cfg, bounds, state)
                )
                move = 0
                for op in moves:
                    succ, obs = step(cfg, state, op)
                    counter.op(op)
                    if reports_paths(obs):
                        if type(obs.result) is Misuse:
                            self.found = Found(fp, move)
                            return outboxes
                        counter.paths(obs)
                    k = canonical(cfg, succ) if symmetry else succ
                    kfp = fingerprint(k) if real_fingerprint else search.fingerprint_of(k)
                    dest = 0 if count == 1 else (kfp >> 40) % count
                    if dest == index:
                        if store.add(kfp, fp, move):
                            grown.append((kfp, k))
                            if first_violation(cfg, k) is not None:
                                self.found = Found(kfp)
                                return outboxes
                    else:
                        box = outboxes[dest]
                        if kfp not in box:
                            box[kfp] = (fp, move, k)
                    move += 1
            return outboxes
        finally:
            counter.flush()
            self.transitions += counter.transitions


class _Counter:
    """The op and path counts of one `expand`, kept as `Partition.op_counts`/`path_counts` keep them.

    Ops of one kind come in runs (a state's moves are grouped by kind): a run is counted by one
    dict update when it ends, not one per op.
    """

    def __init__(self, op_counts: dict[str, int], path_counts: dict[str, int]) -> None:
        self.op_counts = op_counts
        self.path_counts = path_counts
        self.transitions = 0
        self.kind: type | None = None
        self.tag = ""
        self.run = 0

    def op(self, op: Op) -> None:
        self.transitions += 1
        kind = type(op)
        if kind is self.kind:
            self.run += 1
            return
        self.flush()
        self.kind = kind
        self.tag = op.TAG
        self.run = 1

    def flush(self) -> None:
        if self.run:
            counts = self.op_counts
            counts[self.tag] = counts.get(self.tag, 0) + self.run
            self.run = 0
            self.kind = None

    def paths(self, obs: Observation) -> None:
        counts = self.path_counts
        for label in path_labels(obs):
            counts[label] = counts.get(label, 0) + 1

