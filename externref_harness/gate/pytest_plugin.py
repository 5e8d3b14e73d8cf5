"""A pytest plugin: an implementation's own test suite gates its library with the harness.

Installed with the package (entry point `pytest11`), inactive until asked:

    pytest --externref-impl target/release/libmyruntime.so [--externref-level conformant]
           [--externref-expect expectations.toml] [--externref-time-limit 60]
           [--externref-failures DIR]

adds one test per gate case (`describe`, every corpus trace, the lockstep search, the parallel
check), each run as `externref-harness gate` runs it, the implementation in a child process. A
failing case fails its test with the gate's report (the shrunk trace, where it was saved); a
skipped case is a skipped test with its reason, and the terminal summary lists what the verdict
did not check.

Failing traces are saved under the invoking project, never beside the library: pytest decides its
rootdir before it knows this plugin's options, so without an ini file `--externref-impl PATH` (with
a space) reads PATH as a test path and makes the library's folder the rootdir. The project is the
rootdir only when an ini file chose it, else the folder pytest was invoked from.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from externref_harness import paths
from externref_harness.errors import UsageError
from externref_harness.gate.cases import LEVELS, CaseResult, GateOptions, GateReport
from externref_harness.gate.runner import run_gate


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("externref", "externref-harness conformance gate")
    group.addoption("--externref-impl", metavar="PATH.so", default=None, help="gate this implementation")
    group.addoption(
        "--externref-level", choices=sorted(LEVELS), default="strict", help="strict (default) or conformant"
    )
    group.addoption("--externref-expect", metavar="FILE", default=None, help="an expectations file")
    group.addoption(
        "--externref-time-limit", type=float, default=None, metavar="S", help="limit of the lockstep search"
    )
    group.addoption(
        "--externref-failures",
        metavar="DIR",
        default=None,
        help=f"where failing traces are saved (default: ${paths.FAILURES_ENV}, else "
        f"{paths.DEFAULT_FAILURES} in the project: the ini file's folder, else the invocation folder)",
    )


class GateCaseItem(pytest.Item):
    """One case of the gate's report."""

    def __init__(self, *, case: CaseResult, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.case = case

    def runtest(self) -> None:
        if self.case.status == "skip":
            pytest.skip(self.case.detail)
        if self.case.status == "fail":
            raise GateCaseFailed(self.case)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:
        if isinstance(excinfo.value, GateCaseFailed):
            case = excinfo.value.case
            saved = f"\nsaved trace: {case.trace}" if case.trace else ""
            return f"{case.kind} {case.name} failed:\n{case.detail}{saved}"
        return str(super().repr_failure(excinfo))

    def reportinfo(self) -> tuple[Path, int, str]:
        return self.path, 0, f"externref gate: {self.case.kind}: {self.case.name}"


class GateCaseFailed(Exception):
    def __init__(self, case: CaseResult) -> None:
        super().__init__(case.name)
        self.case = case


def _report(config: pytest.Config) -> GateReport:
    from hypothesis import settings

    from externref_harness.gate import expectations

    impl = Path(config.getoption("--externref-impl"))
    expect_file = config.getoption("--externref-expect")
    try:
        expect = expectations.load(Path(expect_file)) if expect_file else expectations.Expectations()
        return run_gate(
            GateOptions(
                library=impl,
                level=config.getoption("--externref-level"),
                expectations=expect,
                hypothesis_settings=settings(),
                time_limit=config.getoption("--externref-time-limit"),
                failures=failures_directory(config),
            )
        )
    except UsageError as e:
        raise pytest.UsageError(f"--externref-impl: {e}") from None


def failures_directory(config: pytest.Config) -> Path:
    """`--externref-failures` or `$EXTERNREF_HARNESS_FAILURES` (relative to where pytest was invoked),
    else the default under the project (`UsageError` if it cannot be written)."""
    given = config.getoption("--externref-failures")
    chosen = paths.failures_dir(given, "--externref-failures")
    invoked = Path(config.invocation_params.dir)
    if given is not None or os.environ.get(paths.FAILURES_ENV) is not None:
        project = invoked
    else:
        # Without an ini file the rootdir may be the library's folder (see the module docstring).
        project = Path(str(config.rootpath)) if config.inipath is not None else invoked
    directory = chosen if chosen.is_absolute() else project / chosen
    paths.check_dir(directory, paths.failures_source(given, "--externref-failures"))
    return directory


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if config.getoption("--externref-impl") is None:
        return
    report = _report(config)
    config.stash[NOT_CHECKED] = report.not_checked
    items.extend(_items(session, report))


#: What the gate's verdict did not check, for the terminal summary.
NOT_CHECKED = pytest.StashKey[list[str]]()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    """A passing run says what it did not check, as `externref-harness gate` does."""
    for line in config.stash.get(NOT_CHECKED, []):
        terminalreporter.write_line(f"externref gate: not checked: {line}", yellow=True)


def _items(session: pytest.Session, report: GateReport) -> Iterator[pytest.Item]:
    for case in report.cases:
        name = f"externref_gate[{case.kind}:{case.name}]"
        yield GateCaseItem.from_parent(session, name=name, case=case)
