"""Model steps per second at the seed's chunk size (512) against a chunk of 2, in one run.

The trace is 1,024 `New` then 1,024 `InsertWithGc`: at chunk 2 every other insert sweeps, at 512
the chunk fills twice over. A transition that copied the whole state per step would pay for the
512 slots on every insert; the copy-on-write working copy (`model.runtime.SeedRuntime`) copies only
what a step touches, so the two rates should be close. Each rate is the best of the rounds. The
last line is `model_chunk512_ratio=<rate at 512 / rate at 2>`.

    .venv/bin/python benchmarks/model_chunk.py [--rounds R] [--refs N]
"""

from __future__ import annotations

import argparse
import time

from externref_harness.model import ops
from externref_harness.model.state import Config, State
from externref_harness.model.transition import step


def steps_per_s(chunk: int, refs: int) -> float:
    cfg = Config(chunk_size=chunk)
    trace: list[ops.Op] = [ops.New(8, 8) for _ in range(refs)]
    trace += [ops.InsertWithGc(h) for h in range(refs)]
    state = State.initial(cfg)
    started = time.perf_counter()
    for op in trace:
        state, _ = step(cfg, state, op)
    elapsed = time.perf_counter() - started
    assert state.panic is None and not state.faults
    return len(trace) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds; the best of each rate")
    parser.add_argument("--refs", type=int, default=1024, help="New steps, then as many inserts")
    args = parser.parse_args()
    best = {512: 0.0, 2: 0.0}
    for _ in range(args.rounds):
        for chunk in best:  # interleaved, so both see the same load on a shared machine
            best[chunk] = max(best[chunk], steps_per_s(chunk, args.refs))
    print(f"trace: {args.refs} New + {args.refs} InsertWithGc, debug build, best of {args.rounds}")
    for chunk, rate in best.items():
        print(f"chunk {chunk}: {rate:,.0f} model steps/s")
    print(f"model_chunk512_ratio={best[512] / best[2]:.2f}")


if __name__ == "__main__":
    main()
