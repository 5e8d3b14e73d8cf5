"""The parallel check's rates: histories per second, and the detection rate and time of each race bug.

For each seeded race bug of the C reference (`c-nonatomic-count`, `c-drop-reread`) in each build,
`--runs` consecutive runs of the parallel check (seeds 0, 1, ...; no shrinking, so the time is the
time to the first failing history), each with a `--limit` second budget: how many caught it, and
the median and slowest time to detection. The switches pause 5 us inside their race window; the
same is measured (`--narrow-runs`, release) with no pause (`-DXR_RACE_WINDOW_NS=0`), which only
informs: it does not decide the exit status. Then the correct reference, debug and release, runs the
same programs (for each seed, as many histories as the slowest bug run of that seed needed, and at
least `--min-histories`): it must raise no alarm. Histories per second is that of the correct
release build, measured in the same run. The last line is `threads_histories_per_s=<x>`.

    .venv/bin/python benchmarks/threads.py [--runs 20] [--limit 10] [--min-histories 500] [--narrow-runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys

from externref_harness.native.backend import open_library
from externref_harness.native.build import build_reference
from externref_harness.parallel.check import ParallelOptions, run_parallel_check

BUGS = ("c-nonatomic-count", "c-drop-reread")
BUILDS = ("debug", "release")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--limit", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--min-histories", type=int, default=500)
    parser.add_argument("--narrow-runs", type=int, default=5, help="runs with no pause in the window")
    args = parser.parse_args()
    needed: dict[int, int] = {}
    missed = 0
    # (window ns, builds, runs): the switches as shipped, then with no pause in the window at all.
    plans = [(None, BUILDS, args.runs), ("0", ("release",), args.narrow_runs)]
    for bug in BUGS:
        for window, builds, runs in plans:
            for build in builds:
                defines = None if window is None else {"XR_RACE_WINDOW_NS": window}
                library = open_library(build_reference(build, bug=bug, defines=defines))
                times: list[float] = []
                for seed in range(runs):
                    opts = ParallelOptions(
                        histories=10**9, time_limit=args.limit, seed=seed, shrink_time=0.0, replay_runs=1
                    )
                    out = run_parallel_check(library, opts)
                    needed[seed] = max(needed.get(seed, 0), out.histories)
                    if out.detected_after is not None:
                        times.append(out.detected_after)
                if window is None:
                    missed += runs - len(times)
                shown = "-"
                if times:
                    shown = f"median {statistics.median(times):.2f} s, slowest {max(times):.2f} s"
                label = "5 us pause" if window is None else "no pause"
                print(
                    f"{bug:<18} {build:<7} {label:<10} caught {len(times)}/{runs} within "
                    f"{args.limit:.0f} s ({shown})"
                )
    rates: dict[str, float] = {}
    alarms = 0
    for build in BUILDS:
        library = open_library(build_reference(build))
        histories, seconds, overlapping = 0, 0.0, 0
        for seed in range(args.runs):
            budget = max(needed.get(seed, 0), args.min_histories)
            opts = ParallelOptions(histories=budget, time_limit=10 * args.limit, seed=seed, shrink_time=0.0)
            out = run_parallel_check(library, opts)
            alarms += not out.passed
            histories += out.histories
            seconds += out.seconds
            overlapping += out.overlapping
        rates[build] = histories / seconds
        print(
            f"{'correct':<18} {build:<7} {histories} histories in {args.runs} runs, "
            f"{'no false alarm' if not alarms else f'{alarms} FALSE ALARMS'}, "
            f"{rates[build]:.0f} histories/s, "
            f"{100 * overlapping / histories:.0f}% with calls of two threads overlapping"
        )
    print(f"threads_histories_per_s={rates['release']:.0f}")
    return 1 if alarms or missed else 0


if __name__ == "__main__":
    sys.exit(main())
