"""Test libraries that misbehave in one way each: the C reference behind wrappers of a few calls.

`build(name, **hooks)` compiles `native/reference/externref.c` (release) with `xr_set_hooks`,
`xr_ref_new`, `xr_ref_clone`, `xr_ref_drop` and `xr_gc` renamed, and exports wrappers that run
the given C code before (and for `new_after`, after) the real call. `calls` counts the wrapper's
calls of `xr_ref_new` in this process. Each build is a real shared library made by `cc`.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from externref_harness.native import build as native_build

TEMPLATE = r"""
#define xr_set_hooks real_xr_set_hooks
#define xr_ref_new real_xr_ref_new
#define xr_ref_clone real_xr_ref_clone
#define xr_ref_drop real_xr_ref_drop
#define xr_gc real_xr_gc
#include "reference/externref.c"
#undef xr_set_hooks
#undef xr_ref_new
#undef xr_ref_clone
#undef xr_ref_drop
#undef xr_gc
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

static int calls __attribute__((unused));

TOP

/* Every pipe this process may write to: the protocol's response pipe among them. */
__attribute__((unused)) static void to_every_pipe(const void *data, size_t size) {
    for (int fd = 3; fd < 1024; fd++) {
        struct stat st;
        if (fstat(fd, &st) != 0 || !S_ISFIFO(st.st_mode)) continue;
        if ((fcntl(fd, F_GETFL) & O_ACCMODE) != O_WRONLY) continue;
        if (write(fd, data, size) < 0) continue;
    }
}

__attribute__((unused)) static void hostile_frame(
    const unsigned char *body, size_t size, unsigned long long announced) {
    unsigned char header[8];
    for (int i = 0; i < 8; i++) header[i] = (unsigned char)(announced >> (8 * i));
    to_every_pipe(header, 8);
    to_every_pipe(body, size);
}

__attribute__((unused)) static const unsigned char BODY[] = {BODY_BYTES};

EXPORT void xr_set_hooks(const xr_hooks *h) {
    SET_HOOKS;
    real_xr_set_hooks(h);
}

EXPORT int xr_ref_new(size_t size, size_t align, uint8_t fill, xr_ref *out) {
    calls++;
    NEW_BEFORE;
    int status = real_xr_ref_new(size, align, fill, out);
    NEW_AFTER;
    return status;
}

EXPORT int xr_ref_clone(xr_ref r, xr_ref *out) {
    CLONE;
    return real_xr_ref_clone(r, out);
}

EXPORT int xr_ref_drop(xr_ref r) {
    DROP;
    return real_xr_ref_drop(r);
}

EXPORT int xr_gc(const xr_stack *stack, xr_table *t) {
    GC;
    return real_xr_gc(stack, t);
}
"""


def build(
    tmp_path: Path,
    name: str,
    set_hooks: str = "",
    new_before: str = "",
    new_after: str = "",
    clone: str = "",
    drop: str = "",
    gc: str = "",
    body: bytes = b"\0",
    top: str = "",
) -> Path:
    parts = {
        "SET_HOOKS": set_hooks or "(void)0",
        "NEW_BEFORE": new_before or "(void)0",
        "NEW_AFTER": new_after or "(void)0",
        "CLONE": clone or "(void)0",
        "DROP": drop or "(void)0",
        "GC": gc or "(void)0",
        "BODY_BYTES": ", ".join(str(b) for b in body),
        "TOP": top,
    }
    text = TEMPLATE
    for key, value in parts.items():
        text = text.replace(key, value if key in ("BODY_BYTES", "TOP") else f"do {{ {value}; }} while (0)", 1)
    source = tmp_path / f"{name}.c"
    source.write_text(text)
    flags = native_build.reference_flags("release")
    return native_build.compile_shared(source, flags, f"misbehaving-{name}")


class _RunsCode:
    """Unpickling this runs `touch MARKER`: what a pickle frame could make a parent do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def pickle_payload(marker: Path) -> bytes:
    return pickle.dumps(("ok", _RunsCode(marker)), protocol=pickle.HIGHEST_PROTOCOL)


@dataclass(frozen=True)
class Run:
    status: int
    out: str
    err: str
    seconds: float


def harness(*args: str, timeout: float = 600) -> Run:
    """`externref-harness ARGS` in its own process, as a user runs it."""
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "externref_harness.cli", *args],
        capture_output=True,
        text=True,
        errors="backslashreplace",
        timeout=timeout,
        env={**os.environ, "EXTERNREF_HARNESS_PROGRESS_SECONDS": "0"},
        check=False,
    )
    return Run(done.returncode, done.stdout, done.stderr, time.monotonic() - started)


def leftovers(library: Path) -> list[int]:
    """Live processes whose command line names `library` (a child, or what it forked)."""
    found = []
    needle = str(library).encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{entry}/stat", "rb") as f:
                state = f.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state != b"Z":
            found.append(int(entry))
    return found
