"""The implementation's process: the host world, a runtime backend and the checking heap.

`python -m externref_harness.isolation.child [--impl PATH.so] REQUEST_FD RESPONSE_FD` serves the plain-data
adapter protocol (`impl.adapter.ImplAdapter`) to the parent (`isolation.ChildProcessImpl`): one
request frame in, one response frame out, each plain data as `isolation.wire` encodes it (JSON
behind an 8-byte length; no pickle: the parent runs no code a frame could carry).

    parent (Hypothesis, the model)                 child (this module)
    ("start", config)                     ──▶      InProcessImpl.start
    ("step", op, capacity)                ──▶      step + probe        ──▶ ("ok", (outcome, probe,
                                                                                   n_refs, changed refs))
    ("finish",) / ("close",) / ("exit",)  ──▶      ...                 ──▶ ("ok", value)
                                                   any exception       ──▶ ("error", "Type: text")

Only plain data crosses, and the parent checks every field of it (`isolation.pool`). The child's
stdout and stderr are the parent's capture of whatever the implementation prints; the protocol has
its own pipes, so a library that prints cannot corrupt it. `--describe PATH FD` loads the library,
and writes its description (or why it is refused) to FD as one frame.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from externref_harness.changes import changed_positions
from externref_harness.impl.adapter import InProcessImpl, RefFacts
from externref_harness.isolation.wire import decode_plain, read_frame, write_frame


def _adapter(impl: str | None) -> InProcessImpl:
    if impl is None:
        return InProcessImpl()
    from externref_harness.native.backend import native_runtime, open_library

    return InProcessImpl(native_runtime(open_library(Path(impl))))


def serve(adapter: InProcessImpl, requests: int, responses: int) -> None:
    #: The ref facts the parent holds (it is sent only what changes).
    sent: tuple[RefFacts, ...] = ()
    while True:
        try:
            request = decode_plain(read_frame(requests))
        except EOFError:
            return
        kind = request[0]
        try:
            if kind == "start":
                adapter.start(request[1])
                sent = ()
                reply: Any = None
            elif kind == "step":
                outcome = adapter.step(request[1], request[2])
                probe = adapter.probe()
                # Only the refs whose facts changed cross: the parent keeps the rest.
                changed = [(i, probe.refs[i]) for i in changed_positions(sent, probe.refs)]
                sent = probe.refs
                reply = (outcome, probe._replace(refs=()), len(sent), changed)
            elif kind == "finish":
                reply = adapter.finish()
            elif kind == "close":
                adapter.close()
                reply = None
            elif kind == "exit":
                adapter.close()
                write_frame(responses, ("ok", None))
                return
            else:
                raise ValueError(f"unknown request {kind!r}")
        except Exception as e:
            write_frame(responses, ("error", f"{type(e).__name__}: {e}"))
            continue
        write_frame(responses, ("ok", reply))


def describe(path: str, fd: int) -> int:
    """`--describe PATH FD`: load and validate the library here, write `("ok", description)` or
    `("refused", why)` to FD.

    The parent never loads an implementation itself: a library whose constructor or `xr_describe`
    crashes, or exits, takes down only this process, and the parent says so."""
    import dataclasses

    from externref_harness.native.library import LibraryError, load_library

    try:
        library = load_library(path)
    except LibraryError as e:
        write_frame(fd, ("refused", str(e)))
        return 2
    write_frame(fd, ("ok", dataclasses.asdict(library.description)))
    return 0


def main(argv: list[str]) -> int:
    if argv[:1] == ["--describe"]:
        return describe(argv[1], int(argv[2]))
    impl = None
    if argv[:1] == ["--impl"]:
        impl, argv = argv[1], argv[2:]
    requests, responses = int(argv[0]), int(argv[1])
    try:
        try:
            adapter = _adapter(impl)
        except Exception as e:
            write_frame(responses, ("error", f"{type(e).__name__}: {e}"))
            return 2
        write_frame(responses, ("ok", "ready"))
        serve(adapter, requests, responses)
    except OSError as e:
        # The library closed or replaced the protocol's descriptors: say so in one line (the
        # parent shows what the child printed), not as a traceback.
        print(f"child: the protocol pipes failed ({e}); did the library close descriptors?", file=sys.stderr)
        return PIPES_FAILED
    return 0


#: The child's exit status when its protocol pipes failed under it.
PIPES_FAILED = 3


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
