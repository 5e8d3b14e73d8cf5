"""The lockstep's frames through msgspec (`isolation.fast_wire`) are `wire`'s: the same bytes
written, and `conform`'s value and `conform`'s error read, frame by frame: real step replies, and
every kind of hostile one."""

from __future__ import annotations

import json
from typing import Any

import pytest
from test_wire import REPLY

from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import plain_config, plain_op
from externref_harness.isolation import fast_wire
from externref_harness.isolation.child import _Sent, _step
from externref_harness.isolation.fast_wire import Encoded, conform_reply, decode_any, encode_plain, split_ok
from externref_harness.isolation.pool import ProbeReply, StepReply
from externref_harness.isolation.wire import (
    MAX_TEXT,
    WireError,
    conform,
    decode,
    decode_plain,
    encode,
    tagged,
)
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG
from externref_harness.model import ops


def _slow(body: bytes, expected: Any) -> Any:
    """What the parent made of a reply before: the JSON, the tag, then `conform`."""
    _, value = tagged(decode(body), "response")
    return conform(value, expected, "step reply")


def _fast(body: bytes, expected: Any) -> Any:
    """What the parent makes of it now (`pool.Child._receive(encoded=True)`, then `_checked`)."""
    ok = split_ok(body)
    return _slow(body, expected) if ok is None else conform_reply(ok, expected, "step reply")


PROGRAM = [
    ops.New(8, 8), ops.New(16, 8), ops.Clone(0), ops.InsertWithGc(2), ops.CallWasm((1,)),
    ops.StrongCount(0), ops.Gc(), ops.Elements(), ops.Drop(0), ops.Drop(7), ops.ReturnToWasm(None),
]  # fmt: skip


def _replies() -> list[bytes]:
    """The replies of a short run on the Python port, as its child sends them."""
    adapter = InProcessImpl()
    adapter.start(plain_config(LOCKSTEP_CONFIG))
    bodies: list[bytes] = []
    sent = _Sent()
    try:
        for op in PROGRAM:
            reply = _step(adapter, plain_op(op), None, sent)
            body = encode_plain(("ok", reply))
            assert body == encode(("ok", reply))  # msgspec's bytes are `wire.encode`'s
            bodies.append(body)
    finally:
        adapter.close()
    return bodies


def test_requests_encode_fast_to_wires_bytes() -> None:
    requests = [
        ("start", plain_config(LOCKSTEP_CONFIG)),
        ("steps", [(plain_op(op), capacity) for op, capacity in zip(PROGRAM, [None, 3] * 6, strict=False)]),
        ("replay", [(plain_op(op), None) for op in PROGRAM]),
        ("finish",),
    ]
    assert [encode_plain(r) for r in requests] == [encode(r) for r in requests]


def test_what_msgspec_refuses_is_left_to_wire_and_its_error() -> None:
    with pytest.raises(WireError, match="not plain data: object"):
        encode_plain(("ok", object()))


def test_real_replies_decode_fast_to_conforms_value() -> None:
    bodies = _replies()
    expected = [_slow(body, StepReply) for body in bodies]
    # The fast path, and only it: msgspec's decoder alone, with no slow decoding to fall back on
    # (called directly: the module may be compiled, where no patch of its globals would take).
    decoder = fast_wire.fast_decoder(StepReply)
    assert decoder is not None
    splits = [split_ok(body) for body in bodies]
    got = [decoder(ok.raw) for ok in splits if ok is not None]
    assert len(got) == len(bodies) and got == expected
    assert [_fast(body, StepReply) for body in bodies] == expected
    for value in got:  # the same types, not only equal values: records are records, arrays tuples
        outcome, probe, _, changed = value
        assert type(outcome) is type(REPLY[0]) and type(probe.table) is type(REPLY[1].table)
        assert all(type(part) is tuple for part in (outcome.result, probe.changed_handles, changed))
        assert all(type(item) is not list for item in outcome.result)


def test_a_result_typed_any_comes_back_plain() -> None:
    body = encode(("ok", REPLY)).replace(b'["ok",0]', b'["ok",[1,[2,[3]]]]')
    value = _fast(body, StepReply)
    assert value[0].result == ("ok", (1, (2, (3,)))) == _slow(body, StepReply)[0].result


def _hostile(reply: str) -> bytes:
    return ('["ok",' + reply + "]").encode()


