"""Lockstep steps per second on the Python port and on the C reference library, in one run.

The same deterministic workload runs on both: random walks over the lockstep machine's moves
(seeded, at chunk size 2), each driven in lockstep with every check and torn down to quiescence.
Then the chunk-size cost: a replay of 1,024 `New` and 1,024 `InsertWithGc` steps at chunk size 512
against the same trace at chunk size 2. Each figure is the best of the rounds; the machine is
shared, so only ratios measured within one run mean anything.

    .venv/bin/python benchmarks/native.py [--rounds R] [--walks N]

Last lines: `native_ratio=<C steps/s / Python steps/s>` (target >= 1.0) and
`chunk512_ratio=<steps/s at chunk 512 / steps/s at chunk 2>` (target >= 0.5), the latter on the C
library (the Python port's figure is printed above it).
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG, AdapterFactory, drive
from externref_harness.lockstep.targets import PYTHON, native_target
from externref_harness.model import ops
from externref_harness.model.moves import flat_moves
from externref_harness.model.state import Config, State
from externref_harness.model.transition import step
from externref_harness.native.build import build_reference

WALK_STEPS = 40


def walks(cfg: Config, n: int, seed: int = 7) -> list[list[ops.Op]]:
    """`n` random walks of well-formed moves (the same every run)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        state, steps = State.initial(cfg), []
        for _ in range(WALK_STEPS):
            moves = flat_moves(cfg, LOCKSTEP_BOUNDS, state)
            if not moves:
                break
            op = rng.choice(moves)
            state, _ = step(cfg, state, op)
            steps.append(op)
        out.append(steps)
    return out


def rate(cfg: Config, traces: list[list[ops.Op]], factory: AdapterFactory, rounds: int) -> float:
    best = 0.0
    for _ in range(rounds):
        started, count = time.perf_counter(), 0
        for steps in traces:
            driven = drive(cfg, steps, factory(), until_first=True)
            if driven.first is not None:
                raise SystemExit(f"the workload failed: {driven.first}")
            count += len(driven.steps)
        best = max(best, count / (time.perf_counter() - started))
    return best


def fill_trace(n: int) -> list[ops.Op]:
    return [*(ops.New(8, 8) for _ in range(n)), *(ops.InsertWithGc(h) for h in range(n))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--walks", type=int, default=60)
    args = parser.parse_args()
    c_lib = native_target(build_reference("release"))
    cfg = replace(LOCKSTEP_CONFIG, build="release")
    traces = walks(cfg, args.walks)
    python_rate = rate(cfg, traces, PYTHON.adapter_factory, args.rounds)
    c_rate = rate(cfg, traces, c_lib.adapter_factory, args.rounds)
    print(f"workload: {len(traces)} random walks of up to {WALK_STEPS} steps, chunk 2, release build")
    print(f"python_port_steps_per_s={python_rate:.0f}")
    print(f"c_library_steps_per_s={c_rate:.0f}")
    fill = fill_trace(1024)
    ratios = {}
    for name, target in (("python_port", PYTHON), ("c_library", c_lib)):
        small = rate(replace(cfg, chunk_size=2), [fill], target.adapter_factory, 1)
        large = rate(replace(cfg, chunk_size=512), [fill], target.adapter_factory, 1)
        ratios[name] = large / small
        print(
            f"{name}: 1,024 New + 1,024 InsertWithGc: {large:.0f} steps/s at chunk 512, "
            f"{small:.0f} at chunk 2"
        )
        print(f"{name}_chunk512_ratio={ratios[name]:.2f}")
    print(f"native_ratio={c_rate / python_rate:.2f}")
    print(f"chunk512_ratio={ratios['c_library']:.2f}")


if __name__ == "__main__":
    main()
