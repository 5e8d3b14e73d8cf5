"""Loading an implementation library of the C ABI (`native/externref_abi.h`, versions 1 and 2) with ctypes.

`load_library` opens the shared library, checks that it speaks ABI version 1 or 2 (asked before
anything else is called or required), that it exports every `xr_*` function its capabilities
require (`required_functions`: version 1 has none, so it needs exactly version 1's set), and that its
`xr_describe` is consistent with what it exports; any refusal is a `LibraryError` whose message is one line
naming the library and the problem. The `NativeLibrary` it returns holds the `ctypes.CDLL` with the
argument and result types of every function of the header set, the library's `Description`, and
the ctypes types of the header's callback structures.

A path loaded twice in one process gives the same handle (the dynamic loader caches by path), so
each build of a library must have its own file name (`native.build` names files by a hash).
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from externref_harness.model import capabilities

#: The ABI version this harness speaks (`XR_ABI_VERSION`); it also takes every older one.
XR_ABI_VERSION = 2
#: Versions `load_library` takes: version 1 is version 2 without capabilities (the seed's set).
ABI_VERSIONS = (1, 2)

# Statuses.
XR_OK = 0
XR_ERR = 1
XR_PANIC = 2

# What `lookup` says of a pc.
XR_PC_HOST = 0
XR_PC_WASM = 1
XR_PC_WASM_MAPPED = 2

# Optional symbols, as bits of `xr_description.optional`.
XR_HAS_NUM_FILLED_IN_BUMP_CHUNK = 1
XR_HAS_ELEMENTS = 2
XR_HAS_SET_CHUNK_SIZE = 4
XR_HAS_VALUE_LAYOUTS = 8
#: The most value layouts `xr_value_layouts` may list.
MAX_VALUE_LAYOUTS = 64

#: `xr_ref`: a `uintptr_t`, the address of the ref's `VMExternData`.
XrRef = ctypes.c_size_t

# ---- callback types -------------------------------------------------------------------------------

#: `void *(*alloc)(void *ctx, size_t size, size_t align)`.
AllocFn = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)
#: `int (*dealloc)(void *ctx, void *ptr, size_t size, size_t align)`: 1 mine, 0 not mine.
DeallocFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)
#: `void (*value_dropped)(void *ctx, void *value)`.
ValueDroppedFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
#: `xr_frame_fn`: `int (*)(void *walk_ctx, uintptr_t pc, uintptr_t sp)`, 1 to continue.
VisitFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t)
#: `void (*trace)(void *ctx, xr_frame_fn visit, void *walk_ctx)`.
TraceFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, VisitFn, ctypes.c_void_p)
#: `void (*elements)(void *ctx, xr_ref r)` (the callback of `xr_table_elements`).
ElementsFn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_size_t)


class XrHooks(ctypes.Structure):
    """`struct xr_hooks`."""

    _fields_ = (
        ("ctx", ctypes.c_void_p),
        ("alloc", AllocFn),
        ("dealloc", DeallocFn),
        ("value_dropped", ValueDroppedFn),
    )


class XrStackMap(ctypes.Structure):
    """`struct xr_stack_map`: bit i of `bits` set means the word at sp + i * 8 is a live externref."""

    _fields_ = (("mapped_words", ctypes.c_size_t), ("bits", ctypes.POINTER(ctypes.c_uint64)))


#: `int (*lookup)(void *ctx, uintptr_t pc, xr_stack_map *map)`: an `XR_PC_*`.
LookupFn = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(XrStackMap))


class XrStack(ctypes.Structure):
    """`struct xr_stack`: the harness's native stack (`backtrace::trace` and the code lookup)."""

    _fields_ = (("ctx", ctypes.c_void_p), ("trace", TraceFn), ("lookup", LookupFn))


class XrLayout(ctypes.Structure):
    """`struct xr_layout`."""

    _fields_ = (("size", ctypes.c_size_t), ("align", ctypes.c_size_t))


class XrDescription(ctypes.Structure):
    """`struct xr_description`, as `xr_describe` fills it."""

    _fields_ = (
        ("abi_version", ctypes.c_uint32),
        ("name", ctypes.c_char_p),
        ("version", ctypes.c_char_p),
        ("debug", ctypes.c_int),
        ("chunk_size", ctypes.c_size_t),
        ("max_value_size", ctypes.c_size_t),
        ("max_value_align", ctypes.c_size_t),
        ("optional", ctypes.c_uint32),
        ("capabilities", ctypes.c_uint32),  # version 2
    )


class XrCallSite(ctypes.Structure):
    """`struct xr_call_site`: a call's return address and its stack map (NULL: none)."""

    _fields_ = (("pc", ctypes.c_size_t), ("map", ctypes.POINTER(XrStackMap)))


