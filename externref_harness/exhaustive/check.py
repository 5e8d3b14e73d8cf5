"""`--exhaustive`: the bounded model graph on a target, with a verdict, figures and a saved trace.

The one entry point the gate and `check` share: the plan of `bounds` at the target's config (its
build, capabilities and value layouts: `lockstep.targets`), every transition executed
(`exhaustive.execute`), and on a divergence its trace shrunk and saved as any lockstep failure's
(`lockstep.check.report_lockstep_failure`, each candidate on `shrink_factory`'s adapters), so
`replay` runs it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from externref_harness.exhaustive.execute import Outcome, ProgressHook, run_exhaustive
from externref_harness.exhaustive.plan import build_plan
from externref_harness.explore.explorer import ExploreBounds
from externref_harness.lockstep.check import report_lockstep_failure
from externref_harness.lockstep.runner import DEFAULT_OPTIONS, AdapterFactory, LockstepOptions
from externref_harness.lockstep.targets import Target, bounds_for
from externref_harness.model.state import Build
from externref_harness.search.model_check import InvariantViolation


@dataclass(frozen=True)
class ExhaustiveResult:
    outcome: Outcome
    #: The printed failure (shrunk trace, state diff, where it is saved); None: no divergence.
    failure: str | None = None
    saved: Path | None = None

    @property
    def passed(self) -> bool:
        return self.failure is None

    def figures(self) -> str:
        """One line: coverage and cost (and why it stopped early, if it did)."""
        o = self.outcome
        s, plan = o.stats, o.plan
        cfg = plan.search.cfg
        text = (
            f"{s.covered:,} of {plan.transitions:,} transitions covered ({plan.classes:,} states, "
            f"{s.runs:,} runs ({s.behind:,} sent behind the one before), "
            f"{s.steps:,} steps ({s.replayed:,} replayed, {s.known:,} of them known "
            f"replies), {s.teardowns:,} teardowns, "
            f"{s.elapsed:.1f}s; "
            f"chunk {cfg.chunk_size}, {cfg.build})"
        )
        if o.stopped is not None:
            text += f", stopped by the {o.stopped}"
        if plan.depth_cut:
            text += f", {plan.depth_cut:,} states at the depth limit not expanded"
        return text


def exhaustive_check(
    target: Target,
    bounds: ExploreBounds,
    build: Build | None = None,
    mutant: str | None = None,
    options: LockstepOptions = DEFAULT_OPTIONS,
    save_as: Path | None = None,
    shrink_factory: AdapterFactory | None = None,
    stop_at: float | None = None,
    progress: ProgressHook | None = None,
) -> ExhaustiveResult:
    """Every transition of `bounds`' search on `target`. `mutant` (any layer) is the config's seeded
    bug; `build` the build asked for (None: the target's own, or `bounds.build`)."""
    search = bounds.search()
    base = replace(search.cfg, mutant=mutant if mutant is not None else search.cfg.mutant)
    cfg = target.config(base, build, search.cfg.chunk_size)
    search = replace(search, cfg=cfg, bounds=bounds_for(cfg, search.bounds, target.description))
    plan = build_plan(search)
    outcome = run_exhaustive(plan, target.adapter_factory, options, stop_at, progress)
    d = outcome.divergence
    if d is None:
        return ExhaustiveResult(outcome)
    where = "the teardown after " if d.at_teardown else ""
    head = (
        f"after {outcome.stats.covered:,} of {plan.transitions:,} transitions, {where}a run of "
        f"{len(d.steps)} steps diverged ({d.side})"
    )
    violation = InvariantViolation(head, d.steps, d.problem)
    text = report_lockstep_failure(
        cfg, violation, save_as, shrink_factory or target.adapter_factory, options, stop_at
    )
    return ExhaustiveResult(outcome, f"{head}\n{text}", save_as)
