"""The parallel check's rates: histories per second, and the detection rate and time of each race bug.

For each seeded race bug of the C reference (`c-nonatomic-count`, `c-drop-reread`,
`c-clone-load-store`) in each build, `--runs` consecutive runs of the parallel check (seeds 0, 1,
...; no shrinking, so the time is the time to the first failing history), each with a `--limit`
second budget: how many caught it, and the median and slowest time to detection. The bugs are
built with the pause inside their race window that `XR_RACE_WINDOW_NS` in the environment gives
(nanoseconds; 0: no pause anywhere, the window as narrow as the code makes it; unset: the switches
as shipped, 5000). Then the correct reference, debug and release, runs the same generator (seeds 0,
1, ...) until each build has run `--min-histories` histories: it must raise no alarm. Histories per
second is that of the correct release build, measured in the same run, the load of the machine
(`os.getloadavg`) printed beside it. The last line is `threads_histories_per_s=<x>`.

    XR_RACE_WINDOW_NS=0 .venv/bin/python benchmarks/threads.py [--runs 20] [--limit 10] \
        [--min-histories 500000] [--bugs c-drop-reread,...]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from externref_harness.native.backend import open_library
from externref_harness.native.build import build_reference
from externref_harness.parallel.check import ParallelOptions, run_parallel_check

BUGS = ("c-nonatomic-count", "c-drop-reread", "c-clone-load-store")
BUILDS = ("debug", "release")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--limit", type=float, default=10.0, help="seconds per run")
    parser.add_argument(
        "--min-histories", type=int, default=500_000, help="of the correct reference, per build"
    )
    parser.add_argument("--bugs", default=",".join(BUGS), help="comma-separated, of " + ", ".join(BUGS))
    args = parser.parse_args()
    window = os.environ.get("XR_RACE_WINDOW_NS")
    if window is not None and not window.isdigit():
        parser.error(f"XR_RACE_WINDOW_NS={window!r}: expected a number of nanoseconds")
    defines = None if window is None else {"XR_RACE_WINDOW_NS": window}
    label = "5 us pause" if window is None else "no pause" if int(window) == 0 else f"{window} ns pause"
    print(f"load average at the start: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    missed = 0
    for bug in args.bugs.split(","):
        for build in BUILDS:
            library = open_library(build_reference(build, bug=bug, defines=defines))
            times: list[float] = []
            for seed in range(args.runs):
                opts = ParallelOptions(
                    histories=10**12, time_limit=args.limit, seed=seed, shrink_time=0.0, replay_runs=1
                )
                out = run_parallel_check(library, opts)
                # A batch started before the limit may end after it: such a catch does not count.
                if out.detected_after is not None and out.detected_after <= args.limit:
                    times.append(out.detected_after)
            missed += args.runs - len(times)
            shown = "-"
            if times:
                shown = f"median {statistics.median(times):.2f} s, slowest {max(times):.2f} s"
            print(
                f"{bug:<18} {build:<7} {label:<10} caught {len(times)}/{args.runs} within "
                f"{args.limit:.0f} s ({shown})",
                flush=True,
            )
    rates: dict[str, float] = {}
    alarms = 0
    total = 0
    for build in BUILDS:
        library = open_library(build_reference(build))
        histories, seconds, overlapping, seed = 0, 0.0, 0, 0
        perturbation = ""
        while histories < args.min_histories:
            opts = ParallelOptions(histories=args.min_histories - histories, time_limit=10**6, seed=seed)
            out = run_parallel_check(library, opts)
            alarms += not out.passed
            histories += out.histories
            seconds += out.seconds
            overlapping += out.overlapping
            perturbation = out.perturbation
            seed += 1
        total += histories
        rates[build] = histories / seconds
        print(
            f"{'correct':<18} {build:<7} {histories} histories in {seconds:.1f} s, "
            f"{'no false alarm' if not alarms else f'{alarms} FALSE ALARMS'}, "
            f"{rates[build]:.0f} histories/s, "
            f"{100 * overlapping / histories:.0f}% with calls of two threads overlapping; {perturbation}",
            flush=True,
        )
    verdict = "no false alarm" if not alarms else f"{alarms} FALSE ALARMS"
    print(f"{'correct':<18} both    {total} histories, {verdict}")
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"load average at the end: {load} ({time.strftime('%H:%M')})")
    print(f"threads_histories_per_s={rates['release']:.0f}")
    return 1 if alarms or missed else 0


if __name__ == "__main__":
    sys.exit(main())
