"""Exhaustive breadth-first exploration of the model's reachable states, as TLC explores a spec.

The transition relation is the model's own: `model.moves.flat_moves` gives the well-formed moves of
a state and `model.transition.step` takes one. Every newly reached state (its representative, see
below: the invariants read nothing the reduction forgets) is checked against every invariant of
`specs.invariants`; states are discovered in order of depth, so the first violation found is at
the end of a shortest trace.

Scale, as TLC does it: the seen-set holds 64-bit fingerprints with the (parent, move) that first
reached each (`fingerprints.FingerprintStore`), not the states; only the frontier is kept as
states. `Partition` is the search of one process; `explore_workers` runs several, partitioned by
fingerprint, level by level, with exactly the same counts. `Limits` and Ctrl-C stop a search early
with an incomplete outcome.

Symmetry reduction. Two states behave alike when they differ only by
- the names of refs: ids are allocation order and the model compares them only for equality;
- tombstones: the positions of dropped handles and consumed raw pointers;
- the order of the filled part of the bump chunk: every reader treats it as a multiset;
- stack maps no lookup will ever read (`model.world.live_stack_maps`).
The same moves, up to renumbering, lead from both to states that again differ only that way (a
bisimulation, checked by `tests/test_explore_symmetry.py`). `canonical` picks one representative
per class, and the search expands representatives. A violation's trace is then rebuilt on actual
states: from `State.initial`, each step takes the actual state's own move whose successor falls in
the next class on the path, so the trace is a sequence of real operations that
`model.transition.run` and `externref-harness replay` reproduce exactly.

State constraint. `WasmReturn` to the host hands out a new handle whatever `Bounds.handles` says,
so the reachable space is not finite by itself. Like TLC's CONSTRAINT, a state holding more live
handles than `Bounds.handles + Bounds.args` (the most any guarded move creates) is checked but not
expanded.
"""

from __future__ import annotations

import gc
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial

from externref_harness.fingerprints import (
    ROOT_MOVE,
    FingerprintStore,
    collision_probability,
    fingerprint,
    owner,
)
from externref_harness.model.moves import Bounds, flat_moves
from externref_harness.model.mutants import model_mutant_names
from externref_harness.model.observation import Misuse, Ok
from externref_harness.model.ops import Op
from externref_harness.model.state import Build, Config, Frame, RawPtr, State, Table, WasmFrame
from externref_harness.model.transition import step
from externref_harness.model.world import live_stack_maps
from externref_harness.model_check import _labels, misuse_problem
from externref_harness.specs.invariants import first_violation

#: Pseudo-invariant for a well-formed move the model refuses (a bug in `model.moves` or the model).
REFUSED = "refused"


# --- symmetry reduction ---------------------------------------------------------------------------


