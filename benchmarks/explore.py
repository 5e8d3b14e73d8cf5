"""Distinct states per second of `explore` in one process and on two workers, for a fixed configuration.

The configuration is the `explore` command's default (2 refs, a chunk of 2, 2 frames, 2 slots,
see `ExploreBounds`), searched to exhaustion, once in this process and once over two worker
processes (the same counts, checked), interleaved round by round since the machine is shared. It
prints the seen-set's bytes per distinct state and the fingerprint collision probability. Two
ratios come from the same run: the explorer's transition rate against bare `model.transition.step`
calls on the same (state, move) pairs (what canonicalisation, the seen-set and the invariants
add), and the states the search needs without symmetry reduction against with it, on a
depth-limited search. Each rate is the best of the rounds. The last two lines are
`explore_states_per_s_2_workers=<x>` and `explore_states_per_s=<x>` (one process).

    .venv/bin/python benchmarks/explore.py [--rounds R] [--workers N]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from externref_harness.explore.driver import explore
from externref_harness.explore.explorer import ExploreBounds
from externref_harness.explore.symmetry import canonical
from externref_harness.model.moves import flat_moves
from externref_harness.model.ops import Op
from externref_harness.model.state import State
from externref_harness.model.transition import step

FIXED = ExploreBounds()


def bare_step_rate(bounds: ExploreBounds, pairs: int = 100_000) -> float:
    """Steps per second of `step` alone over the (state, move) pairs the search's first levels take."""
    search = bounds.search()
    cfg = search.cfg
    todo: list[tuple[State, Op]] = []
    frontier = [canonical(cfg, State.initial(cfg))]
    seen = set(frontier)
    while len(todo) < pairs and frontier:
        grown = []
        for state in frontier:
            for op in flat_moves(cfg, search.bounds, state):
                todo.append((state, op))
                succ = canonical(cfg, step(cfg, state, op)[0])
                if succ not in seen:
                    seen.add(succ)
                    grown.append(succ)
        frontier = grown
    started = time.perf_counter()
    for state, op in todo:
        step(cfg, state, op)
    return len(todo) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2, help="rounds; the best of each rate")
    parser.add_argument("--workers", type=int, default=2, help="workers of the parallel search")
    args = parser.parse_args()
    print(
        f"config: refs={FIXED.refs} chunk={FIXED.chunk} frames={FIXED.frames} slots={FIXED.slots} "
        f"handles={FIXED.handles} args={FIXED.args} raws={FIXED.raws} globals={FIXED.globals}, "
        f"{FIXED.build} build, exhaustive"
    )
    best_states = best_parallel = best_transitions = best_step = 0.0
    states = transitions = 0
    bytes_per_state = parallel_bytes = collision = 0.0
    for _ in range(args.rounds):
        out = explore(FIXED.search())
        assert out.status == "exhausted" and out.depth_cut == 0
        states, transitions = out.states, out.transitions
        bytes_per_state, collision = out.bytes_per_state, out.collision_probability
        best_states = max(best_states, out.states / out.elapsed)
        best_transitions = max(best_transitions, out.transitions / out.elapsed)
        best_step = max(best_step, bare_step_rate(FIXED))
        par = explore(FIXED.search(), workers=args.workers)
        assert (par.status, par.states, par.transitions) == ("exhausted", states, transitions)
        best_parallel = max(best_parallel, par.states / par.elapsed)
        parallel_bytes = par.bytes_per_state
    limited = replace(FIXED, raws=1, globals=1, depth=7)
    with_ = explore(limited.search()).states
    without = explore(replace(limited, symmetry=False).search()).states
    print(f"distinct states: {states}, transitions: {transitions}")
    print(f"transitions/s: {best_transitions:.0f}")
    print(f"bare model steps/s: {best_step:.0f}")
    print(f"explorer transitions / bare steps: {best_transitions / best_step:.2f}")
    print(
        f"symmetry reduction (raws=1 globals=1 depth=7): {without} states without, {with_} with "
        f"({without / with_:.2f}x)"
    )
    print(f"seen-set bytes per distinct state: {bytes_per_state:.1f} (one process), "
          f"{parallel_bytes:.1f} ({args.workers} workers)")  # fmt: skip
    print(f"fingerprint collision probability: {collision:.1e} (optimistic, as TLC computes it)")
    print(f"distinct states/s: {best_states:.0f} (one process), {best_parallel:.0f} ({args.workers} workers)")
    print(f"explore_states_per_s_{args.workers}_workers={best_parallel:.0f}")
    print(f"explore_states_per_s={best_states:.0f}")


if __name__ == "__main__":
    main()
