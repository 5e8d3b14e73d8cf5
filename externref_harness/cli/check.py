"""`externref-harness check`: every registered check, a summary table, exit 1 on any failure.

With `--mutant NAME` one seeded bug is switched on and a check that cannot exercise it says "not
applicable" instead of running. With `--all-mutants` every seeded bug the selected checks exercise
is switched on in turn, each under the profile's budget, and each must be caught: the table is the
harness's mutation score.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from hypothesis import settings
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from externref_harness import catalogue, paths
from externref_harness.checks.plan import CHECKS, Check, CheckOptions, CheckResult
from externref_harness.cli.explore import add_bound_arguments, bounds_given, exhaustive_bounds
from externref_harness.cli.numbers import count
from externref_harness.errors import UsageError, shown, user_path
from externref_harness.model.mutants import Mutant
from externref_harness.progress import progress
from externref_harness.report import full_output
from externref_harness.search import profiles
from externref_harness.search.databases import open_database

EXIT_STATUS = (
    "0 every check passed (with --all-mutants: every seeded bug was caught), 1 a check failed (a "
    "seeded bug was missed), 2 bad input (nothing runs), 130 interrupted."
)
NOT_APPLICABLE = "not applicable"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--hypothesis-profile",
        choices=profiles.PROFILES,
        default=None,
        help="budget and randomness (default: $HYPOTHESIS_PROFILE, else ci when CI is set, else dev)",
    )
    p.add_argument(
        "--max-examples", type=count, default=None, metavar="N",
        help="examples per check, overriding the profile's budget",
    )  # fmt: skip
    p.add_argument(
        "--build", choices=("debug", "release"), default=None,
        help="which build of the seed runs: debug (its debug assertions on) or release (default debug; "
        "a native library runs as the build it describes itself as)",
    )  # fmt: skip
    group = p.add_mutually_exclusive_group()
    group.add_argument("--mutant", metavar="NAME", default=None, help="run with this seeded bug")
    group.add_argument(
        "--all-mutants", action="store_true",
        help="run each seeded bug the selected checks exercise, expecting each to be caught "
        "(no trace is saved; `check --mutant NAME` shows one)",
    )  # fmt: skip
    p.add_argument(
        "--only", metavar="CHECK", action="append", default=None,
        help=f"run only this check (repeatable): {', '.join(c.name for c in CHECKS)}",
    )  # fmt: skip
    paths.add_failures_option(p)
    paths.add_json_option(p)
    p.add_argument("--full", action="store_true", help="print long lists and diffs of a failure in full")
    p.add_argument(
        "--impl", type=Path, default=None, metavar="PATH.so",
        help="check this native library (the C ABI of native/externref_abi.h) instead of the "
        "Python port; only the checks of an implementation (lockstep) run",
    )  # fmt: skip
    p.add_argument(
        "--chunk-size", type=count, default=None, metavar="N",
        help="bump-chunk slots of the lockstep run (default: 2, or a native library's fixed size)",
    )  # fmt: skip
    p.add_argument(
        "--database", metavar="DIR|redis://HOST:PORT/DB", default=None,
        help="replay (and keep) examples in this example database, e.g. a `fuzz` campaign's",
    )  # fmt: skip
    exhaustive = p.add_argument_group(
        "exhaustive conformance",
        "--exhaustive runs every transition of the bounded model graph `explore` enumerates (its "
        "bounds, the same defaults) in lockstep on the Python port, or with --impl on the library "
        "in child processes, in place of the checks above; a divergence is shrunk and saved",
    )
    exhaustive.add_argument(
        "--exhaustive", action="store_true",
        help="every transition of the bounded model graph, on the Python port or --impl",
    )  # fmt: skip
    add_bound_arguments(exhaustive)


@dataclass
class Row:
    check: Check
    result: CheckResult | None
    seconds: float

    @property
    def verdict(self) -> str:
        if self.result is None:
            return NOT_APPLICABLE
        return "pass" if self.result.passed else "fail"


@dataclass
class Plan:
    selected: list[Check]
    profile: str
    settings: settings
    failures: Path | None
    json_file: Path | None
    build_given: bool = False


def plan(args: argparse.Namespace) -> Plan:
    """Validate everything before anything runs (bad input: `UsageError`)."""
    if args.mutant is not None:
        catalogue.find(args.mutant)
    names = {c.name for c in CHECKS}
    for name in args.only or ():
        if name not in names:
            raise UsageError(f"unknown check {shown(repr(name))}; choose from {sorted(names)}")
    build_given = args.build is not None
    args.build = args.build or "debug"
    if args.impl is not None:
        wrong = [c.name for c in CHECKS if args.only and c.name in args.only and not c.checks_impl]
        if wrong:
            raise UsageError(f"--only {', '.join(wrong)} checks the harness itself, not --impl")
        if args.mutant is not None and catalogue.find(args.mutant).layer == "impl":
            raise UsageError(f"mutant {args.mutant!r} is a bug of the Python port, not of --impl")
        from externref_harness.lockstep.runner import LOCKSTEP_CONFIG
        from externref_harness.lockstep.targets import open_isolated

        # Refuse a bad library, or a build or chunk size it cannot run at, before any check runs
        # (the library is described in a child: this process never loads it).
        described, pool = open_isolated(args.impl)
        pool.close()
        own = described.config(LOCKSTEP_CONFIG, args.build if build_given else None, None)
        args.build = own.build
    native_only = [c.name for c in CHECKS if c.needs_impl and args.only and c.name in args.only]
    if args.impl is None and native_only:
        raise UsageError(
            f"--only {', '.join(native_only)}: not applicable without --impl PATH.so (the parallel "
            "check runs real threads on a native library; the Python port is not thread-safe by design)"
        )
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
    try:
        profile = args.hypothesis_profile or profiles.default_profile()
    except profiles.UnknownProfile as e:
        raise UsageError(str(e)) from None
    base = settings.get_profile(profile)
    chosen = settings(base, max_examples=args.max_examples or base.max_examples)
    failures = None
    if args.all_mutants and args.failures is not None:
        raise UsageError("--failures has no use with --all-mutants: it saves no trace")
    if not args.all_mutants:
        failures = paths.failures_dir(args.failures)
        where = paths.failures_source(args.failures)
        paths.check_dir(failures, where)
        for check in selected:
            name = check.trace_name(args.mutant, args.build)
            if name is not None and (args.mutant is None or check.exercises(args.mutant)):
                paths.check_file(failures / name, where)
    json_file = None
    if args.json_file is not None:
        json_file = user_path(args.json_file, "--json")
        paths.check_file(json_file, "--json")
    if args.database is not None:
        chosen = settings(chosen, database=open_database(args.database).database)
    return Plan(selected, profile, chosen, failures, json_file, build_given)


def run(args: argparse.Namespace) -> int:
    if args.exhaustive or bounds_given(args):
        return _exhaustive(args)
    p = plan(args)
    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    with profiles.hypothesis_storage(p.settings), full_output(args.full):
        if args.all_mutants:
            return _all_mutants(args, p, console)
        return _one_run(args, p, console)


def _run_check(
    check: Check, opts: CheckOptions, console: Console, prefix: str = ""
) -> tuple[CheckResult, float]:
    started = time.perf_counter()
    with progress("check", lambda: f"{prefix}{check.name}: {opts.live.describe()}", console):
        result = check.run(opts)
    return result, time.perf_counter() - started


def _one_run(args: argparse.Namespace, p: Plan, console: Console) -> int:
    opts = CheckOptions(
        p.settings,
        args.build,
        args.mutant,
        p.failures,
        impl=args.impl,
        chunk_size=args.chunk_size,
        build_given=p.build_given,
    )
    rows: list[Row] = []
    for check in p.selected:
        if args.mutant is not None and not check.exercises(args.mutant):
            rows.append(Row(check, None, 0.0))
            continue
        result, seconds = _run_check(check, opts, console)
        rows.append(Row(check, result, seconds))
    title = f"externref-harness check ({p.profile}" + (f", mutant={args.mutant})" if args.mutant else ")")
    table = Table("check", "result", "figures", "time", title=title)
    failed = [r for r in rows if r.result is not None and not r.result.passed]
    for row in rows:
        if row.result is None:
            table.add_row(row.check.name, f"[dim]{NOT_APPLICABLE}[/]", "the seeded bug is outside it", "-")
            continue
        figures = ", ".join(f"{k}={v}" for k, v in row.result.figures.items())
        verdict = "[green]pass[/]" if row.result.passed else "[red]FAIL[/]"
        table.add_row(escape(row.result.name), verdict, escape(figures), f"{row.seconds:.1f}s")
    for row in failed:
        assert row.result is not None
        console.rule(f"[red]{escape(row.result.name)}")
        console.print(row.result.failure or "(no details)", markup=False, highlight=False, soft_wrap=True)
    console.print(table)
    console.print("[red]FAILED[/]" if failed else "[green]all checks passed[/]")
    status = 1 if failed else 0
    if p.json_file is not None:
        _write_json(p.json_file, _json_head(args, p, status) | {"checks": [_row_json(r) for r in rows]})
    return status


def _json_head(args: argparse.Namespace, p: Plan, status: int) -> dict[str, Any]:
    return {
        "command": "check",
        "status": status,
        "passed": status == 0,
        "profile": p.profile,
        "max_examples": p.settings.max_examples,
        "build": args.build,
        "mutant": args.mutant,
        "checks_selected": [c.name for c in p.selected],
    }


def _row_json(row: Row) -> dict[str, Any]:
    r = row.result
    return {
        "check": row.check.name,
        "result": row.verdict,
        "figures": {} if r is None else r.figures,
        "seconds": round(row.seconds, 3),
        "trace": None if r is None or r.trace is None else str(r.trace),
        "examples_needed": None if r is None else r.examples_needed,
        "failure": None if r is None else r.failure,
    }


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    paths.write_atomically(path, json.dumps(obj, indent=1) + "\n")


@dataclass
class MutantRow:
    mutant: Mutant
    #: The check that caught it (None: missed).
    caught_by: str | None
    examples_needed: int | None
    seconds: float
    ran: list[str]


def _all_mutants(args: argparse.Namespace, p: Plan, console: Console) -> int:
    """Each seeded bug the selected checks exercise, switched on in turn; the first selected check
    that fails catches it (the others do not run for it)."""
    mutants = [m for m in catalogue.all_mutants() if any(c.exercises(m.name) for c in p.selected)]
    rows: list[MutantRow] = []
    for m in mutants:
        opts = CheckOptions(
            p.settings,
            args.build,
            m.name,
            None,
            impl=args.impl,
            chunk_size=args.chunk_size,
            build_given=p.build_given,
        )
        started = time.perf_counter()
        row = MutantRow(m, None, None, 0.0, [])
        for check in p.selected:
            if not check.exercises(m.name):
                continue
            row.ran.append(check.name)
            result, _ = _run_check(check, opts, console, f"{m.name}: ")
            if not result.passed:
                row.caught_by, row.examples_needed = check.name, result.examples_needed
                break
        row.seconds = time.perf_counter() - started
        rows.append(row)
    caught = sum(r.caught_by is not None for r in rows)
    title = (
        f"externref-harness check --all-mutants ({p.profile}, {p.settings.max_examples} examples "
        f"per check, {args.build} build)"
    )
    table = Table("mutant", "layer", "result", "caught by", "examples needed", "time", title=title)
    for r in rows:
        verdict = "[green]caught[/]" if r.caught_by else "[red]MISSED[/]"
        needed = "-" if r.examples_needed is None else str(r.examples_needed)
        by = r.caught_by or f"not by {', '.join(r.ran)}"
        table.add_row(r.mutant.name, r.mutant.layer, verdict, by, needed, f"{r.seconds:.1f}s")
    console.print(table)
    missed = [r.mutant.name for r in rows if r.caught_by is None]
    if missed:
        console.print(f"[red]{len(missed)} of {len(rows)} seeded bugs missed:[/] {escape(', '.join(missed))}")
    else:
        console.print(f"[green]all {len(rows)} seeded bugs caught[/]")
    status = 1 if missed else 0
    if p.json_file is not None:
        _write_json(
            p.json_file,
            _json_head(args, p, status)
            | {
                "caught": caught,
                "mutants": [
                    {
                        "mutant": r.mutant.name,
                        "layer": r.mutant.layer,
                        "caught": r.caught_by is not None,
                        "caught_by": r.caught_by,
                        "checks_run": r.ran,
                        "examples_needed": r.examples_needed,
                        "seconds": round(r.seconds, 3),
                    }
                    for r in rows
                ],
            },
        )
    return status


def _exhaustive(args: argparse.Namespace) -> int:
    """`check --exhaustive`: every transition of the bounds, in lockstep (exit 1 on a divergence)."""
    unused = (
        ("--only", args.only), ("--all-mutants", args.all_mutants), ("--chunk-size", args.chunk_size),
        ("--max-examples", args.max_examples), ("--hypothesis-profile", args.hypothesis_profile),
        ("--database", args.database),
    )  # fmt: skip
    exhaustive_bounds(args, unused)  # the options' checks, before the mutant's
    mutant = args.mutant
    if mutant is not None:
        layer = catalogue.find(mutant).layer
        if args.impl is not None and layer == "impl":
            raise UsageError(f"mutant {mutant!r} is a bug of the Python port, not of --impl")
        if layer not in ("model", "protocol", "impl"):
            raise UsageError(f"mutant {mutant!r} is a bug of the {layer}, which --exhaustive does not run")
    chosen = exhaustive_bounds(args, unused, mutant)
    assert chosen is not None  # `run` comes here with --exhaustive or a bound
    bounds, switched = chosen
    failures = paths.failures_dir(args.failures)
    paths.check_dir(failures, paths.failures_source(args.failures))
    json_file = None
    if args.json_file is not None:
        json_file = user_path(args.json_file, "--json")
        paths.check_file(json_file, "--json")
    from externref_harness.exhaustive.check import exhaustive_check
    from externref_harness.lockstep.runner import LockstepOptions
    from externref_harness.lockstep.targets import PYTHON, open_isolated

    console = Console()
    if not console.is_terminal:
        console = Console(width=140)
    pool = None
    if args.impl is None:
        target, options, shrink = PYTHON, LockstepOptions(), None
        name = "python-port"
    else:
        target, opened = open_isolated(args.impl)
        pool = opened
        options = LockstepOptions(impl_name=target.name, replay_args=f"--impl {args.impl}")
        shrink = partial(opened.adapter, fresh=True)
        name = args.impl.stem
    save_as = failures / f"exhaustive-{name}-{mutant or 'seed'}.json"
    if switched:
        console.print(f"{mutant} needs {' '.join(switched)} to be reachable: switched on", markup=False)
    started = time.perf_counter()
    try:
        with full_output(args.full):
            result = exhaustive_check(
                target, bounds, args.build, mutant, options, save_as, shrink,
                progress=lambda s: print(f"check --exhaustive: {s.describe()}", file=sys.stderr, flush=True),
            )  # fmt: skip
    finally:
        if pool is not None:
            pool.close()
    seconds = time.perf_counter() - started
    if result.failure is not None:
        console.rule("[red]exhaustive")
        console.print(result.failure, markup=False, highlight=False, soft_wrap=True)
    verdict = "[green]pass[/]" if result.passed else "[red]FAIL[/]"
    table = Table("check", "result", "figures", "time", title="externref-harness check --exhaustive")
    table.add_row(f"exhaustive ({escape(target.name)})", verdict, escape(result.figures()), f"{seconds:.1f}s")
    console.print(table)
    o = result.outcome
    if result.passed and o.stopped is None:
        console.print(f"[green]every transition covered:[/] {o.stats.covered:,} of {o.plan.transitions:,}")
    status = 0 if result.passed else 1
    if json_file is not None:
        _write_json(json_file, {
            "command": "check --exhaustive", "status": status, "passed": result.passed,
            "implementation": target.name, "mutant": mutant,
            "states": o.plan.classes, "transitions": o.plan.transitions, "covered": o.stats.covered,
            "runs": o.stats.runs, "steps": o.stats.steps, "teardowns": o.stats.teardowns,
            "behind": o.stats.behind, "seconds": round(seconds, 3),
            "trace": None if result.passed else str(save_as),
            "failure": result.failure,
        })  # fmt: skip
    return status
