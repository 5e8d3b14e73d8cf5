"""What the gate runs and what it reports: its options, its cases' results and the whole report.

`gate.runner` fills a `GateReport` case by case; `gate.reports` writes it as JUnit and JSON, and the
command prints it as a table. The levels are `lockstep.memory_checks`' levels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from hypothesis import settings

from externref_harness.explore.explorer import ExploreBounds
from externref_harness.gate.expectations import Expectations
from externref_harness.isolation.pool import DEFAULT_STEP_TIMEOUT
from externref_harness.lockstep.memory_checks import CONFORMANT, STRICT, Level
from externref_harness.native.library import Description

Status = Literal["pass", "fail", "expected-fail", "skip"]
STATUSES: tuple[Status, ...] = ("pass", "fail", "expected-fail", "skip")
LEVELS: dict[str, frozenset[Level]] = {
    STRICT: frozenset((CONFORMANT, STRICT)),
    CONFORMANT: frozenset((CONFORMANT,)),
}


@dataclass
class CaseResult:
    """One case of the gate: a JUnit test case, a row of the table."""

    kind: str
    name: str
    status: Status
    detail: str = ""
    seconds: float = 0.0
    #: Where the failing trace was saved (replay it with `--impl`).
    trace: Path | None = None
    #: Expected divergences this case showed.
    expected_seen: frozenset[str] = frozenset()


@dataclass
class GateReport:
    library: Path
    level: str
    #: What the library says of itself (None: it was refused before it said anything).
    description: Description | None
    cases: list[CaseResult] = field(default_factory=list)
    #: Expected divergences that no case showed (the expectations file can drop them).
    stale: list[str] = field(default_factory=list)
    #: What the verdict does not cover, one line each: skipped cases, checks that did not apply,
    #: phases a limit cut short. A "passed" is printed with these.
    not_checked: list[str] = field(default_factory=list)
    seconds: float = 0.0
    #: What the `--time-limit` cut short, one line each (each is a line of `not_checked` too).
    cut_short: list[str] = field(default_factory=list)
    #: Why the library was refused (then `cases` holds the one failing `describe` case).
    refused: str | None = None

    @classmethod
    def of_refusal(cls, library: Path, level: str, reason: str) -> GateReport:
        """The report of a library refused at loading: one failing case, nothing else checked."""
        case = CaseResult("describe", "load", "fail", reason)
        return cls(
            library, level, None, [case], not_checked=["every case: the library was refused"], refused=reason
        )

    @property
    def passed(self) -> bool:
        return all(c.status != "fail" for c in self.cases)

    def counts(self) -> dict[Status, int]:
        """Cases by status, every status present (zero included)."""
        return {status: sum(c.status == status for c in self.cases) for status in STATUSES}


@dataclass(frozen=True)
class GateOptions:
    library: Path
    level: str = STRICT
    expectations: Expectations = field(default_factory=Expectations)
    hypothesis_settings: settings | None = None
    #: Wall-clock limit of the search, seconds (None: the profile's budget alone).
    time_limit: float | None = None
    step_timeout: float = DEFAULT_STEP_TIMEOUT
    failures: Path = Path(".externref-harness/failures")
    threads: bool = True
    #: Chunk size of the search (None: the library's small-chunk default, see `Target.config`).
    chunk_size: int | None = None
    #: The search's first Hypothesis seed (None: 0 under a derandomized profile, else a random one;
    #: with `time_limit` each round of the search takes the next).
    seed: int | None = None
    #: `--exhaustive`: every transition of these bounds instead of the Hypothesis search.
    exhaustive: ExploreBounds | None = None
