"""Lockstep steps per second on the Python port and on the C reference library, in one run.

The same deterministic workload runs on both: random walks over the lockstep machine's moves
(seeded, at chunk size 2), each driven in lockstep with every check and torn down to quiescence.
The bare compiled model steps over the same walks (`model.transition.step` alone, as `explore`
steps it), so the lockstep's cost can be put beside its two sides. Then the chunk-size cost: a
replay of 1,024 `New` and 1,024 `InsertWithGc` steps at chunk size 512 against the same trace at
chunk size 2. Then the heap-size cost, in the manner of wasmtime's `tests/all/gc.rs` stress tests
(`many_live_refs`: many refs kept alive by the host across GCs): `live_refs` refs are made and
held by host handles, then a fixed cycle (make a ref, clone it, move the clone into the table with
`insert_with_gc`, ask its count, GC, drop it) is timed, with 4,096 live refs and with 16. Each
figure is the best of the rounds; the machine is shared, so only ratios measured within one run
mean anything.

    .venv/bin/python benchmarks/native.py [--rounds R] [--walks N] [--cycles N]

Last lines: `native_ratio=<C steps/s / Python steps/s>` (target >= 1.0),
`chunk512_ratio=<steps/s at chunk 512 / steps/s at chunk 2>` (target >= 0.5), the latter on the C
library (the Python port's figure is printed above it), `lockstep_vs_model=<C library lockstep
steps/s / bare compiled model steps/s>` (target >= 0.2) and `live_refs_ratio=<steps/s of the cycle
with 4,096 live refs / with 16>` on the C library (target >= 0.5).
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

from externref_harness.lockstep.runner import (
    LOCKSTEP_BOUNDS,
    LOCKSTEP_CONFIG,
    AdapterFactory,
    Lockstep,
    drive,
)
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


def model_rate(cfg: Config, traces: list[list[ops.Op]], rounds: int) -> float:
    """The bare compiled model's steps/s over the same operation sequences (no checks)."""
    best = 0.0
    for _ in range(rounds):
        started, count = time.perf_counter(), 0
        for _ in range(20):  # the walks take milliseconds: repeat them for a measurable time
            for steps in traces:
                state = State.initial(cfg)
                for op in steps:
                    state, _ = step(cfg, state, op)
                count += len(steps)
        best = max(best, count / (time.perf_counter() - started))
    return best


def live_refs_workload(cfg: Config, live: int, cycles: int) -> tuple[list[ops.Op], list[ops.Op]]:
    """`live` refs held by host handles (the setup), then `cycles` of the timed cycle."""
    setup: list[ops.Op] = [ops.New(8, 8) for _ in range(live)]
    state = State.initial(cfg)
    for op in setup:
        state, _ = step(cfg, state, op)
    cycle: list[ops.Op] = []
    for _ in range(cycles):
        made = len(state.handles)
        for op in (
            ops.New(8, 8),
            ops.Clone(made),
            ops.InsertWithGc(made + 1),
            ops.StrongCount(made),
            ops.Gc(),
            ops.Drop(made),
        ):
            state, _ = step(cfg, state, op)
            cycle.append(op)
    return setup, cycle


def live_refs_rate(cfg: Config, live: int, cycles: int, factory: AdapterFactory, rounds: int) -> float:
    """Steps/s of the cycle alone, with `live` refs held throughout (every check on every step)."""
    setup, cycle = live_refs_workload(cfg, live, cycles)
    best = 0.0
    for _ in range(rounds):
        run = Lockstep(cfg, factory())
        try:
            for op in setup:
                run.step(op)
            started = time.perf_counter()
            for op in cycle:
                check = run.step(op)
                problem = check.model_problem or check.impl_problem
                if problem:
                    raise SystemExit(f"the workload failed at {op}: {problem}")
            best = max(best, len(cycle) / (time.perf_counter() - started))
        finally:
            run.close()
    return best


def fill_trace(n: int) -> list[ops.Op]:
    return [*(ops.New(8, 8) for _ in range(n)), *(ops.InsertWithGc(h) for h in range(n))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--walks", type=int, default=60)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--live", type=int, default=4096, help="live refs of the large heap (4,096)")
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
    bare = model_rate(cfg, traces, args.rounds)
    print(f"bare_model_steps_per_s={bare:.0f}")
    few = live_refs_rate(cfg, 16, args.cycles, c_lib.adapter_factory, args.rounds)
    many = live_refs_rate(cfg, args.live, args.cycles, c_lib.adapter_factory, args.rounds)
    print(f"c_library: the live-refs cycle: {many:.0f} steps/s with {args.live:,} live refs, "
          f"{few:.0f} with 16")
    print(f"native_ratio={c_rate / python_rate:.2f}")
    print(f"chunk512_ratio={ratios['c_library']:.2f}")
    print(f"lockstep_vs_model={c_rate / bare:.3f}")
    print(f"live_refs_ratio={many / few:.2f}")


if __name__ == "__main__":
    main()
