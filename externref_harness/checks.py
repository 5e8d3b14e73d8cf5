"""The checks `externref-harness check` runs, in order. Each layer registers its own here."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import settings

from externref_harness.model_check import MACHINE_BOUNDS, MACHINE_CONFIG, run_model_check
from externref_harness.trace import failures_dir
from model.mutants import model_mutant_names
from model.state import Build


@dataclass(frozen=True)
class CheckOptions:
    hypothesis_settings: settings
    build: Build = "debug"
    mutant: str | None = None
    failures: Path = field(default_factory=failures_dir)


@dataclass
class CheckResult:
    name: str
    passed: bool
    #: Short figures for the summary table, e.g. {"steps": "12836", "paths": "15/15"}.
    figures: dict[str, str]
    failure: str | None = None


@dataclass(frozen=True)
class Check:
    name: str
    run: Callable[[CheckOptions], CheckResult]


def _model(opts: CheckOptions) -> CheckResult:
    from dataclasses import replace

    from externref_harness.model_check import REQUIRED_EVENTS

    mutant = opts.mutant if opts.mutant in model_mutant_names() else None
    cfg = replace(MACHINE_CONFIG, build=opts.build, mutant=mutant)
    save_as = opts.failures / f"model-{mutant or 'seed'}-{opts.build}.json"
    out = run_model_check(cfg, MACHINE_BOUNDS, opts.hypothesis_settings, save_as)
    covered = sum(1 for e in REQUIRED_EVENTS if out.stats.events[e])
    figures = {
        "examples": str(out.stats.examples),
        "steps": str(out.stats.steps),
        "paths": f"{covered}/{len(REQUIRED_EVENTS)}",
    }
    return CheckResult("model state machine", out.passed, figures, out.failure)


CHECKS: list[Check] = [Check("model", _model)]
