"""The lockstep's frames through msgspec: `wire`'s bytes and values, at a fraction of the cost.

Every step of a gate or an exhaustive run crosses the child boundary twice: its request (or a
batch's), and its reply of about 370 bytes. With `wire`'s stdlib JSON, encoding a reply took
12 µs in the child, and decoding and checking it (`wire.conform`) 21 µs in the parent: the
largest single costs of either side per step. msgspec does both in C.

The child's requests (`decode_any`): msgspec parses them into the stdlib's values, for
`wire.plain` to judge as before (about 2 µs against 5 µs to parse a run's replay request).

Encoding (`encode_plain`, `write_plain`): msgspec writes the same bytes as `wire.encode` for plain
data without floats (it writes NaN as null, which `wire.encode` refuses), and the lockstep's
requests and replies hold none (ops, configs, probes and outcomes are ints, strings, bools,
bytes and None). What msgspec refuses is encoded by `wire.encode`, with its errors.

Decoding: `wire.conform(wire.decode(body), expected)` defines what a reply is (`wire`'s rules:
ints within 64 bits, strings within `MAX_TEXT`, finite floats, no bool for an int, records of
their exact length). msgspec's typed decoder builds the records while it parses, and is used only
where it provably gives `conform`'s value:

    body ──▶ split: ("ok", Raw) ──▶ msgspec, typed ──▶ the parts typed `Any`: conform's checker
      │            │ (a frame over MAX_TEXT, or       │ (any refusal: a wrong type, a record
      │            │  an int over 64 bits)            │  of another length, NaN, ...)
      └────────────┴──────────────────────────────────┴──▶ wire.decode + wire.conform: the value,
                                                             or conform's precise WireError

- A frame no longer than `MAX_TEXT` holds no string longer than it.
- msgspec takes ints of any size; a frame with a run of digits (in a string or not) that read as
  an int is outside 64 bits goes the slow way, so every int msgspec builds is within them.
- msgspec refuses what `conform` refuses (a bool or a float for an int, a record of another length,
  an object for an array, NaN); a refused frame goes the slow way, which names the field.
- Parts typed `Any` (a step's `result`) come out of msgspec with lists in them: `conform`'s own
  checker makes them plain data (tuples, bounds, depth).
- A type msgspec does not take (a union of two records) always goes the slow way.

The tag is split off with `msgspec.Raw` (the value's bytes, syntax checked, not decoded), so the
reader (`pool.Child`) still answers for the frame's shape and the pool for its value's type. This
module is compiled with `isolation.pool` (`compiled.COMPILED_GROUPS`): both processes call it for
every frame of a step, and each call's own Python (the split, the fix-ups) is what is left of
its cost; mypyc type-checks it against msgspec's stubs, which the build requires.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from typing import Any, NamedTuple, Union

import msgspec

from externref_harness.isolation.wire import (
    INT_MAX,
    INT_MIN,
    MAX_TEXT,
    WireError,
    conform,
    decode,
    encode,
    is_record,
    write_encoded,
)

_ENCODER = msgspec.json.Encoder()


def encode_plain(value: Any) -> bytes:
    """`wire.encode(value)` for plain data without floats, by msgspec; what msgspec refuses is
    `wire.encode`'s (its bytes, or its `WireError`)."""
    try:
        return _ENCODER.encode(value)
    except (TypeError, OverflowError, msgspec.EncodeError):
        return encode(value)


def write_plain(fd: int, value: Any) -> None:
    """`wire.write_frame` for plain data without floats (`encode_plain`)."""
    write_encoded(fd, encode_plain(value))


_ANY = msgspec.json.Decoder()


def decode_any(body: bytes) -> Any:
    """`wire.decode(body)` (the JSON as Python, arrays still lists) by msgspec: a frame msgspec
    refuses (NaN, a lone surrogate, nesting past its limit, ...) is `wire.decode`'s, with its
    value or its `WireError`. For frames `wire.plain` judges next (the child's requests): msgspec
    builds the same value for every frame it takes (ints of any size, as the stdlib does)."""
    try:
        return _ANY.decode(body)
    except msgspec.DecodeError:
        return decode(body)


#: Every digit as "9", every other byte as it is: a run of digits is a run of "9"s, found by `find`.
_DIGITS_AS_NINES = bytes.maketrans(b"0123456789", b"9" * 10)
#: The shortest run of digits that may be an int outside 64 bits (-(2**63) has 19, 2**64 - 1 20).
_LONG_RUN = b"9" * 19


def _long_number(body: bytes) -> bool:
    """Whether a run of digits in `body` (in a string or not), read as an int, is outside 64 bits.
    Runs of 19 or 20 digits are common (a probe's 64-bit `hashes`): they are read, not refused."""
    nines = body.translate(_DIGITS_AS_NINES)
    at = nines.find(_LONG_RUN)
    while at >= 0:
        end = at + len(_LONG_RUN)
        while end < len(nines) and nines[end] == 0x39:
            end += 1
        start = at - 1 if at > 0 and body[at - 1] == 0x2D else at  # its minus sign
        if not INT_MIN <= int(body[start:end]) <= INT_MAX:
            return True
        at = nines.find(_LONG_RUN, end)
    return False


