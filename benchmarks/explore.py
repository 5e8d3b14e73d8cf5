"""Distinct states per second of `explore` on one core, for a fixed configuration.

The configuration is the `explore` command's default (2 refs, a chunk of 2, 2 frames, 2 slots,
see `ExploreBounds`), searched to exhaustion. Two ratios come from the same run, since the machine
is shared: the explorer's transition rate against bare `model.transition.step` calls on the same
(state, move) pairs (what canonicalisation, the seen-set and the invariants add), and the states
the search needs without symmetry reduction against with it, on a depth-limited search. Each
rate is the best of the rounds. The last line is `explore_states_per_s=<x>`.

    .venv/bin/python benchmarks/explore.py [--rounds R]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

from externref_harness.explore import ExploreBounds, canonical, explore
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
    parser.add_argument("--rounds", type=int, default=3, help="rounds; the best of each rate")
    args = parser.parse_args()
    print(
        f"config: refs={FIXED.refs} chunk={FIXED.chunk} frames={FIXED.frames} slots={FIXED.slots} "
        f"handles={FIXED.handles} args={FIXED.args} raws={FIXED.raws} globals={FIXED.globals}, "
        f"{FIXED.build} build, exhaustive"
    )
    best_states = best_transitions = best_step = 0.0
    states = transitions = 0
    for _ in range(args.rounds):
        out = explore(FIXED.search())
        assert out.violation is None and out.depth_cut == 0
        states, transitions = out.states, out.transitions
        best_states = max(best_states, out.states / out.elapsed)
        best_transitions = max(best_transitions, out.transitions / out.elapsed)
        best_step = max(best_step, bare_step_rate(FIXED))
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
    print(f"explore_states_per_s={best_states:.0f}")


if __name__ == "__main__":
    main()
