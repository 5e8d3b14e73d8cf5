"""`externref-harness prove`: the z3 proofs, one row per property.

Each row says proven, counterexample (with its values) or unknown, and how long z3 took.
With `--mutant NAME` a seeded bug is switched on; the sweep proofs' counterexamples are then
rebuilt as traces and replayed on the model and the implementation.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from externref_harness import catalogue, paths
from externref_harness.checks.proofs import (
    DEFAULT_BOUNDS,
    DEFAULT_TIMEOUT_S,
    ProofOptions,
    ReplayedCounterexample,
    covers,
    replay_counterexamples,
    run_proofs,
)
from externref_harness.errors import UsageError, shown, user_path
from externref_harness.progress import progress
from externref_harness.specs.layout_proofs import ADMISSIBLE, PRECONDITION
from externref_harness.specs.proving import Verdict
from externref_harness.specs.sweep_encoding import Bounds

#: A property z3 could not decide within `--timeout` (no counterexample among the others).
UNKNOWN_STATUS = 3
EXIT_STATUS = (
    "0 every property proven, 1 a counterexample, 3 no counterexample but some property unknown "
    "(z3 ran out of --timeout), 2 bad input (nothing runs), 130 interrupted."
)

_STYLE = {
    "proven": "[green]proven[/]",
    "counterexample": "[red]counterexample[/]",
    "unknown": "[yellow]unknown[/]",
}

ASSUMPTIONS = {
    "W": "a model state: frames youngest first at rising sps, slot/chunk words in range",
    "G": "gc_okay (the caller's obligation; gc is refused as misuse otherwise)",
    "I1": "no ref held by a handle, owned raw, global or the table is freed (the Wasm-slot part "
    "follows from I8)",
    "I2": "exact refcounts: a live ref's count is its handles, owned raws, globals and table entries",
    "I6": "table shape: chunk of 0 or C slots, filled exactly below next, precise set empty",
    "I7": "no Wasm frame without a canary (the canary's position is free)",
    "I8": "every ref in a Wasm slot is in the table",
    "SM": "stack maps (model.world.emit_stack_map): every live ref slot mapped, no scalar slot",
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mutant", metavar="NAME", default=None, help="switch on this seeded bug")
    p.add_argument(
        "--bounds",
        metavar="F,S,R,C",
        default=f"{DEFAULT_BOUNDS.frames},{DEFAULT_BOUNDS.slots},{DEFAULT_BOUNDS.refs},{DEFAULT_BOUNDS.chunk}",
        help="frames, slots per frame, refs, chunk slots of the bounded sweep proof (default 4,4,4,4)",
    )
    p.add_argument(
        "--timeout", metavar="SECONDS", default=str(DEFAULT_TIMEOUT_S),
        help=f"budget of one z3 query (default {DEFAULT_TIMEOUT_S:g})",
    )  # fmt: skip
    p.add_argument(
        "--build", choices=("debug", "release", "both"), default="both",
        help="which builds the sweep proofs cover: debug (its assertions on), release, or both (default)",
    )  # fmt: skip
    paths.add_failures_option(p, "--traces")
    paths.add_json_option(p)


def parse_options(args: argparse.Namespace) -> ProofOptions:
    """Validate the command line; bad input raises `UsageError` / `UnknownMutant`."""
    if args.mutant is not None:
        catalogue.find(args.mutant)
    try:
        bounds = Bounds.parse(args.bounds)
    except ValueError as e:
        raise UsageError(f"--bounds: {shown(str(e), 200)}") from None
    try:
        timeout = float(args.timeout)
    except ValueError:
        raise UsageError(f"--timeout must be a number of seconds, got {shown(repr(args.timeout))}") from None
    if not 0 < timeout <= 3600:  # NaN fails both comparisons
        raise UsageError(f"--timeout must be in (0, 3600] seconds, got {shown(args.timeout)}")
    builds = {"debug": (True,), "release": (False,), "both": (True, False)}[args.build]
    return ProofOptions(args.mutant, bounds, timeout, builds)


def _group(name: str) -> str:
    if name.startswith("sweep."):
        return ".".join(name.split(".")[:2]) + (" (release)" if "(release)" in name else " (debug)")
    return name.split(".")[0]


def run(args: argparse.Namespace) -> int:
    opts = parse_options(args)
    # Checked before the proofs run (they take tens of seconds): where a seeded bug's
    # counterexample traces go, and the --json report.
    failures = paths.failures_dir(args.failures)
    if opts.mutant is not None or args.failures is not None:
        paths.check_dir(failures, paths.failures_source(args.failures))
    json_file = None
    if args.json_file is not None:
        json_file = user_path(args.json_file, "--json")
        paths.check_file(json_file, "--json")
    console = Console(width=160)
    if not covers(opts.mutant):
        console.print(
            f"mutant {opts.mutant} is outside what the proofs model; every proof runs as for the seed"
        )
    title = f"externref-harness prove (bounds {opts.bounds}, mutant={opts.mutant})"
    table = Table("property", "verdict", "time", "statement / counterexample", title=title)
    verdicts: list[Verdict] = []
    totals: dict[str, float] = defaultdict(float)
    started = time.perf_counter()
    with progress("prove", lambda: f"{len(verdicts)} properties decided", console):
        for v in run_proofs(opts):
            verdicts.append(v)
            totals[_group(v.name)] += v.seconds
            assumed = f" [assuming {', '.join(v.assumptions)}]" if v.assumptions else ""
            table.add_row(escape(v.name), _STYLE[v.status], f"{v.seconds:.2f}s", escape(v.detail + assumed))
    console.print(table)
    console.print("Times: " + "; ".join(f"{g} {t:.2f}s" for g, t in totals.items()))
    console.print(f"Layout domain: {ADMISSIBLE}; layout.valid also assumes {PRECONDITION}.")
    console.print(
        "Sweep domain: every state within the bounds (any frame kinds and sps, any canary, any "
        "stack maps within SM, any sets and counts); unbounded: any sizes. Assumptions:"
    )
    for key, text in ASSUMPTIONS.items():
        console.print(f"  {key}: {text}")
    replayed, notes = replay_counterexamples(opts, verdicts, failures)
    for r in replayed:
        _print_replay(console, r)
    for note in notes:
        console.print(f"no trace for {note}", markup=False, highlight=False)
    failed = [v for v in verdicts if not v.proven]
    for v in failed:
        console.print(
            f"not proven: {v.name}: {v.status}: {v.detail}", markup=False, highlight=False, soft_wrap=True
        )
    elapsed = time.perf_counter() - started
    status = 0
    if any(v.status == "counterexample" for v in failed):
        status = 1
    elif failed:
        status = UNKNOWN_STATUS
    if failed:
        what = "counterexample" if status == 1 else "unknown within the timeout"
        console.print(
            f"[red]{len(failed)} of {len(verdicts)} properties not proven[/] ({what}; {elapsed:.1f}s)"
        )
    else:
        console.print(f"[green]all {len(verdicts)} properties proven[/] ({elapsed:.1f}s)")
    if json_file is not None:
        _write_json(json_file, args, opts, verdicts, replayed, status, elapsed)
    return status


def _write_json(
    path: Path,
    args: argparse.Namespace,
    opts: ProofOptions,
    verdicts: list[Verdict],
    replayed: list[ReplayedCounterexample],
    status: int,
    elapsed: float,
) -> None:
    obj = {
        "command": "prove",
        "status": status,
        "passed": status == 0,
        "mutant": opts.mutant,
        "bounds": [opts.bounds.frames, opts.bounds.slots, opts.bounds.refs, opts.bounds.chunk],
        "timeout_s": opts.timeout_s,
        "build": args.build,
        "seconds": round(elapsed, 3),
        "properties": [
            {
                "property": v.name,
                "verdict": v.status,
                "seconds": round(v.seconds, 3),
                "detail": v.detail,
                "assumptions": list(v.assumptions),
                "cut": v.lemma,
            }
            for v in verdicts
        ],
        "traces": [
            {"property": r.property_id, "build": r.build, "trace": None if r.saved is None else str(r.saved)}
            for r in replayed
        ],
    }
    paths.write_atomically(path, json.dumps(obj, indent=1) + "\n")


def _print_replay(console: Console, r: ReplayedCounterexample) -> None:
    def say(text: str) -> None:
        console.print(text, markup=False, highlight=False)

    console.rule(f"counterexample of {r.property_id} ({r.build}) as a trace of {len(r.trace.steps)} steps")
    say(r.counterexample)
    say(r.model)
    say(r.report.describe())
    if r.impl_shares_the_bug:
        say(f"(the implementation runs the same {r.trace.config.mutant} code as the model)")
    else:
        say("(the model's bug is not in the implementation: the lockstep check shows where they part)")
    if r.counterpart is not None and r.counterpart_report is not None:
        say(f"with the implementation's own copy of the bug ({r.counterpart}), the model running the seed:")
        say(r.counterpart_report.describe())
    if r.seed_report is not None:
        clean = r.seed_report.model_failure is None and r.seed_report.impl_failure is None
        say(f"the same trace without the seeded bug {'passes' if clean else 'fails'} on both sides")
    if r.saved is not None:
        say(f"saved: externref-harness replay {r.saved}")