class XrFunction(ctypes.Structure):
    """`struct xr_function`: a function's code range and its call sites, in pc order."""

    _fields_ = (
        ("start", ctypes.c_size_t),
        ("end", ctypes.c_size_t),
        ("n_call_sites", ctypes.c_size_t),
        ("call_sites", ctypes.POINTER(XrCallSite)),
    )


class XrModule(ctypes.Structure):
    """`struct xr_module`: a module's functions, in ascending disjoint code ranges."""

    _fields_ = (("n_functions", ctypes.c_size_t), ("functions", ctypes.POINTER(XrFunction)))


# ---- the functions of the header ------------------------------------------------------------------

_int = ctypes.c_int
_size = ctypes.c_size_t
_ptr = ctypes.c_void_p
_P = ctypes.POINTER

#: name -> (restype, argtypes) of every required function.
REQUIRED: dict[str, tuple[Any, tuple[Any, ...]]] = {
    "xr_abi_version": (ctypes.c_uint32, ()),
    "xr_describe": (None, (_P(XrDescription),)),
    "xr_set_hooks": (None, (_P(XrHooks),)),
    "xr_panic_message": (ctypes.c_char_p, ()),
    "xr_ref_new": (_int, (_size, _size, ctypes.c_uint8, _P(XrRef))),
    "xr_ref_clone": (_int, (XrRef, _P(XrRef))),
    "xr_ref_drop": (_int, (XrRef,)),
    "xr_ref_as_raw": (_int, (XrRef, _P(_ptr))),
    "xr_ref_into_raw": (_int, (XrRef, _P(_ptr))),
    "xr_ref_from_raw": (_int, (_ptr, _P(XrRef))),
    "xr_ref_clone_from_raw": (_int, (_ptr, _P(XrRef))),
    "xr_ref_strong_count": (_int, (XrRef, _P(_size))),
    "xr_ref_eq": (_int, (XrRef, XrRef, _P(_int))),
    "xr_ref_hash": (_int, (XrRef, _P(ctypes.c_uint64))),
    "xr_ref_cmp": (_int, (XrRef, XrRef, _P(_int))),
    "xr_ref_deref": (_int, (XrRef, _P(_ptr))),
    "xr_table_new": (_int, (_P(_ptr),)),
    "xr_table_drop": (_int, (_ptr,)),
    "xr_table_bump_capacity_remaining": (_int, (_ptr, _P(_size))),
    "xr_table_try_insert": (_int, (_ptr, XrRef)),
    "xr_table_insert_with_gc": (_int, (_ptr, XrRef, _P(XrStack))),
    "xr_table_insert_without_gc": (_int, (_ptr, XrRef)),
    "xr_table_stack_canary": (_int, (_ptr, _P(_int), _P(_size))),
    "xr_table_set_stack_canary": (_int, (_ptr, _int, _size)),
    "xr_table_set_gc_okay": (_int, (_ptr, _int, _P(_int))),
    "xr_gc": (_int, (_P(XrStack), _ptr)),
}

#: Functions a capability adds to the required set: name -> (restype, argtypes).
ADDED: dict[str, dict[str, tuple[Any, tuple[Any, ...]]]] = {
    capabilities.OWN_REGISTRY: {
        "xr_table_register_module": (_int, (_ptr, _P(XrModule), _P(ctypes.c_uint64))),
        "xr_table_unregister_module": (_int, (_ptr, ctypes.c_uint64)),
    },
    capabilities.CANARY_GUARD: {
        "xr_table_enter_wasm": (_int, (_ptr, _size)),
        "xr_table_leave_wasm": (_int, (_ptr,)),
    },
}

#: Functions a capability removes from the required set: the harness never calls them then.
REMOVED: dict[str, tuple[str, ...]] = {
    capabilities.NO_GC_FREE_INSERT: (
        "xr_table_insert_without_gc",
        "xr_table_bump_capacity_remaining",
        "xr_table_set_gc_okay",
    ),
    capabilities.CANARY_GUARD: ("xr_table_stack_canary", "xr_table_set_stack_canary"),
    capabilities.NO_RAW: ("xr_ref_into_raw", "xr_ref_from_raw", "xr_ref_clone_from_raw"),
    capabilities.NO_STRONG_COUNT: ("xr_ref_strong_count",),
}


