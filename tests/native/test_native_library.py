"""The C reference through the C ABI: built by `native.build`, loaded by `native.library`, driven
through ctypes with small Python hooks and a Python stack over real memory.

This is the smoke level (the lockstep comparison with the model is elsewhere): describe, refs,
the footer in memory, the table, gc with and without a canary, panics, every refusal of
`load_library`, every seeded bug compiling, and a few bugs doing what their catalogue entry says.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from externref_harness.errors import UsageError
from externref_harness.impl.interface import plain_config, plain_op
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG
from externref_harness.lockstep.targets import native_target
from externref_harness.model.ops import Gc, InsertWithGc, New
from externref_harness.native import build, library
from externref_harness.native.library import (
    XR_ERR,
    XR_OK,
    XR_PANIC,
    XR_PC_HOST,
    XR_PC_WASM_MAPPED,
    LibraryError,
    NativeLibrary,
)

WORD = 8
FOOTER = 24
#: A pc the test stack calls host code, and one it calls Wasm code with a stack map.
HOST_PC = 0x5555_0000
WASM_PC = 0x7E00_0000

_libc = ctypes.CDLL(None)
_libc.posix_memalign.argtypes = (ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t)
_libc.posix_memalign.restype = ctypes.c_int
_libc.free.argtypes = (ctypes.c_void_p,)
_libc.free.restype = None


class Hooks:
    """A dict-based allocator on posix_memalign that checks each free against its allocation."""

    def __init__(self) -> None:
        self.live: dict[int, tuple[int, int]] = {}
        self.dropped: list[int] = []
        self.errors: list[str] = []
        self._alloc = library.AllocFn(self.alloc)
        self._dealloc = library.DeallocFn(self.dealloc)
        self._dropped = library.ValueDroppedFn(self.value_dropped)
        self.struct = library.XrHooks(None, self._alloc, self._dealloc, self._dropped)

    def alloc(self, _ctx: int | None, size: int, align: int) -> int:
        out = ctypes.c_void_p()
        if _libc.posix_memalign(ctypes.byref(out), max(align, WORD), max(size, 1)) != 0:
            return 0
        address = out.value or 0
        self.live[address] = (size, align)
        return address

    def dealloc(self, _ctx: int | None, ptr: int | None, size: int, align: int) -> int:
        address = ptr or 0
        layout = self.live.pop(address, None)
        if layout is None:
            return 0
        if layout != (size, align):
            self.errors.append(f"{address:#x} allocated as {layout}, freed as {(size, align)}")
        _libc.free(address)
        return 1

    def value_dropped(self, _ctx: int | None, value: int | None) -> None:
        self.dropped.append(value or 0)


class Stack:
    """`xr_stack` over a Python list of frames, youngest first; Wasm frames read real words."""

    def __init__(self) -> None:
        self.frames: list[tuple[int, int]] = []
        self.maps: dict[int, list[int]] = {}
        self.stop_after: int | None = None
        self._bits: Any = None
        self._trace = library.TraceFn(self.trace)
        self._lookup = library.LookupFn(self.lookup)
        self.struct = library.XrStack(None, self._trace, self._lookup)

    def trace(self, _ctx: int | None, visit: Any, walk_ctx: int | None) -> None:
        frames = self.frames if self.stop_after is None else self.frames[: self.stop_after]
        for pc, sp in frames:
            if not visit(walk_ctx, pc, sp):
                return

    def lookup(self, _ctx: int | None, pc: int, out: Any) -> int:
        bits = self.maps.get(pc)
        if bits is None:
            return XR_PC_HOST
        words = (ctypes.c_uint64 * max(1, (len(bits) + 63) // 64))()
        for i, bit in enumerate(bits):
            words[i // 64] |= bit << (i % 64)
        self._bits = words
        out.contents.mapped_words = len(bits)
        out.contents.bits = ctypes.cast(words, ctypes.POINTER(ctypes.c_uint64))
        return XR_PC_WASM_MAPPED


class Runtime:
    """One library with the test's hooks installed, and checked calls."""

    def __init__(self, lib: NativeLibrary) -> None:
        self.lib = lib
        self.c = lib.cdll
        self.hooks = Hooks()
        self.c.xr_set_hooks(ctypes.byref(self.hooks.struct))

    def ok(self, status: int) -> None:
        assert status == XR_OK, f"status {status}: {self.lib.panic_message()}"

    def new(self, size: int, align: int, fill: int = 0xAB) -> int:
        out = library.XrRef()
        self.ok(self.c.xr_ref_new(size, align, fill, ctypes.byref(out)))
        return int(out.value)

    def count(self, r: int) -> int:
        out = ctypes.c_size_t()
        self.ok(self.c.xr_ref_strong_count(r, ctypes.byref(out)))
        return int(out.value)

    def value(self, r: int) -> int:
        out = ctypes.c_void_p()
        self.ok(self.c.xr_ref_deref(r, ctypes.byref(out)))
        return out.value or 0

    def table(self, chunk_size: int | None = None) -> int:
        out = ctypes.c_void_p()
        if chunk_size is None:
            self.ok(self.c.xr_table_new(ctypes.byref(out)))
        else:
            self.ok(self.c.xr_table_new_with_chunk_size(chunk_size, ctypes.byref(out)))
        return out.value or 0

    def capacity(self, t: int) -> int:
        out = ctypes.c_size_t()
        self.ok(self.c.xr_table_bump_capacity_remaining(t, ctypes.byref(out)))
        return int(out.value)

    def filled(self, t: int) -> int:
        out = ctypes.c_size_t()
        self.ok(self.c.xr_table_num_filled_in_bump_chunk(t, ctypes.byref(out)))
        return int(out.value)

    def elements(self, t: int) -> list[int]:
        seen: list[int] = []
        callback = library.ElementsFn(lambda _ctx, r: seen.append(r))
        self.ok(self.c.xr_table_elements(t, callback, None))
        return seen

    def close(self) -> None:
        self.c.xr_set_hooks(None)


