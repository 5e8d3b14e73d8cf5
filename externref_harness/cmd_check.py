"""`externref-harness check`: every registered check, a summary table, exit 1 on any failure."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from hypothesis import settings
from rich.console import Console
from rich.table import Table

from externref_harness import catalogue, profiles
from externref_harness.checks import CHECKS, CheckOptions
from externref_harness.databases import open_database
from externref_harness.errors import UsageError
from externref_harness.trace import ensure_writable, failures_dir


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hypothesis-profile",
        choices=profiles.PROFILES,
        default=None,
        help="budget and randomness (default: ci when CI is set, else dev)",
    )
    p.add_argument("--max-examples", type=int, default=None, help="override the profile's budget")
    p.add_argument("--build", choices=("debug", "release"), default="debug")
    p.add_argument("--mutant", metavar="NAME", default=None, help="run with this seeded bug")
    p.add_argument(
        "--only", metavar="CHECK", action="append", default=None,
        help=f"run only these checks ({', '.join(c.name for c in CHECKS)})",
    )  # fmt: skip
    p.add_argument("--failures", type=Path, default=None, help="where to save failing traces")
    p.add_argument(
        "--database", metavar="DIR|redis://HOST:PORT/DB", default=None,
        help="replay (and keep) examples in this example database, e.g. a `fuzz` campaign's",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.mutant is not None:
        catalogue.find(args.mutant)
    names = {c.name for c in CHECKS}
    for name in args.only or ():
        if name not in names:
            raise UsageError(f"unknown check {name!r}; choose from {sorted(names)}")
    selected = [c for c in CHECKS if not args.only or c.name in args.only]
    if args.mutant is not None and not any(c.exercises(args.mutant) for c in selected):
        raise UsageError(
            f"mutant {args.mutant!r} is not exercised by the selected checks "
            f"({', '.join(c.name for c in selected)}); it could not make them fail"
        )
    if args.max_examples is not None and args.max_examples < 1:
        raise UsageError("--max-examples must be at least 1")
    profile = args.hypothesis_profile or profiles.default_profile()
    base = settings.get_profile(profile)
    chosen = settings(base, max_examples=args.max_examples or base.max_examples)
    if args.database is not None:
        chosen = settings(chosen, database=open_database(args.database).database)
    opts = CheckOptions(chosen, args.build, args.mutant, args.failures or failures_dir())
    ensure_writable(opts.failures, is_dir=True)

    console = Console()
    table = Table("check", "result", "figures", "time", title=f"externref-harness check ({profile})")
    failed = []
    for check in CHECKS:
        if args.only and check.name not in args.only:
            continue
        started = time.perf_counter()
        with console.status(f"running {check.name}..."):
            result = check.run(opts)
        elapsed = time.perf_counter() - started
        figures = ", ".join(f"{k}={v}" for k, v in result.figures.items())
        verdict = "[green]pass[/]" if result.passed else "[red]FAIL[/]"
        table.add_row(result.name, verdict, figures, f"{elapsed:.1f}s")
        if not result.passed:
            failed.append(result)
    for result in failed:
        console.rule(f"[red]{result.name}")
        console.print(result.failure or "(no details)", markup=False, highlight=False, soft_wrap=True)
    console.print(table)
    console.print("[red]FAILED[/]" if failed else "[green]all checks passed[/]")
    return 1 if failed else 0
