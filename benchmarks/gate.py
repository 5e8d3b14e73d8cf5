"""Lockstep steps per second on the C reference, in this process and through the gate's child process.

The same deterministic workload (the random walks of `benchmarks/native.py`) runs on the library
loaded here (`InProcessImpl`) and on the library in a child process (`isolation.ChildPool`, one
child serving every walk; `drive` sends each walk's steps to it in batches,
`Lockstep.step`'s `following`). Then the live-refs cycle of `benchmarks/native.py` (wasmtime's
`gc.rs` style: refs held by host handles across GCs) through the child, with 4,096 live refs and
with 16: a reply carries only the ref facts and handles a step changed, so the pipe's share of a
step does not grow with the heap. Best of the rounds; only the ratios measured within one run
mean anything on a shared machine.

    .venv/bin/python benchmarks/gate.py [--rounds R] [--walks N] [--cycles N] [--live N]

Last lines: `gate_live_refs_ratio=<child steps/s of the cycle with 4,096 live refs / with 16>`
(kept near the in-process `live_refs_ratio`), `gate_ratio=<child steps/s / in-process steps/s>`
(target >= 0.9).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from externref_harness.isolation.pool import ChildPool
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG
from externref_harness.lockstep.targets import native_target
from externref_harness.native.build import build_reference
from native import live_refs_rate, rate, walks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--walks", type=int, default=60)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--live", type=int, default=4096, help="live refs of the large heap (4,096)")
    args = parser.parse_args()
    path = build_reference("release")
    cfg = replace(LOCKSTEP_CONFIG, build="release")
    traces = walks(cfg, args.walks)
    in_process = rate(cfg, traces, native_target(path).adapter_factory, args.rounds)
    pool = ChildPool(path)
    try:
        child = rate(cfg, traces, pool.adapter, args.rounds)
        few = live_refs_rate(cfg, 16, args.cycles, pool.adapter, args.rounds)
        many = live_refs_rate(cfg, args.live, args.cycles, pool.adapter, args.rounds)
    finally:
        pool.close()
    print(f"workload: {len(traces)} random walks, chunk 2, the C reference (release)")
    print(f"in_process_steps_per_s={in_process:.0f}")
    print(f"child_process_steps_per_s={child:.0f} ({pool.started} children started)")
    print(f"child: the live-refs cycle: {many:.0f} steps/s with {args.live:,} live refs, {few:.0f} with 16")
    print(f"gate_live_refs_ratio={many / few:.2f}")
    print(f"gate_ratio={child / in_process:.2f}")


if __name__ == "__main__":
    main()
