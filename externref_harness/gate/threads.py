"""The parallel check as a case of `externref-harness gate` (`gate.runner` imports `gate_case`).

The gate never loads the implementation in its own process; neither does this: the check runs in a
child process (`parallel.child.run_isolated`), so a crash or a hang on several threads is this
case's failure, with the program it was running saved for `replay --runs`.
"""

from __future__ import annotations

from externref_harness.gate.cases import CaseResult, GateOptions
from externref_harness.parallel.check import ParallelOptions
from externref_harness.parallel.child import run_isolated

#: Histories per example of the Hypothesis budget, and the time limit, as `check --only threads`.
HISTORIES_PER_EXAMPLE = 10
TIME_LIMIT = 10.0
#: Histories when the gate has no Hypothesis settings.
DEFAULT_HISTORIES = 3000


#: Seconds the parallel check's child may run past its budget in the gate before it counts as hung.
GRACE = 10.0


def gate_case(
    opts: GateOptions, seconds: float = TIME_LIMIT, env: dict[str, str] | None = None
) -> CaseResult:
    """The parallel check within `seconds` (its shrinking within half as many more)."""
    chosen = opts.hypothesis_settings
    histories = DEFAULT_HISTORIES if chosen is None else chosen.max_examples * HISTORIES_PER_EXAMPLE
    seed = 0 if chosen is None or chosen.derandomize else None
    out = run_isolated(
        opts.library,
        ParallelOptions(
            histories=histories,
            time_limit=seconds,
            shrink_time=min(5.0, seconds / 2),
            seed=seed,
            save_as=opts.failures / f"threads-{opts.library.stem}.json",
        ),
        env=env,
        grace=GRACE,
    )
    share = 100 * out.overlapping / max(out.histories, 1)
    figures = f"{out.histories} histories, {out.histories_per_s:.0f}/s, {share:.0f}% overlapping"
    if out.passed:
        return CaseResult("threads", "parallel", "pass", figures)
    return CaseResult("threads", "parallel", "fail", f"{figures}\n{out.failure}", trace=out.trace)
