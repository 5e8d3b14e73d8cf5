"""`replay` of a directory or a corpus file, and `--mutant NAME` / `--no-mutant` for every replay.

`externref-harness replay DIR` runs every trace under DIR (saved traces and corpus files alike,
subdirectories included), one summary line each and a total; exit 1 if any fails. A corpus file
is run with `corpus.run.run_corpus_trace`, so the model is held to the file's expectations as well
as the implementation to the lockstep. `--mutant NAME` switches a seeded bug on in place of the
trace's own, `--no-mutant` switches it off (to confirm a fix without editing the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from externref_harness import catalogue, paths
from externref_harness import trace as tracefile
from externref_harness.corpus.format import CorpusTrace, Expect, is_corpus_json, load_file
from externref_harness.corpus.run import CorpusResult, cannot_run, run_config, run_corpus_trace
from externref_harness.errors import UsageError, printable, shown_path, user_path
from externref_harness.explore.explorer import LIMITS
from externref_harness.isolation.pool import DEFAULT_STEP_TIMEOUT, ChildPool
from externref_harness.lockstep import runner as lockstep
from externref_harness.lockstep.targets import PYTHON, Target, open_isolated

#: Layers whose seeded bugs a replay runs (the proofs' bugs change no trace).
REPLAYED_LAYERS = ("model", "protocol", "impl")


#: The largest chunk a trace may ask for (the seed's is 512 slots).
MAX_CHUNK_SIZE = 1 << 16


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--step-timeout", type=float, default=None, metavar="S",
        help=f"with --impl: a step slower than S seconds is a hang (default {DEFAULT_STEP_TIMEOUT:g}; "
        "a hang saved by a gate or campaign run with a shorter --step-timeout replays faster with it)",
    )  # fmt: skip
    group = p.add_mutually_exclusive_group()
    group.add_argument(
        "--mutant", metavar="NAME", default=None,
        help="replay with this seeded bug on, in place of the one the trace names",
    )  # fmt: skip
    group.add_argument(
        "--no-mutant", action="store_true",
        help="replay with no seeded bug on, whatever the trace names (to confirm a fix)",
    )  # fmt: skip


@dataclass(frozen=True)
class MutantOverride:
    """`--mutant` / `--no-mutant`: whether to replace the trace's seeded bug, and with what."""

    given: bool = False
    mutant: str | None = None

    def apply(self, own: str | None) -> str | None:
        return self.mutant if self.given else own


def mutant_override(args: argparse.Namespace, chosen: Target) -> MutantOverride:
    """The override the arguments ask for, refused in one line if it cannot apply."""
    if getattr(args, "no_mutant", False):
        return MutantOverride(True, None)
    name = getattr(args, "mutant", None)
    if name is None:
        return MutantOverride()
    layer = catalogue.find(name).layer
    if layer not in REPLAYED_LAYERS:
        raise UsageError(f"--mutant {name}: a bug of the {layer} layer; a replay runs no proof")
    if layer == "impl" and chosen.description is not None:
        raise UsageError(f"--mutant {name}: a bug of the Python port, not of --impl")
    return MutantOverride(True, name)


def override_trace(trace: tracefile.Trace, override: MutantOverride) -> tracefile.Trace:
    return replace(trace, config=replace(trace.config, mutant=override.apply(trace.config.mutant)))


def wants_this_module(path: Path) -> bool:
    """A directory, or a corpus file: what `cli.replay` hands over to `run`."""
    return path.is_dir() or (path.is_file() and _is_corpus_file(path))


#: A corpus file is small; anything larger is left to the trace loader, which refuses it in one line.
CORPUS_FILE_LIMIT = 16 << 20


def _is_corpus_file(path: Path) -> bool:
    """Whether `path` is a corpus file. Any doubt (unreadable, huge, malformed) answers no, and the
    trace loader then says what is wrong with it."""
    try:
        if path.stat().st_size > CORPUS_FILE_LIMIT:
            return False
        return is_corpus_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError):
        return False


# --- running one trace of either kind --------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    label: str
    #: "pass", "FAIL" or "skip".
    verdict: str
    detail: str = ""

    def line(self) -> str:
        return f"{self.verdict:<5} {self.label}" + (f": {self.detail}" if self.detail else "")


def _options(chosen: Target) -> lockstep.LockstepOptions:
    return lockstep.LockstepOptions(impl_name=chosen.name)


def run_corpus_file(trace: CorpusTrace, chosen: Target, override: MutantOverride) -> CorpusResult:
    cfg = run_config(chosen, trace)
    mutant = override.apply(None)
    factory = chosen.adapter_factory()
    return run_corpus_trace(trace, factory, _options(chosen), mutant, cfg.chunk_size, cfg.capabilities)


