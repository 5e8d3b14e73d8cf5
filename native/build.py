"""Building the C reference implementation (`native/reference/externref.c`) with the system C compiler.

Every build (debug or release, a seeded bug, the loose variant, ASan, no optional symbols, a chunk
size) is its own shared library, named by a hash of the source, the header, the compiler and the
flags: it is rebuilt only when one of them changes, and two builds never share a file name (the
dynamic loader would hand back the first one loaded from a path). Builds are written to a temporary
name and renamed into place, so parallel test workers can build the same library at once.

`C_BUGS` is the catalogue of the seeded bugs (`-DXR_BUG_<NAME>`), `C_VARIANTS` that of correct but
not seed-exact variants.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shlex
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from externref_harness.errors import UsageError

NATIVE_DIR = Path(__file__).resolve().parent
HEADER = NATIVE_DIR / "externref_abi.h"
SOURCE = NATIVE_DIR / "reference" / "externref.c"
#: The parallel check's native driver (threads, checking heap, drop log): harness code, not an
#: implementation.
THREAD_DRIVER = NATIVE_DIR / "threads" / "driver.c"

BUILDS = ("debug", "release")
BASE_FLAGS = ("-std=c11", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-pthread")
#: How many lines of the compiler's complaint a `BuildError` carries.
ERROR_LINES = 6


class BuildError(Exception):
    """The compiler failed (or could not be run); the message carries its first lines."""


@dataclass(frozen=True, slots=True)
class CBug:
    """A seeded bug of the C reference: one `#ifdef`-guarded change."""

    name: str
    macro: str
    description: str
    #: The advisory or mechanism it stands for.
    mechanism: str
    #: What a run needs to show it: "chunk-512" (a full-size chunk), "threads", "hang" (the run must
    #: be timed out), "crash" (the process dies; run it in a child), "align>8" (values aligned
    #: above 8), "unwind-stops" (a walk that ends before the canary), "release" (the debug build
    #: panics on it first, which is also a detection), "debug" (only a debug build has the code).
    needs: frozenset[str]
    #: The variant (`C_VARIANTS`) the bug lives in, built with it (None: the seed-shaped build).
    variant: str | None = None


def _bug(name: str, description: str, mechanism: str, *needs: str, variant: str | None = None) -> CBug:
    macro = "XR_BUG_" + name.removeprefix("c-").replace("-", "_").upper()
    return CBug(name, macro, description, mechanism, frozenset(needs), variant)


C_BUGS: dict[str, CBug] = {
    bug.name: bug
    for bug in (
        _bug(
            "c-sweep-without-canary",
            "gc sweeps even when the walk did not find the stack canary",
            "the canary rule: a walk that stops early misses roots, and sweeping frees them "
            "(the use-after-free the seed's found_canary guard prevents)",
            "unwind-stops",
        ),
        _bug(
            "c-precise-root-uncounted",
            "insert_precise_stack_root takes the root without cloning it (count not incremented)",
            "CVE-2022-24791 / CVE-2022-31146: live refs swept and freed while Wasm still holds them",
        ),
        _bug(
            "c-stack-map-offset",
            "gc reads the mapped word at sp + (i + 1) * 8 instead of sp + i * 8",
            "stack-map misreading: a live ref's word is skipped and its neighbour read as a ref",
        ),
        _bug(
            "c-early-free",
            "Drop for VMExternRef frees when fetch_sub returned 2 (and never when it returned 1)",
            "reference-count off by one: a ref freed while one owner remains, then a use after free",
        ),
        _bug(
            "c-bump-off-by-one",
            "try_insert accepts next == end once, writing one slot past the chunk",
            "heap overflow of the bump chunk (the checking heap sees its redzone written); the "
            "debug build's `next <= end` assertion fires first",
            "release",
        ),
        _bug(
            "c-dealloc-wrong-layout",
            "drop_and_dealloc deallocates with align 8 instead of the value's alignment",
            "dealloc with a layout other than alloc's (undefined behaviour in Rust's allocator API)",
            "align>8",
        ),
        _bug(
            "c-leak-chunk",
            "the table's drop never frees the bump chunk",
            "memory leak of the table's chunk",
        ),
        _bug(
            "c-duplicate-insert-leaks",
            "a duplicate HashSet::insert forgets the ref passed in instead of dropping it",
            "reference-count leak: the value is never dropped",
        ),
        _bug(
            "c-wild-read",
            "gc treats every word of a Wasm frame's mapped range as a ref, ignoring the bits",
            "CVE-2021-39218: non-refs treated as refs; reading ref_count at the harness's scalar "
            "word (0x0BAD5CA1A12F0001, unmapped) crashes with SIGSEGV in release; the debug "
            "build's activations-table assertion fires first",
            "crash",
        ),
        _bug(
            "c-chunk-index-u8",
            "num_filled_in_bump_chunk computes through a uint8_t, wrong once more than 255 slots fill",
            "integer truncation: sweep forgets the chunk's slots past 255 (leaks, stale slots); "
            "shows only with a chunk of more than 255 slots",
            "chunk-512",
        ),
        _bug(
            "c-gc-hang",
            "gc retries the stack walk forever while it has not found the canary",
            "non-termination of gc when the unwinder cannot reach the canary",
            "hang",
            "unwind-stops",
        ),
        _bug(
            "c-gc-okay-unchecked",
            "gc omits the debug build's assert!(gc_okay)",
            "a seed debug assertion omitted: a GC while the embedder asserted none may happen (misuse "
            "the host refuses and then sends to the runtime, `model.assertions`) runs instead of "
            "panicking; it does what the release build does, so only the strict level fails it",
            "debug",
        ),
        _bug(
            "c-no-wasm-frame-assert",
            "gc with no canary sweeps without the debug build's walk asserting that no frame is Wasm",
            "a seed debug assertion omitted: with the canary cleared while Wasm is live (misuse the "
            "host refuses and then sends to the runtime, `model.assertions`) gc sweeps refs only "
            "Wasm frames hold instead of panicking",
            "debug",
        ),
        _bug(
            "c-nonatomic-count",
            "clone and drop change ref_count with a plain load, a pause and a plain store",
            "data race on the count (VMExternRef is Send + Sync): lost updates, early frees or leaks",
            "threads",
        ),
        _bug(
            "c-drop-reread",
            "drop decides to free on a re-read of the count (== 0), a few microseconds after its fetch_sub, "
            "instead of on fetch_sub's result",
            "check-then-act race: two threads dropping at once can both free (double free)",
            "threads",
        ),
        _bug(
            "c-clone-load-store",
            "clone increments ref_count with an atomic load and an atomic store instead of fetch_add",
            "lost update (VMExternRef is Send + Sync): a drop or clone between the load and the store is "
            "undone, so the count ends one too high (a leak) or one too low (an early free)",
            "threads",
        ),
        _bug(
            "c-eager-chunk-off-by-one",
            "the chunk xr_table_new allocates eagerly is one slot short",
            "eager-chunk: inserts before the first GC find the chunk full one slot early (a lost "
            "insert, an early GC); the table's chunk length is wrong from the start",
            variant="c-eager-chunk",
        ),
        _bug(
            "c-guard-canary-not-cleared",
            "xr_table_leave_wasm keeps the canary instead of leaving the scope",
            "canary-guard: a GC after Wasm returned does not find the stale canary and sweeps "
            "nothing, so the table keeps refs the seed frees (a leak until the next call)",
            variant="c-guard-canary",
        ),
        _bug(
            "c-opaque-free-early",
            "a drop that leaves one owner puts the box's index back on the free list (c-opaque-refs)",
            "handle reuse while live (opaque-refs): the next New is given the live ref's handle, so two "
            "refs alias one box; the harness sees a new ref whose word a live ref already has",
            variant="c-opaque-refs",
        ),
        _bug(
            "c-registry-nearest-safepoint",
            "own-registry: a pc with no exact entry gets the map of the nearest earlier mapped call "
            "site of its function",
            "CVE-2021-39218: a frame stopped at a call site without a map is read with an earlier "
            "call site's map, so the non-ref words in the slots it covers are taken for refs",
            variant="c-own-registry",
        ),
        _bug(
            "c-registry-previous-function",
            "own-registry: a pc before its function's first mapped call site gets the previous "
            "function's last map (the exact-match check looks only at the pc's own function)",
            "a registry lookup that crosses a function boundary: the previous function's map read "
            "over a frame whose slots hold no live refs",
            variant="c-own-registry",
        ),
        _bug(
            "c-registry-first-pc-panics",
            "own-registry: a pc before the module's first mapped call site indexes the entry before "
            "the first (a debug build panics: index out of bounds; a release build reads out of bounds)",
            "an unchecked binary-search result: the lookup fails on the module's first call site "
            "when it has no map; only the debug build shows it (the release build's read is seen "
            "by an AddressSanitizer build)",
            "debug",
            variant="c-own-registry",
        ),
        _bug(
            "c-wild-write-footer",
            "gc decrements the count of the oldest live ref the table does not hold (one the step "
            "does not otherwise touch)",
            "a wild write outside the step's refs: memory corruption far from what the step was "
            "asked to do, which a check of the step's refs alone would miss",
        ),
    )
}


@dataclass(frozen=True, slots=True)
class CVariant:
    """A correct implementation that is not seed-exact: lockstep must tell it apart, not fail it.

    `macros` are defined together; each variant macro of the source is independent (it ORs its
    own `XR_CAP_*` bit into `XR_CAPABILITIES`), so a variant may be the union of others."""

    name: str
    macros: tuple[str, ...]
    description: str


C_VARIANTS: dict[str, CVariant] = {
    "c-loose": CVariant(
        "c-loose",
        ("XR_VARIANT_LOOSE",),
        "capacity-slots: chunk size 256, bump_capacity_remaining in slots instead of bytes, a sweep "
        "that clears the chunk youngest slot first and drops set members in descending address order",
    ),
    "c-eager-chunk": CVariant(
        "c-eager-chunk", ("XR_VARIANT_EAGER_CHUNK",), "eager-chunk: xr_table_new allocates the chunk"
    ),
    "c-no-gc-free-insert": CVariant(
        "c-no-gc-free-insert",
        ("XR_VARIANT_NO_GC_FREE_INSERT",),
        "no-gc-free-insert: no insert_without_gc, bump_capacity_remaining or set_gc_okay",
    ),
    "c-guard-canary": CVariant(
        "c-guard-canary",
        ("XR_VARIANT_GUARD_CANARY",),
        "canary-guard: the canary is a scope (xr_table_enter_wasm / xr_table_leave_wasm), no getter",
    ),
    "c-single-threaded": CVariant(
        "c-single-threaded", ("XR_VARIANT_SINGLE_THREADED",), "single-threaded: plain, non-atomic counts"
    ),
    "c-no-raw": CVariant(
        "c-no-raw", ("XR_VARIANT_NO_RAW",), "no-raw: no into_raw, from_raw or clone_from_raw"
    ),
    "c-opaque-refs": CVariant(
        "c-opaque-refs",
        ("XR_VARIANT_OPAQUE_REFS",),
        "declares opaque-refs: a ref word is a handle, index + 1 into a table of boxes the library "
        "keeps (with a free list of indices), never a VMExternData address; hash and cmp go "
        "through the box",
    ),
    "c-own-registry": CVariant(
        "c-own-registry",
        ("XR_VARIANT_OWN_REGISTRY",),
        "declares own-registry: copies the modules registered with xr_table_register_module into "
        "its own registry and looks pcs up there (binary search over each module's mapped call "
        "sites, exact match) instead of calling the stack's lookup",
    ),
    "c-capacity-slots": CVariant(
        "c-capacity-slots",
        ("XR_VARIANT_CAPACITY_SLOTS",),
        "capacity-slots: bump_capacity_remaining in slots instead of bytes, and nothing else of c-loose",
    ),
    "c-no-strong-count": CVariant(
        "c-no-strong-count",
        ("XR_VARIANT_NO_STRONG_COUNT",),
        "no-strong-count: no xr_ref_strong_count; counts are judged through drops and leaks",
    ),
    "c-family": CVariant(
        "c-family",
        (
            "XR_VARIANT_OWN_REGISTRY",
            "XR_VARIANT_EAGER_CHUNK",
            "XR_VARIANT_NO_GC_FREE_INSERT",
            "XR_VARIANT_GUARD_CANARY",
            "XR_VARIANT_SINGLE_THREADED",
            "XR_VARIANT_NO_RAW",
            "XR_VARIANT_CAPACITY_SLOTS",
            "XR_VARIANT_OPAQUE_REFS",
            "XR_VARIANT_NO_STRONG_COUNT",
        ),
        "every capability at once: an implementation of the design that shares none of the seed's "
        "API choices (its own registry, an eager chunk, no GC-free insert, a canary scope, plain "
        "counts, no raw pointers, capacity in slots, refs that are indices, no strong_count)",
    ),
}


def compiler() -> list[str]:
    """The C compiler command: `$CC` (split like a shell word list) or `cc`."""
    return shlex.split(os.environ.get("CC") or "cc")


def build_dir() -> Path:
    """Where builds are cached: `$EXTERNREF_HARNESS_BUILD_DIR`, else the user's cache directory."""
    override = os.environ.get("EXTERNREF_HARNESS_BUILD_DIR")
    if override:
        return Path(override)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "externref-harness" / "native"


