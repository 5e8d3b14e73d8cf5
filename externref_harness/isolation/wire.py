"""The frames that cross the child boundary: data only, sizes bounded, every field validated.

    ┌──────────────┬──────────────────────────────────────────────────┐
    │ length: <Q   │ UTF-8 JSON of plain data (at most MAX_FRAME)     │
    └──────────────┴──────────────────────────────────────────────────┘

The implementation under test runs in the child and can write anything to its response pipe: a
header announcing a huge length, half a frame, bytes that are no JSON, JSON of the wrong shape, a
pickle. So the parent (1) reads every frame with a deadline (`read_frame(fd, deadline)`: a partial
frame is a `WireError`, never a blocked read), (2) refuses a length over `MAX_FRAME` before it
allocates anything, (3) decodes with `json` only, which builds ints, strings, lists and dicts and
runs no code, and (4) checks the decoded value against the declared type of what it expects
(`conform(value, StepOutcome)`), so a hostile frame is a `WireError`: the implementation's failure,
reported at that step.

Plain data maps onto JSON as: None, bools, ints and strings as themselves; tuples (and lists) as
arrays, decoded as tuples; `bytes` as `{"b": HEX}`; a dict with string keys as `{"d": {...}}`.
Floats must be finite (NaN and infinities are refused); ints are bounded to 64 bits.
"""

from __future__ import annotations

import json
import os
import select
import struct
import time
import types
import typing
from typing import Any, Union

HEADER = struct.Struct("<Q")
#: The largest frame either side accepts (a probe of a full 65,536-slot chunk is about 1 MB).
MAX_FRAME = 64 << 20
#: The largest string in a frame (a panic message, an error's text).
MAX_TEXT = 1 << 20
#: The deepest nesting a frame may have.
MAX_DEPTH = 32
#: The range of an int in a frame (addresses are unsigned 64-bit words; counts may be negative).
INT_MIN, INT_MAX = -(1 << 63), (1 << 64) - 1


class WireError(Exception):
    """A frame that is not what the protocol says: the other side's failure, with what was wrong."""


# --- frames ----------------------------------------------------------------------------------------


def write_frame(fd: int, value: Any) -> None:
    data = encode(value)
    view = memoryview(HEADER.pack(len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def read_frame(fd: int, deadline: float | None = None) -> Any:
    """One frame from `fd`, decoded (not yet conformed). EOFError when the other side has gone
    before a frame began; `WireError` for a partial, oversized or malformed frame, or for a frame
    not complete by `deadline` (a `time.monotonic()` instant; None: wait as long as it takes)."""
    header = _read_exactly(fd, HEADER.size, deadline, first=True)
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise WireError(f"a frame header announced {size:,} bytes, more than the {MAX_FRAME:,} allowed")
    return decode(_read_exactly(fd, size, deadline, first=False))


def _read_exactly(fd: int, size: int, deadline: float | None, first: bool) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        if deadline is not None:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, left))
            if not ready:
                if first and not got:
                    raise TimeoutError("no frame began in time")
                raise WireError(f"a partial frame: {got} of {size} bytes arrived, then nothing in time")
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            if first and not got:
                raise EOFError("the other side closed the pipe")
            raise WireError(f"a partial frame: {got} of {size} bytes arrived, then the pipe closed")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# --- plain data <-> JSON -------------------------------------------------------------------------------


def encode(value: Any) -> bytes:
    return json.dumps(_to_json(value, 0), separators=(",", ":"), allow_nan=False).encode()


def _to_json(value: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise WireError(f"nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value
    if isinstance(value, (tuple, list)):
        return [_to_json(v, depth + 1) for v in value]
    if isinstance(value, bytes):
        return {"b": value.hex()}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"d": {k: _to_json(v, depth + 1) for k, v in value.items()}}
    raise WireError(f"not plain data: {type(value).__name__}")


def _refuse_constant(text: str) -> Any:
    raise WireError(f"a number that is not finite: {text[:40]!r}")


def decode(data: bytes) -> Any:
    try:
        raw = json.loads(
            data.decode("utf-8"),
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, WireError):
            raise
        raise WireError(f"not a JSON frame ({type(e).__name__}: {str(e)[:120]})") from None
    return _from_json(raw, 0)


def _from_json(raw: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise WireError(f"nested deeper than {MAX_DEPTH}")
    if raw is None or isinstance(raw, (bool, float)):
        return raw
    if isinstance(raw, int):
        if not INT_MIN <= raw <= INT_MAX:
            raise WireError("an int outside 64 bits")
        return raw
    if isinstance(raw, str):
        if len(raw) > MAX_TEXT:
            raise WireError(f"a string of {len(raw):,} characters, more than {MAX_TEXT:,}")
        return raw
    if isinstance(raw, list):
        return tuple(_from_json(v, depth + 1) for v in raw)
    if isinstance(raw, dict) and len(raw) == 1:
        if isinstance(raw.get("b"), str):
            try:
                return bytes.fromhex(raw["b"])
            except ValueError:
                raise WireError("bytes that are not hex") from None
        if isinstance(raw.get("d"), dict):
            return {k: _from_json(v, depth + 1) for k, v in raw["d"].items()}
    raise WireError("an object that is no encoded bytes or dict")


# --- checking a decoded value against a declared type -----------------------------------------------


def conform(value: Any, expected: Any, where: str = "frame") -> Any:
    """`value` as `expected` (a NamedTuple class, `int`, `tuple[int, ...]`, `X | None`, `Any`, ...),
    checked field by field; NamedTuples are rebuilt. A mismatch is a `WireError` naming the field."""
    if expected is Any:
        return value
    if expected is None or expected is type(None):
        if value is not None:
            raise WireError(f"{where}: expected None, got {_kind(value)}")
        return None
    if isinstance(expected, type) and issubclass(expected, tuple) and hasattr(expected, "_fields"):
        return _conform_record(value, expected, where)
    if expected is float:
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise WireError(f"{where}: expected a number, got {_kind(value)}")
        return float(value)
    if expected in (int, str, bool, bytes):
        ok = isinstance(value, expected) and not (expected is int and isinstance(value, bool))
        if not ok:
            raise WireError(f"{where}: expected {expected.__name__}, got {_kind(value)}")
        return value
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if origin in (Union, types.UnionType):
        errors = []
        for option in args:
            try:
                return conform(value, option, where)
            except WireError as e:
                errors.append(str(e))
        raise WireError(errors[0] if len(errors) == 1 else f"{where}: {_kind(value)} fits none of {args}")
    if origin is tuple:
        if not isinstance(value, tuple):
            raise WireError(f"{where}: expected a sequence, got {_kind(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(conform(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise WireError(f"{where}: expected {len(args)} items, got {len(value)}")
        return tuple(conform(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(value, args, strict=True)))
    if origin is list:
        if not isinstance(value, tuple):
            raise WireError(f"{where}: expected a sequence, got {_kind(value)}")
        return [conform(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(f"conform: no rule for {expected!r}")


_HINTS: dict[type, dict[str, Any]] = {}


def _conform_record(value: Any, cls: Any, where: str) -> Any:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    fields: tuple[str, ...] = cls._fields
    if not isinstance(value, tuple) or len(value) != len(fields):
        raise WireError(f"{where}: expected a {cls.__name__} of {len(fields)} fields, got {_kind(value)}")
    return cls(*(conform(v, hints[f], f"{where}.{f}") for f, v in zip(fields, value, strict=True)))


def _kind(value: Any) -> str:
    if isinstance(value, tuple):
        return f"a sequence of {len(value)}"
    return type(value).__name__
