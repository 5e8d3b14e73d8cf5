"""Step rate of the model-only state machine, and of the bare model step, in one run.

Prints the figures and, last, `model_steps_per_s=<x>` (steps of the hypothesis state machine per
second, invariants checked after each). Run: `python benchmarks/model_steps.py`.
"""

from __future__ import annotations

import random
import time

from hypothesis import settings

from externref_harness.model.moves import flat_moves, next_quiesce_op
from externref_harness.model.state import State
from externref_harness.model.transition import step
from externref_harness.search import profiles  # noqa: F401  (registers the profiles)
from externref_harness.search.model_check import run_model_check
from externref_harness.search.space import MACHINE_BOUNDS, MACHINE_CONFIG
from externref_harness.specs.invariants import first_violation


def machine_rate(examples: int) -> tuple[int, float]:
    started = time.perf_counter()
    out = run_model_check(
        MACHINE_CONFIG, MACHINE_BOUNDS, settings(settings.get_profile("ci"), max_examples=examples)
    )
    assert out.passed, out.failure
    return out.stats.steps, time.perf_counter() - started


def bare_rate(n: int) -> tuple[int, float]:
    """Random walks through `model.moves` + `step` + invariants, without Hypothesis."""
    rng = random.Random(0)
    cfg, bounds = MACHINE_CONFIG, MACHINE_BOUNDS
    state = State.initial(cfg)
    started = time.perf_counter()
    for i in range(n):
        options = flat_moves(cfg, bounds, state)
        op = rng.choice(options) if options and i % 60 else next_quiesce_op(state)
        if op is None:
            state = State.initial(cfg)
            continue
        state, _ = step(cfg, state, op)
        assert first_violation(cfg, state) is None
    return n, time.perf_counter() - started


def main() -> None:
    steps, seconds = machine_rate(300)
    bare_steps, bare_seconds = bare_rate(20_000)
    machine = steps / seconds
    bare = bare_steps / bare_seconds
    print(f"state machine: {steps} steps in {seconds:.2f}s = {machine:,.0f} steps/s")
    print(f"bare model:    {bare_steps} steps in {bare_seconds:.2f}s = {bare:,.0f} steps/s")
    print(f"hypothesis overhead: the machine runs at {machine / bare:.2f} of the bare model's rate")
    print(f"model_steps_per_s={machine:.0f}")


if __name__ == "__main__":
    main()
