"""Traces: a config plus a list of operations, saved as JSON and replayed anywhere.

    {"format": "externref-harness-trace", "version": 1,
     "config": {"chunk_size": 2, "build": "debug", "slots": 3, "n_globals": 2, "mutant": null},
     "steps": [{"op": "New", "size": 8, "align": 8}, ...],
     "note": "I1 no reachable ref is freed: ..."}

Loading validates eagerly and raises `TraceFormatError` with one precise line.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from externref_harness.model.ops import Op, TraceFormatError, op_from_json
from externref_harness.model.state import Config

FORMAT = "externref-harness-trace"
#: How much `ensure_writable` writes to be sure a trace fits (a long trace is a few KiB).
PROBE_BYTES = 16384
VERSION = 1

__all__ = ["FORMAT", "VERSION", "Trace", "TraceFormatError", "failures_dir", "load", "save"]


@dataclass(frozen=True)
class Trace:
    config: Config
    steps: tuple[Op, ...]
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "config": {f.name: getattr(self.config, f.name) for f in fields(Config)},
            "steps": [op.to_json() for op in self.steps],
            "note": self.note,
        }

    @staticmethod
    def from_json(obj: object) -> Trace:
        if not isinstance(obj, dict):
            raise TraceFormatError("a trace must be a JSON object")
        if obj.get("format") != FORMAT:
            raise TraceFormatError(f"not an {FORMAT} file (format={obj.get('format')!r})")
        if obj.get("version") != VERSION:
            raise TraceFormatError(
                f"trace version {obj.get('version')!r} is not supported (expected {VERSION})"
            )
        raw_cfg = obj.get("config")
        if not isinstance(raw_cfg, dict):
            raise TraceFormatError("config: expected an object")
        known = {f.name for f in fields(Config)}
        extra = set(raw_cfg) - known
        if extra:
            raise TraceFormatError(f"config: unexpected field(s) {sorted(extra)}")
        try:
            config = Config(**raw_cfg)
        except (TypeError, ValueError) as e:
            raise TraceFormatError(f"config: {e}") from None
        steps = obj.get("steps")
        if not isinstance(steps, list):
            raise TraceFormatError("steps: expected a list")
        parsed = []
        for i, s in enumerate(steps, 1):
            try:
                parsed.append(op_from_json(s))
            except TraceFormatError as e:
                raise TraceFormatError(f"step {i}: {e}") from None
            except (TypeError, ValueError) as e:
                raise TraceFormatError(f"step {i}: {e}") from None
        note = obj.get("note", "")
        return Trace(config, tuple(parsed), note if isinstance(note, str) else "")


def save(trace: Trace, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace.to_json(), indent=1) + "\n")
    return path


def load(path: Path) -> Trace:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise TraceFormatError(f"cannot read {path}: {e.strerror}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise TraceFormatError(f"{path} is not JSON: {e.msg} at line {e.lineno}") from None
    return Trace.from_json(obj)


def failures_dir() -> Path:
    """Where failing examples are saved: `$EXTERNREF_HARNESS_FAILURES` or `./.externref-harness`."""
    return Path(os.environ.get("EXTERNREF_HARNESS_FAILURES", ".externref-harness/failures"))


def ensure_writable(path: Path, is_dir: bool = False) -> None:
    """Fail before a long run, not after it, when its trace could not be saved there."""
    directory = path if is_dir else path.parent
    if not is_dir and path.is_dir():
        raise TraceFormatError(f"{path} is a directory, not a trace file")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".externref-harness-write-probe-{os.getpid()}"
        try:
            # Some bytes, not an empty file: a full disk still has room for an empty file.
            probe.write_bytes(bytes(PROBE_BYTES))
        finally:
            probe.unlink(missing_ok=True)
    except OSError as e:
        raise TraceFormatError(f"cannot save traces in {directory}: {e.strerror or e}") from None