def required_functions(declared: tuple[str, ...]) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Every function a library with these capabilities must export, with its ctypes signature."""
    removed = {name for capability in declared for name in REMOVED.get(capability, ())}
    out = {name: sig for name, sig in REQUIRED.items() if name not in removed}
    for capability in declared:
        out.update(ADDED.get(capability, {}))
    return out


#: name -> (bit of `optional`, restype, argtypes) of every optional function.
OPTIONAL: dict[str, tuple[int, Any, tuple[Any, ...]]] = {
    "xr_table_num_filled_in_bump_chunk": (XR_HAS_NUM_FILLED_IN_BUMP_CHUNK, _int, (_ptr, _P(_size))),
    "xr_table_elements": (XR_HAS_ELEMENTS, _int, (_ptr, ElementsFn, _ptr)),
    "xr_table_new_with_chunk_size": (XR_HAS_SET_CHUNK_SIZE, _int, (_size, _P(_ptr))),
    "xr_value_layouts": (XR_HAS_VALUE_LAYOUTS, _P(XrLayout), (_P(_size),)),
}

_ALL_OPTIONAL_BITS = (
    XR_HAS_NUM_FILLED_IN_BUMP_CHUNK | XR_HAS_ELEMENTS | XR_HAS_SET_CHUNK_SIZE | XR_HAS_VALUE_LAYOUTS
)


class LibraryError(Exception):
    """A library the harness refuses to drive; the message is one line naming it and why."""


@dataclass(frozen=True, slots=True)
class Description:
    """What `xr_describe` says of the implementation, validated."""

    abi_version: int
    name: str
    version: str
    debug: bool
    chunk_size: int
    max_value_size: int
    max_value_align: int
    has_num_filled: bool
    has_elements: bool
    has_set_chunk_size: bool
    #: The only `(size, align)` layouts `xr_ref_new` makes (`xr_value_layouts`); None: any layout
    #: within `max_value_size` and `max_value_align`.
    value_layouts: tuple[tuple[int, int], ...] | None = None
    #: Declared design choices (`model.capabilities`, in bit order); version 1: the seed's, none.
    capabilities: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        # From JSON (a child's description) the layouts and capabilities arrive as lists.
        if self.value_layouts is not None:
            layouts = tuple((int(size), int(align)) for size, align in self.value_layouts)
            object.__setattr__(self, "value_layouts", layouts)
        object.__setattr__(self, "capabilities", capabilities.canonical(self.capabilities))

    def allows(self, size: int, align: int) -> bool:
        """Whether `xr_ref_new` makes a value of this layout."""
        if self.value_layouts is not None:
            return (size, align) in self.value_layouts
        return size <= self.max_value_size and align <= self.max_value_align


@dataclass(frozen=True, eq=False)
class NativeLibrary:
    """A loaded, validated implementation: the CDLL with every function typed, and its description."""

    path: Path
    cdll: ctypes.CDLL
    description: Description

    def panic_message(self) -> str:
        """`xr_panic_message()` decoded (after a call returned `XR_PANIC`)."""
        raw: bytes | None = self.cdll.xr_panic_message()
        return "(no message)" if raw is None else raw.decode("utf-8", "replace")

    def has(self, name: str) -> bool:
        """Whether the library exports this function of the header (and the harness may call it)."""
        if name in OPTIONAL:
            return _exports(self.cdll, name)
        return name in required_functions(self.description.capabilities)


def _exports(cdll: ctypes.CDLL, name: str) -> bool:
    try:
        getattr(cdll, name)
    except AttributeError:
        return False
    return True


def _text(raw: bytes | None, field: str, where: str) -> str:
    if raw is None:
        raise LibraryError(f"{where}: xr_describe gives a NULL {field}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise LibraryError(f"{where}: xr_describe's {field} is not UTF-8 ({err.reason})") from None


def _describe(cdll: ctypes.CDLL, where: str, abi_version: int) -> Description:
    out = XrDescription()  # zeroed: a version 1 library never writes `capabilities`
    cdll.xr_describe(ctypes.byref(out))
    if out.abi_version != abi_version:
        raise LibraryError(
            f"{where}: xr_describe says ABI version {out.abi_version} but xr_abi_version() says "
            f"{abi_version}"
        )
    declared: tuple[str, ...] = capabilities.SEED
    if abi_version >= 2:
        try:
            declared = capabilities.from_bits(int(out.capabilities))
        except capabilities.UnknownCapability as err:
            raise LibraryError(f"{where}: xr_describe declares an {err}") from None
        missing = [name for name in required_functions(declared) if not _exports(cdll, name)]
        if missing:
            raise LibraryError(
                f"{where}: missing symbols its capabilities ({', '.join(declared) or 'none'}) require: "
                f"{', '.join(missing)}"
            )
        for name, (restype, argtypes) in required_functions(declared).items():
            function = getattr(cdll, name)
            function.restype = restype
            function.argtypes = argtypes
    name = _text(out.name, "name", where)
    version = _text(out.version, "version", where)
    if out.chunk_size == 0:
        raise LibraryError(f"{where}: xr_describe gives chunk_size 0")
    align = int(out.max_value_align)
    if align == 0 or align & (align - 1):
        raise LibraryError(f"{where}: xr_describe's max_value_align {align} is not a power of two")
    bits = int(out.optional)
    unknown = bits & ~_ALL_OPTIONAL_BITS
    if unknown:
        raise LibraryError(f"{where}: xr_describe's optional has unknown bits {unknown:#x}")
    for symbol, (bit, _restype, _argtypes) in OPTIONAL.items():
        exported = _exports(cdll, symbol)
        claimed = bool(bits & bit)
        if exported != claimed:
            said = "claims" if claimed else "does not claim"
            does = "does not export" if claimed else "exports"
            raise LibraryError(f"{where}: xr_describe's optional {said} {symbol}, which the library {does}")
    layouts = None
    if bits & XR_HAS_VALUE_LAYOUTS:
        layouts = _value_layouts(cdll, where, int(out.max_value_size), align)
    return Description(
        abi_version=int(out.abi_version),
        name=name,
        version=version,
        debug=bool(out.debug),
        chunk_size=int(out.chunk_size),
        max_value_size=int(out.max_value_size),
        max_value_align=align,
        has_num_filled=bool(bits & XR_HAS_NUM_FILLED_IN_BUMP_CHUNK),
        has_elements=bool(bits & XR_HAS_ELEMENTS),
        has_set_chunk_size=bool(bits & XR_HAS_SET_CHUNK_SIZE),
        value_layouts=layouts,
        capabilities=declared,
    )


def _value_layouts(
    cdll: ctypes.CDLL, where: str, max_size: int, max_align: int
) -> tuple[tuple[int, int], ...]:
    """`xr_value_layouts()`, validated: 1 to `MAX_VALUE_LAYOUTS` distinct layouts a Rust type can
    have, within the description's maxima."""
    function = cdll.xr_value_layouts
    function.restype, function.argtypes = OPTIONAL["xr_value_layouts"][1:]
    count = ctypes.c_size_t(0)
    array = function(ctypes.byref(count))
    n = int(count.value)
    if not 1 <= n <= MAX_VALUE_LAYOUTS:
        raise LibraryError(
            f"{where}: xr_value_layouts gives {n} layouts, expected 1 to {MAX_VALUE_LAYOUTS}"
        )
    if not array:
        raise LibraryError(f"{where}: xr_value_layouts gives a NULL array")
    layouts = tuple((int(array[i].size), int(array[i].align)) for i in range(n))
    for size, align in layouts:
        if align == 0 or align & (align - 1) or size % align:
            raise LibraryError(
                f"{where}: xr_value_layouts lists size {size}, align {align}: no Rust type has it"
            )
        if size > max_size or align > max_align:
            raise LibraryError(
                f"{where}: xr_value_layouts lists size {size}, align {align}, beyond its description's "
                f"max_value_size {max_size} / max_value_align {max_align}"
            )
    if len(set(layouts)) != n:
        raise LibraryError(f"{where}: xr_value_layouts lists a layout twice")
    return layouts


