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

Plain data maps onto JSON as: None, bools, ints, floats and strings as themselves; tuples (and
lists) as arrays, made tuples again by `conform` or `plain`; a dict with string keys as an object;
`bytes` as a base64 string (standard alphabet, padded), made bytes again where the declared type
is `bytes`. Floats must be finite (NaN and infinities are refused); ints are bounded to 64 bits
and strings to `MAX_TEXT`, checked as the value is conformed. The parent decodes the replies of
steps and replays straight into their types (`isolation.typed`), with this module's rules.
"""

from __future__ import annotations

import binascii
import functools
import json
import os
import select
import struct
import time
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, Union

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


class PartialFrameTimeout(WireError):
    """A frame began and was not whole by the reader's deadline. The other side's failure when the
    deadline was the time it was given; not when it was the reader's own budget, which may run out
    between two writes of one frame (`pool.Child._receive` tells them apart)."""


# --- frames ----------------------------------------------------------------------------------------


def write_frame(fd: int, value: Any) -> None:
    write_encoded(fd, encode(value))


def write_encoded(fd: int, data: bytes) -> None:
    """A frame of `data`, the JSON of a value (`encode`'s, or `fast_wire.encode_plain`'s)."""
    frame = HEADER.pack(len(data)) + data
    view = memoryview(frame)
    # Counted, not `while view:`: compiled (mypyc), a memoryview's truth is not its length.
    sent = 0
    while sent < len(frame):
        sent += os.write(fd, view[sent:])


def read_frame(fd: int, deadline: float | None = None, watch: int | None = None) -> Any:
    """One frame from `fd`, decoded (not yet conformed). EOFError when the other side has gone
    before a frame began; `WireError` for a partial, oversized or malformed frame, or for a frame
    not complete by `deadline` (a `time.monotonic()` instant; None: wait as long as it takes).

    `watch` is a pidfd of the process that writes `fd`. The pipe's end of file comes only when
    every holder of its write end has closed it, and a process the writer forked holds it too; so
    once the writer has exited and nothing is waiting in the pipe, the other side has gone as
    well (EOFError, or a partial frame), whoever else keeps the pipe open."""
    return decode(read_frame_body(fd, deadline, watch))


def read_frame_body(fd: int, deadline: float | None = None, watch: int | None = None) -> bytes:
    """`read_frame`'s frame, not yet decoded: its JSON's bytes (for a decoder of the caller's,
    `fast_wire.decode_any`). The same errors."""
    header = _read_exactly(fd, HEADER.size, deadline, first=True, watch=watch)
    (size,) = HEADER.unpack(header)
    if size > MAX_FRAME:
        raise WireError(f"a frame header announced {size:,} bytes, more than the {MAX_FRAME:,} allowed")
    return _read_exactly(fd, size, deadline, first=False, watch=watch)


def _read_exactly(fd: int, size: int, deadline: float | None, first: bool, watch: int | None) -> bytes:
    chunks: list[bytes] = []
    got = 0
    while got < size:
        _wait(fd, deadline, watch, first, got, size)
        chunk = os.read(fd, min(size - got, 1 << 20))
        if not chunk:
            _closed(first, got, size)
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


#: The environment variable that sets `SPIN_SECONDS`, in microseconds (0: a reader never polls).
ENV_SPIN = "EXTERNREF_HARNESS_SPIN_US"
#: How long a reader polls its pipe before it sleeps until the pipe can be read. The two sides of
#: a lockstep answer each other within tens of microseconds (a step, a replay, a run's start),
#: and a sleep's wake-up on this project's 2-core virtual machine took longer than that: at
#: `--refs 2 --frames 1`, `gate --exhaustive` with the two processes polling ran in about three
#: quarters of the time (README, "Exhaustive conformance").
SPIN_SECONDS = float(os.environ.get(ENV_SPIN, "300")) / 1e6
#: After a poll that ran out (the other side was busy longer, or had no core), the next waits of
#: this process sleep at once: a reader that shares its core with more busy processes (a test
#: run's workers) polls about one wait in this many, not every one.
SPIN_BACKOFF = 4


class _Polling:
    """This process's polling before a wait (`_ready_soon`): for how long (`poll_for`), and the
    waits still to sleep at once."""

    def __init__(self) -> None:
        self.seconds = SPIN_SECONDS
        self.skip = 0
        #: Waits that polls ended (the pipe became readable), and polls that ran out: for tests.
        self.caught = 0
        self.ran_out = 0


_POLLING = _Polling()


def poll_for(seconds: float) -> None:
    """This process's readers poll for `seconds` before they sleep (0: never), and so do the
    processes it starts from now on (`ENV_SPIN`). For a process whose polling would take a core
    that another of its kind was waiting for: a campaign's workers, each meant to add a core's
    worth of throughput (`campaign.worker_main`)."""
    _POLLING.seconds = seconds
    _POLLING.skip = 0
    os.environ[ENV_SPIN] = repr(seconds * 1e6)


def _ready_soon(fd: int) -> bool:
    """Whether `fd` became readable within this process's time of polling (`SPIN_SECONDS`, or
    `poll_for`'s; see `SPIN_BACKOFF`)."""
    polling = _POLLING
    if polling.seconds <= 0:
        return False
    if polling.skip:
        polling.skip -= 1
        return False
    until = time.perf_counter() + polling.seconds
    while True:
        if select.select([fd], [], [], 0)[0]:
            polling.caught += 1
            return True
        if time.perf_counter() >= until:
            polling.ran_out += 1
            polling.skip = SPIN_BACKOFF
            return False