def word(address: int) -> int:
    return int(ctypes.c_uint64.from_address(address).value)


@pytest.fixture(params=build.BUILDS)
def rt(request: pytest.FixtureRequest) -> Iterator[Runtime]:
    runtime = Runtime(library.load_library(build.build_reference(request.param)))
    yield runtime
    runtime.close()
    assert runtime.hooks.errors == []


# ---- describe ------------------------------------------------------------------------------------


def test_describe_says_what_each_build_is() -> None:
    debug = library.load_library(build.build_reference("debug")).description
    release = library.load_library(build.build_reference("release")).description
    assert (debug.abi_version, debug.name, debug.version) == (2, "externref-c-reference", "1.0.0")
    assert debug.capabilities == ()
    assert debug.debug and not release.debug
    assert debug.chunk_size == release.chunk_size == 512
    assert (debug.max_value_size, debug.max_value_align) == (1 << 20, 1 << 12)
    assert debug.has_num_filled and debug.has_elements and debug.has_set_chunk_size
    bare = library.load_library(build.build_reference("debug", no_optional=True))
    assert not (bare.description.has_num_filled or bare.description.has_elements)
    assert not bare.description.has_set_chunk_size and not bare.has("xr_table_elements")
    assert library.load_library(build.build_reference("release", chunk_size=16)).description.chunk_size == 16
    assert (
        library.load_library(build.build_reference("debug", variant="c-loose")).description.chunk_size == 256
    )


def test_same_build_is_cached_and_each_variant_has_its_own_file() -> None:
    first = build.build_reference("release")
    mtime = first.stat().st_mtime_ns
    assert build.build_reference("release") == first and first.stat().st_mtime_ns == mtime
    others = {build.build_reference("debug"), build.build_reference("release", bug="c-leak-chunk"), first}
    assert len(others) == 3


# ---- VMExternRef ---------------------------------------------------------------------------------


def test_new_writes_value_and_footer_and_the_last_drop_frees(rt: Runtime) -> None:
    r = rt.new(16, 16, fill=0x5C)
    value = rt.value(r)
    assert rt.hooks.live[value] == (16 + FOOTER, 16)  # footer at round_up(16, 8), align max(16, 8)
    assert r == value + 16 and value % 16 == 0
    assert ctypes.string_at(value, 16) == b"\x5c" * 16
    assert word(r) == 1  # ref_count at offset 0
    assert word(r + 8) == value  # value_ptr's data pointer
    vtable = word(r + 16)
    assert (word(vtable + 8), word(vtable + 16)) == (16, 16)  # size, align
    clone = library.XrRef()
    rt.ok(rt.c.xr_ref_clone(r, ctypes.byref(clone)))
    assert clone.value == r and rt.count(r) == 2 == word(r)
    rt.ok(rt.c.xr_ref_drop(r))
    assert rt.hooks.dropped == [] and rt.count(r) == 1
    rt.ok(rt.c.xr_ref_drop(r))
    assert rt.hooks.dropped == [value] and value not in rt.hooks.live


