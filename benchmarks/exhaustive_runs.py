"""Why `--exhaustive` makes as many runs as it does: the bounded class graph's strongly connected
components, and where the planned runs end. Planned on the model alone (no implementation).

Every run starts at the initial state and replays its tree path (11.4 steps on average at the
default bounds) before it covers anything, so the runs' number sets most of the gate's cost. A
run ends when its chain (`exhaustive.chain.plan_chain`) finds no class with uncovered moves
within `WALK_RADIUS` covered moves. Inside one strongly connected component every class can
reach every other, so a run that ends while its own component still has uncovered moves could,
with a longer walk, have gone on; one that ends in a component left with none could not have
reached those moves but through a component it had left. This prints the components (Tarjan's,
over the plan's transitions), the transitions between them, and how many of the planner's runs
end each way, with the planning's CPU seconds.

    .venv/bin/python benchmarks/exhaustive_runs.py [--refs N --frames N ...]
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from externref_harness.cli.explore import add_bound_arguments, bounds_given
from externref_harness.exhaustive.chain import WALK_RADIUS, WALK_SEARCH_LIMIT, Coverage
from externref_harness.exhaustive.execute import _Planner
from externref_harness.exhaustive.plan import Plan, build_plan
from externref_harness.explore.explorer import ExploreBounds


def components(plan: Plan) -> list[int]:
    """Each class's strongly connected component (Tarjan's algorithm, iterative): numbered in
    the order they complete, so a component's successors have lower numbers."""
    n = plan.classes
    index, low, comp = [-1] * n, [0] * n, [-1] * n
    on_stack = [False] * n
    stack: list[int] = []
    counter = found = 0
    for root in range(n):
        if index[root] != -1:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = counter
                counter += 1
                stack.append(v)
                on_stack[v] = True
            base, moves = plan.offsets[v], plan.moves[v]
            descended = False
            while i < moves:
                w = int(plan.targets[base + i])
                i += 1
                if index[w] == -1:
                    work.append((v, i))
                    work.append((w, 0))
                    descended = True
                    break
                if on_stack[w]:
                    low[v] = min(low[v], index[w])
            if descended:
                continue
            if low[v] == index[v]:
                while True:
                    w = stack.pop()
                    on_stack[w] = False
                    comp[w] = found
                    if w == v:
                        break
                found += 1
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return comp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bound_arguments(parser)
    args = parser.parse_args()
    plan = build_plan(ExploreBounds(**bounds_given(args)).search())  # type: ignore[arg-type]
    comp = components(plan)
    sizes = Counter(comp)
    left: Counter[int] = Counter()
    crossing = 0
    for c in range(plan.classes):
        left[comp[c]] += plan.moves[c]
        base = plan.offsets[c]
        crossing += sum(1 for i in range(plan.moves[c]) if comp[int(plan.targets[base + i])] != comp[c])
    print(f"{plan.classes:,} classes, {plan.transitions:,} transitions")
    largest = ", ".join(f"{size:,}" for _, size in sizes.most_common(3))
    print(
        f"{len(sizes):,} strongly connected components, the largest of {largest} classes; "
        f"{crossing:,} transitions lead from one component to another"
    )
    coverage = Coverage(plan)
    planner = _Planner(plan, coverage)
    runs = steps = ended_with_moves_left = 0
    started = time.process_time()
    while (run := planner.next()) is not None:
        runs += 1
        steps += len(run.ops)
        for i in run.marked:
            left[comp[run.taken[i][0]]] -= 1
        end = plan.target(*run.taken[-1]) if run.taken else run.c
        if left[comp[end]] > 0:
            ended_with_moves_left += 1
    planning = time.process_time() - started
    print(
        f"planned (WALK_RADIUS {WALK_RADIUS}, WALK_SEARCH_LIMIT {WALK_SEARCH_LIMIT}): {runs:,} runs, "
        f"{steps:,} steps, {planning:.1f} s of CPU"
    )
    print(
        f"runs that end while their own component still has uncovered moves: {ended_with_moves_left:,} "
        f"({ended_with_moves_left / max(runs, 1):.0%})"
    )


if __name__ == "__main__":
    main()
