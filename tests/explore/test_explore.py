"""The explorer: exhaustion, pinned state counts, every seeded model bug found by a shortest trace."""

from __future__ import annotations

from dataclasses import replace

import pytest

from externref_harness.explore.driver import explore
from externref_harness.explore.explorer import MUTANT_KNOBS, REFUSED, ExploreBounds, Outcome, Progress
from externref_harness.explore.partition import Search
from externref_harness.model.moves import Bounds
from externref_harness.model.mutants import MODEL_MUTANTS, Mutant
from externref_harness.model.state import Build, Config, State
from externref_harness.model.transition import run
from externref_harness.specs.invariants import first_violation

#: Distinct states (symmetry classes), transitions and maximum depth of a few small searches.
#: A semantic change to the model, its moves or the canonical form shows up as a changed count.
#: The first entry is the `explore` command's default: 2 refs, a chunk of 2, 2 frames, 2 slots.
_EVERY_FEATURE = ExploreBounds(
    raws=1, args=2, globals=2, scalars=True, opaque_frames=True, gc_okay_toggles=True, depth=6
)  # fmt: skip
PINNED: dict[str, tuple[ExploreBounds, int, int, int]] = {
    "defaults": (ExploreBounds(), 63872, 689784, 18),
    "one-ref": (ExploreBounds(refs=1), 3781, 35958, 14),
    "one-frame-one-slot-chunk-1": (ExploreBounds(frames=1, slots=1, chunk=1), 285, 2055, 10),
    "three-refs-one-frame-one-slot-chunk-1": (
        ExploreBounds(refs=3, handles=3, frames=1, slots=1, chunk=1), 1715, 19693, 13,
    ),
    "every-feature-to-depth-6": (_EVERY_FEATURE, 25456, 92430, 6),
    "every-feature-to-depth-6-release": (replace(_EVERY_FEATURE, build="release"), 22715, 88017, 6),
}

#: Per seeded bug: the invariant a debug build violates first and the length of the shortest trace,
#: with the knobs `MUTANT_KNOBS` says it needs. A new mutant must be added here.
SHORTEST: dict[str, tuple[str, int]] = {
    "cve-2021-39216": ("I1", 6),
    "cve-2021-39218": ("I9", 7),
    "cve-2022-24791": ("I1", 5),
    "cve-2022-31146": ("I1", 7),
    "cve-2022-23636": ("I4", 2),
    "sweep-without-canary": ("I1", 4),
    "precise-root-uncounted": ("I1", 4),
    "hashset-duplicate-leaks": ("I2", 4),
}


def mutant_bounds(m: Mutant, build: Build = "debug", **more: object) -> ExploreBounds:
    knobs = MUTANT_KNOBS.get(m.name, {})
    return ExploreBounds(mutant=m.name, build=build, **{**knobs, **more})  # type: ignore[arg-type]


@pytest.mark.slow
def test_exhausts_two_refs_chunk_two_two_frames_two_slots_without_violation() -> None:
    bounds, states, transitions, depth = PINNED["defaults"]
    assert (bounds.refs, bounds.chunk, bounds.frames, bounds.slots) == (2, 2, 2, 2)
    out = explore(bounds.search())
    assert out.violation is None
    assert out.depth_cut == 0, "exhausted: nothing left unexpanded by a depth limit"
    assert (out.states, out.transitions, out.max_depth) == (states, transitions, depth)
    # Every gc path the model labels is reached by the exhaustive search.
    for path in ("gc:no-canary", "gc:canary-found", "gc:stack-map-root", "gc:nested-wasm-frame",
                 "gc:wasm-frame-without-stack-map", "sweep:lazy-chunk-allocation",
                 "insert:gc-and-insert-slow", "hashset:duplicate-dropped"):  # fmt: skip
        assert out.path_counts.get(path, 0) > 0, path
    assert sum(out.op_counts.values()) == out.transitions


@pytest.mark.parametrize("name", [n for n in PINNED if n != "defaults"])
def test_pinned_distinct_state_counts(name: str) -> None:
    bounds, states, transitions, depth = PINNED[name]
    out = explore(bounds.search())
    assert out.violation is None
    assert (out.states, out.transitions, out.max_depth) == (states, transitions, depth)


def test_every_model_mutant_has_a_recorded_shortest_trace() -> None:
    assert set(SHORTEST) == {m.name for m in MODEL_MUTANTS}
    assert set(MUTANT_KNOBS) <= set(SHORTEST)


@pytest.mark.parametrize("name", sorted(MUTANT_KNOBS))
def test_the_knobs_a_mutant_needs_are_needed(name: str) -> None:
    """Without them nothing is found, even one step beyond the shortest trace with them."""
    depth = SHORTEST[name][1] + 1
    assert explore(ExploreBounds(mutant=name, depth=depth).search()).violation is None