GOOD = json.loads(encode(REPLY))


def _nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


def _with(path: tuple[int, ...], value: Any) -> bytes:
    reply = json.loads(json.dumps(GOOD))
    at = reply
    for i in path[:-1]:
        at = at[i]
    at[path[-1]] = value
    return _hostile(json.dumps(reply))


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(_with((2,), 1 << 64), id="an int over 64 bits"),
        pytest.param(_with((2,), -(1 << 63) - 1), id="an int under 64 bits"),
        pytest.param(_with((2,), True), id="a bool for an int"),
        pytest.param(_with((2,), 1.0), id="a float for an int"),
        pytest.param(_with((2,), "1"), id="a string for an int"),
        pytest.param(_with((1, 2), [0, 0, 0, 2]), id="a record of the wrong length"),
        pytest.param(_with((1, 2), {"next": 0}), id="an object for a record"),
        pytest.param(_with((1, 2, 4), "AAE"), id="bytes that are not base64"),
        pytest.param(_with((1, 2, 4), 7), id="bytes that are no string"),
        pytest.param(_with((0, 3), [["kind", 0, "write", "x" * (MAX_TEXT + 1)]]), id="a long string"),
        pytest.param(_with((0, 0, 1), _nested(34)), id="too deep"),
        pytest.param(_hostile("[0,0,0]"), id="three parts for four"),
        pytest.param(b'["ok",[NaN]]', id="NaN"),
    ],
)
def test_a_hostile_reply_is_conforms_wire_error(body: bytes) -> None:
    with pytest.raises(WireError) as slow:
        _slow(body, StepReply)
    with pytest.raises(WireError) as fast:
        _fast(body, StepReply)
    assert str(fast.value) == str(slow.value)


def test_a_frame_the_fast_path_may_not_judge_is_left_to_the_reader() -> None:
    """A long frame, a long number, another tag, or bytes that are no JSON: the reader decodes
    them as before (`split_ok` gives None), so their errors are the reader's."""
    assert split_ok(_with((0, 0, 1), "x" * MAX_TEXT)) is None
    assert split_ok(_with((2,), 1 << 64)) is None and split_ok(_with((2,), -(1 << 63) - 1)) is None
    # A 64-bit hash has up to 20 digits: read, and within 64 bits, it takes the fast path.
    assert type(split_ok(_with((2,), (1 << 64) - 1))) is Encoded
    assert type(split_ok(_with((2,), -(1 << 63)))) is Encoded
    assert split_ok(b'["error","boom"]') is None
    assert split_ok(b"\x80abc") is None
    assert type(split_ok(encode(("ok", REPLY)))) is Encoded


def test_a_type_msgspec_does_not_take_goes_the_slow_way() -> None:
    two_records = tuple[int, int] | tuple[int, int, int]
    ok = split_ok(b'["ok",[1,2]]')
    assert ok is not None
    assert fast_wire.fast_decoder(two_records) is None
    assert conform_reply(ok, two_records) == (1, 2)
    assert conform_reply(split_ok(encode(("ok", REPLY[1:]))), ProbeReply) == REPLY[1:]


def test_requests_decode_by_msgspec_to_the_stdlibs_value() -> None:
    """The child's requests (`decode_any`, then `wire.plain`): msgspec's value is the stdlib's,
    and what msgspec refuses is `wire.decode`'s, with its error."""
    requests = [
        ("start", plain_config(LOCKSTEP_CONFIG)),
        ("replay", [(plain_op(op), None) for op in PROGRAM]),
        ("steps", [(plain_op(op), 3) for op in PROGRAM]),
        ("exit",),
    ]
    for request in requests:
        body = encode(request)
        assert decode_any(body) == decode(body)
        assert decode_plain(decode_any(body)) == decode_plain(decode(body))
    assert decode_any(b'[1,[2,{"a":18446744073709551616}]]') == [1, [2, {"a": 1 << 64}]]
    with pytest.raises(WireError) as slow:
        decode(b"[NaN]")
    with pytest.raises(WireError) as fast:
        decode_any(b"[NaN]")
    assert str(fast.value) == str(slow.value)
    # A lone surrogate: the stdlib reads it (msgspec may not), and so does `decode_any`.
    assert decode_any(b'["\\ud800"]') == decode(b'["\\ud800"]')