def canonical(cfg: Config, state: State) -> State:
    """The representative of `state`'s symmetry class (see the module docstring).

    Refs are renamed in order of first appearance in the ordered parts of the state (handles, raw
    pointers, globals, Wasm slots); refs held only by the heap or the table are then ordered by
    everything the state says about them, so equally described refs are interchangeable and any
    order among them gives the same result. Stack maps no lookup can reach any more are dropped
    (`model.world.live_stack_maps`). Faults keep only their kind: any fault already violates I3 or
    I4, and the search stops there.
    """
    heap = state.heap
    n = len(heap)
    seq = [h for h in state.handles if h is not None]
    for p in state.raws:
        if p is not None:
            seq.append(p.ref)
    for g in state.globals:
        if type(g) is int:
            seq.append(g)
    for f in state.frames:
        if type(f) is WasmFrame:
            seq.extend([s for s in f.slots if type(s) is int])
    first = list(dict.fromkeys(seq))
    table = state.table
    filled = table.chunk[: table.next]
    if len(first) < n:
        placed = set(first)
        rest = [r for r in range(n) if r not in placed]
        if len(rest) > 1:
            over = table.over_approximated_stack_roots
            precise = table.precise_stack_roots

            def described(r: int) -> tuple[int, bool, int, int, int, bool, bool]:
                box = heap[r]
                return (
                    box.ref_count, box.freed, box.size, box.align,
                    filled.count(r), r in over, r in precise,
                )  # fmt: skip

            rest.sort(key=described)
        first += rest
    identity = first == list(range(n))
    order = {} if identity else {old: new for new, old in enumerate(first)}

    frames = state.frames
    youngest = len(frames) - 1
    rebuilt: list[Frame] | None = None
    for i, f in enumerate(frames):
        if type(f) is not WasmFrame:
            continue
        stack_map, previous = live_stack_maps(cfg, f, i == youngest)
        if identity and stack_map == f.stack_map and previous == f.previous_stack_map:
            continue
        if rebuilt is None:
            rebuilt = list(frames)
        slots = f.slots if identity else tuple(order[s] if type(s) is int else s for s in f.slots)
        rebuilt[i] = WasmFrame(
            slots, stack_map, previous, f.called_from_wasm, f.ret_slot, f.resets_canary
        )
    if rebuilt is not None:
        frames = tuple(rebuilt)

    handles = state.handles
    raws = state.raws
    globals_ = state.globals
    new_heap = heap
    new_filled = filled
    over_roots = table.over_approximated_stack_roots
    precise_roots = table.precise_stack_roots
    if identity:
        if None in handles:
            handles = tuple(h for h in handles if h is not None)
        if None in raws:
            raws = tuple(p for p in raws if p is not None)
    else:
        handles = tuple(order[h] for h in handles if h is not None)
        raws = tuple(RawPtr(order[p.ref], p.owned) for p in raws if p is not None)
        globals_ = tuple(order[g] if type(g) is int else g for g in globals_)
        new_heap = tuple([heap[old] for old in first])
        new_filled = tuple(None if r is None else order[r] for r in filled)
        over_roots = frozenset(order[r] for r in over_roots)
        precise_roots = frozenset(order[r] for r in precise_roots)
    if len(new_filled) > 1 and None not in new_filled:
        new_filled = tuple(sorted(new_filled))  # type: ignore[type-var]
    if not identity or new_filled != filled:
        table = Table(
            new_filled + table.chunk[table.next :],
            table.next,
            over_roots,
            precise_roots,
            table.stack_canary,
            table.gc_okay,
        )
    faults = state.faults
    if faults:
        faults = tuple(f.split(":", 1)[0] for f in faults)
    if (
        table is state.table
        and handles is state.handles
        and raws is state.raws
        and globals_ is state.globals
        and frames is state.frames
        and new_heap is heap
        and faults is state.faults
    ):
        return state
    return State(new_heap, table, handles, raws, globals_, frames, faults, state.panic)


def live_handles(state: State) -> int:
    return sum(h is not None for h in state.handles)


# --- the search -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Search:
    """One bounded search: the model's config, the move bounds and a depth limit (None: none)."""

    cfg: Config
    bounds: Bounds
    depth: int | None = None
    symmetry: bool = True

    def __post_init__(self) -> None:
        if self.depth is not None and self.depth < 0:
            raise ValueError(f"depth must be >= 0, got {self.depth}")

    @property
    def max_live_handles(self) -> int:
        """The state constraint (see the module docstring)."""
        return self.bounds.handles + self.bounds.args


#: What `ExploreBounds` accepts for each integer bound: (lowest, highest). The highs only keep a
#: typo from starting a search that cannot finish.
LIMITS: dict[str, tuple[int, int]] = {
    "refs": (1, 8),
    "chunk": (1, 512),
    "frames": (1, 4),
    "slots": (1, 8),
    "depth": (1, 10_000),
    "handles": (1, 8),
    "raws": (0, 4),
    "args": (0, 8),
    "globals": (0, 4),
}


#: The opt-in knobs each seeded model bug needs to be reachable at all (beyond the defaults).
#: `tests/test_explore.py` checks that each is then found, and records its shortest trace.
MUTANT_KNOBS: dict[str, dict[str, int | bool]] = {
    "cve-2021-39216": {"args": 2},  # two refs moved into Wasm by one call
    "cve-2021-39218": {"scalars": True},  # a non-ref word under a stale stack map
    "cve-2022-23636": {"globals": 2},  # an instantiation that stopped before the last global
    "sweep-without-canary": {"opaque_frames": True},  # a walk that cannot reach the canary
}