def load_library(path: str | os.PathLike[str]) -> NativeLibrary:
    """Open an implementation library and validate it against its ABI version (1 or 2)."""
    lib_path = Path(path)
    where = f"library {lib_path}"
    if not lib_path.is_file():
        raise LibraryError(f"{where}: no such file")
    try:
        cdll = ctypes.CDLL(str(lib_path.resolve()), mode=os.RTLD_LOCAL)
    except OSError as err:
        reason = " ".join(str(err).split())
        raise LibraryError(f"{where}: not a loadable shared library ({reason})") from None
    if not _exports(cdll, "xr_abi_version"):
        missing = [name for name in REQUIRED if not _exports(cdll, name)]
        raise LibraryError(f"{where}: missing required symbols: {', '.join(missing)}")
    # Asked first: a library of another version may lack (or retype) anything else.
    cdll.xr_abi_version.restype, cdll.xr_abi_version.argtypes = REQUIRED["xr_abi_version"]
    version = int(cdll.xr_abi_version())
    if version not in ABI_VERSIONS:
        speaks = " and ".join(str(v) for v in ABI_VERSIONS)
        raise LibraryError(f"{where}: ABI version {version}, the harness speaks versions {speaks}")
    # What every version needs to be described; the rest depends on the declared capabilities.
    basic = ("xr_abi_version", "xr_describe", "xr_set_hooks", "xr_panic_message")
    missing = [name for name in basic if not _exports(cdll, name)]
    if version == 1:
        missing = [name for name in REQUIRED if not _exports(cdll, name)]
    if missing:
        raise LibraryError(f"{where}: missing required symbols: {', '.join(missing)}")
    for name in REQUIRED if version == 1 else basic:
        restype, argtypes = REQUIRED[name]
        function = getattr(cdll, name)
        function.restype = restype
        function.argtypes = argtypes
    for name, (_bit, restype, argtypes) in OPTIONAL.items():
        if _exports(cdll, name):
            function = getattr(cdll, name)
            function.restype = restype
            function.argtypes = argtypes
    return NativeLibrary(lib_path, cdll, _describe(cdll, where, version))
