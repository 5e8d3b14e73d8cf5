"""The conformance gate: an implementation held to the seed, in its own process, with a verdict.

    gate PATH.so
      1. describe   the library is loaded and validated in a child (`child --describe`)
      2. corpus     every shipped corpus trace, in lockstep, with the model's expected observations
      3. search     the Hypothesis lockstep search, the implementation in a child process
      4. threads    the parallel reference-counting check (when it is available), unless skipped

Each case gets a status: `pass`, `fail`, `expected-fail` (only divergences the expectations file
lists) or `skip`. Each failing check is named and has a level (`memory_checks.CHECKS`): `strict`
holds the implementation to the seed exactly, `conformant` to what any correct implementation of
this design must do. A crash or a hang of the implementation is a failing step of the case it
happened in, with a shrunk, saved trace; the gate itself goes on.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from externref_harness.errors import UsageError
from externref_harness.gate import threads
from externref_harness.gate.cases import LEVELS, CaseResult, GateOptions, GateReport, Status
from externref_harness.isolation.pool import ChildPool, describe_status
from externref_harness.lockstep.memory_checks import STRICT
from externref_harness.lockstep.runner import (
    LOCKSTEP_BOUNDS,
    LOCKSTEP_CONFIG,
    LockstepOptions,
    run_lockstep_check,
)
from externref_harness.lockstep.targets import Target, bounds_for
from externref_harness.model.state import SEED_CHUNK_SIZE, Build
from externref_harness.native.build import asan_runtime
from externref_harness.native.library import Description

#: How long loading and describing a library may take.
DESCRIBE_TIMEOUT = 60.0


def child_env(library: Path) -> dict[str, str] | None:
    """A library built with AddressSanitizer needs its runtime preloaded into the child."""
    try:
        if not library.is_file() or library.stat().st_size > 1 << 30:
            return None  # not a library: `describe_library` says what it is
        data = library.read_bytes()
    except OSError:
        return None
    if b"libasan.so" not in data:
        return None
    runtime = asan_runtime()
    if runtime is None:
        raise UsageError(f"library {library} needs AddressSanitizer, and the C compiler has no libasan.so")
    return {"LD_PRELOAD": str(runtime), "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1"}


def describe_library(library: Path, env: dict[str, str] | None) -> Description:
    """Load and validate the library in a child process (bad library: one-line `UsageError`)."""
    import os
    import stat

    try:
        mode = os.stat(library).st_mode
    except FileNotFoundError:
        raise UsageError(f"library {library}: no such file") from None
    except OSError as e:
        raise UsageError(f"library {library}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise UsageError(f"library {library}: not a regular file")
    try:
        done = subprocess.run(
            [sys.executable, "-m", "externref_harness.isolation.child", "--describe", str(library)],
            capture_output=True,
            text=True,
            timeout=DESCRIBE_TIMEOUT,
            env=None if env is None else {**os.environ, **env},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise UsageError(f"library {library}: loading it did not finish in {DESCRIBE_TIMEOUT:g} s") from None
    if done.returncode == 2:
        raise UsageError(
            done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"library {library}"
        )
    if done.returncode != 0:
        raise UsageError(f"library {library}: loading it {describe_status(done.returncode)}")
    try:
        return Description(**json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, TypeError, IndexError):
        raise UsageError(f"library {library}: its description could not be read") from None


def isolated_target(library: Path, description: Description, pool: ChildPool) -> Target:
    name = f"{description.name} {description.version}"
    return Target(name, pool.adapter, library, description)


def _timed(run: Callable[[], CaseResult]) -> CaseResult:
    started = time.perf_counter()
    result = run()
    result.seconds = time.perf_counter() - started
    return result


def run_gate(opts: GateOptions, progress: Callable[[str], None] = lambda _: None) -> GateReport:
    started = time.perf_counter()
    env = child_env(opts.library)
    description = describe_library(opts.library, env)
    report = GateReport(opts.library, opts.level, description)
    levels = LEVELS[opts.level]
    options = LockstepOptions(
        levels=levels,
        expected=opts.expectations.names,
        impl_name=f"{description.name} {description.version}",
        replay_args=f"--impl {opts.library}",
    )
    pool = ChildPool(opts.library, opts.step_timeout, env)
    try:
        target = isolated_target(opts.library, description, pool)
        report.cases.append(_describe_case(description, opts))
        progress("corpus")
        report.cases += _corpus_cases(target, options, pool)
        seed = search_seed(opts)
        progress("search" if seed is None else f"search (seed {seed})")
        report.cases.append(_timed(lambda: _search_case(target, options, opts, pool, seed)))
        if opts.threads:
            progress("threads")
            report.cases.append(_timed(lambda: _threads_case(opts)))
    finally:
        pool.close()
    seen = frozenset().union(*(c.expected_seen for c in report.cases))
    report.stale = sorted(opts.expectations.names - seen)
    report.seconds = time.perf_counter() - started
    return report


def _describe_case(description: Description, opts: GateOptions) -> CaseResult:
    """What the library says of itself, against the seed: its chunk is the seed's 512 slots."""
    if description.chunk_size == SEED_CHUNK_SIZE or STRICT not in LEVELS[opts.level]:
        return CaseResult("describe", "seed.chunk-size", "pass", f"chunk of {description.chunk_size} slots")
    text = (
        f"[seed.chunk-size] a chunk of {description.chunk_size} slots, "
        f"the seed's CHUNK_SIZE is {SEED_CHUNK_SIZE}"
    )
    if "seed.chunk-size" in opts.expectations.names:
        return CaseResult(
            "describe", "seed.chunk-size", "expected-fail", text, expected_seen=frozenset({"seed.chunk-size"})
        )
    return CaseResult("describe", "seed.chunk-size", "fail", text)