def _wait(fd: int, deadline: float | None, watch: int | None, first: bool, got: int, size: int) -> None:
    """Until `fd` can be read: `TimeoutError` (no frame began) or `WireError` (a partial frame of
    which `got` of `size` bytes arrived) at `deadline`, and `EOFError` or `WireError` once the
    writer `watch` is a pidfd of has exited with nothing left in the pipe. It polls the pipe for
    a while before it sleeps (`_ready_soon`): readable, the read that follows has data or the end
    of file, whatever the deadline and the writer."""
    if _ready_soon(fd):
        return
    if deadline is None and watch is None:
        return  # a blocking read: it ends with data or with the end of file
    waited = [fd] if watch is None else [fd, watch]
    left = None if deadline is None else max(0.0, deadline - time.monotonic())
    ready, _, _ = select.select(waited, [], [], left)
    if not ready:
        if first and not got:
            raise TimeoutError("no frame began in time")
        raise PartialFrameTimeout(f"a partial frame: {got} of {size} bytes arrived, then nothing in time")
    # The writer has exited: what it wrote before is in the pipe already, so an empty pipe now
    # stays empty (or is written by a process it forked, which speaks no protocol).
    if fd not in ready and not select.select([fd], [], [], 0)[0]:
        if first and not got:
            raise EOFError("the writer exited (a process it forked holds the pipe open)")
        raise WireError(f"a partial frame: {got} of {size} bytes arrived, then the writer exited")


def _closed(first: bool, got: int, size: int) -> NoReturn:
    if first and not got:
        raise EOFError("the other side closed the pipe")
    raise WireError(f"a partial frame: {got} of {size} bytes arrived, then the pipe closed")


#: The most one read of `FrameReader` takes (a frame larger than that takes several).
READ_CHUNK = 1 << 20


class FrameReader:
    """The frames of one pipe, in order, for a reader that takes many from it (a child's replies).

    `read_frame` reads exactly one frame: a wait and a read for its header, a wait and a read for
    its body. A batch's replies are in the pipe together, so this reads whatever is waiting (up to
    `READ_CHUNK` bytes) at once and takes the frames from that: one wait and one read for all the
    frames already written, where `read_frame` makes four system calls each. Same errors, at the
    same points, as `read_frame`; the bytes read past the frame it returns are the next frames'
    (one reader per pipe, nothing else reads it)."""

    def __init__(self, fd: int, watch: int | None = None) -> None:
        self.fd = fd
        self.watch = watch
        self._data = b""
        #: Where the unread bytes of `_data` start.
        self._at = 0
        #: Reads from the pipe so far (for a check that need not run per frame, `Child._receive`).
        self.reads = 0

    def buffered(self) -> int:
        """Bytes read from the pipe and not yet taken as (part of) a frame."""
        return len(self._data) - self._at

    def read(self, deadline: float | None = None) -> Any:
        """The next frame, decoded (`read_frame`'s value and errors)."""
        return decode(self.read_body(deadline))

    def read_body(self, deadline: float | None = None) -> bytes:
        """The next frame's body, its size checked, not decoded (`read`'s errors but decoding's)."""
        (size,) = HEADER.unpack(self._take(HEADER.size, deadline, first=True))
        if size > MAX_FRAME:
            raise WireError(f"a frame header announced {size:,} bytes, more than the {MAX_FRAME:,} allowed")
        return self._take(size, deadline, first=False)

    def _take(self, size: int, deadline: float | None, first: bool) -> bytes:
        got = len(self._data) - self._at
        if got < size:
            # Joined once: a frame of many reads is not copied again at each.
            pieces = [self._data[self._at :]]
            while got < size:
                _wait(self.fd, deadline, self.watch, first, got, size)
                chunk = os.read(self.fd, min(max(size - got, 1 << 16), READ_CHUNK))
                if not chunk:
                    _closed(first, got, size)
                self.reads += 1
                pieces.append(chunk)
                got += len(chunk)
            self._data, self._at = b"".join(pieces), 0
        start = self._at
        self._at = start + size
        frame = self._data[start : self._at]
        if self._at == len(self._data):
            self._data, self._at = b"", 0  # nothing waits: a large frame's bytes are not kept
        return frame


