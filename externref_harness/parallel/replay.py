"""`replay PARALLEL-TRACE --impl LIB --runs N`: rerun a saved parallel trace in a child process.

Interleavings are not reproducible, so a parallel trace is rerun many times and the failure rate
printed, not a single pass or fail.
"""

from __future__ import annotations

from pathlib import Path

from externref_harness.errors import UsageError
from externref_harness.isolation.describe import child_env, describe_library
from externref_harness.parallel.check import format_program
from externref_harness.parallel.child import rerun_isolated
from externref_harness.parallel.program import load_trace, omitted_kinds

#: Reruns of a parallel trace when `replay --runs` is not given.
DEFAULT_REPLAY_RUNS = 100


def replay_parallel(path: Path, impl: Path | None, runs: int | None) -> int:
    """`replay` of a parallel trace: rerun it `runs` times in a child process, print how often it
    fails (exit 1 if it fails at all or the process dies, 0 if never, 2 on bad input)."""
    trace = load_trace(path)
    if impl is None:
        raise UsageError(f"{path} is a parallel trace: it runs on a native library, give --impl PATH.so")
    runs = DEFAULT_REPLAY_RUNS if runs is None else runs
    if runs < 1:
        raise UsageError(f"--runs {runs}: must be at least 1")
    lacking = omitted_kinds(describe_library(impl, child_env(impl)).capabilities)
    used = sorted({s.kind for _, _, s in trace.program.steps()} & lacking)
    if used:
        raise UsageError(
            f"{path}: its program calls {', '.join(used)}, which {impl} lacks by its declared capabilities"
        )
    print(f"parallel trace {path}: {trace.program.n_threads} threads, {trace.program.n_ops} ops")
    if trace.runs:
        print(f"when saved: failed in {trace.failures} of {trace.runs} reruns on {trace.library}")
    if trace.note:
        print(f"note: {trace.note}")
    print("Program:")
    print(format_program(trace.program))
    result = rerun_isolated(impl, trace.program, runs)
    if result.first_failure is not None:
        print(result.first_failure)
    if result.crash is not None:
        print(f"the implementation's process {result.crash} at run {result.runs} of {runs}")
        return 1
    failures = result.failures
    print(f"failed in {failures} of {runs} runs ({100 * failures / runs:.0f}%) on {impl}")
    return 1 if failures else 0
