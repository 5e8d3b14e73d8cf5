"""`externref-harness explore`: every reachable model state within bounds, every invariant in each.

Exit status: 0 when the bounded space is exhausted with no violation, 1 on a violation (a shortest
trace is printed and saved for `externref-harness replay`), 2 on bad input, 3 when a limit or Ctrl-C
stopped the search first (incomplete: the summary covers what was searched).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from externref_harness import catalogue, compiled, paths
from externref_harness import trace as tracefile
from externref_harness.errors import UsageError, user_path
from externref_harness.explore.driver import explore
from externref_harness.explore.explorer import (
    LIMITS,
    MUTANT_KNOBS,
    ExploreBounds,
    Limits,
    Outcome,
    Progress,
    ProgressHook,
)
from externref_harness.model.state import State
from externref_harness.model.transition import run as run_model
from externref_harness.report import format_failure

_DEFAULTS = ExploreBounds()
EXIT_STATUS = (
    "0 the bounded space is exhausted with no violation, 1 a violation, 2 bad input, 3 incomplete "
    "(--time-limit, --max-states or Ctrl-C stopped the search first)."
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


EXIT_EXHAUSTED, EXIT_VIOLATION, EXIT_BAD_INPUT, EXIT_INCOMPLETE = 0, 1, 2, 3

_EPILOG = f"""\
Exit status: {EXIT_STATUS}
A violation's shortest trace is printed and saved (--failures) for `externref-harness replay`; an
incomplete search's summary (and --json) covers what was searched.

--mutant NAME switches on the knobs that bug needs to be reachable at all (and says which), unless
the command line sets them itself. With --workers N the states are partitioned by fingerprint over
N processes; the counts are exactly those of one process. Off a terminal a plain progress line is
printed to stderr every --progress-every seconds.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.epilog = _EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    add_bound_arguments(p)
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
    p.add_argument(
        "--workers", type=int, default=1, metavar="N",
        help=f"worker processes, 1..{MAX_WORKERS}; default 1 (this process)",
    )  # fmt: skip
    p.add_argument(
        "--time-limit", type=float, default=None, metavar="SECONDS",
        help="stop after this long (exit 3, incomplete)",
    )  # fmt: skip
    p.add_argument(
        "--max-states", type=int, default=None, metavar="N",
        help="stop at about this many distinct states (exit 3, incomplete)",
    )  # fmt: skip
    p.add_argument(
        "--json", default=None, metavar="FILE",
        help="also write the summary, coverage and any violation as JSON (written atomically)",
    )  # fmt: skip
    p.add_argument(
        "--progress-every", type=float, default=10.0, metavar="SECONDS",
        help="seconds between plain progress lines off a terminal; default 10",
    )  # fmt: skip
    p.add_argument("--quiet", action="store_true", help="no progress line")