@dataclass(frozen=True, slots=True)
class ExploreBounds:
    """The explorer's knobs, mapped onto `Config` and `Bounds` (defaults: the `explore` command's).

    The defaults keep the space of 2 refs, a chunk of 2, 2 frames and 2 slots exhaustible in
    seconds; the features that multiply it (scalar spills, opaque host frames, `set_gc_okay`
    toggles, globals, raw pointers) are opt-in. Observers are off: they never change the state,
    so they add transitions and no states.
    """

    refs: int = 2
    chunk: int = 2
    frames: int = 2
    slots: int = 2
    depth: int | None = None
    handles: int = 2
    raws: int = 0
    args: int = 1
    globals: int = 0
    scalars: bool = False
    opaque_frames: bool = False
    gc_okay_toggles: bool = False
    observers: bool = False
    symmetry: bool = True
    mutant: str | None = None
    build: Build = "debug"

    def __post_init__(self) -> None:
        for name, (low, high) in LIMITS.items():
            value = getattr(self, name)
            if value is None and name == "depth":
                continue
            if not low <= value <= high:
                raise ValueError(f"{name} must be between {low} and {high}, got {value}")
        if self.args > self.slots:
            raise ValueError(f"args must be at most slots={self.slots}, got {self.args}")
        if self.mutant is not None and self.mutant not in model_mutant_names():
            raise ValueError(
                f"mutant {self.mutant!r} is not a model or protocol mutant; explore runs the model"
            )

    def search(self) -> Search:
        cfg = Config(
            chunk_size=self.chunk,
            build=self.build,
            slots=self.slots,
            n_globals=self.globals,
            mutant=self.mutant,
        )
        bounds = Bounds(
            refs=self.refs,
            handles=self.handles,
            raws=self.raws,
            frames=self.frames,
            args=self.args,
            observers=self.observers,
            gc_okay_toggles=self.gc_okay_toggles,
            scalars=self.scalars,
            opaque_host_frames=self.opaque_frames,
            globals=self.globals > 0,
        )
        return Search(cfg, bounds, self.depth, self.symmetry)


@dataclass(frozen=True, slots=True)
class Progress:
    """A snapshot of a running search, for progress lines."""

    states: int
    queue: int
    depth: int
    transitions: int
    elapsed: float
    #: Resident memory of the search's processes, in bytes (0: unknown).
    memory: int = 0

    @property
    def rate(self) -> float:
        return self.states / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Limits:
    """When to give up on exhausting the space: after `time` seconds, or at `states` distinct states.

    A search stopped by a limit (or by Ctrl-C) is incomplete: its figures are a lower bound.
    """

    time: float | None = None
    states: int | None = None

    def __post_init__(self) -> None:
        if self.time is not None and not self.time > 0:
            raise ValueError(f"time limit must be > 0 seconds, got {self.time}")
        if self.states is not None and self.states < 1:
            raise ValueError(f"state limit must be >= 1, got {self.states}")


#: Why an incomplete search stopped.
TIME_LIMIT = "time limit"
STATE_LIMIT = "state limit"
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class Violation:
    """The first violation reached, with a shortest trace of real operations to it."""

    invariant: str
    name: str
    message: str
    trace: tuple[Op, ...]

    @property
    def title(self) -> str:
        return f"{self.invariant} {self.name}: {self.message}"


@dataclass(frozen=True)
class Outcome:
    search: Search
    #: Distinct states (symmetry classes when `search.symmetry`) reached, the initial one included.
    states: int
    transitions: int
    max_depth: int
    elapsed: float
    #: States at the depth limit, reached and checked but not expanded.
    depth_cut: int
    #: States beyond the live-handle constraint, reached and checked but not expanded.
    constrained: int
    op_counts: dict[str, int] = field(default_factory=dict)
    path_counts: dict[str, int] = field(default_factory=dict)
    violation: Violation | None = None
    #: Why the search stopped before exhausting the space (`TIME_LIMIT`, ...); None: it did not.
    stopped: str | None = None
    #: States reached but left unexpanded when the search stopped early.
    unexpanded: int = 0
    workers: int = 1
    #: Bytes of the fingerprint stores (the seen-set) at the end.
    store_bytes: int = 0

    @property
    def rate(self) -> float:
        return self.states / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def status(self) -> str:
        """"violation", "incomplete" (a limit or Ctrl-C stopped it) or "exhausted"."""
        if self.violation is not None:
            return "violation"
        return "incomplete" if self.stopped is not None else "exhausted"

    @property
    def bytes_per_state(self) -> float:
        return self.store_bytes / self.states if self.states else 0.0

    @property
    def collision_probability(self) -> float:
        return collision_probability(self.states, self.transitions + 1)


ProgressHook = Callable[[Progress], None]


class UnsoundReduction(AssertionError):
    """A reported trace could not be realised on actual states: canonicalisation merged states
    that do not behave alike (or two fingerprints collided). Never expected."""


@dataclass(frozen=True, slots=True)
class Found:
    """Where a violation was seen: a new state `fp` that breaks an invariant, or (when `refused`
    is a move index) the state `fp` whose move of that index the model refused."""

    fp: int
    refused: int | None = None


