"""`explore`: the one entry point of a search, in this process or over worker processes."""

from __future__ import annotations

import gc

from externref_harness.explore.explorer import (
    NO_LIMITS,
    Limits,
    Outcome,
    ProgressHook,
    explore_one_process,
    interruptible,
)
from externref_harness.explore.partition import Search
from externref_harness.explore.workers import explore_parallel


def explore(
    search: Search,
    progress: ProgressHook | None = None,
    every: float = 0.25,
    limits: Limits = NO_LIMITS,
    workers: int = 1,
) -> Outcome:
    """Breadth-first search; stops at the first violation, else when the bounded space is exhausted
    (or a limit or Ctrl-C stops it: the outcome is then incomplete).

    The search expands canonical representatives (cheaper: fewer tombstones, more successors that
    are canonical already), keeps only their fingerprints, and rebuilds the trace of a violation on
    actual states at the end. With `workers > 1` the fingerprints are partitioned over that many
    processes (`workers`); the counts are exactly those of one process.
    """
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    collecting = gc.isenabled()
    gc.disable()  # states are immutable trees: no cycles to collect, and a full heap to traverse
    try:
        with interruptible() as interrupted:
            if workers > 1:
                return explore_parallel(search, workers, limits, progress, every, interrupted)
            return explore_one_process(search, progress, every, limits, interrupted)
    finally:
        if collecting:
            gc.enable()