def test_layouts_follow_layout_for(rt: Runtime) -> None:
    for size, align, alloc in (
        (0, 1, (24, 8)),
        (1, 1, (32, 8)),
        (8, 8, (32, 8)),
        (24, 8, (48, 8)),
        (64, 64, (88, 64)),
    ):
        r = rt.new(size, align)
        value = rt.value(r)
        assert rt.hooks.live[value] == alloc
        assert r - value == (size + 7) // 8 * 8
        rt.ok(rt.c.xr_ref_drop(r))
    out = library.XrRef()
    assert rt.c.xr_ref_new(3, 2, 0, ctypes.byref(out)) == XR_PANIC
    assert rt.lib.panic_message() == "no Rust type has size 3, align 2"
    assert rt.c.xr_ref_new(1 << 21, 8, 0, ctypes.byref(out)) == XR_PANIC
    assert rt.hooks.live == {}


def test_raw_pointers_eq_hash_cmp(rt: Runtime) -> None:
    a, b = rt.new(8, 8), rt.new(8, 8)
    raw = ctypes.c_void_p()
    rt.ok(rt.c.xr_ref_as_raw(a, ctypes.byref(raw)))
    assert raw.value == a and rt.count(a) == 1
    back = library.XrRef()
    rt.ok(rt.c.xr_ref_clone_from_raw(raw, ctypes.byref(back)))
    assert back.value == a and rt.count(a) == 2
    rt.ok(rt.c.xr_ref_into_raw(a, ctypes.byref(raw)))
    rt.ok(rt.c.xr_ref_from_raw(raw, ctypes.byref(back)))
    assert back.value == a and rt.count(a) == 2
    flag, h1, h2 = ctypes.c_int(), ctypes.c_uint64(), ctypes.c_uint64()
    rt.ok(rt.c.xr_ref_eq(a, b, ctypes.byref(flag)))
    assert flag.value == 0
    rt.ok(rt.c.xr_ref_eq(a, a, ctypes.byref(flag)))
    assert flag.value == 1
    rt.ok(rt.c.xr_ref_cmp(a, b, ctypes.byref(flag)))
    assert flag.value == (1 if a > b else -1)
    rt.ok(rt.c.xr_ref_hash(a, ctypes.byref(h1)))
    rt.ok(rt.c.xr_ref_hash(a, ctypes.byref(h2)))
    assert h1.value == h2.value
    for r in (a, a, b):
        rt.ok(rt.c.xr_ref_drop(r))
    assert rt.hooks.live == {}


# ---- the table and gc ----------------------------------------------------------------------------


def test_table_lazy_chunk_sweep_and_drop(rt: Runtime) -> None:
    stack = Stack()
    stack.frames = [(HOST_PC, 0x1000)]
    t = rt.table()
    assert word(t) == word(t + 8) == 8  # next == end == dangling
    assert rt.capacity(t) == 0 and rt.filled(t) == 0
    r = rt.new(8, 8)
    assert rt.c.xr_table_try_insert(t, r) == XR_ERR  # the empty chunk is full
    rt.ok(rt.c.xr_table_insert_without_gc(t, r))  # into over_approximated_stack_roots
    assert rt.elements(t) == [r] and rt.count(r) == 1
    value = rt.value(r)
    rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))  # no canary: sweep, allocate the chunk
    assert rt.hooks.dropped == [value]
    chunk = word(t + 16)
    assert word(t + 24) == 512 and rt.hooks.live[chunk] == (512 * WORD, WORD)
    assert word(t) == chunk and word(t + 8) == chunk + 512 * WORD
    assert rt.capacity(t) == 512 * WORD  # bytes, the seed's arithmetic
    s = rt.new(8, 8)
    rt.ok(rt.c.xr_table_insert_without_gc(t, s))
    assert word(chunk) == s and rt.capacity(t) == 511 * WORD and rt.filled(t) == 1
    rt.ok(rt.c.xr_table_drop(t))
    assert len(rt.hooks.dropped) == 2 and rt.hooks.live == {}


def test_gc_with_canary_keeps_the_refs_of_wasm_frames(rt: Runtime) -> None:
    t = rt.table()
    stack = Stack()
    frame = (ctypes.c_uint64 * 4)()
    sp = ctypes.addressof(frame)
    held, swept = rt.new(8, 8), rt.new(0, 1)
    frame[0], frame[1], frame[2] = held, 0x0BAD5CA1A12F0001, 0
    # No Wasm frame yet: the gc of this insert sweeps, allocates the chunk, then sets `held` aside.
    rt.ok(rt.c.xr_table_insert_with_gc(t, held, ctypes.byref(stack.struct)))
    rt.ok(rt.c.xr_table_insert_without_gc(t, swept))
    stack.frames = [(HOST_PC, sp - 64), (WASM_PC, sp), (HOST_PC, sp + 64), (HOST_PC, sp + 128)]
    stack.maps[WASM_PC] = [1, 0, 1]
    rt.ok(rt.c.xr_table_set_stack_canary(t, 1, sp + 100))
    is_some, canary = ctypes.c_int(), ctypes.c_size_t()
    rt.ok(rt.c.xr_table_stack_canary(t, ctypes.byref(is_some), ctypes.byref(canary)))
    assert (is_some.value, canary.value) == (1, sp + 100)
    swept_value = rt.value(swept)
    rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
    assert rt.hooks.dropped == [swept_value]
    assert rt.elements(t) == [held] and rt.count(held) == 1  # now a precise root, owned by the table
    rt.ok(rt.c.xr_table_drop(t))
    assert rt.hooks.live == {}


