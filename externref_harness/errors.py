"""Errors that mean "bad input", and how a message shows the input it names.

The command line reports `UsageError` (and the trace and mutant errors) as one line,
`externref-harness <cmd>: error: <what>`, and exits 2. A message names the input, so it echoes user
text: `shown` keeps that echo on one printable line of bounded length, whatever the text holds
(newlines, lone surrogates from non-UTF-8 file names, kilobytes of it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

#: How many characters of a user's value a message echoes before cutting it with "...".
ECHO_LIMIT = 80


class UsageError(Exception):
    """Bad arguments or bad input from the user."""


class RunsOverlap(BaseException):
    """A run was started where another run, not closed, holds what it needs: a pool's child
    (`isolation.pool.ChildPool.take`) or a native library's hooks, which are one per process
    (`native.backend.NativeRuntime`). The two runs would share one pipe or one checking heap, and
    either verdict could be wrong: a bug of the code driving the harness, not input, and not the
    implementation's failure. A `BaseException`, as `isolation.pool.OutOfTime` is, so that the
    lockstep's handlers (which make any exception of a step the implementation's) let it through."""


def printable(text: str) -> str:
    """`text` on one line that any stream can encode: control characters and lone surrogates
    (a non-UTF-8 file name decoded with `surrogateescape`) become backslash escapes."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\" or (ch.isprintable() and not 0xD800 <= code <= 0xDFFF):
            out.append(ch)
        elif ch in "\n\r\t":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t"}[ch])
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def cut(text: str, limit: int = ECHO_LIMIT) -> str:
    """At most `limit` characters of `text`, then "..." when there was more."""
    return text if len(text) <= limit else text[:limit] + "..."


def shown(text: str, limit: int = ECHO_LIMIT) -> str:
    """A user's string as a message echoes it: printable, one line, cut."""
    return cut(printable(text), limit)


def shown_path(path: str | os.PathLike[str]) -> str:
    """A path as a message names it (non-UTF-8 bytes and newlines escaped, long paths cut)."""
    return shown(os.fspath(path), 2 * ECHO_LIMIT)


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type: null, true/false, a number, a string, ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def shown_json(value: object) -> str:
    """A parsed JSON value as a message echoes it: JSON text, cut (a kilobyte list is not echoed)."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError):
        try:
            text = repr(value)
        except ValueError:  # an int past the int-to-text conversion limit
            return f"an integer of about {int(value.bit_length() * 0.30103) + 1} digits"  # type: ignore[attr-defined]
    return shown(text)


def user_path(text: str, where: str) -> Path:
    """A path the user gave in `where` (an option or a variable), `~` expanded; empty is refused."""
    if not text:
        raise UsageError(f"{where} needs a path, got an empty string")
    return Path(os.path.expanduser(text))