#: How much of a failure a summary line shows.
SUMMARY_LIMIT = 400


def _one_line(text: str) -> str:
    """A failure's lines joined into one (the named checks follow a general first line)."""
    joined = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return joined if len(joined) <= SUMMARY_LIMIT else joined[: SUMMARY_LIMIT - 3] + "..."


def adopt_capabilities(trace: tracefile.Trace, chosen: Target) -> tracefile.Trace:
    """A saved trace as `chosen` runs it: with the library's declared capabilities (a trace of
    the seed runs on a library with capabilities under their rules, where its steps allow)."""
    if chosen.description is None or trace.config.capabilities == chosen.description.capabilities:
        return trace
    return replace(trace, config=replace(trace.config, capabilities=chosen.description.capabilities))


def _run_one(
    label: str, loaded: CorpusTrace | tracefile.Trace, chosen: Target, override: MutantOverride
) -> Outcome:
    cfg = loaded.config
    mutant = override.apply(None if isinstance(loaded, CorpusTrace) else cfg.mutant)
    if isinstance(loaded, CorpusTrace):
        why_not = cannot_run(chosen, loaded)
    else:
        why_not = cannot_run(chosen, cfg, loaded.steps)
    if why_not is not None:
        return Outcome(label, "skip", why_not)
    tag = f"{cfg.build}" + (f", mutant={mutant}" if mutant else "")
    if isinstance(loaded, CorpusTrace):
        result = run_corpus_file(loaded, chosen, override)
        if result.passed:
            return Outcome(f"{label} (corpus, {tag})", "pass")
        return Outcome(f"{label} (corpus, {tag})", "FAIL", _one_line(result.problem))
    trace = adopt_capabilities(override_trace(loaded, override), chosen)
    report = lockstep.replay(trace, chosen.adapter_factory(), _options(chosen))
    for side, failure in (("model", report.model_failure), ("implementation", report.impl_failure)):
        if failure is not None:
            at = "teardown" if failure[0] == report.steps + 1 else f"step {failure[0]}"
            return Outcome(
                f"{label} (trace, {tag})", "FAIL", f"{side} fails at {at}: {_one_line(failure[1])}"
            )
    return Outcome(f"{label} (trace, {tag})", "pass")


# --- the command's two new forms -------------------------------------------------------------------


def trace_files(directory: Path) -> list[Path]:
    """Every JSON file under `directory` but JSON Schemas (the corpus ships one beside its traces)."""
    found = []
    for path in sorted(directory.rglob("*.json")):
        if not path.is_file():
            continue
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            obj = None  # the loader says what is wrong with it
        if isinstance(obj, dict) and "$schema" in obj:
            continue
        found.append(path)
    return found


def load(path: Path, max_steps: int | None = None) -> tracefile.Trace:
    """Load and check that this harness can run the trace (bad input: `TraceFormatError`)."""
    trace = tracefile.load(path, max_steps)
    cfg = trace.config
    for name, value, bound in (
        ("chunk_size", cfg.chunk_size, MAX_CHUNK_SIZE),
        ("slots", cfg.slots, LIMITS["slots"][1]),
        ("n_globals", cfg.n_globals, LIMITS["globals"][1]),
    ):
        if value > bound:
            raise tracefile.TraceFormatError(
                f"{shown_path(path)}: config {name}={value} is more than this harness runs (at most {bound})"
            )
    if trace.config.mutant is not None:
        try:
            catalogue.find(trace.config.mutant)
        except catalogue.UnknownMutant as e:
            raise tracefile.TraceFormatError(f"{shown_path(path)}: {e}") from None
    return trace


def load_any(path: Path) -> CorpusTrace | tracefile.Trace:
    """A corpus file or a saved trace (bad input: one `TraceFormatError` line naming the file)."""
    if _is_corpus_file(path):
        return load_file(path)
    return load(path)


def _json_file(args: argparse.Namespace, path: Path) -> Path | None:
    """`--json FILE`, checked before the run (it must not overwrite what is replayed)."""
    given = getattr(args, "json_file", None)
    if given is None:
        return None
    json_file = user_path(given, "--json")
    paths.check_file(json_file, "--json")
    if json_file.resolve() == path.resolve() or path.resolve() in json_file.resolve().parents:
        raise UsageError("--json would write into what is being replayed")
    return json_file


def open_target(args: argparse.Namespace) -> tuple[Target, ChildPool | None]:
    """The Python port, or `--impl` described and run in confined children (never in this process:
    a crash or a hang is that trace's failure, and the next trace runs)."""
    impl = getattr(args, "impl", None)
    timeout = getattr(args, "step_timeout", None)
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise UsageError(f"--step-timeout must be a positive number of seconds, got {timeout}")
    if impl is None:
        if timeout is not None:
            raise UsageError("--step-timeout applies to --impl only (the Python port runs in this process)")
        return PYTHON, None
    return open_isolated(Path(impl), DEFAULT_STEP_TIMEOUT if timeout is None else timeout)


