"""The parallel check in a child process: an implementation that crashes or hangs on several
threads takes down only the child, and the program it was running is the failure.

    parent: run_isolated ◀── frames ── child: python -m externref_harness.parallel.child LIB FD OPTS
        keeps the last ("program", JSON text)    sends ("program", JSON text) before each history,
        reads ("outcome", fields)                then ("outcome", fields of the ParallelOutcome)
        (the child's stdout/stderr: a bounded capture, its tail shown when the run fails)

The child is confined as the lockstep's is (`isolation.process`: its own process group, killed
whole when the run ends, resource limits, output captured), and its frames are plain data
(`isolation.wire`), every field of the outcome checked. A child that dies, breaks the protocol,
or outlives its budget by `GRACE` seconds (then it is killed) is reported as a failing outcome
naming how it ended and the program it was running, saved as a parallel trace. `rerun_isolated`
(`replay --runs`) gives each rerun `RUN_TIMEOUT` seconds: a deadlock is a hang at that run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from externref_harness.isolation.process import Confined, Limits, describe_status
from externref_harness.isolation.wire import WireError, conform, read_frame, write_frame
from externref_harness.native.library import LibraryError
from externref_harness.parallel.check import (
    ParallelOptions,
    ParallelOutcome,
    format_program,
    run_parallel_check,
)
from externref_harness.parallel.program import ParallelProgram, ParallelTrace, Shape, save_trace

#: Seconds a child may run past its budget (time limit plus shrinking) before it counts as hung.
GRACE = 30.0
#: Seconds one rerun of a program may take (a run takes milliseconds).
RUN_TIMEOUT = 10.0
#: Seconds the rerunning child may take to start and load the library.
START_ALLOWANCE = 60.0


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


def outcome_to_wire(outcome: ParallelOutcome) -> dict[str, Any]:
    """The outcome as plain data: its program as JSON text, its trace as a path string."""
    fields = {f.name: getattr(outcome, f.name) for f in dataclasses.fields(outcome)}
    fields["program"] = None if outcome.program is None else json.dumps(outcome.program.to_json())
    fields["trace"] = None if outcome.trace is None else str(outcome.trace)
    return fields


def outcome_from_wire(value: Any) -> ParallelOutcome:
    """Every field checked against `ParallelOutcome`'s declared type (`WireError` otherwise)."""
    if not isinstance(value, dict):
        raise WireError("outcome: expected the fields of an outcome")
    hints = typing.get_type_hints(ParallelOutcome)
    names = {f.name for f in dataclasses.fields(ParallelOutcome)}
    if not set(value) <= names:
        raise WireError(f"outcome: unknown fields {sorted(set(value) - names)[:5]}")
    fields: dict[str, Any] = {}
    for name, raw in value.items():
        if name == "program":
            text = conform(raw, str | None, "outcome.program")
            try:
                fields[name] = None if text is None else ParallelProgram.from_json(json.loads(text))
            except (ValueError, TypeError, RecursionError) as e:
                raise WireError(f"outcome.program: {str(e)[:200]}") from None
        elif name == "trace":
            text = conform(raw, str | None, "outcome.trace")
            fields[name] = None if text is None else Path(text)
        else:
            fields[name] = conform(raw, hints[name], f"outcome.{name}")
    try:
        return ParallelOutcome(**fields)
    except TypeError as e:
        raise WireError(f"outcome: {e}") from None


def _limits(opts: ParallelOptions, env: dict[str, str] | None) -> Limits:
    cpu = int(2 * (opts.time_limit + opts.shrink_time + GRACE)) + 60
    limits = Limits(cpu_seconds=cpu)
    return limits if env is None or "LD_PRELOAD" not in env else limits.without_memory_limit()



@dataclass(frozen=True)
class Ended:
    """How a confined child ended once its parent stopped reading: why it was killed (None: it was
    not), its exit status, whether it flooded its output, and the tail of what it printed."""

    how: str | None
    returncode: int | None
    flooded: bool
    printed: str


def _end(child: Confined, read_fd: int, how: str | None, lingered: str) -> Ended:
    """Close the pipe, kill the child if `how` says it misbehaved, give it 5 s to exit (else it
    `lingered`), and kill its whole group: nothing it forked outlives the check."""
    os.close(read_fd)
    if how is not None:
        child.kill()
    try:
        child.proc.wait(timeout=5)
    except Exception:
        how = how or lingered
    ended = Ended(how, child.proc.returncode, child.capture.flooded(), child.capture.printed())
    child.close()
    return ended


