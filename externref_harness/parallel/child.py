"""The parallel check in a child process: an implementation that crashes or hangs on several
threads takes down only the child, and the program it was running is the failure.

    parent: run_isolated ◀── frames ── child: python -m externref_harness.parallel.child LIB FD OPTS
        keeps the last ("program", json)         sends ("program", json) before each history,
        reads ("outcome", ParallelOutcome)       then ("outcome", outcome)

A child that dies, or outlives its budget by `GRACE` seconds (then it is killed), is reported as a
failing outcome naming how it ended and the program it was running, saved as a parallel trace.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from externref_harness.isolation.child import read_frame, write_frame
from externref_harness.isolation.pool import describe_status
from externref_harness.native.library import LibraryError
from externref_harness.parallel.check import (
    ParallelOptions,
    ParallelOutcome,
    format_program,
    run_parallel_check,
)
from externref_harness.parallel.program import ParallelProgram, ParallelTrace, Shape, save_trace

#: Seconds a child may run past its budget (time limit plus shrinking) before it counts as hung.
GRACE = 60.0


def _options_json(opts: ParallelOptions) -> str:
    out = asdict(opts)
    out["save_as"] = None if opts.save_as is None else str(opts.save_as)
    return json.dumps(out)


def _options(text: str) -> ParallelOptions:
    raw: dict[str, Any] = json.loads(text)
    shape = raw.pop("shape")
    save_as = raw.pop("save_as")
    return ParallelOptions(
        **raw,
        shape=Shape(**{k: tuple(v) for k, v in shape.items()}),
        save_as=None if save_as is None else Path(save_as),
    )


def run_isolated(
    library: Path, opts: ParallelOptions, watch: Callable[[int, int], None] | None = None
) -> ParallelOutcome:
    """`run_parallel_check` of `library` in a child process. `watch(pid, runs)` is called as each
    run of a program is announced (runs counts them)."""
    read_fd, write_fd = os.pipe()
    started = time.perf_counter()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "externref_harness.parallel.child",
            str(library),
            str(write_fd),
            _options_json(opts),
        ],
        pass_fds=(write_fd,),
        stdin=subprocess.DEVNULL,
    )
    os.close(write_fd)
    deadline = started + opts.time_limit + opts.shrink_time + GRACE
    last: dict[str, Any] | None = None
    outcome: ParallelOutcome | None = None
    histories = 0
    hung = False
    try:
        while True:
            ready, _, _ = select.select([read_fd], [], [], max(0.0, deadline - time.perf_counter()))
            if not ready:
                hung = True
                proc.kill()
                break
            try:
                kind, value = read_frame(read_fd)
            except EOFError:
                break
            if kind == "program":
                last, histories = value, histories + 1
                if watch is not None:
                    watch(proc.pid, histories)
            elif kind == "outcome":
                outcome = value
    finally:
        os.close(read_fd)
        returncode = proc.wait()
    if outcome is not None and returncode == 0:
        return outcome
    how = "hung (killed)" if hung else describe_status(returncode)
    seconds = time.perf_counter() - started
    program = None if last is None else ParallelProgram.from_json(last)
    lines = [f"The implementation's process {how} during the parallel check, at run {histories}."]
    saved = None
    if program is not None:
        lines += ["", "The program it was running:", format_program(program)]
        if opts.save_as is not None:
            saved = save_trace(ParallelTrace(program, str(library), f"the process {how}"), opts.save_as)
            lines += ["", f"Saved for replay: externref-harness replay {saved} --impl {library} --runs 1"]
    return ParallelOutcome(False, histories, seconds, seconds, "\n".join(lines), program, saved)


@dataclass(frozen=True)
class Rerun:
    """What the reruns of one program did: how many ran and failed, the first failure described,
    and how the process ended if it died (None: it did not)."""

    runs: int
    failures: int
    first_failure: str | None
    crash: str | None


def rerun_isolated(library: Path, program: ParallelProgram, runs: int) -> Rerun:
    """Rerun `program` `runs` times in a child process (a `LibraryError` names a bad library)."""
    read_fd, write_fd = os.pipe()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "externref_harness.parallel.child",
            "--rerun",
            str(library),
            str(write_fd),
            str(runs),
        ],
        pass_fds=(write_fd,),
        stdin=subprocess.PIPE,
    )
    assert proc.stdin is not None
    with proc.stdin:  # the program on stdin: it can be longer than an argument may be
        proc.stdin.write(json.dumps(program.to_json()).encode())
    os.close(write_fd)
    done = failures = 0
    first: str | None = None
    error: str | None = None
    try:
        while True:
            try:
                kind, value = read_frame(read_fd)
            except EOFError:
                break
            if kind == "run":
                done += 1
                failures += value is not None
                first = first or value
            elif kind == "error":
                error = value
    finally:
        os.close(read_fd)
        returncode = proc.wait()
    if error is not None:
        raise LibraryError(error)
    crash = None if returncode == 0 else describe_status(returncode)
    return Rerun(done, failures, first, crash)


def _rerun(library: Path, fd: int, program: ParallelProgram, runs: int) -> int:
    from externref_harness.native.backend import open_library
    from externref_harness.parallel.check import describe_run, model_config, run_once
    from externref_harness.parallel.run import Runner

    try:
        lib = open_library(library)
    except LibraryError as e:
        write_frame(fd, ("error", str(e)))
        return 2
    runner, cfg = Runner(lib), model_config(lib)
    first = True
    for _ in range(runs):
        history, verdict = run_once(runner, program, cfg)
        text = None
        if not verdict.passed:
            text = describe_run(program, history, verdict) if first else ""
            first = False
        write_frame(fd, ("run", text))
    return 0


def main(argv: list[str]) -> int:
    from externref_harness.native.backend import open_library

    if argv[:1] == ["--rerun"]:
        program = ParallelProgram.from_json(json.loads(sys.stdin.read()))
        return _rerun(Path(argv[1]), int(argv[2]), program, int(argv[3]))
    library, fd, opts = Path(argv[0]), int(argv[1]), _options(argv[2])

    def announce(program: ParallelProgram) -> None:
        write_frame(fd, ("program", program.to_json()))

    outcome = run_parallel_check(open_library(library), opts, on_program=announce)
    write_frame(fd, ("outcome", outcome))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
