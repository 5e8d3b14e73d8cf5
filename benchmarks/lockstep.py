"""Step rate of the lockstep machine against a trivial hypothesis state machine, in one run.

The trivial machine draws a kind and an option the way the lockstep machine draws a move, and does
nothing else: the ratio says how much of Hypothesis's own per-step cost the model, the ctypes
implementation and every comparison add. Only drawn steps count (each lockstep example's teardown
is extra work on its side), and each rate is the best of alternating rounds, since the machine is
shared. The last line is `lockstep_ratio=<x>` (target >= 0.5).

    .venv/bin/python benchmarks/lockstep.py [--examples N] [--rounds R]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from hypothesis import HealthCheck, Verbosity, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from externref_harness.lockstep.check import make_lockstep_machine
from externref_harness.model.moves import KIND_ORDER


def bench_settings(examples: int) -> settings:
    return settings(
        max_examples=examples,
        stateful_step_count=60,
        derandomize=True,
        database=None,
        deadline=None,
        verbosity=Verbosity.quiet,
        suppress_health_check=list(HealthCheck),
    )


def trivial_machine(counter: list[int]) -> type[RuleBasedStateMachine]:
    class Trivial(RuleBasedStateMachine):
        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            data.draw(st.sampled_from(KIND_ORDER), label="kind")
            data.draw(st.sampled_from(range(16)), label="op")
            counter[0] += 1

    return Trivial


def rate(run: Callable[[], int]) -> float:
    started = time.perf_counter()
    steps = run()
    return steps / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; best of each")
    args = parser.parse_args()
    config = bench_settings(args.examples)

    def lockstep() -> int:
        # Only the drawn steps count: each example's teardown is extra work on the lockstep side.
        drawn = [0]
        machine = make_lockstep_machine()

        class Counted(machine):  # type: ignore[valid-type,misc]
            @rule(data=st.data())
            def step(self, data: st.DataObject) -> None:
                drawn[0] += 1
                super().step(data)

        run_state_machine_as_test(Counted, settings=config)
        return drawn[0]

    def trivial() -> int:
        counter = [0]
        run_state_machine_as_test(trivial_machine(counter), settings=config)
        return counter[0]

    best_lockstep = best_trivial = 0.0
    for _ in range(args.rounds):
        best_lockstep = max(best_lockstep, rate(lockstep))
        best_trivial = max(best_trivial, rate(trivial))
    print(f"lockstep steps/s: {best_lockstep:.0f}")
    print(f"trivial machine steps/s: {best_trivial:.0f}")
    print(f"lockstep_ratio={best_lockstep / best_trivial:.2f}")


if __name__ == "__main__":
    main()