def add_bound_arguments(p: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The bounds of the searched space (`ExploreBounds`), as `explore` and `--exhaustive` take them."""
    for name, help_text in _INT_BOUNDS:
        low, high = LIMITS[name]
        default = getattr(_DEFAULTS, name)
        p.add_argument(
            f"--{name}", type=int, default=None, metavar="N",
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
            default=None, help=f"{help_text}; default {'on' if default else 'off'}",
        )  # fmt: skip


def bounds_given(args: argparse.Namespace) -> dict[str, int | bool]:
    """The bounds set on the command line (`add_bound_arguments`), by `ExploreBounds` field."""
    names = [name for name, _ in _INT_BOUNDS] + ["depth"] + [name for name, _ in _FLAGS]
    return {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}


def exhaustive_bounds(
    args: argparse.Namespace, unused: Sequence[tuple[str, object]] = (), mutant: str | None = None
) -> tuple[ExploreBounds, list[str]] | None:
    """`check` and `gate`'s `--exhaustive`: None without it (a bound given without it is bad
    input), else its bounds (`add_bound_arguments`; bad values: `UsageError`), with the knobs a
    model `mutant` needs switched on unless given (`MUTANT_KNOBS`), and those knobs. `unused`
    names the command's options (with their values) that have no use with `--exhaustive`: one
    given is bad input too."""
    given = bounds_given(args)
    if not args.exhaustive:
        if given:
            first = next(iter(given)).replace("_", "-")
            raise UsageError(f"--{first} bounds the space of --exhaustive; add --exhaustive")
        return None
    for option, value in unused:
        if value is not None and value is not False and value != [] and value != ():
            hint = " (its chunk is --chunk N)" if option == "--chunk-size" else ""
            raise UsageError(f"{option} has no use with --exhaustive{hint}")
    switched: list[str] = []
    for name, value in MUTANT_KNOBS.get(mutant or "", {}).items():
        if name not in given and getattr(_DEFAULTS, name) < value:
            given[name] = value
            switched.append(_option(name, value))
    try:
        return ExploreBounds(**given), switched  # type: ignore[arg-type]
    except ValueError as e:
        raise UsageError(str(e)) from None


MAX_WORKERS = 64


def explore_bounds(args: argparse.Namespace) -> tuple[ExploreBounds, list[str]]:
    """The parsed command line as validated `ExploreBounds` (bad values: `UsageError`), and the
    knobs switched on for `--mutant` (as command-line options)."""
    if args.mutant is not None:
        catalogue.find(args.mutant)
    names = {f.name for f in fields(ExploreBounds)}
    given = {name: getattr(args, name) for name in names if getattr(args, name, None) is not None}
    switched: list[str] = []
    for name, value in MUTANT_KNOBS.get(args.mutant or "", {}).items():
        if name not in given and getattr(_DEFAULTS, name) < value:
            given[name] = value
            switched.append(_option(name, value))
    try:
        return ExploreBounds(**given), switched
    except ValueError as e:
        raise UsageError(str(e)) from None


def _option(name: str, value: int | bool) -> str:
    return f"--{name.replace('_', '-')}" + ("" if value is True else f" {value}")


def _limits(args: argparse.Namespace) -> Limits:
    if not 1 <= args.workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 1 and {MAX_WORKERS}, got {args.workers}")
    for option, value in (("--progress-every", args.progress_every), ("--time-limit", args.time_limit)):
        if value is not None and not (math.isfinite(value) and value > 0):
            raise UsageError(f"{option} must be a positive number of seconds, got {value}")
    try:
        return Limits(time=args.time_limit, states=args.max_states)
    except ValueError as e:
        raise UsageError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    knobs, switched = explore_bounds(args)
    limits = _limits(args)
    if args.compare_symmetry and knobs.depth is None:
        raise UsageError("--compare-symmetry needs --depth: without symmetry the space is infinite")
    search = knobs.search()
    out, where = paths.trace_destination(
        args.failures, args.out, f"explore-{knobs.mutant or 'seed'}-{knobs.build}.json"
    )
    paths.check_file(out, where)
    json_path = None if args.json is None else user_path(args.json, "--json")
    if json_path is not None:
        _ensure_json_writable(json_path)
    console = Console(highlight=False)
    if switched:
        console.print(f"{knobs.mutant} needs {' '.join(switched)} to be reachable: switched on",
                      markup=False)  # fmt: skip

    every = 0.25 if console.is_terminal else args.progress_every
    with _progress(console, args) as hook:
        outcome = explore(search, hook, every, limits, args.workers)
    without = None
    if args.compare_symmetry and outcome.status == "exhausted":
        plain = replace(knobs, symmetry=not knobs.symmetry).search()
        with _progress(console, args) as hook:
            without = explore(plain, hook, every, limits, args.workers)
    console.print(summary(outcome, without))
    console.print(coverage(outcome))
    report = None
    if outcome.violation is not None:
        report = report_violation(outcome, out)
    if json_path is not None:
        write_json(json_path, to_json(outcome, switched, out if report is not None else None))
    if outcome.stopped is not None:
        console.print(
            f"[yellow]incomplete:[/] stopped by the {outcome.stopped} after {outcome.states:,} "
            f"states at depth {outcome.max_depth}; {outcome.unexpanded:,} states left unexpanded"
        )  # fmt: skip
        return EXIT_INCOMPLETE
    if report is None:
        cut = f" up to depth {knobs.depth}" if outcome.depth_cut else ""
        console.print(f"[green]no violation:[/] the bounded space is exhausted{cut}")
        hint = _hint(knobs)
        if hint:
            console.print(f"hint: {knobs.mutant} needs {hint} to be reachable", markup=False)
        return EXIT_EXHAUSTED
    console.print(report, markup=False, soft_wrap=True)
    return EXIT_VIOLATION


def _ensure_json_writable(path: Path) -> None:
    """The same check as every `--json` of the other commands (a FIFO, a symlink loop, a
    directory or a read-only file are refused before the search)."""
    paths.check_file(path, "--json")


def write_json(path: Path, obj: object) -> None:
    """Write atomically (`paths.write_atomically`: a temporary file, then a rename over `path`)."""
    paths.write_atomically(path, json.dumps(obj, indent=1) + "\n")


def to_json(outcome: Outcome, switched: list[str], saved: Path | None) -> dict[str, Any]:
    """The summary, the coverage and the violation, as one JSON object."""
    search = outcome.search
    cfg, bounds = search.cfg, search.bounds
    violation = outcome.violation
    return {
        "format": "externref-harness-explore",
        "version": 1,
        "status": outcome.status,
        "stopped_by": outcome.stopped,
        "states": outcome.states,
        "transitions": outcome.transitions,
        "max_depth": outcome.max_depth,
        "elapsed_s": round(outcome.elapsed, 3),
        "states_per_s": round(outcome.rate, 1),
        "workers": outcome.workers,
        "model": compiled.mode(),
        "left_at_depth_limit": outcome.depth_cut,
        "constrained": outcome.constrained,
        "unexpanded": outcome.unexpanded,
        "store_bytes": outcome.store_bytes,
        "bytes_per_state": round(outcome.bytes_per_state, 1),
        "collision_probability": outcome.collision_probability,
        "symmetry": search.symmetry,
        "depth_limit": search.depth,
        "switched_on_for_mutant": switched,
        "config": {"chunk_size": cfg.chunk_size, "build": cfg.build, "slots": cfg.slots,
                   "n_globals": cfg.n_globals, "mutant": cfg.mutant},
        "bounds": {f.name: getattr(bounds, f.name) for f in fields(bounds) if f.name != "layouts"},
        "op_counts": dict(sorted(outcome.op_counts.items())),
        "path_counts": dict(sorted(outcome.path_counts.items())),
        "violation": None if violation is None else {
            "invariant": violation.invariant,
            "name": violation.name,
            "message": violation.message,
            "steps": [op.to_json() for op in violation.trace],
            "saved": None if saved is None else str(saved),
        },
    }  # fmt: skip


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
        table.add_row("states without / with symmetry", f"{b.states:,} / {a.states:,} ({factor:.2f}x)")
    table.add_row("status", outcome.status + (f" ({outcome.stopped})" if outcome.stopped else ""))
    table.add_row("workers", str(outcome.workers))
    table.add_row("model", compiled.mode())
    table.add_row("seen-set", f"{outcome.store_bytes:,} bytes ({outcome.bytes_per_state:.1f} per state)")
    table.add_row("fingerprint collision probability", f"{outcome.collision_probability:.1e} (optimistic)")
    if search.depth is not None:
        table.add_row("left at the depth limit", f"{outcome.depth_cut:,} (limit {search.depth})")
    table.add_row(f"beyond {search.max_live_handles} live handles (not expanded)", f"{outcome.constrained:,}")
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
def _progress(console: Console, args: argparse.Namespace) -> Iterator[ProgressHook | None]:
    """A live status line on a terminal; off one, a plain line on stderr every few seconds."""
    if args.quiet:
        yield None
        return
    if not console.is_terminal:

        def plain(p: Progress) -> None:
            print(f"explore: {_line(p)}", file=sys.stderr, flush=True)

        yield plain
        return
    with console.status("explore: starting") as status:

        def hook(p: Progress) -> None:
            status.update(f"explore: {_line(p)}")

        yield hook


def _line(p: Progress) -> str:
    memory = f", memory {p.memory / 2**20:,.0f} MB" if p.memory else ""
    return (
        f"{p.states:,} states, frontier {p.queue:,}, depth {p.depth}, {p.rate:,.0f} states/s"
        f"{memory}, {p.elapsed:.0f}s"
    )
