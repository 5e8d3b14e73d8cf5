"""Shrinking a failure on a child-process library, with children forked from a loaded server and
with every child exec'd, in one run.

Shrinking runs every candidate in a fresh child (no candidate may see what an earlier one left in
the library's globals), so a child's start-up is most of a shrink's cost. The workload: the first
random walk (`benchmarks/native.py`'s) that fails on a seeded C bug, shrunk by
`shrink_lockstep_trace` through `isolation.ChildPool` with `fork=True` (the default: each child a
fork of a server that has loaded the library, `isolation.forkserver`) and `fork=False` (each child
a new interpreter that imports the harness and loads the library). Both must shrink to the same
trace. Best of the rounds; only the ratio measured within one run means anything.

    .venv/bin/python benchmarks/shrink.py [--rounds R] [--bug NAME]

Last line: `shrink_speedup=<seconds with exec'd children / seconds with forked children>`.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from externref_harness.isolation.pool import ChildPool
from externref_harness.lockstep.check import shrink_lockstep_trace
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, drive
from externref_harness.model import ops
from externref_harness.model.state import Config
from externref_harness.native.build import build_reference
from native import walks


def failing_walk(cfg: Config, pool: ChildPool) -> list[ops.Op]:
    for steps in walks(cfg, 200):
        first = drive(cfg, steps, pool.adapter(fresh=True), until_first=True).first
        if first is not None:
            return steps[: first.step]
    raise SystemExit("no walk fails on this library: choose another --bug")


def shrink_seconds(
    cfg: Config, steps: list[ops.Op], pool: ChildPool, rounds: int
) -> tuple[float, list[ops.Op], int]:
    best, shrunk, children = float("inf"), list(steps), 0
    for _ in range(rounds):
        before = pool.started
        started = time.perf_counter()
        shrunk = shrink_lockstep_trace(cfg, steps, lambda: pool.adapter(fresh=True))
        best = min(best, time.perf_counter() - started)
        children = pool.started - before
    return best, shrunk, children


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--bug", default="c-duplicate-insert-leaks")
    args = parser.parse_args()
    path = build_reference("release", bug=args.bug)
    cfg = replace(LOCKSTEP_CONFIG, build="release")
    forked, execd = ChildPool(path, fork=True), ChildPool(path, fork=False)
    try:
        steps = failing_walk(cfg, forked)
        fork_s, fork_shrunk, fork_children = shrink_seconds(cfg, steps, forked, args.rounds)
        exec_s, exec_shrunk, exec_children = shrink_seconds(cfg, steps, execd, args.rounds)
    finally:
        forked.close()
        execd.close()
    if fork_shrunk != exec_shrunk:
        raise SystemExit(f"the two shrinks disagree: {fork_shrunk} and {exec_shrunk}")
    print(f"workload: a {len(steps)}-step walk failing on {args.bug}, shrunk to {len(fork_shrunk)} steps")
    print(f"forked: {fork_s:.2f} s, {fork_children} children ({fork_children / fork_s:.0f}/s)")
    print(f"execd: {exec_s:.2f} s, {exec_children} children ({exec_children / exec_s:.0f}/s)")
    print(f"shrink_speedup={exec_s / fork_s:.1f}")


if __name__ == "__main__":
    main()
