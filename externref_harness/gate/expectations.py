"""Expectations files: the divergences an implementation is known to have, each with a reason.

An implementation's repository keeps one (TOML or JSON) beside its library, the way
web-platform-tests keeps expectation metadata. The gate passes with the listed divergences
reported as expected, fails on any other, and says when a listed one no longer happens.

    # expectations.toml
    [divergences."observed.bump-capacity-bytes"]
    reason = "bump_capacity_remaining counts slots, not bytes"

or, in JSON, `{"divergences": {"observed.bump-capacity-bytes": {"reason": "..."}}}`. Check names
are those the gate prints (`memory_checks.CHECKS`).
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from externref_harness.errors import UsageError
from externref_harness.lockstep.memory_checks import CHECKS

#: An expectations file larger than this is refused (it is a short list of check names).
MAX_BYTES = 1 << 20


@dataclass(frozen=True)
class Expectations:
    #: Check name -> why the implementation is allowed to diverge there.
    divergences: dict[str, str] = field(default_factory=dict)
    source: Path | None = None

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.divergences)


def load(path: Path) -> Expectations:
    """Read and validate an expectations file; any problem is one `UsageError` line naming it."""
    where = f"expectations file {path}"
    try:
        if not path.is_file():
            raise UsageError(f"{where}: no such file")
        data = path.read_bytes()[: MAX_BYTES + 1]
    except OSError as e:
        raise UsageError(f"{where}: {e.strerror}") from None
    if len(data) > MAX_BYTES:
        raise UsageError(f"{where}: larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(f"{where}: not UTF-8") from None
    parsed: Any
    try:
        if path.suffix == ".json":
            parsed = json.loads(text)
        else:
            parsed = tomllib.loads(text)
    except (ValueError, RecursionError) as e:
        kind = "JSON" if path.suffix == ".json" else "TOML"
        raise UsageError(f"{where}: not valid {kind}: {str(e).splitlines()[0][:120]}") from None
    if not isinstance(parsed, dict) or set(parsed) - {"divergences"}:
        raise UsageError(f"{where}: expected one table 'divergences' and nothing else")
    table = parsed.get("divergences", {})
    if not isinstance(table, dict):
        raise UsageError(f"{where}: 'divergences' must be a table of check names")
    out: dict[str, str] = {}
    for name, entry in table.items():
        shown = name if len(name) <= 60 else name[:60] + "..."
        if name not in CHECKS:
            raise UsageError(f"{where}: unknown check {shown!r} (the gate's report names the checks)")
        reason = entry.get("reason") if isinstance(entry, dict) else None
        if not isinstance(reason, str) or not reason.strip():
            raise UsageError(f"{where}: divergence {shown!r} needs a non-empty 'reason' string")
        if isinstance(entry, dict) and set(entry) - {"reason"}:
            raise UsageError(f"{where}: divergence {shown!r} has fields besides 'reason'")
        out[name] = reason.strip()
    return Expectations(out, path)
