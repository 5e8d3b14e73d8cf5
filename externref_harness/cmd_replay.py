"""`externref-harness replay TRACE`: run a saved trace on the model and the ctypes implementation.

Prints the numbered steps with the model's observations, then where each side first fails.
Exit status: 0 if neither side fails, 1 if either does, 2 on a malformed or incompatible trace.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from externref_harness import catalogue, lockstep
from externref_harness import trace as tracefile
from externref_harness.errors import UsageError
from externref_harness.explore import LIMITS
from externref_harness.model.transition import run as run_model
from externref_harness.report import format_steps


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", type=Path, help="a trace file saved by explore, check or a test")
    p.add_argument(
        "--impl", type=Path, default=None, metavar="PATH.so",
        help="replay on this native library (the C ABI) instead of the Python port",
    )  # fmt: skip
    p.add_argument(
        "--runs", type=int, default=None, metavar="N",
        help="a parallel trace (saved by the threads check) is rerun N times (default 100) and the "
        "failure rate printed: interleavings are not reproducible",
    )  # fmt: skip


def load(path: Path) -> tracefile.Trace:
    """Load and check that this harness can run the trace (bad input: `TraceFormatError`)."""
    trace = tracefile.load(path)
    cfg = trace.config
    for name, value, bound in (
        ("chunk_size", cfg.chunk_size, LIMITS["chunk"][1]),
        ("slots", cfg.slots, LIMITS["slots"][1]),
        ("n_globals", cfg.n_globals, LIMITS["globals"][1]),
    ):
        if value > bound:
            raise tracefile.TraceFormatError(
                f"{path}: config {name}={value} is more than this harness runs (at most {bound})"
            )
    if trace.config.mutant is not None:
        try:
            catalogue.find(trace.config.mutant)
        except catalogue.UnknownMutant as e:
            raise tracefile.TraceFormatError(f"{path}: {e}") from None
    return trace


def run(args: argparse.Namespace) -> int:
    from externref_harness.parallel_check import replay_parallel
    from externref_harness.parallel_program import is_parallel_trace
    from externref_harness.targets import target

    if is_parallel_trace(args.trace):
        return replay_parallel(args.trace, args.impl, args.runs)
    if args.runs is not None:
        raise UsageError("--runs applies to parallel traces only (a sequential trace replays exactly)")
    trace = load(args.trace)
    chosen = target(args.impl)
    if chosen.description is not None:
        # The trace's config must be one the library can run (its build, its chunk size).
        chosen.config(trace.config, trace.config.build, trace.config.chunk_size)
    cfg = trace.config
    report = lockstep.replay(trace, chosen.adapter_factory(), lockstep.LockstepOptions(impl_name=chosen.name))
    observations = [obs for _, obs in run_model(cfg, trace.steps)]
    failing = report.model_failure[0] if report.model_failure is not None else None
    print(f"trace {args.trace}: {len(trace.steps)} steps ({cfg.build} build, mutant={cfg.mutant})")
    if trace.note:
        print(f"note: {trace.note}")
    print(format_steps(trace.steps, observations, failing) or "(no steps)")
    print(report.describe())
    failed = report.model_failure is not None or report.impl_failure is not None
    print("FAILED" if failed else "no failure")
    return 1 if failed else 0