_SPLIT = msgspec.json.Decoder(tuple[str, msgspec.Raw])


class Encoded(NamedTuple):
    """The value of an `ok` frame, not yet decoded: `conform` decodes it as the type it expects."""

    raw: msgspec.Raw


def split_ok(body: bytes) -> Encoded | None:
    """The value of an `("ok", value)` frame that may take the fast path; None for any other frame
    (another tag, a frame msgspec refuses, a long one, a number over 64 bits), which the reader decodes
    the slow way (`wire.decode`, `wire.tagged`) and judges as before."""
    if len(body) > MAX_TEXT or _long_number(body):
        return None
    try:
        status, raw = _SPLIT.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return Encoded(raw) if status == "ok" else None


def conform_reply(value: Any, expected: Any, where: str = "frame") -> Any:
    """`wire.conform(value, expected, where)`, where `value` may be `Encoded`: decoded by msgspec
    as `expected` when it can be, else the slow way (`WireError` as `conform` raises it)."""
    if type(value) is not Encoded:
        return conform(value, expected, where)
    fast = fast_decoder(expected)
    if fast is not None:
        try:
            return fast(value.raw)
        except (msgspec.DecodeError, msgspec.ValidationError, _NotPlain):
            pass
    return conform(decode(bytes(value.raw)), expected, where)


class _NotPlain(Exception):
    """A part typed `Any` that `conform`'s checker refuses: the slow way says why."""


@functools.cache
def fast_decoder(expected: Any) -> Callable[[msgspec.Raw], Any] | None:
    """msgspec's decoder for `expected`, with the `Any` parts made plain; None if msgspec does not
    take the type."""
    try:
        decoder = msgspec.json.Decoder(expected)
    except TypeError:
        return None
    fix = _plain_parts(expected)
    if fix is None:
        return decoder.decode

    def decode_and_fix(raw: msgspec.Raw) -> Any:
        return fix(decoder.decode(raw))

    return decode_and_fix


def _has_any(expected: Any) -> bool:
    if expected is Any:
        return True
    if is_record(expected):
        return any(_has_any(t) for t in typing.get_type_hints(expected).values())
    return any(_has_any(t) for t in typing.get_args(expected) if t is not Ellipsis)


def _plain_parts(expected: Any) -> Callable[[Any], Any] | None:
    """A function that gives a msgspec value of `expected` with its `Any` parts as `conform` makes
    them (the value itself when they already are); None when there are none. Records and tuples
    are rebuilt only when a part changed; the rest (`Any` itself, a union of several types) goes
    whole through `conform`, which takes tuples as it takes lists."""
    if not _has_any(expected):
        return None
    if is_record(expected):
        hints = typing.get_type_hints(expected)
        return _rebuilt([_plain_parts(hints[name]) for name in expected._fields], expected)
    origin = typing.get_origin(expected)
    args = typing.get_args(expected)
    if origin in (Union, types.UnionType):
        options = [t for t in args if t is not type(None)]
        if len(options) == 1:
            inner = _plain_parts(options[0])
            assert inner is not None
            return lambda value: None if value is None else inner(value)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        if args[0] is Any:
            return _plain_items
        each = _plain_parts(args[0])
        assert each is not None
        return lambda value: tuple([each(v) for v in value])
    if origin is tuple:
        return _rebuilt([_plain_parts(a) for a in args], tuple)
    return _conformed(expected)


def _rebuilt(parts: list[Callable[[Any], Any] | None], kind: type) -> Callable[[Any], Any]:
    """A tuple (or record) with `parts` applied to its items, rebuilt only if one changed."""
    fixes = [(i, fix) for i, fix in enumerate(parts) if fix is not None]
    new = tuple.__new__

    def rebuilt(value: Any) -> Any:
        items: list[Any] | None = None
        for i, fix in fixes:
            item = value[i]
            fixed = fix(item)
            if fixed is not item:
                if items is None:
                    items = list(value)
                items[i] = fixed
        return value if items is None else new(kind, items)

    return rebuilt


def _plain_items(value: Any) -> Any:
    """A `tuple[Any, ...]` as `plain` makes it. Its scalars are plain already (the frame's checks
    bound its strings and ints, msgspec refuses NaN), so only arrays and objects are walked."""
    for v in value:
        kind = type(v)
        if kind is list or kind is dict:
            return _conformed(tuple[Any, ...])(value)
    return value


@functools.cache
def _conformed(expected: Any) -> Callable[[Any], Any]:
    def checked(value: Any) -> Any:
        try:
            return conform(value, expected)
        except WireError as e:
            raise _NotPlain(str(e)) from None

    return checked
