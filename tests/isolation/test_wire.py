"""The child boundary's frames: plain data round-trips, and every hostile frame is a `WireError`
(or a timeout) before the parent allocates or runs anything."""

from __future__ import annotations

import os
import pickle
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from externref_harness.impl.interface import ProbeFrame, RefFacts, StepOutcome, TableFacts
from externref_harness.isolation import wire
from externref_harness.isolation.pool import StepReply
from externref_harness.isolation.wire import (
    HEADER,
    READ_CHUNK,
    FrameReader,
    WireError,
    conform,
    encode,
    read_frame,
    tagged,
    write_frame,
)

FACTS = RefFacts(16, 0, "live", 1, 0, 0, 8, 8, 0, 32, 8)
PROBE = ProbeFrame(
    1, None, TableFacts(0, 0, 0, 2, b"\0" * 16), (), 2, ((0, 16),), (), ((8, True), None), (None,), ()
)
REPLY = (StepOutcome(("ok", 0), (), ((16, 0),), ()), PROBE, 1, ((0, FACTS),))


def _frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


#: The two ways to read a pipe's frames, one frame each time or a reader's look-ahead: given a
#: pipe (and a pidfd of its writer), a function from a deadline to the next frame.
Reader = Callable[[float | None], Any]
READERS: dict[str, Callable[[int, int | None], Reader]] = {
    "read_frame": lambda fd, watch: lambda deadline: read_frame(fd, deadline, watch),
    "FrameReader": lambda fd, watch: FrameReader(fd, watch).read,
}


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
        (_frame(encode(("ok", REPLY)).replace(b'"AAAAAAAAAAAAAAAAAAAAAA=="', b'"AAE"')), "not base64"),
        (_frame(b'["ok", {"not": "a reply"}]'), "expected 4 items, got dict"),
        (_frame(b'{"ok": "no tag"}'), "expected \\(tag, value\\)"),
        (_frame(b'["ok", [[["ok", 18446744073709551616], [], [], []], 0, 0, []]]'), "outside 64 bits"),
    ],
)
@pytest.mark.parametrize("reader", READERS)
def test_a_hostile_frame_is_a_wire_error(data: bytes, expected: str, reader: str) -> None:
    read = READERS[reader](_pipe_with(data), None)
    with pytest.raises(WireError, match=expected):
        _, value = tagged(read(time.monotonic() + 5))
        conform(value, StepReply, "step reply")


def test_a_pickle_is_not_a_frame(tmp_path: object) -> None:
    payload = pickle.dumps(("ok", None))
    with pytest.raises(WireError):
        read_frame(_pipe_with(HEADER.pack(len(payload)) + payload), time.monotonic() + 5)


@pytest.mark.parametrize("reader", READERS)
def test_a_partial_frame_does_not_block_past_its_deadline(reader: str) -> None:
    r, w = os.pipe()
    os.write(w, HEADER.pack(100) + b"x" * 10)  # the writer stays open and says no more
    started = time.monotonic()
    with pytest.raises(WireError, match="then nothing in time"):
        READERS[reader](r, None)(started + 0.5)
    assert time.monotonic() - started < 5
    with pytest.raises(TimeoutError):
        READERS[reader](_pipe_open_empty(), None)(time.monotonic() + 0.2)
    os.close(w)


def test_a_reader_takes_the_frames_waiting_in_one_read_and_gives_them_in_order() -> None:
    """A batch's replies are in the pipe together: one read takes them all (`FrameReader.reads`
    counts the reads), and they come back one by one, each whole, then the end of file."""
    r, w = os.pipe()
    values = [["ok", i, "x" * (i % 7)] for i in range(50)]
    for value in values:
        write_frame(w, value)
    os.close(w)
    reader = FrameReader(r)
    assert [reader.read(time.monotonic() + 5) for _ in values] == values
    assert reader.reads == 1 and reader.buffered() == 0
    with pytest.raises(EOFError):
        reader.read(time.monotonic() + 5)
    os.close(r)


