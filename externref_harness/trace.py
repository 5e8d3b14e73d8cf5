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
import stat
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from externref_harness import paths
from externref_harness.errors import ECHO_LIMIT, json_type, shown, shown_json, shown_path
from externref_harness.model.ops import Op, TraceFormatError, op_from_json
from externref_harness.model.state import Config
from externref_harness.paths import file_kind, write_atomically

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
            "config": config_json(self.config),
            "steps": [op.to_json() for op in self.steps],
            "note": self.note,
        }

    @staticmethod
    def from_json(obj: object, max_steps: int | None = None) -> Trace:
        if not isinstance(obj, dict):
            raise TraceFormatError(f"a trace must be a JSON object, got {json_type(obj)}")
        if obj.get("format") != FORMAT:
            raise TraceFormatError(f"not an {FORMAT} file (format={shown_json(obj.get('format'))})")
        version = obj.get("version")
        if type(version) is not int or version != VERSION:
            raise TraceFormatError(
                f"trace version {shown_json(version)} is not supported (expected {VERSION})"
            )
        raw_cfg = obj.get("config")
        if not isinstance(raw_cfg, dict):
            raise TraceFormatError(f"config: expected an object, got {json_type(raw_cfg)}")
        known = {f.name for f in fields(Config)}
        extra = set(raw_cfg) - known
        if extra:
            raise TraceFormatError(f"config: unexpected field(s) {shown_json(sorted(extra))}")
        for name, value in raw_cfg.items():
            _check_int_range(f"config.{name}", value)
        try:
            config = Config.from_untyped(raw_cfg)
        except (TypeError, ValueError) as e:
            raise TraceFormatError(f"config: {shown(str(e))}") from None
        steps = obj.get("steps")
        if not isinstance(steps, list):
            raise TraceFormatError(f"steps: expected a list, got {json_type(steps)}")
        if max_steps is not None and len(steps) > max_steps:
            raise TraceFormatError(
                f"{len(steps):,} steps, more than the {max_steps:,} a replay runs (raise --max-steps)"
            )
        parsed = []
        for i, s in enumerate(steps, 1):
            try:
                op = op_from_json(s)
                for f in fields(op):
                    _check_op_value(f"{type(op).__name__}.{f.name}", getattr(op, f.name))
            except (TraceFormatError, TypeError, ValueError) as e:
                raise TraceFormatError(f"step {i}: {shown(str(e), 2 * ECHO_LIMIT)}") from None
            parsed.append(op)
        note = obj.get("note", "")
        if not isinstance(note, str):
            raise TraceFormatError(f"note: expected a string, got {json_type(note)}")
        return Trace(config, tuple(parsed), note)


#: Largest trace file `load` reads: far above any trace the harness writes (a 10,000-step trace is
#: under 1 MiB), and a bound on what an endless or huge file can cost.
MAX_TRACE_BYTES = 64 * 1024 * 1024
#: Largest int a trace field may hold (every field is an index, a count or a size).
MAX_FIELD = 2**32 - 1


def config_json(cfg: Config) -> dict[str, Any]:
    """A config as a trace stores it: every field, except capabilities when there are none (the
    seed's set), so a trace of the seed reads as it did before capabilities existed."""
    out: dict[str, Any] = {}
    for f in fields(Config):
        value = getattr(cfg, f.name)
        if f.name == "capabilities":
            if value:
                out[f.name] = list(value)
            continue
        out[f.name] = value
    return out


def _check_int_range(where: str, value: object) -> None:
    if type(value) is int and not -MAX_FIELD <= value <= MAX_FIELD:
        raise TraceFormatError(f"{where}: {shown_json(value)} is out of range (at most {MAX_FIELD})")


def _check_op_value(where: str, value: object) -> None:
    """Op fields are indexes, counts and sizes: ints in 0..MAX_FIELD (or tuples of them)."""
    for v in value if isinstance(value, tuple) else (value,):
        if type(v) is int and not 0 <= v <= MAX_FIELD:
            raise TraceFormatError(f"{where}: {shown_json(v)} is out of range 0..{MAX_FIELD}")


def save(trace: Trace, path: Path) -> Path:
    """Write the trace atomically (the directory is created now, not before a run)."""
    return write_atomically(path, json.dumps(trace.to_json(), indent=1) + "\n")


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def read_text(path: Path, limit: int = MAX_TRACE_BYTES) -> str:
    """The UTF-8 text of a regular file of at most `limit` bytes (`TraceFormatError` otherwise).

    Special files are refused before they are opened: a FIFO nobody writes would block the open,
    and `/dev/zero` never ends."""
    name = shown_path(path)
    try:
        st = os.stat(path)
    except OSError as e:
        raise TraceFormatError(f"cannot read {name}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise TraceFormatError(f"{name} is {file_kind(st.st_mode)}, not a trace file")
    if st.st_size > limit:
        raise TraceFormatError(f"{name} has {st.st_size:,} bytes, more than a trace may ({limit:,})")
    try:
        # Non-blocking, and checked again once open: a file swapped for a FIFO after the stat
        # above must not block the open.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise TraceFormatError(f"{name} is not a regular file")
            data = f.read(limit + 1)
    except OSError as e:
        raise TraceFormatError(f"cannot read {name}: {e.strerror or e}") from None
    if len(data) > limit:
        raise TraceFormatError(f"{name} has more than the {limit:,} bytes a trace may have")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TraceFormatError(
            f"{name} is not UTF-8 text (byte {data[e.start]:#04x} at offset {e.start})"
        ) from None


def parse(text: str, name: str) -> object:
    """JSON text to a value, every failure one `TraceFormatError` naming the file."""
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise TraceFormatError(f"{name} is not JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except RecursionError:
        raise TraceFormatError(f"{name} is not a trace: JSON nested too deeply") from None
    except ValueError as e:  # an int past the int-to-text limit, NaN, Infinity
        if "integer string conversion" in str(e):
            limit = sys.get_int_max_str_digits()
            what = f"an integer of more than {limit:,} digits"
            raise TraceFormatError(f"{name} is not a trace: {what}") from None
        raise TraceFormatError(f"{name} is not a trace: {shown(str(e))}") from None


def load(path: Path, max_steps: int | None = None) -> Trace:
    """A trace file, validated eagerly: every problem one `TraceFormatError` naming the file."""
    name = shown_path(path)
    obj = parse(read_text(path), name)
    try:
        return Trace.from_json(obj, max_steps)
    except TraceFormatError as e:
        raise TraceFormatError(f"{name}: {e}") from None


def failures_dir() -> Path:
    """Where failing examples are saved: `$EXTERNREF_HARNESS_FAILURES` or `./.externref-harness`."""
    return paths.failures_dir()


def ensure_writable(path: Path, is_dir: bool = False) -> None:
    """Fail before a long run, not after it, when its trace could not be saved there."""
    if is_dir:
        paths.check_dir(path, "cannot save traces in")
    else:
        paths.check_file(path, "cannot save a trace as")
