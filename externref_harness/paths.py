"""Where a command writes: the failures directory, a trace file, a `--json` report.

Every place is checked before the run it serves (a long run must not end in "cannot save"), by
looking, never by touching what is there: an existing directory is probed with a fresh temporary
file of its own, a missing one is not created (saving creates it, so a passing run leaves nothing
behind), and special files (FIFOs, devices) are refused by `os.stat` before anything opens them.
"""

from __future__ import annotations

import argparse
import os
import stat
import tempfile
from pathlib import Path

from externref_harness.errors import UsageError, shown_path, user_path

#: The variable that moves the default failures directory.
FAILURES_ENV = "EXTERNREF_HARNESS_FAILURES"
DEFAULT_FAILURES = Path(".externref-harness/failures")


def add_failures_option(p: argparse.ArgumentParser, *deprecated: str) -> None:
    """`--failures DIR` (where failing traces are saved), plus hidden old spellings of it."""
    p.add_argument(
        "--failures", metavar="DIR", default=None,
        help=f"directory failing traces are saved in (default: ${FAILURES_ENV} or {DEFAULT_FAILURES}; "
        "created only when a trace is saved)",
    )  # fmt: skip
    for old in deprecated:
        p.add_argument(old, dest="failures", metavar="DIR", default=None, help=argparse.SUPPRESS)


def add_json_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--json", metavar="FILE", dest="json_file", default=None,
        help="also write the run as JSON to FILE (checked before the run, written atomically)",
    )  # fmt: skip


def failures_dir(given: str | None = None, option: str = "--failures") -> Path:
    """The failures directory: `given` (from `option`), else `$EXTERNREF_HARNESS_FAILURES`, else
    `.externref-harness/failures`; `~` expanded, an empty value refused."""
    if given is not None:
        return user_path(given, option)
    env = os.environ.get(FAILURES_ENV)
    if env is not None:
        return user_path(env, f"${FAILURES_ENV}")
    return DEFAULT_FAILURES


def failures_source(given: str | None, option: str = "--failures") -> str:
    """How a message names the failures directory's origin."""
    if given is not None:
        return option
    return f"${FAILURES_ENV}" if os.environ.get(FAILURES_ENV) is not None else "the failures directory"


def check_dir(path: Path, where: str) -> None:
    """`path` is, or can be created as, a directory files can be written in (`UsageError` if not)."""
    existing = path
    while True:
        try:
            st = os.stat(existing)
        except (FileNotFoundError, NotADirectoryError):
            if existing.parent == existing:
                raise UsageError(f"{where} {shown_path(path)}: no such directory") from None
            existing = existing.parent
            continue
        except OSError as e:
            raise UsageError(f"{where} {shown_path(path)}: {e.strerror or e}") from None
        break
    if not stat.S_ISDIR(st.st_mode):
        what = "" if existing == path else f" ({shown_path(existing)} is not a directory)"
        raise UsageError(f"{where} {shown_path(path)}: not a directory{what}")
    _probe(existing, where, path)


def _probe(directory: Path, where: str, named: Path) -> None:
    """Create and delete a fresh temporary file in `directory`: whether writing there works."""
    try:
        fd, name = tempfile.mkstemp(prefix=".externref-harness-probe-", dir=directory)
    except OSError as e:
        raise UsageError(f"{where} {shown_path(named)}: cannot write there: {e.strerror or e}") from None
    os.close(fd)
    os.unlink(name)


def check_file(path: Path, where: str) -> None:
    """`path` can be written as a regular file: absent, or a writable regular file, in a
    directory that exists or can be created."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):  # the directory's check names what is wrong
        st = None
    except OSError as e:
        raise UsageError(f"{where} {shown_path(path)}: {e.strerror or e}") from None
    if st is not None:
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"{where} {shown_path(path)}: is a directory, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{where} {shown_path(path)}: not a regular file ({file_kind(st.st_mode)})")
        # The mode bits too: saving replaces the file by a rename, which its mode would not stop,
        # and a file made read-only is one its owner means to keep.
        if not os.access(path, os.W_OK) or not st.st_mode & 0o222:
            raise UsageError(f"{where} {shown_path(path)}: the file exists and is read-only")
    check_dir(path.parent, where)


def file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a directory"),
    ):  # fmt: skip
        if test(mode):
            return name
    return "not a regular file"


def trace_destination(directory: str | None, out: str | None, default_name: str) -> tuple[Path, str]:
    """Where a command saves its one trace: `out` (a file, or a directory when it ends in `/` or is
    one), else `default_name` in the failures directory. Returns the path and the option naming it."""
    if out is not None:
        path = user_path(out, "--out")
        if out.endswith(("/", os.sep)) or path.is_dir():
            return path / default_name, "--out"
        return path, "--out"
    return failures_dir(directory) / default_name, failures_source(directory)


def write_atomically(path: Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same directory and a rename, so a
    reader never sees half a file; the directory is created if missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="backslashreplace") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
