"""The explorer's knobs (`ExploreBounds`), the search of one process, its limits and Ctrl-C, its
outcome, and the rebuild of a violation's trace on actual states (`explore.driver` picks one
process or several)."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from externref_harness.explore.fingerprints import ROOT_MOVE, collision_probability
from externref_harness.explore.partition import Found, Partition, Search
from externref_harness.model.moves import Bounds
from externref_harness.model.mutants import model_mutant_names
from externref_harness.model.ops import Op
from externref_harness.model.state import Build, Config, State
from externref_harness.model.transition import step
from externref_harness.search.model_check import misuse_problem
from externref_harness.specs.invariants import first_violation

#: Pseudo-invariant for a well-formed move the model refuses (a bug in `model.moves` or the model).
REFUSED = "refused"


# --- the search -----------------------------------------------------------------------------------


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
#: `tests/explore/test_explore.py` checks that each is then found, and records its shortest trace.
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


#: No limit: the search runs until it exhausts the space or finds a violation.
NO_LIMITS = Limits()


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


def explore_one_process(
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
    cfg = search.cfg
    key, moves_of = search.key, search.moves
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
        op = moves_of(rep)[move]
        rep = key(step(cfg, rep, op)[0])
        if search.fingerprint(rep) != target_fp:
            raise UnsoundReduction("re-taking a stored move does not reach the stored fingerprint")
        reps.append((rep, op))
    actual = State.initial(cfg)
    trace: list[Op] = []
    for target, preferred in reps:
        options = moves_of(actual)
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
        refused = moves_of(rep)[found.refused]
        options = moves_of(actual)
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