# --- plain data <-> JSON -------------------------------------------------------------------------------

def _default(value: Any) -> Any:
    if isinstance(value, bytes):
        return binascii.b2a_base64(value, newline=False).decode("ascii")
    raise TypeError(f"not plain data: {type(value).__name__}")


def encode(value: Any) -> bytes:
    """Tuples (NamedTuples included) and lists as arrays, dicts as objects, bytes tagged."""
    try:
        return _ENCODER.encode(value).encode()
    except (TypeError, ValueError) as e:
        raise WireError(str(e)) from None


def _refuse_constant(text: str) -> Any:
    raise WireError(f"a number that is not finite: {text[:40]!r}")


def decode(data: bytes) -> Any:
    """The JSON as Python (arrays still lists): only `conform` or `plain` make it the value."""
    try:
        return _DECODER.decode(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        if isinstance(e, WireError):
            raise
        raise WireError(f"not a JSON frame ({type(e).__name__}: {str(e)[:120]})") from None


#: Made once: `json.dumps` and `json.loads` with options build a new encoder or decoder per call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False, default=_default)
_DECODER = json.JSONDecoder(parse_constant=_refuse_constant)


def plain(value: Any, depth: int = 0) -> Any:
    """A decoded value as plain data: arrays as tuples, ints within 64 bits, strings bounded."""
    if depth > MAX_DEPTH:
        raise _Mismatch(f"nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if kind is int:
        if not INT_MIN <= value <= INT_MAX:
            raise _Mismatch("an int outside 64 bits")
        return value
    if kind is str:
        if len(value) > MAX_TEXT:
            raise _Mismatch(f"a string of {len(value):,} characters, more than {MAX_TEXT:,}")
        return value
    if value is None or kind is bool or kind is float or kind is bytes:
        return value
    if kind is list or kind is tuple:
        return tuple([plain(v, depth + 1) for v in value])
    if kind is dict:
        return {k: plain(v, depth + 1) for k, v in value.items()}
    raise _Mismatch(f"not plain data: {kind.__name__}")


def tagged(frame: Any, where: str = "frame") -> tuple[str, Any]:
    """A frame `(tag, value)`: its tag checked, its value left to `conform` (checked once, by the
    type the tag says)."""
    if not isinstance(frame, (list, tuple)) or len(frame) != 2 or type(frame[0]) is not str:
        raise WireError(f"{where}: expected (tag, value), got {_kind(frame)}")
    if len(frame[0]) > 40:
        raise WireError(f"{where}: a tag of {len(frame[0])} characters")
    return frame[0], frame[1]


def decode_plain(data: Any) -> Any:
    """`plain` as a `WireError` (for a frame whose whole content is plain data, a request)."""
    try:
        return plain(data)
    except _Mismatch as e:
        raise WireError(str(e)) from None


# --- checking a decoded value against a declared type -----------------------------------------------


def conform(value: Any, expected: Any, where: str = "frame") -> Any:
    """`value` as `expected` (a NamedTuple class, `int`, `tuple[int, ...]`, `X | None`, `Any`, ...),
    checked field by field; NamedTuples are rebuilt. A mismatch is a `WireError` naming the field.

    Each type is compiled once into a checker (`_checker`): a step's reply is checked on every
    step of a search, so the happy path does no formatting and no type introspection."""
    try:
        return _checker(expected)(value)
    except _Mismatch as e:
        raise WireError(f"{where}{''.join(reversed(e.path))}: {e}") from None


class _Mismatch(Exception):
    """A value that does not fit; `path` is filled in (innermost first) as it propagates."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.path: list[str] = []


Check = Callable[[Any], Any]


def _exact(kind: type) -> Check:
    def check(value: Any) -> Any:
        if type(value) is not kind:
            raise _Mismatch(f"expected {kind.__name__}, got {_kind(value)}")
        return value

    return check


def _is_int(value: Any) -> bool:
    """An int of the wire: a plain `int` (no bool) within 64 bits."""
    return type(value) is int and INT_MIN <= value <= INT_MAX


def _all_ints(values: Sequence[Any]) -> bool:
    return all(_is_int(v) for v in values)


def _int(value: Any) -> Any:
    if not _is_int(value):
        raise _int_mismatch(value)
    return value


def _int_mismatch(value: Any) -> _Mismatch:
    if type(value) is not int:
        return _Mismatch(f"expected int, got {_kind(value)}")
    return _Mismatch("an int outside 64 bits")


def _str(value: Any) -> Any:
    if type(value) is not str:
        raise _Mismatch(f"expected str, got {_kind(value)}")
    if len(value) > MAX_TEXT:
        raise _Mismatch(f"a string of {len(value):,} characters, more than {MAX_TEXT:,}")
    return value


def _bytes(value: Any) -> Any:
    if type(value) is bytes:  # a value conformed again, not one read from the wire
        return value
    if type(value) is not str:
        raise _Mismatch(f"expected bytes as base64, got {_kind(value)}")
    try:
        return binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise _Mismatch("bytes that are not base64") from None


def _number(value: Any) -> Any:
    if type(value) is not int and type(value) is not float:
        raise _Mismatch(f"expected a number, got {_kind(value)}")
    return float(value)


def _none(value: Any) -> Any:
    if value is not None:
        raise _Mismatch(f"expected None, got {_kind(value)}")
    return None


def _each(check: Check, values: Sequence[Any], label: Callable[[int], str]) -> tuple[Any, ...]:
    """`check` applied to each of `values`; a mismatch names the item."""
    try:
        return tuple([check(v) for v in values])
    except _Mismatch as e:
        for i, v in enumerate(values):  # the slow path, only to name the item
            try:
                check(v)
            except _Mismatch:
                e.path.append(label(i))
                break
        raise


def _index(i: int) -> str:
    return f"[{i}]"


def is_record(expected: Any) -> bool:
    """Whether a declared type is a NamedTuple class (a record, an array of its fields)."""
    return isinstance(expected, type) and issubclass(expected, tuple) and hasattr(expected, "_fields")


@functools.cache
def _checker(expected: Any) -> Check:
    if expected is Any:
        return plain
    if expected is None or expected is type(None):
        return _none
    if is_record(expected):
        return _record(expected)
    if expected is float:
        return _number
    if expected is int:
        return _int
    if expected is str:
        return _str
    if expected is bool:
        return _exact(bool)
    if expected is bytes:
        return _bytes
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if origin in (Union, types.UnionType):
        nullable = type(None) in args
        options = [_checker(option) for option in args if option is not type(None)]

        def one_of(value: Any) -> Any:
            if value is None and nullable:
                return None
            for check in options:
                try:
                    return check(value)
                except _Mismatch as e:
                    last = e
            if len(options) == 1:
                raise last  # `X | None`: say what X wanted
            raise _Mismatch(f"{_kind(value)} fits none of {args}")

        return one_of
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _checker(args[0])
        ints = args[0] is int
        bools = args[0] is bool

        def sequence(value: Any) -> Any:
            if not isinstance(value, (list, tuple)):
                raise _Mismatch(f"expected a sequence, got {_kind(value)}")
            if ints and _all_ints(value):
                return tuple(value)
            if bools and all(type(v) is bool for v in value):
                return tuple(value)
            return _each(item, value, _index)

        return sequence
    if origin is tuple:
        items = [_checker(a) for a in args]
        all_ints = all(a is int for a in args)

        def fixed(value: Any) -> Any:
            if not isinstance(value, (list, tuple)) or len(value) != len(items):
                raise _Mismatch(f"expected {len(items)} items, got {_kind(value)}")
            if all_ints and _all_ints(value):
                return tuple(value)
            try:
                return tuple([check(v) for check, v in zip(items, value, strict=True)])
            except _Mismatch as e:
                for i, (check, v) in enumerate(zip(items, value, strict=True)):  # only to name the item
                    try:
                        check(v)
                    except _Mismatch:
                        e.path.append(_index(i))
                        break
                raise

        return fixed
    raise TypeError(f"conform: no rule for {expected!r}")


def _record(cls: Any) -> Check:
    hints = typing.get_type_hints(cls)
    fields: tuple[str, ...] = cls._fields
    checks = [_checker(hints[f]) for f in fields]
    # The fast path (every reply's records): `int` fields checked in place, the others by their
    # checkers, and the record built by `tuple.__new__` (what `_make` calls, without its Python frame).
    ints = [i for i, f in enumerate(fields) if hints[f] is int]
    others = [(i, checks[i]) for i, f in enumerate(fields) if hints[f] is not int]
    n = len(checks)
    new = tuple.__new__

    def record(value: Any) -> Any:
        if not isinstance(value, (list, tuple)) or len(value) != n:
            raise _Mismatch(f"expected a {cls.__name__} of {n} fields, got {_kind(value)}")
        try:
            for i in ints:
                v = value[i]
                if not _is_int(v):
                    raise _int_mismatch(v)
            items = list(value)
            for i, check in others:
                items[i] = check(items[i])
            return new(cls, items)
        except _Mismatch as e:
            # The slow path, only to name the field.
            for name, check, v in zip(fields, checks, value, strict=True):
                try:
                    check(v)
                except _Mismatch:
                    e.path.append(f".{name}")
                    break
            raise

    return record


def _kind(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return f"a sequence of {len(value)}"
    return type(value).__name__