def run(args: argparse.Namespace) -> int:
    path = Path(args.trace)
    json_file = _json_file(args, path)
    if not path.is_dir():
        trace = load_file(path)  # a malformed file is refused before the library is loaded
        chosen, pool = open_target(args)
        try:
            override = mutant_override(args, chosen)
            status, outcome = _run_corpus_file_verbose(path, trace, chosen, override)
        finally:
            if pool is not None:
                pool.close()
        if json_file is not None:
            _write_json(json_file, path, chosen, [outcome], status)
        return status
    files = trace_files(path)
    if not files:
        raise UsageError(f"{path}: no trace files (*.json) in this directory")
    loaded = [(str(f.relative_to(path)), load_any(f)) for f in files]  # every file checked first
    chosen, pool = open_target(args)
    outcomes: list[Outcome] = []
    try:
        override = mutant_override(args, chosen)
        for label, loaded_trace in loaded:
            outcome = _run_one(label, loaded_trace, chosen, override)
            print(outcome.line(), flush=True)  # each as it ends: a later crash loses none
            outcomes.append(outcome)
    finally:
        if pool is not None:
            pool.close()
    counts = {v: sum(o.verdict == v for o in outcomes) for v in ("pass", "FAIL", "skip")}
    ran = counts["pass"] + counts["FAIL"]
    skipped = f", {counts['skip']} skipped" if counts["skip"] else ""
    print(
        f"{len(outcomes)} traces on {chosen.name}: {counts['pass']} passed, {counts['FAIL']} failed{skipped}"
    )
    if ran == 0:
        raise UsageError(f"{path}: {chosen.name} can run none of these traces")
    status = 1 if counts["FAIL"] else 0
    if json_file is not None:
        _write_json(json_file, path, chosen, outcomes, status)
    return status


def _write_json(json_file: Path, path: Path, chosen: Target, outcomes: list[Outcome], status: int) -> None:
    obj = {
        "command": "replay",
        "status": status,
        "passed": status == 0,
        "path": str(path),
        "implementation": chosen.name,
        "library": None if chosen.path is None else str(chosen.path),
        "counts": {v: sum(o.verdict == v for o in outcomes) for v in ("pass", "FAIL", "skip")},
        "traces": [{"label": o.label, "verdict": o.verdict, "detail": o.detail} for o in outcomes],
    }
    paths.write_atomically(json_file, json.dumps(obj, indent=1) + "\n")


def format_expect(expect: Expect) -> str:
    """An expectation as the model prints an observation: `Ok(0) dropped=[1] paths=[...]`."""
    result = expect["result"]
    kind, value = result["kind"], result["value"]
    shown = {"ok": "Ok", "err": "Err", "misuse": "Misuse", "panic": "Panic"}[kind]
    if kind != "ok" or value is not None:
        shown += f"({value})" if not isinstance(value, list) else f"({tuple(value)})"
    parts = [shown]
    if expect["dropped"]:
        parts.append(f"dropped={expect['dropped']}")
    if expect["paths"]:
        parts.append(f"paths={expect['paths']}")
    return " ".join(parts)


def _run_corpus_file_verbose(
    path: Path, trace: CorpusTrace, chosen: Target, override: MutantOverride
) -> tuple[int, Outcome]:
    why_not = cannot_run(chosen, trace)
    if why_not is not None:
        raise UsageError(f"{path}: {why_not}")
    result = run_corpus_file(trace, chosen, override)
    cfg = trace.config
    mutant = override.apply(None)
    print(f"corpus trace {path}: {trace.name} ({cfg.build} build, chunk {cfg.chunk_size}, mutant={mutant})")
    print(f"origin: {trace.origin}")
    width = len(str(len(trace.steps)))
    for i, s in enumerate(trace.steps, 1):
        mark = ">>" if result.step == i else "  "
        teardown = " (teardown)" if s.teardown else ""
        print(f"{mark}{i:>{width}}. {s.op}{teardown}  expect {format_expect(s.expect)}")
    print(f"on the model and {chosen.name}: " + ("ok" if result.passed else printable_lines(result.problem)))
    print("no failure" if result.passed else "FAILED")
    tag = f"{cfg.build}" + (f", mutant={mutant}" if mutant else "")
    outcome = Outcome(
        f"{path.name} (corpus, {tag})", "pass" if result.passed else "FAIL", _one_line(result.problem)
    )
    return (0 if result.passed else 1), outcome


def printable_lines(text: str) -> str:
    """What an implementation's process printed, escaped line by line (it may be anything)."""
    return "\n".join(printable(line) for line in text.splitlines())
