"""`externref-harness fuzz`: a campaign of worker processes sharing one example database.

A live table on a terminal; off one (CI logs), one plain progress line every few seconds. Every
failure is printed when it is first found; at the time limit or on Ctrl-C a final summary. Exit 0
when nothing failed, 1 when something did, 2 on bad input or when a trace could not be saved.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from externref_harness import catalogue
from externref_harness.campaign.campaign import (
    IMPL_CHECKS,
    STOP_GRACE,
    Campaign,
    CampaignOptions,
    FailureRecord,
    check_impl_checks,
    fuzz_targets,
)
from externref_harness.checks.plan import CHECKS
from externref_harness.errors import UsageError
from externref_harness.isolation.pool import DEFAULT_STEP_TIMEOUT, replay_args
from externref_harness.model.state import Build
from externref_harness.search.databases import open_database
from externref_harness.search.model_check import REQUIRED_EVENTS
from externref_harness.trace import ensure_writable, failures_dir

DEFAULT_CHECKS = ("model", "lockstep")


EXIT_STATUS = (
    "0 the campaign found no failure, 1 it found failures (each saved and replayable), "
    "2 bad input (a bad --database URL, an unreachable Redis, an unwritable trace directory)."
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    searchable = ",".join(c.name for c in CHECKS if c.target is not None)
    p.add_argument(
        "--workers", type=int, default=os.cpu_count() or 1, help="worker processes (default: cores)"
    )
    p.add_argument("--time-limit", type=float, default=600.0, metavar="S", help="seconds (default 600)")
    p.add_argument(
        "--database", metavar="DIR|redis://HOST:PORT/DB", default=None,
        help="the shared example database (default: the local .hypothesis/examples)",
    )  # fmt: skip
    p.add_argument(
        "--checks", default=",".join(DEFAULT_CHECKS), metavar="LIST",
        help=f"comma-separated checks to search (of {searchable}; default {','.join(DEFAULT_CHECKS)})",
    )  # fmt: skip
    p.add_argument("--mutant", metavar="NAME", default=None, help="search with this seeded bug")
    p.add_argument(
        "--build", choices=("debug", "release"), default=None,
        help="which build of the seed the workers search: debug (assertions on, the default) or "
        "release; with --impl, the library's own",
    )  # fmt: skip
    p.add_argument(
        "--impl", type=Path, default=None, metavar="PATH.so",
        help="search this native library (the C ABI) in lockstep with the model, loaded only in "
        "each worker's child processes: a crash or a hang is a failure, shrunk and saved "
        f"(checks: {','.join(IMPL_CHECKS)})",
    )  # fmt: skip
    p.add_argument(
        "--step-timeout", type=float, default=DEFAULT_STEP_TIMEOUT, metavar="S",
        help=f"with --impl, a step that takes longer is a hang (default {DEFAULT_STEP_TIMEOUT:g})",
    )  # fmt: skip
    p.add_argument("--failures", type=Path, default=None, help="where to save failing traces")
    p.add_argument("--seed", type=int, default=None, help="the first worker's seed (default: random)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="write the summary as JSON")
    p.add_argument(
        "--progress-every",
        type=float,
        default=5.0,
        metavar="S",
        help="plain progress line interval off a terminal",
    )


def options_from(args: argparse.Namespace) -> CampaignOptions:
    if args.impl is not None and args.checks == ",".join(DEFAULT_CHECKS):
        args.checks = ",".join(IMPL_CHECKS)
    checks = tuple(name.strip() for name in args.checks.split(",") if name.strip())
    if not checks:
        raise UsageError("--checks: name at least one check")
    if args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    if not args.time_limit > 0:
        raise UsageError(f"--time-limit must be positive, got {args.time_limit}")
    if not args.progress_every > 0:
        raise UsageError(f"--progress-every must be positive, got {args.progress_every}")
    if not (math.isfinite(args.step_timeout) and args.step_timeout > 0):
        raise UsageError(f"--step-timeout must be a positive number of seconds, got {args.step_timeout}")
    if args.impl is None:
        args.build = args.build or "debug"
        fuzz_targets(checks, None, args.build)
    else:
        args.build = _impl_build(args, checks)
    if args.mutant is not None:
        catalogue.find(args.mutant)
        by_name = {c.name: c for c in CHECKS}
        if not any(by_name[name].exercises(args.mutant) for name in checks):
            raise UsageError(f"mutant {args.mutant!r} is not exercised by the checks {','.join(checks)}")
    failures = args.failures or failures_dir()
    ensure_writable(failures, is_dir=True)
    if args.json is not None:
        ensure_writable(args.json)
    open_database(args.database)
    return CampaignOptions(
        checks, args.workers, args.time_limit, args.database, failures, args.mutant, args.build, args.seed,
        impl=args.impl, step_timeout=args.step_timeout,
    )  # fmt: skip


def _impl_build(args: argparse.Namespace, checks: tuple[str, ...]) -> Build:
    """`--impl`'s checks and mutant are those of an implementation; the library is described in
    a child (a bad one: one line, exit 2) and runs as the build it says it is."""
    check_impl_checks(checks)
    if args.mutant is not None and catalogue.find(args.mutant).layer == "impl":
        raise UsageError(f"mutant {args.mutant!r} is a bug of the Python port, not of --impl")
    if not str(args.impl):
        raise UsageError("--impl needs a path, got an empty string")
    from externref_harness.lockstep.runner import LOCKSTEP_CONFIG
    from externref_harness.lockstep.targets import open_isolated

    target, pool = open_isolated(args.impl)
    pool.close()
    return target.config(LOCKSTEP_CONFIG, args.build, None).build


def run(args: argparse.Namespace) -> int:
    options = options_from(args)
    console = Console()
    campaign = Campaign(options)
    shown: set[str] = set()
    pids: set[int] = set()
    interrupted = False

    def report_news() -> None:
        for w in campaign.workers:
            if w.pid is not None and w.pid not in pids:
                pids.add(w.pid)
                print(f"worker {w.index}: pid {w.pid}, seed {w.seed}", flush=True)
        for f in campaign.failures.values():
            if f.fingerprint not in shown:
                shown.add(f.fingerprint)
                print(failure_line(len(shown), f, options.impl, options.step_timeout), flush=True)

    campaign.start()
    live = (
        Live(render(campaign), console=console, refresh_per_second=2, transient=True)
        if console.is_terminal
        else None
    )
    last_line = time.time()
    try:
        if live is not None:
            live.start()
        while campaign.running and time.time() < campaign.deadline + STOP_GRACE:
            for notice in campaign.poll(0.25):
                print(f"externref-harness fuzz: {notice}", file=sys.stderr, flush=True)
            report_news()
            if live is not None:
                live.update(render(campaign))
            elif time.time() - last_line >= args.progress_every:
                last_line = time.time()
                print(progress_line(campaign), flush=True)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if live is not None:
            live.stop()
        campaign.stop()
    report_news()
    summary = campaign.summary()
    summary["interrupted"] = interrupted
    print_summary(console, campaign, interrupted)
    if args.json is not None:
        args.json.write_text(json.dumps(summary, indent=1) + "\n")
    if campaign.fatal is not None:
        print(f"externref-harness fuzz: error: {campaign.fatal}", file=sys.stderr)
        return 2
    return 1 if campaign.failures else 0


def failure_line(
    number: int, f: FailureRecord, impl: Path | None = None, step_timeout: float = DEFAULT_STEP_TIMEOUT
) -> str:
    how = "replayed from the database" if f.source == "database" else "found"
    shrunk = f" (shrunk from {f.original_steps})" if f.original_steps else ""
    return (
        f"failure {number}: {f.check}: {f.invariant}: {f.steps} steps{shrunk}, {how} by worker {f.found_by}"
        f" at {f.at:.1f}s; externref-harness replay {f.trace}"
        + ("" if impl is None else f" {replay_args(impl, step_timeout)}")
    )


def progress_line(c: Campaign) -> str:
    examples, steps, examples_rate, steps_rate = c.totals()
    duplicates = sum(f.duplicates for f in c.failures.values())
    alive = sum(1 for w in c.workers if not w.done)
    return (
        f"[{c.elapsed():7.1f}s] examples {examples} ({examples_rate:.1f}/s),"
        f" steps {steps} ({steps_rate:.0f}/s), paths {c.covered()}/{len(REQUIRED_EVENTS)},"
        f" failures {len(c.failures)} ({duplicates} duplicates),"
        f" workers {alive}/{len(c.workers)}"
    )


def worker_table(c: Campaign) -> Table:
    table = Table("worker", "pid", "seed", "examples", "examples/s", "steps", "steps/s", title="workers")
    for w in c.workers:
        ex_rate, st_rate = w.rates()
        restarted = f" (restarted {w.restarts}x)" if w.restarts else ""
        table.add_row(
            f"{w.index}{restarted}", str(w.pid or "-"), str(w.seed), str(w.examples), f"{ex_rate:.1f}",
            str(w.steps), f"{st_rate:.0f}",
        )  # fmt: skip
    examples, steps, examples_rate, steps_rate = c.totals()
    table.add_row("total", "", "", str(examples), f"{examples_rate:.1f}", str(steps), f"{steps_rate:.0f}")
    return table


def coverage_table(c: Campaign) -> Table:
    table = Table("path", "first reached", title=f"paths covered {c.covered()}/{len(REQUIRED_EVENTS)}")
    for label in REQUIRED_EVENTS:
        at = c.first_reached.get(label)
        table.add_row(label, "-" if at is None else f"{at:.1f}s")
    return table


def failure_table(c: Campaign) -> Table:
    table = Table("check", "invariant", "steps", "worker", "at", "duplicates", title="failures")
    table.add_column("trace", overflow="fold")  # a path to copy, never cut short
    for f in c.failures.values():
        table.add_row(
            f.check,
            f.invariant,
            str(f.steps),
            str(f.found_by),
            f"{f.at:.1f}s",
            str(f.duplicates) + (f" ({f.unshrunk_hangs} unshrunk hangs)" if f.unshrunk_hangs else ""),
            f.trace,
        )
    return table


def render(c: Campaign) -> Group:
    where = c.options.database or "local"
    title = f"externref-harness fuzz: {c.elapsed():.0f}s of {c.options.time_limit:.0f}s, database {where}"
    return Group(title, worker_table(c), coverage_table(c), failure_table(c))


def print_summary(console: Console, c: Campaign, interrupted: bool) -> None:
    ended = "interrupted" if interrupted else "time limit reached"
    console.rule(f"campaign summary ({ended} after {c.elapsed():.1f}s)")
    console.print(worker_table(c))
    console.print(coverage_table(c))
    if c.failures:
        console.print(failure_table(c))
    if c.fallback is not None:
        console.print(f"database: fell back to the local database {c.fallback}", markup=False)
    verdict: Any = f"[red]{len(c.failures)} distinct failure(s)[/]" if c.failures else "[green]no failures[/]"
    console.print(verdict)
