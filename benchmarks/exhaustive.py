"""Seconds of `gate LIB --exhaustive` on the C reference against seconds of `explore`, same bounds.

Both are run as the commands a user runs (a process each, wall-clock, start-up included), on the
same bounds: `explore`'s by default (2 refs, a chunk of 2, 2 frames, 2 slots), smaller ones with the
bound options `explore` takes (`--refs 1 --frames 1`, ...). The gate runs with `--no-threads` (the
parallel check is not part of the bounded space) and must cover every transition: the figures are
read from its JSON report, and a run that did not cover them all, or failed, is an error. Its
describe and corpus cases (a second or two) are part of its time, as they are of any gate run.
`explore` runs before the gate and after it, and the mean of the two is its figure (this machine's
speed drifts over the minutes the gate takes). `gate_cpu_s` is the CPU of the gate's processes
together, which says how much work there was when the two processes' overlap varies. The last
line is `exhaustive_vs_explore=<gate seconds / explore seconds>` (target at most 30).

    .venv/bin/python benchmarks/exhaustive.py [--refs N --frames N ...] [--build debug|release] [--log FILE]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from externref_harness.cli.explore import add_bound_arguments, bounds_given
from externref_harness.native.build import build_reference

CLI = [sys.executable, "-m", "externref_harness.cli"]


def bound_options(args: argparse.Namespace) -> list[str]:
    out: list[str] = []
    for name, value in bounds_given(args).items():
        option = f"--{name.replace('_', '-')}"
        if isinstance(value, bool):
            out.append(option if value else f"--no-{name.replace('_', '-')}")
        else:
            out += [option, str(value)]
    return out


def timed(command: list[str]) -> tuple[float, float, subprocess.CompletedProcess[str]]:
    """Wall-clock seconds, CPU seconds (the command's processes and every one they waited for),
    and the result."""
    cpu = _children_cpu()
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    return time.perf_counter() - started, _children_cpu() - cpu, done


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def explore_once(bounds: list[str], build: str) -> tuple[float, int]:
    """`explore`'s seconds and transitions; an error if it did not exhaust the space."""
    seconds, _, explored = timed([*CLI, "explore", *bounds, "--quiet", "--build", build])
    if explored.returncode != 0:
        raise SystemExit(f"explore did not exhaust the space:\n{explored.stdout}{explored.stderr}")
    return seconds, int(re.search(r"transitions\s*│\s*([\d,]+)", explored.stdout)[1].replace(",", ""))  # type: ignore[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_bound_arguments(parser)
    parser.add_argument("--build", choices=("debug", "release"), default="debug")
    parser.add_argument("--log", type=Path, help="also write the gate's output (its progress lines) here")
    args = parser.parse_args()
    bounds = bound_options(args)
    library = build_reference(args.build)
    # `explore` runs before and after the gate, and its mean is the figure: this machine's speed
    # drifts over the minutes the gate takes, and one side measured only before it would carry
    # the drift into the ratio.
    explore_before, transitions = explore_once(bounds, args.build)
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "gate.json"
        gate_s, gate_cpu, gated = timed([
            *CLI, "gate", str(library), "--exhaustive", *bounds, "--no-threads",
            "--json", str(report), "--failures", scratch,
        ])  # fmt: skip
        if args.log is not None:
            args.log.write_text(gated.stdout + gated.stderr)
        if gated.returncode != 0:
            raise SystemExit(f"the gate did not pass:\n{gated.stdout[-3000:]}{gated.stderr}")
        cases = json.loads(report.read_text())["cases"]
    explore_after, _ = explore_once(bounds, args.build)
    explore_s = (explore_before + explore_after) / 2
    (case,) = [c for c in cases if c["kind"] == "exhaustive"]
    covered = re.search(r"([\d,]+) of ([\d,]+) transitions covered", case["detail"])
    assert covered is not None, case["detail"]
    done, total = (int(x.replace(",", "")) for x in covered.groups())
    if not done == total == transitions:
        raise SystemExit(f"covered {done} of {total} transitions; explore counts {transitions}")
    print(f"bounds: {' '.join(bounds) or '(explore defaults)'}; {transitions:,} transitions")
    print(f"explore_s={explore_s:.2f} (before the gate {explore_before:.2f}, after it {explore_after:.2f})")
    print(f"gate_exhaustive_s={gate_s:.2f} (exhaustive case {case['seconds']:.2f}s: {case['detail']})")
    print(f"gate_cpu_s={gate_cpu:.2f} (its processes together: the lockstep's and the implementation's)")
    print(f"exhaustive_vs_explore={gate_s / explore_s:.1f}")


if __name__ == "__main__":
    main()