def test_gc_that_misses_the_canary_does_not_sweep(rt: Runtime) -> None:
    t = rt.table()
    stack = Stack()
    stack.frames = [(HOST_PC, 0x1000), (HOST_PC, 0x2000), (HOST_PC, 0x3000)]
    rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
    r = rt.new(8, 8)
    rt.ok(rt.c.xr_table_insert_without_gc(t, r))
    rt.ok(rt.c.xr_table_set_stack_canary(t, 1, 0x2800))
    stack.stop_after = 2  # the unwinder gives up before the canary's frame
    rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
    assert rt.hooks.dropped == [] and rt.filled(t) == 1
    stack.stop_after = None
    rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
    assert len(rt.hooks.dropped) == 1
    rt.ok(rt.c.xr_table_drop(t))


def test_gc_okay_is_a_debug_assertion() -> None:
    for name in build.BUILDS:
        runtime = Runtime(library.load_library(build.build_reference(name)))
        t = runtime.table()
        previous = ctypes.c_int()
        runtime.ok(runtime.c.xr_table_set_gc_okay(t, 0, ctypes.byref(previous)))
        assert previous.value == 1
        stack = Stack()
        status = runtime.c.xr_gc(ctypes.byref(stack.struct), t)
        if name == "debug":
            assert status == XR_PANIC and runtime.lib.panic_message() == "gc while gc_okay is false"
        else:
            assert status == XR_OK
            runtime.ok(runtime.c.xr_table_set_gc_okay(t, 1, ctypes.byref(previous)))
            assert previous.value == 1
            runtime.ok(runtime.c.xr_table_drop(t))
        runtime.close()


def test_debug_build_asserts_no_wasm_frame_without_a_canary() -> None:
    runtime = Runtime(library.load_library(build.build_reference("debug")))
    t = runtime.table()
    stack = Stack()
    frame = (ctypes.c_uint64 * 1)()
    stack.frames = [(WASM_PC, ctypes.addressof(frame))]
    stack.maps[WASM_PC] = [0]
    assert runtime.c.xr_gc(ctypes.byref(stack.struct), t) == XR_PANIC
    assert runtime.lib.panic_message() == "no canary, yet a Wasm frame is on the stack"
    runtime.close()


def test_debug_build_asserts_every_stack_ref_is_in_the_table() -> None:
    runtime = Runtime(library.load_library(build.build_reference("debug")))
    t = runtime.table()
    stack = Stack()
    frame = (ctypes.c_uint64 * 1)()
    stray = runtime.new(8, 8)
    frame[0] = stray
    sp = ctypes.addressof(frame)
    stack.frames = [(WASM_PC, sp), (HOST_PC, sp + 64)]
    stack.maps[WASM_PC] = [1]
    runtime.ok(runtime.c.xr_table_set_stack_canary(t, 1, sp + 32))
    assert runtime.c.xr_gc(ctypes.byref(stack.struct), t) == XR_PANIC
    assert f"{stray:#x} is not in the table" in runtime.lib.panic_message()
    runtime.close()


def test_small_chunk_table(rt: Runtime) -> None:
    t = rt.table(chunk_size=2)
    stack = Stack()
    rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
    refs = [rt.new(8, 8) for _ in range(3)]
    for r in refs:
        rt.ok(rt.c.xr_table_insert_with_gc(t, r, ctypes.byref(stack.struct)))
    # The third insert found the chunk full: gc swept the first two, then set the third aside.
    assert len(rt.hooks.dropped) == 2 and rt.elements(t) == [refs[2]]
    rt.ok(rt.c.xr_table_drop(t))
    assert rt.hooks.live == {}


# ---- ASan ----------------------------------------------------------------------------------------

