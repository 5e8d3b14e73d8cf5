"""`externref-harness gate PATH.so`: hold a native implementation to the seed, crash-isolated.

Runs the library's description, the conformance corpus, the lockstep search and the parallel
check in a child process, prints a table of cases, and writes JUnit XML and JSON reports.
"""

from __future__ import annotations

import argparse
import math
import re
import time
from pathlib import Path

from hypothesis import settings
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from externref_harness import paths
from externref_harness.cli.explore import add_bound_arguments, exhaustive_bounds
from externref_harness.cli.numbers import count, whole_number
from externref_harness.errors import UsageError, user_path
from externref_harness.explore.explorer import ExploreBounds
from externref_harness.gate import expectations
from externref_harness.gate.cases import LEVELS, GateOptions, GateReport
from externref_harness.gate.reports import write_json, write_junit
from externref_harness.gate.runner import run_gate
from externref_harness.isolation.describe import LibraryRefused
from externref_harness.isolation.pool import DEFAULT_STEP_TIMEOUT
from externref_harness.search import profiles

EXIT_STATUS = (
    "0 the implementation passes (expected divergences allowed), 1 it fails a case "
    "(a divergence, a crash or a hang), 2 bad input (a bad library, expectations file or option)"
)
STYLE = {"pass": "green", "fail": "red", "expected-fail": "yellow", "skip": "dim"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("library", type=Path, metavar="PATH.so", help="the implementation (the C ABI)")
    p.add_argument(
        "--level", choices=sorted(LEVELS), default="strict",
        help="strict: the seed exactly (layout, drop order, capacity in bytes); conformant: what any "
        "correct implementation of the design must do (default: strict)",
    )  # fmt: skip
    p.add_argument(
        "--expect", type=Path, default=None, metavar="FILE",
        help="an expectations file (TOML or JSON) of known divergences, each with a reason",
    )  # fmt: skip
    p.add_argument(
        "--time-limit", type=float, default=None, metavar="S",
        help="stop the lockstep search after S seconds (default: the profile's budget)",
    )  # fmt: skip
    p.add_argument(
        "--step-timeout", type=float, default=DEFAULT_STEP_TIMEOUT, metavar="S",
        help=f"a step that takes longer is a hang (default {DEFAULT_STEP_TIMEOUT:g})",
    )  # fmt: skip
    p.add_argument("--junit", default=None, metavar="FILE", help="write a JUnit XML report")
    p.add_argument("--json", default=None, metavar="FILE", help="write a JSON report")
    paths.add_failures_option(p)
    p.add_argument("--no-threads", action="store_true", help="skip the parallel reference-counting check")
    p.add_argument(
        "--hypothesis-profile", choices=profiles.PROFILES, default=None,
        help="the search's budget (default: ci when CI is set, else dev)",
    )  # fmt: skip
    p.add_argument(
        "--max-examples", type=count, default=None, metavar="N", help="override the profile's budget"
    )
    p.add_argument(
        "--seed", type=whole_number(0, 2**64 - 1), default=None, metavar="N",
        help="the search's Hypothesis seed; with --time-limit the search runs in rounds with seeds "
        "N, N+1, ... (default: 0 under the ci profile, a random one otherwise; printed either way)",
    )  # fmt: skip
    p.add_argument(
        "--chunk-size", type=count, default=None, metavar="N",
        help="bump-chunk slots of the search (default: 2 when the library can, else its own)",
    )  # fmt: skip
    exhaustive = p.add_argument_group(
        "exhaustive conformance",
        "--exhaustive runs every transition of the bounded model graph `explore` enumerates (its "
        "bounds, the same defaults) on the library, in place of the Hypothesis search, and reports "
        "the transitions covered out of the total; a divergence is shrunk and saved for replay",
    )
    exhaustive.add_argument(
        "--exhaustive", action="store_true",
        help="every transition of the bounded model graph instead of the Hypothesis search",
    )  # fmt: skip
    add_bound_arguments(exhaustive)


def run(args: argparse.Namespace) -> int:
    for name in ("time_limit", "step_timeout"):
        value = getattr(args, name)
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive number of seconds")
    bounds = _exhaustive_bounds(args)
    if not str(args.library):
        raise UsageError("PATH.so needs a path, got an empty string")
    expect = expectations.load(args.expect) if args.expect is not None else expectations.Expectations()
    reports: dict[str, Path | None] = {}
    for option, value in (("--junit", args.junit), ("--json", args.json)):
        path = None if value is None else user_path(value, option)
        if path is not None:
            paths.check_file(path, option)
        reports[option] = path
    failures = paths.failures_dir(args.failures)
    paths.check_dir(failures, paths.failures_source(args.failures))
    profile = args.hypothesis_profile or profiles.default_profile()
    base = settings.get_profile(profile)
    opts = GateOptions(
        library=args.library,
        level=args.level,
        expectations=expect,
        hypothesis_settings=settings(base, max_examples=args.max_examples or base.max_examples),
        time_limit=args.time_limit,
        step_timeout=args.step_timeout,
        failures=failures,
        threads=not args.no_threads,
        chunk_size=args.chunk_size,
        seed=args.seed,
        exhaustive=bounds,
    )
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    started = time.perf_counter()
    try:
        report = run_gate(opts, lambda stage: console.print(f"gate: {stage}...", style="dim"))
    except LibraryRefused as e:
        # Bad input all the same (exit 2, one line), but CI reads the reports it asked for.
        refused = GateReport.of_refusal(opts.library, opts.level, str(e))
        refused.seconds = time.perf_counter() - started
        _write_reports(reports, refused, expect)
        raise
    print_report(console, report, expect)
    _write_reports(reports, report, expect)
    return 0 if report.passed else 1


def _exhaustive_bounds(args: argparse.Namespace) -> ExploreBounds | None:
    """`--exhaustive`'s bounds; a bound without it, or a search option with it, is bad input."""
    unused = [(f"--{name.replace('_', '-')}", getattr(args, name))
              for name in ("chunk_size", "max_examples", "seed", "hypothesis_profile")]  # fmt: skip
    chosen = exhaustive_bounds(args, unused)
    return None if chosen is None else chosen[0]


def _write_reports(
    reports: dict[str, Path | None], report: GateReport, expect: expectations.Expectations
) -> None:
    if reports["--json"] is not None:
        write_json(reports["--json"], report, expect)
    if reports["--junit"] is not None:
        write_junit(reports["--junit"], report, expect)


def summary(detail: str) -> str:
    """A case's detail in one line: the named checks it failed, else its first line."""
    names = list(dict.fromkeys(re.findall(r"\[([a-z]+\.[a-z0-9.-]+)\]", detail)))
    first = detail.splitlines()[0] if detail else ""
    return f"failed {', '.join(names)}" if names else first


def print_report(console: Console, report: GateReport, expect: expectations.Expectations) -> None:
    desc = report.description
    assert desc is not None, "a refused library has no table"
    title = (
        f"externref-harness gate --level {report.level}: {desc.name} {desc.version} "
        f"({'debug' if desc.debug else 'release'}, chunk {desc.chunk_size}, "
        f"capabilities: {', '.join(desc.capabilities) or 'none (the seed)'})"
    )
    table = Table("kind", "case", "result", "time", "detail", title=title)
    for c in report.cases:
        detail = summary(c.detail)
        if c.expected_seen:
            detail = "expected: " + ", ".join(sorted(c.expected_seen)) + (f"; {detail}" if detail else "")
        table.add_row(
            c.kind, c.name, f"[{STYLE[c.status]}]{c.status}[/]", f"{c.seconds:.1f}s", escape(detail[:100])
        )
    for c in report.cases:
        if c.status == "fail" and c.detail:
            console.rule(f"[red]{c.kind}: {c.name}")
            console.print(c.detail, markup=False, highlight=False, soft_wrap=True)
    console.print(table)
    for name in report.stale:
        console.print(
            f"expected divergence {name!r} did not happen ({expect.divergences[name]}): "
            "the expectations file can drop it",
            style="yellow",
        )
    for line in report.not_checked:
        console.print(f"not checked: {line}", markup=False, highlight=False, soft_wrap=True, style="yellow")
    console.print(summary_line(report))


def summary_line(report: GateReport) -> str:
    """`passed: 36 cases, 0 failing, 0 skipped, in 1.3s`; the expected divergences and what the
    verdict did not check are counted too when there are any."""
    counts = report.counts()
    verdict = "[red]FAILED[/]" if counts["fail"] else "[green]passed[/]"
    parts = [f"{len(report.cases)} cases", f"{counts['fail']} failing", f"{counts['skip']} skipped"]
    if counts["expected-fail"]:
        parts.append(f"{counts['expected-fail']} expected-fail")
    if report.not_checked:
        parts.append(f"{len(report.not_checked)} not checked (above)")
    return f"{verdict}: {', '.join(parts)}, in {report.seconds:.1f}s"
