"""The gate's verdict as a CI system reads it: JUnit XML and JSON with the same content.

JUnit: one `<testcase>` per case (classname `externref_harness.gate.runner.<kind>`): a failing case has a
`<failure>`, an expected divergence a `<skipped>` naming it and its reason, a skipped case a
`<skipped>`. GitHub, GitLab and Jenkins show these as they show any test suite. A library refused
at loading (exit 2) still gets both reports: `refused` says why, and its one case, `describe:
load`, fails with that reason.
"""

from __future__ import annotations

import json
import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from externref_harness.gate.cases import GateReport
from externref_harness.gate.expectations import Expectations

#: JSON report format version.
REPORT_VERSION = 1


def to_json(report: GateReport, expectations: Expectations) -> dict[str, Any]:
    desc = report.description
    return {
        "report_version": REPORT_VERSION,
        "library": str(report.library),
        "implementation": None
        if desc is None
        else {
            "name": desc.name,
            "version": desc.version,
            "build": "debug" if desc.debug else "release",
            "chunk_size": desc.chunk_size,
            "capabilities": list(desc.capabilities),
        },
        "level": report.level,
        "passed": report.passed,
        "refused": report.refused,
        "seconds": round(report.seconds, 3),
        "counts": dict(report.counts()),
        "not_checked": report.not_checked,
        "cases": [
            {
                "kind": c.kind,
                "name": c.name,
                "status": c.status,
                "detail": c.detail,
                "seconds": round(c.seconds, 3),
                "trace": None if c.trace is None else str(c.trace),
                "expected": {
                    name: expectations.divergences.get(name, "") for name in sorted(c.expected_seen)
                },
            }
            for c in report.cases
        ],
        "stale_expectations": report.stale,
        "cut_short": report.cut_short,
    }


def to_junit(report: GateReport, expectations: Expectations) -> ET.ElementTree[ET.Element]:
    cases = report.cases
    desc = report.description
    suites = ET.Element("testsuites")
    suite = ET.SubElement(
        suites,
        "testsuite",
        name=f"externref-harness gate ({report.level})",
        tests=str(len(cases)),
        failures=str(sum(c.status == "fail" for c in cases)),
        errors="0",
        skipped=str(sum(c.status in ("skip", "expected-fail") for c in cases)),
        time=f"{report.seconds:.3f}",
    )
    props = ET.SubElement(suite, "properties")
    for name, value in (
        ("library", str(report.library)),
        ("implementation", "" if desc is None else f"{desc.name} {desc.version}"),
        ("level", report.level),
        ("capabilities", "" if desc is None else ",".join(desc.capabilities)),
        ("stale_expectations", ",".join(report.stale)),
        ("not_checked", "; ".join(report.not_checked)),
    ):
        ET.SubElement(props, "property", name=name, value=value)
    for c in cases:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"externref_harness.gate.runner.{c.kind}",
            name=c.name,
            time=f"{c.seconds:.3f}",
        )
        if c.status == "fail":
            first = c.detail.splitlines()[0] if c.detail else "failed"
            failure = ET.SubElement(case, "failure", message=first[:500])
            failure.text = c.detail + (f"\nsaved trace: {c.trace}" if c.trace else "")
        elif c.status == "expected-fail":
            reasons = "; ".join(
                f"{n}: {expectations.divergences.get(n, '')}" for n in sorted(c.expected_seen)
            )
            ET.SubElement(case, "skipped", message=f"expected divergence ({reasons})")
        elif c.status == "skip":
            ET.SubElement(case, "skipped", message=c.detail[:500])
    return ET.ElementTree(suites)


def write_atomically(path: Path, data: bytes) -> None:
    """Write beside the target, then rename: a reader never sees half a report."""
    directory = path.parent if str(path.parent) else Path(".")
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, report: GateReport, expectations: Expectations) -> None:
    write_atomically(path, (json.dumps(to_json(report, expectations), indent=2) + "\n").encode())


def write_junit(path: Path, report: GateReport, expectations: Expectations) -> None:
    tree = to_junit(report, expectations)
    ET.indent(tree)
    write_atomically(path, ET.tostring(tree.getroot(), encoding="utf-8", xml_declaration=True) + b"\n")