_ASAN_CHILD = textwrap.dedent(
    """
    import ctypes, sys
    from externref_harness.native import library
    lib = library.load_library(sys.argv[1])
    c = lib.cdll
    out = library.XrRef()
    assert c.xr_ref_new(24, 8, 7, ctypes.byref(out)) == 0
    r = out.value
    table = ctypes.c_void_p()
    assert c.xr_table_new(ctypes.byref(table)) == 0
    assert c.xr_table_insert_without_gc(table, r) == 0
    stack = library.XrStack(None, library.TraceFn(lambda *a: None), library.LookupFn(lambda *a: 0))
    assert c.xr_gc(ctypes.byref(stack), table) == 0
    for _ in range(600):
        assert c.xr_ref_new(8, 8, 1, ctypes.byref(out)) == 0
        assert c.xr_table_insert_with_gc(table, out.value, ctypes.byref(stack)) == 0
    assert c.xr_table_drop(table) == 0
    print("clean")
    """
)


def _run_asan_child(path: Path) -> subprocess.CompletedProcess[str]:
    runtime = build.asan_runtime()
    assert runtime is not None
    env = dict(os.environ, LD_PRELOAD=str(runtime), ASAN_OPTIONS="detect_leaks=0")
    return subprocess.run(
        [sys.executable, "-c", _ASAN_CHILD, str(path)], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.skipif(not build.sanitizer_supported(), reason="the C compiler has no AddressSanitizer")
@pytest.mark.parametrize("name", build.BUILDS)
def test_asan_build_runs_clean(name: str) -> None:
    done = _run_asan_child(build.build_reference(name, sanitize=True))
    assert done.returncode == 0 and done.stdout.strip() == "clean", done.stderr[-2000:]


@pytest.mark.skipif(not build.sanitizer_supported(), reason="the C compiler has no AddressSanitizer")
def test_asan_sees_the_bump_overflow() -> None:
    done = _run_asan_child(build.build_reference("release", bug="c-bump-off-by-one", sanitize=True))
    assert done.returncode != 0 and "heap-buffer-overflow" in done.stderr


# ---- load_library's refusals ---------------------------------------------------------------------


def _refusal(path: Path) -> str:
    with pytest.raises(LibraryError) as caught:
        library.load_library(path)
    message = str(caught.value)
    assert "\n" not in message and str(path) in message
    return message


def test_refuses_a_missing_file(tmp_path: Path) -> None:
    assert _refusal(tmp_path / "absent.so").endswith(": no such file")


def test_refuses_a_text_file(tmp_path: Path) -> None:
    text = tmp_path / "notes.so"
    text.write_text("not a library\n")
    assert "not a loadable shared library" in _refusal(text)


def _stub_library(tmp_path: Path, body: str, label: str) -> Path:
    source = tmp_path / f"{label}.c"
    source.write_text(body)
    return build.compile_shared(source, [*build.BASE_FLAGS, f"-I{build.NATIVE_DIR}"], label)


def test_refuses_a_library_lacking_symbols(tmp_path: Path) -> None:
    path = _stub_library(
        tmp_path, "int xr_abi_version(void) { return 1; }\nint xr_gc(void) { return 0; }\n", "partial"
    )
    message = _refusal(path)
    missing = [name for name in library.REQUIRED if name not in ("xr_abi_version", "xr_gc")]
    assert message.endswith("missing required symbols: " + ", ".join(missing))


def test_asks_the_version_before_requiring_the_other_symbols(tmp_path: Path) -> None:
    path = _stub_library(tmp_path, "unsigned xr_abi_version(void) { return 3; }\n", "version3only")
    assert _refusal(path).endswith("ABI version 3, the harness speaks versions 1 and 2")


def test_asks_the_version_before_describe(tmp_path: Path) -> None:
    stubs = "".join(
        f"void {name}(void) {{}}\n"
        for name in library.REQUIRED
        if name not in ("xr_abi_version", "xr_describe")
    )
    body = (
        "#include <stdlib.h>\n"
        "unsigned xr_abi_version(void) { return 3; }\n"
        "void xr_describe(void *d) { (void)d; abort(); }\n"  # must never be called
    ) + stubs
    assert _refusal(_stub_library(tmp_path, body, "version2")).endswith(
        "ABI version 3, the harness speaks versions 1 and 2"
    )


@pytest.mark.parametrize(
    ("defines", "expected"),
    [
        ({"XR_REPORT_ABI_VERSION": "7"}, "ABI version 7, the harness speaks versions 1 and 2"),
        (
            {"XR_REPORT_DESCRIBE_ABI_VERSION": "3"},
            "xr_describe says ABI version 3 but xr_abi_version() says 2",
        ),
        ({"XR_REPORT_CHUNK_SIZE": "0"}, "xr_describe gives chunk_size 0"),
        ({"XR_REPORT_MAX_VALUE_ALIGN": "24"}, "xr_describe's max_value_align 24 is not a power of two"),
        ({"XR_REPORT_NAME": "NULL"}, "xr_describe gives a NULL name"),
        ({"XR_REPORT_VERSION": '"\\377"'}, "xr_describe's version is not UTF-8 (invalid start byte)"),
        (
            {"XR_REPORT_OPTIONAL": "3"},
            "xr_describe's optional does not claim xr_table_new_with_chunk_size, which the library exports",
        ),
        ({"XR_REPORT_OPTIONAL": "17"}, "xr_describe's optional has unknown bits 0x10"),
        (
            {"XR_REPORT_OPTIONAL": "15"},
            "xr_describe's optional claims xr_value_layouts, which the library does not export",
        ),
        (
            {"XR_VALUE_LAYOUTS": "{8,8},{24,16}"},
            "xr_value_layouts lists size 24, align 16: no Rust type has it",
        ),
        ({"XR_VALUE_LAYOUTS": "{8,8},{8,8}"}, "xr_value_layouts lists a layout twice"),
        (
            {"XR_VALUE_LAYOUTS": "{64,8}", "XR_MAX_VALUE_SIZE": "32"},
            "xr_value_layouts lists size 64, align 8, beyond its description's max_value_size 32 / "
            "max_value_align 4096",
        ),
    ],
)
def test_refuses_an_inconsistent_description(defines: dict[str, str], expected: str) -> None:
    assert _refusal(build.build_reference("release", defines=defines)).endswith(expected)


def test_refuses_optional_bits_claimed_but_not_exported() -> None:
    path = build.build_reference("release", no_optional=True, defines={"XR_REPORT_OPTIONAL": "2"})
    assert _refusal(path).endswith(
        "xr_describe's optional claims xr_table_elements, which the library does not export"
    )


# ---- the build module ----------------------------------------------------------------------------


def test_a_failing_compile_is_a_build_error_with_the_compilers_lines(tmp_path: Path) -> None:
    source = tmp_path / "broken.c"
    source.write_text("int f(void) { return missing_name; }\n")
    with pytest.raises(build.BuildError) as caught:
        build.compile_shared(source, list(build.BASE_FLAGS), "broken")
    assert "broken.c" in str(caught.value) and "missing_name" in str(caught.value)


def test_bad_names_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="C bug 'c-nope'"):
        build.build_reference("debug", bug="c-nope")
    with pytest.raises(UsageError, match="build 'fast'"):
        build.build_reference("fast")


