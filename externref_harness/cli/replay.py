"""`externref-harness replay TRACE`: run a saved trace on the model and the ctypes implementation.

Prints the numbered steps with the model's observations, then where each side first fails. A trace
saved with a failure (its `note`) that now runs clean is said to be stale, not shown beside "no
failure" as if it still failed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from externref_harness import paths
from externref_harness import trace as tracefile
from externref_harness.cli import replay_dir
from externref_harness.cli.numbers import whole_number
from externref_harness.errors import UsageError, printable, shown_path, user_path
from externref_harness.impl.interface import ImplAdapter, PlainOp, PlainReport, Probe, StepOutcome
from externref_harness.lockstep import runner as lockstep
from externref_harness.model import capabilities
from externref_harness.model.transition import run as run_model
from externref_harness.progress import progress
from externref_harness.report import format_steps, full_output

EXIT_STATUS = (
    "0 neither side fails (a stale trace whose recorded failure no longer happens included), "
    "1 the model or the implementation fails, 2 a malformed, unreadable or incompatible trace, "
    "130 interrupted."
)
#: The longest trace replayed unless `--max-steps` says otherwise. The raw-memory checks after every
#: step grow with the live refs, so a long trace that keeps thousands alive is slow (5,000 steps
#: holding up to 2,500 refs: tens of seconds); progress lines say how far it is.
DEFAULT_MAX_STEPS = 5_000
#: How much of a recorded note is printed.
NOTE_LIMIT = 500


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("trace", metavar="TRACE", help="a trace file saved by explore, check, prove or a test")
    p.add_argument(
        "--max-steps", type=whole_number(1, 10_000_000), default=DEFAULT_MAX_STEPS, metavar="N",
        help=f"refuse a trace of more than N steps (default {DEFAULT_MAX_STEPS:,})",
    )  # fmt: skip
    p.add_argument("--full", action="store_true", help="print long lists in full, not summarised")
    paths.add_json_option(p)
    p.add_argument(
        "--impl", type=Path, default=None, metavar="PATH.so",
        help="replay on this native library (the C ABI) instead of the Python port",
    )  # fmt: skip
    replay_dir.add_arguments(p)
    p.add_argument(
        "--runs", type=int, default=None, metavar="N",
        help="a parallel trace (saved by the threads check) is rerun N times (default 100) and the "
        "failure rate printed: interleavings are not reproducible",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from externref_harness.parallel.program import is_parallel_trace
    from externref_harness.parallel.replay import replay_parallel

    path = user_path(args.trace, "TRACE")
    if is_parallel_trace(path):
        if args.step_timeout is not None:
            raise UsageError("--step-timeout applies to sequential traces (a parallel run has its own limit)")
        return replay_parallel(path, args.impl, args.runs)
    if args.runs is not None:
        raise UsageError("--runs applies to parallel traces only (a sequential trace replays exactly)")
    if replay_dir.wants_this_module(path):  # a directory, or a corpus file
        return replay_dir.run(args)
    json_file = None
    if args.json_file is not None:
        json_file = user_path(args.json_file, "--json")
        paths.check_file(json_file, "--json")
        if json_file.resolve() == path.resolve():
            raise UsageError("--json would overwrite the trace being replayed")
    trace = replay_dir.load(path, args.max_steps)
    # A native library is described and replayed in confined children: a crash is reported,
    # never the harness's.
    chosen, pool = replay_dir.open_target(args)
    try:
        override = replay_dir.mutant_override(args, chosen)
        trace = replay_dir.override_trace(trace, override)
        cfg = trace.config
        behaviour = [c for c in cfg.capabilities if c not in capabilities.RELAXATIONS]
        if chosen.description is None and behaviour:
            raise UsageError(
                f"{shown_path(path)} was recorded with {', '.join(behaviour)}, which the Python port "
                "(the seed) does not have: replay it with --impl and the library that declares them"
            )
        if chosen.description is not None:
            # The trace's config must be one the library can run (its build, its chunk size).
            chosen.config(cfg, cfg.build, cfg.chunk_size)
            # The model runs with the library's capabilities; a step it lacks the function of is
            # refused in one line (`lockstep.check_available`).
            trace = replay_dir.adopt_capabilities(trace, chosen)
            cfg = trace.config
            lockstep.check_available(cfg, trace.steps)
    except BaseException:
        if pool is not None:
            pool.close()
        raise
    counting = _Counting(chosen.adapter_factory())
    total = len(trace.steps)

    def where() -> str:
        done = counting.steps
        return f"step {done:,} of {total:,}" if done <= total else f"teardown step {done - total:,}"

    try:
        with progress("replay", where):
            report = lockstep.replay(trace, counting, lockstep.LockstepOptions(impl_name=chosen.name))
    finally:
        if pool is not None:
            pool.close()
    observations = [obs for _, obs in run_model(cfg, trace.steps)]
    failing = report.model_failure[0] if report.model_failure is not None else None
    failed = report.model_failure is not None or report.impl_failure is not None
    # With the seeded bug overridden the recorded failure is not expected to happen: not stale.
    overridden = args.mutant is not None or args.no_mutant
    stale = bool(trace.note) and not failed and not overridden
    with full_output(args.full):
        print(f"trace {shown_path(path)}: {len(trace.steps)} steps ({cfg.build} build, mutant={cfg.mutant})")
        if trace.note and not stale:
            print(f"recorded when saved: {printable(trace.note)[:NOTE_LIMIT]}")
        print(format_steps(trace.steps, observations, failing) or "(no steps)")
    print(printable_report(report.describe()))
    if stale:
        print(
            "STALE: the failure recorded in this trace no longer happens; its steps do not reach it "
            "(the trace was edited, or the harness changed since it was saved). Recorded: "
            + printable(trace.note)[:NOTE_LIMIT]
        )
    print("FAILED" if failed else "no failure")
    status = 1 if failed else 0
    if json_file is not None:
        _write_json(json_file, path, trace, report, status, stale)
    return status


class _Counting:
    """The implementation, counting the steps it was given (for the progress lines)."""

    def __init__(self, inner: ImplAdapter) -> None:
        self.inner = inner
        self.steps = 0

    def start(self, config: Mapping[str, Any]) -> None:
        self.inner.start(config)

    def step(self, op: PlainOp, embedder_capacity: int | None = None) -> StepOutcome:
        self.steps += 1
        return self.inner.step(op, embedder_capacity)

    def probe(self) -> Probe:
        return self.inner.probe()

    def finish(self) -> tuple[PlainReport, ...]:
        return self.inner.finish()

    def close(self) -> None:
        self.inner.close()


def printable_report(text: str) -> str:
    return "\n".join(printable(line) for line in text.splitlines())


def _write_json(
    json_file: Path,
    path: Path,
    trace: tracefile.Trace,
    report: lockstep.ReplayReport,
    status: int,
    stale: bool,
) -> None:
    def side(failure: tuple[int, str] | None) -> dict[str, Any] | None:
        if failure is None:
            return None
        at_teardown = failure[0] == report.steps + 1
        return {"step": None if at_teardown else failure[0], "teardown": at_teardown, "problem": failure[1]}

    obj = {
        "command": "replay",
        "status": status,
        "passed": status == 0,
        "trace": str(path),
        "steps": len(trace.steps),
        "config": trace.to_json()["config"],
        "recorded_note": trace.note,
        "stale": stale,
        "model_failure": side(report.model_failure),
        "implementation_failure": side(report.impl_failure),
    }
    paths.write_atomically(json_file, json.dumps(obj, indent=1) + "\n")