def _check_trace(out: Outcome, invariant: str | None = None) -> None:
    """The reported trace is real: re-run from the initial state it violates the same invariant
    at its last step and at no earlier one."""
    v = out.violation
    assert v is not None
    cfg = out.search.cfg
    states = [State.initial(cfg), *(s for s, _ in run(cfg, v.trace))]
    assert all(first_violation(cfg, s) is None for s in states[:-1])
    last = first_violation(cfg, states[-1])
    assert last is not None and last[0].id == v.invariant
    if invariant is not None:
        assert v.invariant == invariant


@pytest.mark.parametrize("mutant", MODEL_MUTANTS, ids=lambda m: m.name)
def test_explore_finds_every_model_mutant_with_a_shortest_trace(mutant: Mutant) -> None:
    invariant, length = SHORTEST[mutant.name]
    out = explore(mutant_bounds(mutant).search())
    assert out.violation is not None, f"{mutant.name} not found"
    assert len(out.violation.trace) == length, [str(op) for op in out.violation.trace]
    _check_trace(out, invariant)
    # Shortest: BFS found it at this depth, and nothing violates within one step less.
    assert out.max_depth == length
    shorter = explore(mutant_bounds(mutant, depth=length - 1).search())
    assert shorter.violation is None
    assert shorter.depth_cut > 0


@pytest.mark.parametrize("mutant", MODEL_MUTANTS, ids=lambda m: m.name)
def test_release_builds_find_every_model_mutant_just_as_fast(mutant: Mutant) -> None:
    _, length = SHORTEST[mutant.name]
    out = explore(mutant_bounds(mutant, build="release").search())
    assert out.violation is not None
    assert len(out.violation.trace) == length
    _check_trace(out)


@pytest.mark.slow
def test_symmetry_reduction_merges_states_and_keeps_traces_shortest() -> None:
    bounds = ExploreBounds(raws=1, globals=1, depth=6)
    on = explore(bounds.search())
    off = explore(replace(bounds, symmetry=False).search())
    assert on.violation is None and off.violation is None
    assert on.states < off.states
    mutant = next(m for m in MODEL_MUTANTS if m.name == "cve-2022-31146")
    with_ = explore(mutant_bounds(mutant).search())
    without = explore(mutant_bounds(mutant, symmetry=False).search())
    assert with_.violation is not None and without.violation is not None
    assert len(with_.violation.trace) == len(without.violation.trace)
    _check_trace(without)


def test_observers_add_transitions_and_no_states() -> None:
    bounds = replace(_EVERY_FEATURE, depth=4)
    without = explore(bounds.search())
    with_ = explore(replace(bounds, observers=True).search())
    assert with_.violation is None and without.violation is None
    assert with_.states == without.states
    assert with_.transitions > without.transitions


def test_the_live_handle_constraint_bounds_the_space() -> None:
    """`WasmReturn` hands the host a new handle whatever the bound: the constraint stops that."""
    out = explore(ExploreBounds(refs=1).search())
    assert out.constrained > 0
    assert out.search.max_live_handles == 3


def test_progress_reports_states_queue_depth_and_rate() -> None:
    seen: list[Progress] = []
    out = explore(ExploreBounds(refs=1).search(), seen.append, every=0.0)
    assert seen, "no progress reported"
    assert all(p.states <= out.states and p.depth <= out.max_depth for p in seen)
    assert seen[-1].rate > 0 and any(p.queue > 0 for p in seen)


def test_a_refused_move_is_reported_as_a_violation() -> None:
    """If `model.moves` offered a move the model refuses, the explorer stops on it."""
    from externref_harness.model import moves, ops

    def with_misuse(cfg: Config, bounds: Bounds, state: State) -> list[ops.Op]:
        return [*moves.flat_moves(cfg, bounds, state), ops.Drop(len(state.handles))]

    out = explore(replace(ExploreBounds(refs=1).search(), moves_of=with_misuse))
    assert out.violation is not None and out.violation.invariant == REFUSED
    assert len(out.violation.trace) == 1
    assert "was refused" in out.violation.message


@pytest.mark.parametrize(
    "knobs",
    [
        {"refs": 0}, {"refs": -1}, {"chunk": 0}, {"frames": 0}, {"slots": 0}, {"depth": 0},
        {"refs": 1000}, {"chunk": 10**6}, {"handles": 0}, {"raws": -1}, {"args": 3},
        {"globals": 9}, {"mutant": "no-such-mutant"}, {"mutant": "impl-early-free"},
    ],
)  # fmt: skip
def test_bad_bounds_are_refused_with_a_precise_message(knobs: dict[str, object]) -> None:
    with pytest.raises(ValueError) as e:
        ExploreBounds(**knobs)  # type: ignore[arg-type]
    assert "\n" not in str(e.value) and str(e.value)


def test_search_rejects_a_negative_depth() -> None:
    with pytest.raises(ValueError, match="depth"):
        Search(ExploreBounds().search().cfg, ExploreBounds().search().bounds, depth=-1)