def test_build_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EXTERNREF_HARNESS_BUILD_DIR", str(tmp_path / "b"))
    assert build.build_dir() == tmp_path / "b"
    monkeypatch.delenv("EXTERNREF_HARNESS_BUILD_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "c"))
    assert build.build_dir() == tmp_path / "c" / "externref-harness" / "native"


def test_the_catalogue_names_thirteen_bugs_with_their_macros() -> None:
    assert len(build.C_BUGS) >= 13
    source = build.SOURCE.read_text()
    for bug in build.C_BUGS.values():
        assert bug.name.startswith("c-") and bug.macro.startswith("XR_BUG_")
        assert bug.macro in source, bug.macro


@pytest.mark.parametrize("name", build.BUILDS)
@pytest.mark.parametrize("bug", sorted(build.C_BUGS))
def test_each_bug_compiles_and_loads(bug: str, name: str) -> None:
    lib = library.load_library(build.build_reference(name, bug=bug))
    assert lib.description.debug == (name == "debug")


# ---- a few bugs do what the catalogue says -------------------------------------------------------


def _bugged(bug: str, name: str = "release") -> Runtime:
    return Runtime(library.load_library(build.build_reference(name, bug=bug)))


def test_bug_early_free_frees_with_one_owner_left() -> None:
    rt = _bugged("c-early-free")
    r = rt.new(8, 8)
    rt.ok(rt.c.xr_ref_clone(r, ctypes.byref(library.XrRef())))
    rt.ok(rt.c.xr_ref_drop(r))
    assert len(rt.hooks.dropped) == 1  # freed while the clone still owns it
    rt.close()


def test_bug_leak_chunk_leaves_the_chunk_allocated() -> None:
    rt = _bugged("c-leak-chunk")
    t = rt.table()
    rt.ok(rt.c.xr_gc(ctypes.byref(Stack().struct), t))
    chunk = word(t + 16)
    rt.ok(rt.c.xr_table_drop(t))
    assert list(rt.hooks.live) == [chunk]
    rt.close()


def test_bug_dealloc_wrong_layout_frees_with_align_8() -> None:
    rt = _bugged("c-dealloc-wrong-layout")
    rt.ok(rt.c.xr_ref_drop(rt.new(32, 32)))
    assert rt.hooks.errors == [rt.hooks.errors[0]] and "freed as (56, 8)" in rt.hooks.errors[0]
    rt.close()


def test_bug_precise_root_uncounted_frees_a_ref_wasm_holds() -> None:
    rt = _bugged("c-precise-root-uncounted")
    t = rt.table()
    stack = Stack()
    rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
    frame = (ctypes.c_uint64 * 1)()
    sp = ctypes.addressof(frame)
    r = rt.new(8, 8)
    frame[0] = r
    rt.ok(rt.c.xr_ref_clone(r, ctypes.byref(library.XrRef())))  # the host keeps a clone
    rt.ok(rt.c.xr_table_insert_without_gc(t, r))  # Wasm's ref, owned by the table
    stack.frames = [(WASM_PC, sp), (HOST_PC, sp + 64)]
    stack.maps[WASM_PC] = [1]
    rt.ok(rt.c.xr_table_set_stack_canary(t, 1, sp + 32))
    # The root was taken uncounted: the sweep drops the chunk slot's count, leaving only the host's
    # while the table's set still claims one; Wasm returns and the next gc frees under the host.
    rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
    assert rt.count(r) == 1 and rt.hooks.dropped == []
    stack.frames = []
    rt.ok(rt.c.xr_table_set_stack_canary(t, 0, 0))
    rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
    assert len(rt.hooks.dropped) == 1
    rt.close()


def test_bug_chunk_index_u8_shows_only_past_255_slots() -> None:
    for count, leaked in ((255, 0), (300, 256)):
        rt = _bugged("c-chunk-index-u8")
        t = rt.table()
        stack = Stack()
        rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
        for _ in range(count):
            rt.ok(rt.c.xr_table_insert_without_gc(t, rt.new(8, 8)))
        rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
        assert count - len(rt.hooks.dropped) == leaked
        rt.close()


def test_bug_sweep_without_canary_sweeps_a_short_walk() -> None:
    rt = _bugged("c-sweep-without-canary")
    t = rt.table()
    stack = Stack()
    stack.frames = [(HOST_PC, 0x1000), (HOST_PC, 0x2000)]
    rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
    rt.ok(rt.c.xr_table_insert_without_gc(t, rt.new(8, 8)))
    rt.ok(rt.c.xr_table_set_stack_canary(t, 1, 0x2800))
    rt.ok(rt.c.xr_gc(ctypes.byref(stack.struct), t))
    assert len(rt.hooks.dropped) == 1
    rt.close()


_CHILD_GC = textwrap.dedent(
    """
    import ctypes, sys
    from externref_harness.native import library
    c = library.load_library(sys.argv[1]).cdll
    frame = (ctypes.c_uint64 * 2)(0, 0x0BAD5CA1A12F0001)
    sp = ctypes.addressof(frame)
    bits = (ctypes.c_uint64 * 1)(1)
    def lookup(ctx, pc, out):
        if pc != 1:
            return 0
        out.contents.mapped_words = 2
        out.contents.bits = ctypes.cast(bits, ctypes.POINTER(ctypes.c_uint64))
        return 2
    frames = [(1, sp), (2, sp + 64)][: int(sys.argv[2])]
    def trace(ctx, visit, walk):
        for pc, s in frames:
            if not visit(walk, pc, s):
                return
    keep = (library.TraceFn(trace), library.LookupFn(lookup))
    stack = library.XrStack(None, *keep)
    table = ctypes.c_void_p()
    assert c.xr_table_new(ctypes.byref(table)) == 0
    assert c.xr_table_set_stack_canary(table, 1, sp + 32) == 0
    print("gc", c.xr_gc(ctypes.byref(stack), table), flush=True)
    """
)


def _gc_child(bug: str | None, frames: int, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """A release gc in a child process, whose crash or hang is the observation."""
    path = build.build_reference("release", bug=bug)
    return subprocess.run(
        [sys.executable, "-c", _CHILD_GC, str(path), str(frames)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_bug_wild_read_crashes_on_the_scalar_word() -> None:
    done = _gc_child("c-wild-read", 2)
    assert done.returncode == -signal.SIGSEGV
    assert _gc_child(None, 2).stdout.strip() == "gc 0"  # the same walk, seed build: fine


def test_bug_gc_hang_never_returns_when_the_walk_stops_short() -> None:
    with pytest.raises(subprocess.TimeoutExpired):
        _gc_child("c-gc-hang", 1, 3)
    assert _gc_child(None, 1).stdout.strip() == "gc 0"


# ---- the race windows of the threads-only bugs are real ------------------------------------------


class LeakyHooks(Hooks):
    """Counts drops per value and never frees, so a racing double free is counted, not a crash."""

    def __init__(self) -> None:
        super().__init__()
        self.drops: dict[int, int] = {}

    def dealloc(self, _ctx: int | None, ptr: int | None, size: int, align: int) -> int:
        return 1 if (ptr or 0) in self.live else 0

    def value_dropped(self, _ctx: int | None, value: int | None) -> None:
        self.drops[value or 0] = self.drops.get(value or 0, 0) + 1


def _race_last_drops(bug: str | None, refs: int) -> tuple[int, int]:
    """Two threads each drop one of the two counts of the same refs, in the same order: how many
    refs were dropped twice, and how many never."""
    lib = library.load_library(build.build_reference("release", bug=bug))
    hooks = LeakyHooks()
    lib.cdll.xr_set_hooks(ctypes.byref(hooks.struct))
    try:
        out = library.XrRef()
        shared = []
        for _ in range(refs):
            assert lib.cdll.xr_ref_new(8, 8, 0, ctypes.byref(out)) == XR_OK
            assert lib.cdll.xr_ref_clone(out.value, ctypes.byref(out)) == XR_OK
            shared.append(int(out.value))
        barrier = threading.Barrier(2)

        def drop_all() -> None:
            barrier.wait()
            for r in shared:
                lib.cdll.xr_ref_drop(r)

        threads = [threading.Thread(target=drop_all) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        twice = sum(1 for n in hooks.drops.values() if n > 1)
        return twice, refs - len(hooks.drops)
    finally:
        lib.cdll.xr_set_hooks(None)


def test_racing_last_drops_free_exactly_once_in_the_seed() -> None:
    assert _race_last_drops(None, 4000) == (0, 0)


#: Threads driven through ctypes drift apart, so a run may not land two drops of one ref in the
#: window; a bug is shown when any of these runs does (a run without the bug never does).
RACE_RUNS = 8


def test_bug_drop_reread_frees_twice_under_threads() -> None:
    assert any(_race_last_drops("c-drop-reread", 2000)[0] > 0 for _ in range(RACE_RUNS))


def test_bug_nonatomic_count_loses_updates_under_threads() -> None:
    assert any(_race_last_drops("c-nonatomic-count", 2000)[1] > 0 for _ in range(RACE_RUNS))


def test_a_version_1_library_is_described_with_the_seeds_capabilities() -> None:
    v1 = library.load_library(build.build_reference("debug", defines={"XR_ABI_V1": "1"})).description
    assert (v1.abi_version, v1.capabilities) == (1, ())
    # A version 1 library never writes the version 2 field: what it holds there is not read.
    junk = build.build_reference("debug", defines={"XR_ABI_V1": "1", "XR_CAPABILITIES": "0xffff"})
    assert library.load_library(junk).description.capabilities == ()


def test_capabilities_are_read_in_bit_order_and_unknown_bits_refused() -> None:
    both = build.build_reference("debug", defines={"XR_CAPABILITIES": "0x50"})
    assert library.load_library(both).description.capabilities == ("single-threaded", "capacity-slots")
    assert _refusal(build.build_reference("debug", defines={"XR_CAPABILITIES": "0x600"})).endswith(
        "xr_describe declares an unknown capability bit(s) 9, 10 (0x600): the harness models only "
        "own-registry, eager-chunk, no-gc-free-insert, canary-guard, single-threaded, no-raw, "
        "capacity-slots, opaque-refs, no-strong-count"
    )


def test_a_capability_that_adds_functions_requires_them() -> None:
    guard = build.build_reference("debug", defines={"XR_CAPABILITIES": "0x8"})
    assert _refusal(guard).endswith(
        "missing symbols its capabilities (canary-guard) require: xr_table_enter_wasm, xr_table_leave_wasm"
    )


def test_a_runtime_is_freed_when_its_run_is_closed() -> None:
    """A child serves thousands of runs: each run's `NativeRuntime` (a reference cycle through its
    callbacks) must be collectable once closed. A `byref` kept of a field inside that cycle hid it
    from the collector, and every runtime stayed (about 77 KB a run, until the child's memory limit
    failed an exhaustive gate at its 108,000th run)."""
    factory = native_target(build.build_reference("debug")).adapter_factory
    for _ in range(20):
        adapter = factory()
        adapter.start(plain_config(LOCKSTEP_CONFIG))
        for op in (New(8, 8), InsertWithGc(0), Gc()):
            adapter.step(plain_op(op))
        adapter.close()
    del adapter
    gc.collect()
    assert sum(type(o).__name__ == "NativeRuntime" for o in gc.get_objects()) == 0