#: What crosses between partitions: (fingerprint, parent fingerprint, move index, state).
Item = tuple[int, int, int, State]
#: Called every `TICK` expanded states with the number expanded so far; True stops the search.
Tick = Callable[[int], bool]
TICK = 64


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
        self.key: Callable[[State], State] = (
            partial(canonical, search.cfg) if search.symmetry else _identity
        )
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
        self.root = self.key(State.initial(search.cfg))
        self.root_fp = fingerprint(self.root)
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

    def expand(self, tick: Tick) -> list[dict[int, tuple[int, int, State]]]:
        """Every move of every frontier state; stops at the first violation or when `tick` says so.

        Returns the successors owned by other partitions, one dict per partition (fingerprint to
        the first (parent, move, state) that reached it in this level).
        """
        cfg, bounds, key, count, index = self.cfg, self.search.bounds, self.key, self.count, self.index
        max_live = self.search.max_live_handles
        op_counts, path_counts = self.op_counts, self.path_counts
        store_add, grown = self.store.add, self.grown
        outboxes: list[dict[int, tuple[int, int, State]]] = [{} for _ in range(count)]
        transitions = 0
        try:
            for done, (fp, state) in enumerate(self.frontier):
                if not done % TICK and done and tick(done):
                    self.stopped = True
                    self.unexpanded = len(self.frontier) - done
                    return outboxes
                if live_handles(state) > max_live:
                    self.constrained += 1
                    continue
                for move, op in enumerate(flat_moves(cfg, bounds, state)):
                    succ, obs = step(cfg, state, op)
                    transitions += 1
                    op_counts[op.TAG] = op_counts.get(op.TAG, 0) + 1
                    if obs.events or obs.dropped or type(obs.result) is not Ok:
                        if type(obs.result) is Misuse:
                            self.found = Found(fp, move)
                            return outboxes
                        for label in _labels(op, obs)[1:]:
                            path_counts[label] = path_counts.get(label, 0) + 1
                    k = key(succ)
                    kfp = fingerprint(k)
                    if count == 1 or owner(kfp, count) == index:
                        if store_add(kfp, fp, move):
                            grown.append((kfp, k))
                            if first_violation(cfg, k) is not None:
                                self.found = Found(kfp)
                                return outboxes
                    else:
                        outboxes[owner(kfp, count)].setdefault(kfp, (fp, move, k))
            return outboxes
        finally:
            self.transitions += transitions


