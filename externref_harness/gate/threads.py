"""The parallel check as a case of `externref-harness gate` (`gate.runner` imports `gate_case`).

The gate never loads the implementation in its own process; neither does this: the check runs in a
child process (`parallel.child.run_isolated`), so a crash or a hang on several threads is this
case's failure, with the program it was running saved for `replay --runs`.

The case's budget is time, not a count of histories: it runs histories until a failure or until
`TIME_LIMIT` seconds have passed (under the gate's `--time-limit`, its share of that budget), and
reports how many ran, how many had calls of two threads overlapping, and the perturbation of the
threads' start.
"""

from __future__ import annotations

from externref_harness.gate.cases import CaseResult, GateOptions
from externref_harness.parallel.check import ParallelOptions
from externref_harness.parallel.child import run_isolated

#: Seconds of histories the case runs.
TIME_LIMIT = 10.0
#: No count of histories ends the case before its time does.
UNBOUNDED = 10**12
#: Seconds the parallel check's child may run past its budget in the gate before it counts as hung.
GRACE = 10.0


def gate_case(
    opts: GateOptions, seconds: float = TIME_LIMIT, env: dict[str, str] | None = None
) -> CaseResult:
    """The parallel check within `seconds` (its shrinking within half as many more)."""
    chosen = opts.hypothesis_settings
    seed = 0 if chosen is None or chosen.derandomize else None
    budget = seconds
    out = run_isolated(
        opts.library,
        ParallelOptions(
            histories=UNBOUNDED,
            time_limit=seconds,
            shrink_time=min(5.0, seconds / 2),
            seed=seed,
            save_as=opts.failures / f"threads-{opts.library.stem}.json",
        ),
        env=env,
        grace=GRACE,
    )
    share = 100 * out.overlapping / max(out.histories, 1)
    figures = (
        f"{out.histories} histories in {budget:g} s, {out.histories_per_s:.0f}/s, "
        f"{share:.0f}% overlapping; {out.perturbation}"
    )
    if out.passed:
        return CaseResult("threads", "parallel", "pass", figures)
    return CaseResult("threads", "parallel", "fail", f"{figures}\n{out.failure}", trace=out.trace)
