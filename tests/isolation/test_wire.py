"""The child boundary's frames: plain data round-trips, and every hostile frame is a `WireError`
(or a timeout) before the parent allocates or runs anything."""

from __future__ import annotations

import os
import pickle
import time

import pytest

from externref_harness.impl.adapter import Probe, RefFacts, StepOutcome, TableFacts
from externref_harness.isolation.pool import StepReply
from externref_harness.isolation.wire import (
    HEADER,
    WireError,
    conform,
    encode,
    read_frame,
    tagged,
    write_frame,
)

FACTS = RefFacts(16, 0, "live", 1, 0, 0, 8, 8, 0, 32, 8)
PROBE = Probe(1, None, TableFacts(0, 0, 0, 2, b"\0" * 16), (), (16, None), (), ((8, True), None), (None,), ())
REPLY = (StepOutcome(("ok", 0), (), ((16, 0),), ()), PROBE, 1, ((0, FACTS),))


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def _pipe_with(data: bytes) -> int:
    r, w = os.pipe()
    os.write(w, data)
    os.close(w)
    return r


def test_a_step_reply_round_trips_and_is_rebuilt_as_its_types() -> None:
    r, w = os.pipe()
    write_frame(w, ("ok", REPLY))
    status, value = read_frame(r, time.monotonic() + 5)
    assert status == "ok" and conform(value, StepReply) == REPLY
    assert isinstance(conform(value, StepReply)[1].table, TableFacts)


@pytest.mark.parametrize(
    "data,expected",
    [
        (HEADER.pack(1 << 62), "announced"),
        (HEADER.pack(100) + b"x" * 10, "a partial frame: 10 of 100 bytes arrived, then the pipe closed"),
        (HEADER.pack(5) + b"\x80abcd", "not a JSON frame"),
        (HEADER.pack(3) + b"NaN", "not finite"),
        (_frame(b'{"__bytes__": "xyz"}'), "tagged bytes that are not hex"),
        (_frame(b'["ok", {"not": "a reply"}]'), "expected 4 items, got dict"),
        (_frame(b'{"ok": "no tag"}'), "expected \\(tag, value\\)"),
        (_frame(b'["ok", [[["ok", 18446744073709551616], [], [], []], 0, 0, []]]'), "outside 64 bits"),
    ],
)
def test_a_hostile_frame_is_a_wire_error(data: bytes, expected: str) -> None:
    with pytest.raises(WireError, match=expected):
        _, value = tagged(read_frame(_pipe_with(data), time.monotonic() + 5))
        conform(value, StepReply, "step reply")


def test_a_pickle_is_not_a_frame(tmp_path: object) -> None:
    payload = pickle.dumps(("ok", None))
    with pytest.raises(WireError):
        read_frame(_pipe_with(HEADER.pack(len(payload)) + payload), time.monotonic() + 5)


def test_a_partial_frame_does_not_block_past_its_deadline() -> None:
    r, w = os.pipe()
    os.write(w, HEADER.pack(100) + b"x" * 10)  # the writer stays open and says no more
    started = time.monotonic()
    with pytest.raises(WireError, match="then nothing in time"):
        read_frame(r, started + 0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(TimeoutError):
        read_frame(_pipe_open_empty(), time.monotonic() + 0.2)
    os.close(w)


def _pipe_open_empty() -> int:
    r, w = os.pipe()
    _keep.append(w)
    return r


_keep: list[int] = []


@pytest.mark.parametrize(
    "value,where",
    [
        ((("ok", 0), (), ((16, 0),), ()), "step reply[0]"),  # not the four parts of a reply
        ((REPLY[0], PROBE, "1", REPLY[3]), "step reply[2]"),  # a count that is a string
        ((REPLY[0], PROBE, True, REPLY[3]), "step reply[2]"),  # a bool is no count
        ((REPLY[0], PROBE._replace(canary="x"), 1, REPLY[3]), "step reply[1].canary"),  # type: ignore[arg-type]
    ],
)
def test_a_reply_of_the_wrong_shape_names_the_field(value: object, where: str) -> None:
    with pytest.raises(WireError, match=where.replace("[", r"\[").replace("]", r"\]")):
        conform(value, StepReply, "step reply")


def test_a_frame_is_written_once_whole_and_read_back_once() -> None:
    """What a pipe carries is the header and the JSON, once (a compiled `while view:` wrote it
    twice: a memoryview's truth is not its length there)."""
    r, w = os.pipe()
    try:
        write_frame(w, ("ok", (1, None, "x")))
        os.close(w)
        w = -1
        data = os.read(r, 1 << 16)
        body = encode(("ok", (1, None, "x")))
        assert data == HEADER.pack(len(body)) + body
        r2, w2 = os.pipe()
        write_frame(w2, ["a", 1])
        os.close(w2)
        assert read_frame(r2) == ["a", 1]
        with pytest.raises(EOFError):
            read_frame(r2)
        os.close(r2)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_a_writer_that_exits_ends_the_read_though_what_it_forked_holds_the_pipe() -> None:
    """The writer sends a frame, forks a sleeper (which inherits the pipe's write end) and exits:
    its frame is still read, then the read ends at its exit (watched through a pidfd), not at the
    sleeper's, whose end of file would come only when it is killed."""
    import subprocess
    import sys

    r, w = os.pipe()
    script = (
        "import os, sys, time\n"
        "from externref_harness.isolation.wire import write_frame\n"
        "w = int(sys.argv[1])\n"
        "write_frame(w, ['ok', 1])\n"
        "if os.fork() == 0:\n"
        "    time.sleep(60)\n"
        "    os._exit(0)\n"
    )
    writer = subprocess.Popen([sys.executable, "-c", script, str(w)], pass_fds=(w,), start_new_session=True)
    os.close(w)
    watch = os.pidfd_open(writer.pid)
    try:
        assert read_frame(r, time.monotonic() + 30, watch) == ["ok", 1]
        # Without the watch this waits for the deadline (TimeoutError) or the sleeper's 60 s.
        with pytest.raises(EOFError, match="the writer exited"):
            read_frame(r, time.monotonic() + 30, watch)
    finally:
        os.killpg(writer.pid, 9)
        writer.wait()
        os.close(watch)
        os.close(r)