def explore(
    search: Search,
    progress: ProgressHook | None = None,
    every: float = 0.25,
    limits: Limits = Limits(),
    workers: int = 1,
) -> Outcome:
    """Breadth-first search; stops at the first violation, else when the bounded space is exhausted
    (or a limit or Ctrl-C stops it: the outcome is then incomplete).

    The search expands canonical representatives (cheaper: fewer tombstones, more successors that
    are canonical already), keeps only their fingerprints, and rebuilds the trace of a violation on
    actual states at the end. With `workers > 1` the fingerprints are partitioned over that many
    processes (`explore_workers`); the counts are exactly those of one process.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    collecting = gc.isenabled()
    gc.disable()  # states are immutable trees: no cycles to collect, and a full heap to traverse
    try:
        with interruptible() as interrupted:
            if workers > 1:
                from externref_harness.explore_workers import explore_parallel

                return explore_parallel(search, workers, limits, progress, every, interrupted)
            return _explore(search, progress, every, limits, interrupted)
    finally:
        if collecting:
            gc.enable()


class Interrupted:
    """Set by Ctrl-C while a search runs: the search stops at its next tick, with what it has."""

    def __init__(self) -> None:
        self.flag = False

    def __bool__(self) -> bool:
        return self.flag


@contextmanager
def interruptible() -> Iterator[Interrupted]:
    """SIGINT sets a flag instead of raising, so the search can stop cleanly and report."""
    interrupted = Interrupted()

    def handler(signum: int, frame: object) -> None:
        interrupted.flag = True

    try:
        previous = signal.signal(signal.SIGINT, handler)
    except ValueError:  # not the main thread: Ctrl-C keeps its default meaning
        yield interrupted
        return
    try:
        yield interrupted
    finally:
        signal.signal(signal.SIGINT, previous)


def stop_reason(
    interrupted: Interrupted, deadline: float | None, limits: Limits, states: int
) -> str | None:
    if interrupted:
        return INTERRUPTED
    if deadline is not None and time.perf_counter() >= deadline:
        return TIME_LIMIT
    if limits.states is not None and states >= limits.states:
        return STATE_LIMIT
    return None


def memory_bytes(pids: Iterable[int] = ()) -> int:
    """Resident memory of this process and `pids` (Linux /proc; 0 where unknown)."""
    total = 0
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
    for pid in ("self", *map(str, pids)):
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * page
        except (OSError, ValueError, IndexError):
            continue
    return total


def _explore(
    search: Search,
    progress: ProgressHook | None,
    every: float,
    limits: Limits,
    interrupted: Interrupted,
) -> Outcome:
    limit = search.depth
    started = time.perf_counter()
    deadline = None if limits.time is None else started + limits.time
    part = Partition(search)
    store = part.store
    depth = max_depth = depth_cut = 0
    stopped: str | None = None
    next_report = started + every

    def tick(done: int) -> bool:
        nonlocal stopped, next_report
        stopped = stop_reason(interrupted, deadline, limits, len(store))
        if progress is not None:
            now = time.perf_counter()
            if now >= next_report:
                next_report = now + every
                queued = len(part.frontier) - done + len(part.grown)
                progress(Progress(
                    len(store), queued, depth, part.transitions, now - started, memory_bytes()
                ))  # fmt: skip
        return stopped is not None

    part.advance()
    while part.frontier and part.found is None:
        if limit is not None and depth >= limit:
            depth_cut = len(part.frontier)
            break
        part.expand(tick)
        if part.grown:
            max_depth = depth + 1
        if part.found is not None or part.stopped:
            break
        part.advance()
        depth += 1
        if part.frontier and tick(0):
            break
    violation = None
    if part.found is not None:
        violation = rebuild_violation(search, part.root, store.parent, part.found)
        stopped = None
    unexpanded = part.unexpanded + (len(part.grown) if stopped else 0)
    return Outcome(
        search, len(store), part.transitions, max_depth, time.perf_counter() - started,
        depth_cut, part.constrained, part.op_counts, part.path_counts, violation,
        stopped, unexpanded if stopped else 0, 1, store.nbytes,
    )  # fmt: skip


def _identity(state: State) -> State:
    return state


def rebuild_violation(
    search: Search,
    root: State,
    parent_of: Callable[[int], tuple[int, int] | None],
    found: Found,
) -> Violation:
    """Rebuild the path to a violation as real operations from `State.initial`, then name it.

    The stored (parent, move) links give the path of fingerprints back to the initial state and
    the move taken at each representative; re-taking those moves gives the representatives back.
    Then each step looks, among the actual state's own moves, for one whose successor falls in the
    next representative's class (the representative's own move first, if the actual state has it).
    """
    cfg, bounds = search.cfg, search.bounds
    key: Callable[[State], State] = partial(canonical, cfg) if search.symmetry else _identity
    links: list[tuple[int, int]] = []
    fp = found.fp
    while True:
        link = parent_of(fp)
        if link is None:
            raise UnsoundReduction(f"fingerprint {fp:#x} on the path is not stored")
        if link[1] == ROOT_MOVE:
            break
        links.append((fp, link[1]))
        fp = link[0]
    links.reverse()
    reps: list[tuple[State, Op]] = []
    rep = root
    for target_fp, move in links:
        op = flat_moves(cfg, bounds, rep)[move]
        rep = key(step(cfg, rep, op)[0])
        if fingerprint(rep) != target_fp:
            raise UnsoundReduction("re-taking a stored move does not reach the stored fingerprint")
        reps.append((rep, op))
    actual = State.initial(cfg)
    trace: list[Op] = []
    for target, preferred in reps:
        options = flat_moves(cfg, bounds, actual)
        first = [preferred] if preferred in options else []
        for op in first + options:
            succ, _ = step(cfg, actual, op)
            if key(succ) == target:
                trace.append(op)
                actual = succ
                break
        else:
            raise UnsoundReduction("no move of the actual state reaches the next class on the path")
    if found.refused is not None:
        refused = flat_moves(cfg, bounds, rep)[found.refused]
        options = flat_moves(cfg, bounds, actual)
        for op in ([refused] if refused in options else []) + options:
            _, obs = step(cfg, actual, op)
            problem = misuse_problem(op, obs, expect_misuse=False)
            if problem is not None:
                return Violation(REFUSED, "a well-formed move was refused", problem, (*trace, op))
        raise UnsoundReduction("the refused move has no counterpart in the actual state")
    bad = first_violation(cfg, actual)
    if bad is None:
        raise UnsoundReduction("the rebuilt trace ends in a state that violates nothing")
    return Violation(bad[0].id, bad[0].name, bad[1], tuple(trace))