def reference_flags(
    build: str = "debug",
    bug: str | None = None,
    variant: str | None = None,
    sanitize: bool = False,
    no_optional: bool = False,
    chunk_size: int | None = None,
    defines: Mapping[str, str] | None = None,
) -> list[str]:
    """The compiler flags of one build of the reference (bad names are a `UsageError`)."""
    if build not in BUILDS:
        raise UsageError(f"build {build!r}: expected one of {', '.join(BUILDS)}")
    flags = [*BASE_FLAGS, f"-I{NATIVE_DIR}", f"-DXR_DEBUG={1 if build == 'debug' else 0}"]
    flags += ["-O1", "-g", "-fno-omit-frame-pointer", "-fsanitize=address"] if sanitize else ["-O2", "-g"]
    variants = [] if variant is None else [variant]
    if bug is not None:
        if bug not in C_BUGS:
            raise UsageError(f"C bug {bug!r}: not one of {', '.join(C_BUGS)}")
        flags.append(f"-D{C_BUGS[bug].macro}")
        needed = C_BUGS[bug].variant
        if needed is not None and needed not in variants:
            variants.append(needed)  # the bug lives in the variant's code
    for name in variants:
        if name not in C_VARIANTS:
            raise UsageError(f"C variant {name!r}: not one of {', '.join(C_VARIANTS)}")
        flags += [f"-D{macro}" for macro in C_VARIANTS[name].macros]
    if no_optional:
        flags.append("-DXR_NO_OPTIONAL")
    if chunk_size is not None:
        if chunk_size < 1:
            raise UsageError(f"chunk size {chunk_size}: must be at least 1")
        flags.append(f"-DXR_CHUNK_SIZE={chunk_size}")
    for name, value in sorted((defines or {}).items()):
        flags.append(f"-D{name}={value}")
    return flags