def run_isolated(
    library: Path,
    opts: ParallelOptions,
    watch: Callable[[int, int], None] | None = None,
    env: dict[str, str] | None = None,
    grace: float = GRACE,
) -> ParallelOutcome:
    """`run_parallel_check` of `library` in a child process. `watch(pid, runs)` is called as each
    run of a program is announced (runs counts them). The child is killed `grace` seconds past its
    budget (time limit plus shrinking)."""
    read_fd, write_fd = os.pipe()
    started = time.perf_counter()
    child = Confined(
        [
            sys.executable,
            "-m",
            "externref_harness.parallel.child",
            str(library),
            str(write_fd),
            _options_json(opts),
        ],
        (write_fd,),
        env,
        _limits(opts, env),
    )
    os.close(write_fd)
    deadline = time.monotonic() + opts.time_limit + opts.shrink_time + grace
    #: The JSON text of the last program announced (parsed only if the run fails).
    last: str | None = None
    outcome: ParallelOutcome | None = None
    histories = 0
    how: str | None = None
    try:
        while True:
            try:
                kind, value = conform(
                    read_frame(read_fd, deadline, child.exit_watch()), tuple[str, Any], "frame"
                )
                if kind == "program":
                    last, histories = conform(value, str, "program"), histories + 1
                    if watch is not None:
                        watch(child.pid, histories)
                elif kind == "outcome":
                    # The last frame: do not wait for the pipe to close, since whatever the library
                    # forked may hold its write end open.
                    outcome = outcome_from_wire(value)
                    break
                else:
                    raise WireError(f"a {str(kind)[:40]!r} frame")
            except EOFError:
                break
            except TimeoutError:
                how = "hung (killed)"
                break
            except WireError as e:
                how = f"broke the protocol ({e}; killed)"
                break
    finally:
        ended = _end(child, read_fd, how, "did not exit after its outcome (killed)")
    how, returncode, printed = ended.how, ended.returncode, ended.printed
    if how is None and ended.flooded:
        how = "printed more than the output limit (a flood)"
    if how is None and outcome is not None and returncode == 0:
        return outcome
    how = how or describe_status(returncode)
    seconds = time.perf_counter() - started
    program = None
    if last is not None:
        try:
            program = ParallelProgram.from_json(json.loads(last))
        except (ValueError, TypeError, RecursionError):
            program = None
    lines = [f"The implementation's process {how} during the parallel check, at run {histories}{printed}."]
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
    and how the process ended if it died or hung (None: it did not)."""

    runs: int
    failures: int
    first_failure: str | None
    crash: str | None


def rerun_isolated(
    library: Path, program: ParallelProgram, runs: int, run_timeout: float = RUN_TIMEOUT
) -> Rerun:
    """Rerun `program` `runs` times in a confined child (a `LibraryError` names a bad library); a
    run that takes longer than `run_timeout` seconds is a hang (the child is killed)."""
    read_fd, write_fd = os.pipe()
    program_fd, program_w = os.pipe()
    # The program through a pipe the child reads: it can be longer than an argument may be.
    data = json.dumps(program.to_json()).encode()
    child = Confined(
        [
            sys.executable,
            "-m",
            "externref_harness.parallel.child",
            "--rerun",
            str(library),
            str(write_fd),
            str(runs),
            str(program_fd),
        ],
        (write_fd, program_fd),
        limits=Limits(cpu_seconds=int(runs * run_timeout) + 60),
    )
    os.close(write_fd)
    os.close(program_fd)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(program_w, view) :]
    except OSError:
        pass
    finally:
        os.close(program_w)
    done = failures = 0
    first: str | None = None
    error: str | None = None
    how: str | None = None
    ready = False
    try:
        while True:
            # Loading the library has the start-up allowance; each run then has `run_timeout`.
            allowance = run_timeout if ready else START_ALLOWANCE
            try:
                kind, value = conform(
                    read_frame(read_fd, time.monotonic() + allowance, child.exit_watch()),
                    tuple[str, Any],
                    "frame",
                )
                if kind == "ready" and not ready:
                    ready = True
                elif kind == "run" and ready:
                    text = conform(value, str | None, "run")
                    done += 1
                    failures += text is not None
                    first = first or text
                    if done == runs:
                        break  # the last frame (what the library forked may hold the pipe open)
                elif kind == "error":
                    error = conform(value, str, "error")
                    break
                else:
                    raise WireError(f"a {str(kind)[:40]!r} frame")
            except EOFError:
                break
            except TimeoutError:
                how = (
                    f"hung (no run finished within {run_timeout:g} s; killed)"
                    if ready
                    else f"hung while loading the library ({START_ALLOWANCE:g} s; killed)"
                )
                break
            except WireError as e:
                how = f"broke the protocol ({e}; killed)"
                break
    finally:
        ended = _end(child, read_fd, how, "did not exit after its runs (killed)")
    how, returncode, printed = ended.how, ended.returncode, ended.printed
    if error is not None:
        raise LibraryError(error)
    if how is None and returncode != 0:
        how = describe_status(returncode)
    crash = None if how is None else how + printed
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
    write_frame(fd, ("ready", None))
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
    try:
        return _main(argv)
    except OSError as e:
        # The library closed or replaced the descriptors the frames go through: one line.
        print(f"child: the protocol pipe failed ({e}); did the library close descriptors?", file=sys.stderr)
        return 3
    except LibraryError as e:
        print(f"child: {e}", file=sys.stderr)
        return 2


def _main(argv: list[str]) -> int:
    from externref_harness.native.backend import open_library

    if argv[:1] == ["--rerun"]:
        with os.fdopen(int(argv[4]), "rb") as source:
            program = ParallelProgram.from_json(json.loads(source.read()))
        return _rerun(Path(argv[1]), int(argv[2]), program, int(argv[3]))
    library, fd, opts = Path(argv[0]), int(argv[1]), _options(argv[2])

    def announce(program: ParallelProgram) -> None:
        write_frame(fd, ("program", json.dumps(program.to_json())))

    outcome = run_parallel_check(open_library(library), opts, on_program=announce)
    write_frame(fd, ("outcome", outcome_to_wire(outcome)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
