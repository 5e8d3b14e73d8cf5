"""A library loaded and described in a child: the harness's own process never loads it.

    describe_library(PATH) ── confined child: python -m externref_harness.isolation.child --describe PATH FD
                           ◀── one frame on FD: ("ok", description fields) or ("refused", why)

A library whose constructor crashes, hangs, exits (even with status 0) or prints a flood is
refused in one line that says what the process did while loading it; a description of the wrong
shape is refused too. `child_env` gives a library built with AddressSanitizer its runtime.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import time
from pathlib import Path
from typing import Any

from externref_harness.errors import UsageError, printable
from externref_harness.isolation.forkserver import child_command
from externref_harness.isolation.process import Confined, Limits, describe_status
from externref_harness.isolation.wire import WireError, conform, read_frame
from externref_harness.native.build import asan_runtime
from externref_harness.native.library import Description

#: How long loading and describing a library may take.
DESCRIBE_TIMEOUT = 60.0


class LibraryRefused(UsageError):
    """The library could not be loaded or described: bad input (exit 2), still reported to CI."""


def child_env(library: Path) -> dict[str, str] | None:
    """A library built with AddressSanitizer needs its runtime preloaded into the child."""
    try:
        if not library.is_file() or library.stat().st_size > 1 << 30:
            return None  # not a library: `describe_library` says what it is
        data = library.read_bytes()
    except OSError:
        return None
    if b"libasan.so" not in data:
        return None
    runtime = asan_runtime()
    if runtime is None:
        raise LibraryRefused(
            f"library {library} needs AddressSanitizer, and the C compiler has no libasan.so"
        )
    return {"LD_PRELOAD": str(runtime), "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1"}


def describe_library(
    library: Path, env: dict[str, str] | None, timeout: float = DESCRIBE_TIMEOUT
) -> Description:
    """Load and validate the library in a confined child (bad library: one-line `UsageError`)."""
    try:
        mode = os.stat(library).st_mode
    except FileNotFoundError:
        raise LibraryRefused(f"library {library}: no such file") from None
    except OSError as e:
        raise LibraryRefused(f"library {library}: {e.strerror or e}") from None
    if not stat.S_ISREG(mode):
        raise LibraryRefused(f"library {library}: not a regular file")
    read_fd, write_fd = os.pipe()
    limits = Limits() if env is None else Limits().without_memory_limit()
    child = Confined(
        [*child_command(None), "--describe", str(library), str(write_fd)],
        (write_fd,),
        env,
        limits,
    )
    os.close(write_fd)
    frame: Any = None
    problem = ""
    try:
        frame = read_frame(read_fd, time.monotonic() + timeout, child.exit_watch())
    except TimeoutError:
        problem = f"loading it did not finish in {timeout:g} s (its process was killed)"
    except EOFError:
        pass
    except (WireError, OSError) as e:
        problem = f"its process broke the protocol while loading the library: {e}"
    finally:
        os.close(read_fd)
    try:
        if frame is None:
            if not problem:
                try:
                    child.proc.wait(timeout=5)
                except Exception:
                    pass
                problem = f"the process {describe_status(child.proc.returncode)} while loading the library"
            raise LibraryRefused(f"library {library}: {problem}{_tail(child)}")
        return _description(library, frame)
    finally:
        child.close()


def _tail(child: Confined) -> str:
    text = child.capture.tail(300).replace("\n", " | ")
    return f" (it printed: {text})" if text else ""


def _description(library: Path, frame: Any) -> Description:
    try:
        status, value = conform(frame, tuple[str, Any], "describe reply")
        if status == "refused":
            raise LibraryRefused(printable(str(conform(value, str, "refusal")))[:1000])
        if status != "ok" or not isinstance(value, dict):
            raise WireError(f"a {str(status)[:40]!r} reply")
        fields = {f.name: f.type for f in dataclasses.fields(Description)}
        if set(value) != set(fields):
            raise WireError(f"description fields {sorted(value)[:20]}")
        hints = {name: _TYPES.get(str(kind), Any) for name, kind in fields.items()}
        return Description(**{name: conform(value[name], hints[name], name) for name in fields})
    except WireError as e:
        raise LibraryRefused(f"library {library}: its description could not be read: {e}") from None


_TYPES: dict[str, Any] = {"str": str, "int": int, "bool": bool, "tuple[str, ...]": tuple[str, ...]}
