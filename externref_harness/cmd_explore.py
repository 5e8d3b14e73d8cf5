"""`externref-harness explore`: every reachable model state within bounds, every invariant in each.

Exit status: 0 when the bounded space is exhausted with no violation, 1 on a violation (a shortest
trace is printed and saved for `externref-harness replay`), 2 on bad input.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from externref_harness import catalogue, paths
from externref_harness import trace as tracefile
from externref_harness.errors import UsageError
from externref_harness.explore import (
    LIMITS,
    MUTANT_KNOBS,
    ExploreBounds,
    Outcome,
    Progress,
    ProgressHook,
    explore,
)
from externref_harness.model.state import State
from externref_harness.model.transition import run as run_model
from externref_harness.report import format_failure

_DEFAULTS = ExploreBounds()
EXIT_STATUS = (
    "0 the bounded space is exhausted with no violation, 1 a violation, 2 bad input, 130 interrupted."
)

_INT_BOUNDS: tuple[tuple[str, str], ...] = (
    ("refs", "allocations over the whole run (Bounds.refs)"),
    ("chunk", "bump chunk slots (Config.chunk_size)"),
    ("frames", "Wasm frames on the stack at once (Bounds.frames)"),
    ("slots", "slots per Wasm frame (Config.slots)"),
    ("handles", "live host handles at once (Bounds.handles)"),
    ("raws", "live raw pointers at once, 0 for none (Bounds.raws)"),
    ("args", "refs passed in one call (Bounds.args)"),
    ("globals", "externref globals, 0 for none (Config.n_globals)"),
)
_FLAGS: tuple[tuple[str, str], ...] = (
    ("scalars", "i64 spills into Wasm slots (Bounds.scalars)"),
    ("opaque_frames", "host frames without unwind info (Bounds.opaque_host_frames)"),
    ("gc_okay_toggles", "set_gc_okay toggles (Bounds.gc_okay_toggles)"),
    ("observers", "operations that only observe; they never change the state (Bounds.observers)"),
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    for name, help_text in _INT_BOUNDS:
        low, high = LIMITS[name]
        default = getattr(_DEFAULTS, name)
        p.add_argument(
            f"--{name}", type=int, default=default, metavar="N",
            help=f"{help_text}; {low}..{high}, default {default}",
        )  # fmt: skip
    low, high = LIMITS["depth"]
    p.add_argument(
        "--depth", type=int, default=None, metavar="N",
        help=f"longest trace explored; {low}..{high}, default: until the space is exhausted",
    )  # fmt: skip
    for name, help_text in _FLAGS:
        default = getattr(_DEFAULTS, name)
        p.add_argument(
            f"--{name.replace('_', '-')}", action=argparse.BooleanOptionalAction,
            default=default, help=f"{help_text}; default {'on' if default else 'off'}",
        )  # fmt: skip
    p.add_argument(
        "--symmetry", action=argparse.BooleanOptionalAction, default=True,
        help="merge states that differ only by ref names, tombstones, chunk order, dead maps",
    )  # fmt: skip
    p.add_argument(
        "--compare-symmetry", action="store_true",
        help="also search without symmetry reduction and report the reduction (needs --depth)",
    )  # fmt: skip
    p.add_argument("--mutant", metavar="NAME", default=None, help="explore with this seeded bug")
    p.add_argument(
        "--build", choices=("debug", "release"), default="debug",
        help="which build of the seed runs: debug (its debug assertions on) or release (default debug)",
    )  # fmt: skip
    paths.add_failures_option(p)
    # The old spelling: a file, or a directory when it ends in '/' or is one.
    p.add_argument("--out", default=None, help=argparse.SUPPRESS)
    p.add_argument("--quiet", action="store_true", help="no progress line")


def explore_bounds(args: argparse.Namespace) -> ExploreBounds:
    """The parsed command line as validated `ExploreBounds` (bad values: `UsageError`)."""
    if args.mutant is not None:
        catalogue.find(args.mutant)
    names = {f.name for f in fields(ExploreBounds)}
    values = {name: getattr(args, name) for name in names}
    try:
        return ExploreBounds(**values)
    except ValueError as e:
        raise UsageError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    knobs = explore_bounds(args)
    if args.compare_symmetry and knobs.depth is None:
        raise UsageError("--compare-symmetry needs --depth: without symmetry the space is infinite")
    search = knobs.search()
    out, where = paths.trace_destination(
        args.failures, args.out, f"explore-{knobs.mutant or 'seed'}-{knobs.build}.json"
    )
    paths.check_file(out, where)
    console = Console(highlight=False)
    show_progress = console.is_terminal and not args.quiet

    with _progress(console, show_progress) as hook:
        outcome = explore(search, hook)
    without = None
    if args.compare_symmetry and outcome.violation is None:
        plain = replace(knobs, symmetry=not knobs.symmetry).search()
        with _progress(console, show_progress) as hook:
            without = explore(plain, hook)
    console.print(summary(outcome, without))
    console.print(coverage(outcome))
    if outcome.violation is None:
        cut = f" up to depth {knobs.depth}" if outcome.depth_cut else ""
        console.print(f"[green]no violation:[/] the bounded space is exhausted{cut}")
        hint = _hint(knobs)
        if hint:
            console.print(f"hint: {knobs.mutant} needs {hint} to be reachable", markup=False)
        return 0
    console.print(report_violation(outcome, out), markup=False, soft_wrap=True)
    return 1


def summary(outcome: Outcome, without: Outcome | None = None) -> Table:
    """The final figures, one row each."""
    search = outcome.search
    table = Table("figure", "value", title="externref-harness explore")
    table.add_row("distinct states", f"{outcome.states:,}")
    table.add_row("transitions", f"{outcome.transitions:,}")
    table.add_row("max depth", str(outcome.max_depth))
    table.add_row("time", f"{outcome.elapsed:.2f}s")
    table.add_row("states/s", f"{outcome.rate:,.0f}")
    if search.symmetry:
        reduction = "on (canonical representatives)"
    else:
        reduction = "off"
    table.add_row("symmetry reduction", reduction)
    if without is not None:
        a, b = (outcome, without) if search.symmetry else (without, outcome)
        factor = b.states / a.states if a.states else 0.0
        table.add_row(
            "states without / with symmetry", f"{b.states:,} / {a.states:,} ({factor:.2f}x)"
        )
    if search.depth is not None:
        table.add_row("left at the depth limit", f"{outcome.depth_cut:,} (limit {search.depth})")
    table.add_row(
        f"beyond {search.max_live_handles} live handles (not expanded)", f"{outcome.constrained:,}"
    )
    cfg = search.cfg
    table.add_row("config", f"chunk={cfg.chunk_size} slots={cfg.slots} globals={cfg.n_globals} "
                  f"build={cfg.build} mutant={cfg.mutant}")  # fmt: skip
    return table


def coverage(outcome: Outcome) -> Table:
    """How often each operation kind and each labelled path was taken, over all transitions."""
    table = Table("operation", "taken", "path", "taken", title="coverage")
    ops_ = sorted(outcome.op_counts.items())
    paths = sorted(outcome.path_counts.items())
    for i in range(max(len(ops_), len(paths))):
        op, n = ops_[i] if i < len(ops_) else ("", 0)
        path, m = paths[i] if i < len(paths) else ("", 0)
        table.add_row(op, f"{n:,}" if op else "", path, f"{m:,}" if path else "")
    return table


def report_violation(outcome: Outcome, out: Path) -> str:
    """Numbered steps of the shortest trace, the state diff at its last step, and the saved trace."""
    violation = outcome.violation
    assert violation is not None
    cfg = outcome.search.cfg
    saved = tracefile.save(tracefile.Trace(cfg, violation.trace, violation.title), out)
    replayed = run_model(cfg, violation.trace)
    states = [State.initial(cfg), *(s for s, _ in replayed)]
    title = (
        f"Violation of {violation.invariant} ({violation.name}) after {len(violation.trace)} steps, "
        f"a shortest trace ({cfg.build} build, mutant={cfg.mutant}): {violation.message}"
    )
    return format_failure(
        title,
        violation.trace,
        [obs for _, obs in replayed],
        states[-2] if len(states) > 1 else states[-1],
        states[-1],
        str(saved),
    )


def _hint(knobs: ExploreBounds) -> str:
    """The knobs a mutant needs (`MUTANT_KNOBS`) that this search left at a smaller setting."""
    needed = MUTANT_KNOBS.get(knobs.mutant or "", {})
    missing = [
        f"--{name.replace('_', '-')}" + ("" if value is True else f" {value}")
        for name, value in needed.items()
        if getattr(knobs, name) < value
    ]
    return " ".join(missing)


@contextmanager
def _progress(console: Console, show: bool) -> Iterator[ProgressHook | None]:
    if not show:
        yield None
        return
    with console.status("explore: starting") as status:

        def hook(p: Progress) -> None:
            status.update(
                f"explore: {p.states:,} states, queue {p.queue:,}, depth {p.depth}, "
                f"{p.rate:,.0f} states/s"
            )

        yield hook