def _status(passed: bool, expected_seen: frozenset[str]) -> Status:
    if not passed:
        return "fail"
    return "expected-fail" if expected_seen else "pass"


def _corpus_cases(target: Target, options: LockstepOptions, pool: ChildPool) -> list[CaseResult]:
    """Every shipped corpus trace of the library's build, in a child, against its expectations."""
    from externref_harness.corpus.run import cannot_run, load_corpus, run_corpus_trace

    assert target.description is not None
    build: Build = "debug" if target.description.debug else "release"
    out = []
    for trace in load_corpus(build=build):
        started = time.perf_counter()
        reason = cannot_run(target, trace.config)
        if reason is not None:
            out.append(CaseResult("corpus", trace.name, "skip", reason))
            continue
        result = run_corpus_trace(trace, pool.adapter(), options)
        seen = frozenset(result.expected_seen)
        detail = "" if result.passed else f"step {result.step}: {result.problem}"
        case = CaseResult("corpus", result.name, _status(result.passed, seen), detail, expected_seen=seen)
        case.seconds = time.perf_counter() - started
        out.append(case)
    return out


def search_seed(opts: GateOptions) -> int | None:
    """The search's first seed: `--seed`; else, when a time limit splits the search into rounds
    (each needs a seed), 0 under a derandomized profile (`ci`) and a random one otherwise (`dev`
    is random); else None (one run, Hypothesis's own seed)."""
    if opts.seed is not None:
        return opts.seed
    if opts.time_limit is None:
        return None
    derandomized = opts.hypothesis_settings is not None and opts.hypothesis_settings.derandomize
    return 0 if derandomized else random.SystemRandom().getrandbits(32)


def _search_case(
    target: Target, options: LockstepOptions, opts: GateOptions, pool: ChildPool, seed: int | None
) -> CaseResult:
    cfg = target.config(LOCKSTEP_CONFIG, None, opts.chunk_size)
    save_as = opts.failures / f"gate-{opts.library.stem}-{opts.level}.json"
    stop_at = None if opts.time_limit is None else time.monotonic() + opts.time_limit
    out = run_lockstep_check(
        cfg,
        bounds_for(cfg, LOCKSTEP_BOUNDS, target.description),
        opts.hypothesis_settings,
        save_as,
        pool.adapter,
        options,
        shrink_adapter_factory=lambda: pool.adapter(fresh=True),
        stop_at=stop_at,
        seed=seed,
    )
    figures = f"{out.stats.examples} examples, {out.stats.steps} steps, chunk {cfg.chunk_size}"
    if out.seeds:
        last = f"-{out.seeds[-1]}" if len(out.seeds) > 1 else ""
        figures += f", seed{'s' if last else ''} {out.seeds[0]}{last}"
    if out.stopped_early:
        figures += f", stopped at the {opts.time_limit:g} s limit"
    seen = frozenset(out.expected_seen)
    if out.passed:
        return CaseResult("search", "lockstep", _status(True, seen), figures, expected_seen=seen)
    return CaseResult(
        "search", "lockstep", "fail", f"{figures}\n{out.failure}", trace=save_as, expected_seen=seen
    )


def _threads_case(opts: GateOptions) -> CaseResult:
    return threads.gate_case(opts)