def build_reference(
    build: str = "debug",
    bug: str | None = None,
    variant: str | None = None,
    sanitize: bool = False,
    no_optional: bool = False,
    chunk_size: int | None = None,
    defines: Mapping[str, str] | None = None,
) -> Path:
    """The shared library of this build of the reference, compiled unless already cached.

    `defines` adds `-DNAME=VALUE` flags (the `XR_REPORT_*` overrides of what the library reports,
    for testing the loader's refusals).
    """
    flags = reference_flags(build, bug, variant, sanitize, no_optional, chunk_size, defines)
    if bug is not None and variant is None:
        variant = C_BUGS[bug].variant
    label = "-".join(part for part in (build, bug or "seed", variant, "asan" if sanitize else None) if part)
    return compile_shared(SOURCE, flags, label, depends=(HEADER,))


def build_thread_driver() -> Path:
    """The shared library of the parallel check's driver (`native/threads/driver.c`)."""
    flags = [*BASE_FLAGS, f"-I{NATIVE_DIR}", "-O2", "-g"]
    return compile_shared(THREAD_DRIVER, flags, "threads-driver", depends=(HEADER,))


def compile_shared(source: Path, flags: list[str], label: str, depends: tuple[Path, ...] = ()) -> Path:
    """Compile one C file into a shared library in the build directory, cached by content hash."""
    cc = compiler()
    digest = hashlib.sha256()
    for path in (source, *depends):
        digest.update(path.read_bytes())
        digest.update(b"\0")
    digest.update("\0".join([*cc, *flags]).encode())
    out_dir = build_dir()
    target = out_dir / f"libexternref-{label}-{digest.hexdigest()[:16]}.so"
    if target.is_file():
        return target
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=out_dir, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as err:
        raise BuildError(f"cannot write to the build directory {out_dir}: {err.strerror}") from None
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        try:
            done = subprocess.run(
                [*cc, *flags, str(source), "-o", str(tmp)],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as err:
            raise BuildError(f"cannot run the C compiler {cc[0]!r}: {err.strerror}") from None
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()[:ERROR_LINES]
            raise BuildError(
                f"{cc[0]} failed on {source.name} ({label}), exit {done.returncode}:\n" + "\n".join(lines)
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


@functools.cache
def asan_runtime() -> Path | None:
    """The compiler's AddressSanitizer runtime (`libasan.so`), for `LD_PRELOAD`, if it has one."""
    try:
        done = subprocess.run(
            [*compiler(), "-print-file-name=libasan.so"], capture_output=True, text=True, check=False
        )
    except OSError:
        return None
    path = Path(done.stdout.strip())
    if done.returncode != 0 or not path.is_absolute() or not path.exists():
        return None
    return path.resolve()


@functools.cache
def sanitizer_supported() -> bool:
    """Whether an ASan build of the reference can be made and its runtime preloaded."""
    if asan_runtime() is None:
        return False
    try:
        build_reference("debug", sanitize=True)
    except BuildError:
        return False
    return True
