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
    p.add_argument(
        "--build", choices=("debug", "release"), default=None,
        help="the build to check: debug (the seed's debug assertions on, the default) or release; "
        "a native library is checked as the build it describes itself as",
    )  # fmt: skip
    p.add_argument("--mutant", metavar="NAME", default=None, help="run with this seeded bug")
    p.add_argument(
        "--only", metavar="CHECK", action="append", default=None,
        help=f"run only these checks ({', '.join(c.name for c in CHECKS)})",
    )  # fmt: skip
    p.add_argument("--failures", type=Path, default=None, help="where to save failing traces")
    p.add_argument(
        "--impl", type=Path, default=None, metavar="PATH.so",
        help="check this native library (the C ABI of native/externref_abi.h) instead of the "
        "Python port; runs the checks of an implementation (lockstep) only",
    )  # fmt: skip
    p.add_argument(
        "--chunk-size", type=int, default=None, metavar="N",
        help="bump-chunk slots of the lockstep run (default: 2, or a native library's fixed size)",
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    if args.mutant is not None:
        catalogue.find(args.mutant)
    names = {c.name for c in CHECKS}
    for name in args.only or ():
        if name not in names:
            raise UsageError(f"unknown check {name!r}; choose from {sorted(names)}")
    if args.impl is not None:
        wrong = [c.name for c in CHECKS if args.only and c.name in args.only and not c.checks_impl]
        if wrong:
            raise UsageError(f"--only {', '.join(wrong)} checks the harness itself, not --impl")
        if args.mutant is not None and catalogue.find(args.mutant).layer == "impl":
            raise UsageError(f"mutant {args.mutant!r} is a bug of the Python port, not of --impl")
    native_only = [c.name for c in CHECKS if c.needs_impl and args.only and c.name in args.only]
    if args.impl is None and native_only:
        raise UsageError(
            f"--only {', '.join(native_only)}: not applicable without --impl PATH.so (the parallel "
            "check runs real threads on a native library; the Python port is not thread-safe by design)"
        )
    if args.chunk_size is not None and args.chunk_size < 1:
        raise UsageError("--chunk-size must be at least 1")
    selected = [
        c
        for c in CHECKS
        if (not args.only or c.name in args.only)
        and (c.checks_impl if args.impl is not None else not c.needs_impl)
    ]
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
    if args.impl is not None:
        from externref_harness.lockstep import LOCKSTEP_CONFIG
        from externref_harness.targets import native_target

        # Refuse a bad library, or a build or chunk size it cannot run at, before any check runs.
        native_target(args.impl).config(LOCKSTEP_CONFIG, args.build, args.chunk_size)
    opts = CheckOptions(
        chosen,
        args.build or "debug",
        args.mutant,
        args.failures or failures_dir(),
        args.impl,
        args.chunk_size,
        build_given=args.build is not None,
    )
    ensure_writable(opts.failures, is_dir=True)

    console = Console()
    table = Table("check", "result", "figures", "time", title=f"externref-harness check ({profile})")
    failed = []
    for check in selected:
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