def test_a_reader_reads_a_frame_larger_than_a_read_and_the_partial_frame_after_it() -> None:
    """A frame of several reads is whole; the frames before a partial one are still read, and the
    partial one is a `WireError` that says how much of it arrived."""
    r, w = os.pipe()
    big = ["ok", "y" * (READ_CHUNK * 2 + 5)]
    writer = os.fork()
    if writer == 0:  # the pipe holds 64 KiB: the big frame is written while the parent reads
        os.close(r)
        write_frame(w, ["ok", 1])
        write_frame(w, big)
        os.write(w, HEADER.pack(100) + b"z" * 10)
        os._exit(0)
    os.close(w)
    try:
        reader = FrameReader(r)
        assert reader.read(time.monotonic() + 30) == ["ok", 1]
        assert reader.read(time.monotonic() + 30) == big
        assert reader.reads > 2
        with pytest.raises(WireError, match="a partial frame: 10 of 100 bytes arrived, then the pipe closed"):
            reader.read(time.monotonic() + 30)
    finally:
        os.waitpid(writer, 0)
        os.close(r)


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


@pytest.mark.parametrize("reader", READERS)
def test_a_writer_that_exits_ends_the_read_though_what_it_forked_holds_the_pipe(reader: str) -> None:
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
    read = READERS[reader](r, watch)
    try:
        assert read(time.monotonic() + 30) == ["ok", 1]
        # Without the watch this waits for the deadline (TimeoutError) or the sleeper's 60 s.
        with pytest.raises(EOFError, match="the writer exited"):
            read(time.monotonic() + 30)
    finally:
        os.killpg(writer.pid, 9)
        writer.wait()
        os.close(watch)
        os.close(r)


def _write_later(w: int, seconds: float) -> threading.Thread:
    def write() -> None:
        time.sleep(seconds)
        write_frame(w, ["ok", seconds])

    thread = threading.Thread(target=write)
    thread.start()
    return thread


def test_a_reader_polls_before_it_sleeps_and_backs_off_after_a_poll_that_ran_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A frame already in the pipe, or written while the reader polls, is caught by the polling
    (no sleep); one written later than the polling time is read after a sleep, and then the next
    `SPIN_BACKOFF` waits sleep at once, and the one after polls again. The frames are read the
    same either way. (A `FrameReader` waits once for a frame that arrives whole.)"""
    polling = wire._POLLING
    monkeypatch.setattr(polling, "seconds", 300e-6)
    monkeypatch.setattr(polling, "skip", 0)
    r, w = os.pipe()
    reader = FrameReader(r)

    def counts() -> tuple[int, int, int]:
        return polling.caught, polling.ran_out, polling.skip

    try:
        caught, ran_out, _ = counts()
        write_frame(w, ["ok", "waiting"])
        assert reader.read(time.monotonic() + 5) == ["ok", "waiting"]
        assert counts() == (caught + 1, ran_out, 0)
        writer = _write_later(w, 0.3)  # a thousand times the polling time
        assert reader.read(time.monotonic() + 5) == ["ok", 0.3]
        writer.join()
        assert counts() == (caught + 1, ran_out + 1, wire.SPIN_BACKOFF)
        for left in range(wire.SPIN_BACKOFF, 0, -1):
            write_frame(w, ["ok", left])
            assert reader.read(time.monotonic() + 5) == ["ok", left]
            assert counts() == (caught + 1, ran_out + 1, left - 1)
        write_frame(w, ["ok", "polled"])
        assert reader.read(time.monotonic() + 5) == ["ok", "polled"]
        assert counts() == (caught + 2, ran_out + 1, 0)
    finally:
        os.close(r)
        os.close(w)


def test_a_process_told_not_to_poll_sleeps_at_once_as_its_children_do(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`poll_for(0)` (a campaign's workers that outnumber the cores): no wait polls, and the
    processes started from then on read `ENV_SPIN` as 0."""
    monkeypatch.setattr(wire._POLLING, "seconds", wire._POLLING.seconds)
    monkeypatch.setenv(wire.ENV_SPIN, os.environ.get(wire.ENV_SPIN, "300"))
    wire.poll_for(0.0)
    counted = wire._POLLING.caught + wire._POLLING.ran_out
    r, w = os.pipe()
    try:
        write_frame(w, ["ok", 1])
        assert FrameReader(r).read(time.monotonic() + 5) == ["ok", 1]
    finally:
        os.close(r)
        os.close(w)
    assert wire._POLLING.caught + wire._POLLING.ran_out == counted
    import subprocess
    import sys

    child = subprocess.run(
        [sys.executable, "-c", "from externref_harness.isolation import wire; print(wire._POLLING.seconds)"],
        capture_output=True, text=True, check=True,
    )
    assert float(child.stdout) == 0.0
