"""Running a parallel program natively: the driver of `native/threads/driver.c` through ctypes.

The driver receives the implementation's functions as addresses taken from the loaded library, so
during a run no Python runs at all: ctypes releases the GIL for the one foreign call `xt_run`, the
threads, the checking heap and the drop log are C, and the history comes back as plain data.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from externref_harness.native.build import build_thread_driver
from externref_harness.native.library import NativeLibrary
from externref_harness.parallel.program import KINDS, ParallelProgram

XT_NOT_RUN = -1
MESSAGE = 96
MAX_DROPS = 1024
MAX_ERRORS = 64

#: Heap error kinds of the driver's checking heap.
HEAP_ERRORS = {
    1: "double free",
    2: "dealloc with another layout",
    3: "red zone written (overflow)",
    4: "freed block written (use after free)",
    5: "leak at quiescence",
    6: "dealloc of a block the heap never gave out",
    7: "out of heap blocks",
}
PHASES = {"prefix": 0, "parallel": 1, "epilogue": 2}

_IMPL_FIELDS = (
    ("set_hooks", "xr_set_hooks"),
    ("panic_message", "xr_panic_message"),
    ("ref_new", "xr_ref_new"),
    ("clone", "xr_ref_clone"),
    ("drop", "xr_ref_drop"),
    ("into_raw", "xr_ref_into_raw"),
    ("from_raw", "xr_ref_from_raw"),
    ("clone_from_raw", "xr_ref_clone_from_raw"),
    ("strong_count", "xr_ref_strong_count"),
    ("eq", "xr_ref_eq"),
    ("deref", "xr_ref_deref"),
)


class XtImpl(ctypes.Structure):
    _fields_ = tuple((name, ctypes.c_void_p) for name, _ in _IMPL_FIELDS)


class XtOp(ctypes.Structure):
    _fields_ = tuple((name, ctypes.c_int32) for name in ("phase", "thread", "kind", "a", "b", "out"))


class XtResult(ctypes.Structure):
    _fields_ = (
        ("status", ctypes.c_int32),
        ("value", ctypes.c_uint64),
        ("inv", ctypes.c_int64),
        ("resp", ctypes.c_int64),
        ("message", ctypes.c_char * MESSAGE),
    )


class XtDrop(ctypes.Structure):
    _fields_ = (("value", ctypes.c_uint64), ("thread", ctypes.c_int32), ("pos", ctypes.c_int64))


class XtHeapError(ctypes.Structure):
    _fields_ = (
        ("kind", ctypes.c_int32),
        ("thread", ctypes.c_int32),
        ("ptr", ctypes.c_uint64),
        ("size", ctypes.c_uint64),
        ("align", ctypes.c_uint64),
        ("given_size", ctypes.c_uint64),
        ("given_align", ctypes.c_uint64),
        ("pos", ctypes.c_int64),
    )


class XtReport(ctypes.Structure):
    _fields_ = (
        ("n_drops", ctypes.c_uint64),
        ("drops", XtDrop * MAX_DROPS),
        ("n_errors", ctypes.c_uint64),
        ("errors", XtHeapError * MAX_ERRORS),
        ("allocations", ctypes.c_uint64),
        ("deallocations", ctypes.c_uint64),
        ("panicked", ctypes.c_int32),
    )


@dataclass(frozen=True, slots=True)
class OpResult:
    """What one call did: its status (`XT_NOT_RUN` if never called), result word and stamps."""

    status: int
    value: int
    inv: int
    resp: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class DropEvent:
    value: int
    thread: int
    pos: int


@dataclass(frozen=True, slots=True)
class HeapError:
    kind: str
    thread: int
    ptr: int
    detail: str
    pos: int


@dataclass(frozen=True)
class History:
    """One run of a program: a result per op (in `ParallelProgram.steps()` order), the drop log,
    what the checking heap saw, and whether a panic cut the run short."""

    results: tuple[OpResult, ...]
    drops: tuple[DropEvent, ...]
    heap_errors: tuple[HeapError, ...]
    panicked: bool
    allocations: int
    deallocations: int


@functools.cache
def _driver() -> Any:
    cdll = ctypes.CDLL(str(build_thread_driver()))
    cdll.xt_run.restype = ctypes.c_int
    cdll.xt_run.argtypes = (
        ctypes.POINTER(XtImpl),
        ctypes.POINTER(XtOp),
        ctypes.c_size_t,
        ctypes.c_int32,
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.POINTER(XtResult),
        ctypes.POINTER(XtReport),
    )
    cdll.xt_sizeof.restype = ctypes.c_size_t
    cdll.xt_sizeof.argtypes = (ctypes.c_int,)
    for which, struct in enumerate((XtImpl, XtOp, XtResult, XtReport)):
        if cdll.xt_sizeof(which) != ctypes.sizeof(struct):
            raise RuntimeError(f"driver layout of {struct.__name__} differs from its ctypes mirror")
    return cdll


def max_threads() -> int:
    return int(_driver().xt_max_threads())


class Runner:
    """Runs programs on one library; reuses the ctypes buffers between runs of the same program."""

    def __init__(
        self, library: NativeLibrary, on_run: Callable[[ParallelProgram], None] | None = None
    ) -> None:
        self.library = library
        #: Called with each program just before it runs (the isolated check's last-program record).
        self.on_run = on_run
        self._driver = _driver()
        cdll = library.cdll
        self._impl = XtImpl(
            *(ctypes.cast(getattr(cdll, sym), ctypes.c_void_p).value for _, sym in _IMPL_FIELDS)
        )
        self._report = XtReport()
        self._program: ParallelProgram | None = None

    def _load(self, program: ParallelProgram) -> None:
        steps = list(program.steps())
        self._ops = (XtOp * len(steps))(
            *(XtOp(PHASES[phase], thread, KINDS[s.kind], s.a, s.b, s.out) for phase, thread, s in steps)
        )
        n_regs = 1 + max((s.out for _, _, s in steps), default=0)
        self._regs = (ctypes.c_uint64 * n_regs)()
        self._results = (XtResult * len(steps))()
        self._program = program

    def run(self, program: ParallelProgram) -> History:
        if self.on_run is not None:
            self.on_run(program)
        if self._program is not program:
            self._load(program)
        ctypes.memset(self._regs, 0, ctypes.sizeof(self._regs))
        status = self._driver.xt_run(
            ctypes.byref(self._impl),
            self._ops,
            len(self._ops),
            program.n_threads,
            self._regs,
            self._results,
            ctypes.byref(self._report),
        )
        if status != 0:
            raise RuntimeError("the driver could not start the threads")
        rep = self._report
        results = tuple(
            OpResult(r.status, r.value, r.inv, r.resp, r.message.decode("utf-8", "replace"))
            for r in self._results
        )
        drops = tuple(DropEvent(d.value, d.thread, d.pos) for d in rep.drops[: min(rep.n_drops, MAX_DROPS)])
        errors = tuple(_heap_error(e) for e in rep.errors[: min(rep.n_errors, MAX_ERRORS)])
        return History(results, drops, errors, bool(rep.panicked), rep.allocations, rep.deallocations)


def _heap_error(e: XtHeapError) -> HeapError:
    kind = HEAP_ERRORS.get(e.kind, f"heap error {e.kind}")
    detail = f"block {e.ptr:#x} (size {e.size}, align {e.align})"
    if e.kind == 2:
        detail += f" freed as size {e.given_size}, align {e.given_align}"
    return HeapError(kind, e.thread, e.ptr, detail, e.pos)
