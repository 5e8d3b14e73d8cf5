"""Running a parallel program natively: the driver of `native/threads/driver.c` through ctypes.

The driver receives the implementation's functions as addresses taken from the loaded library, so
during a batch no Python runs at all: ctypes releases the GIL for the one foreign call
`xt_run_batch`, which runs one program many times over (the threads, the checking heap, the drop
log and the cheap verdicts are C), and the histories come back as plain data:

    Runner.run_batch(program, plan, known signatures)
        ──▶ Batch: histories run, overlapping, cheap failures,
                   the first failing history (in full),
                   each new signature with its count and first history (in full)

`Plan` is what the model says of the program whatever the interleaving (computed by
`linearizability.plan_of`); the driver checks each history against it and signs the rest, so the
caller judges one history per signature (see the driver's comment for what a signature holds).
`Perturbation` is how the threads' start is spread: schedules, spins, jitter, pinning.
"""

from __future__ import annotations

import ctypes
import functools
import random
from collections.abc import Callable, Sequence
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


def _address(cdll: ctypes.CDLL, symbol: str) -> int | None:
    function = getattr(cdll, symbol, None)
    return None if function is None else ctypes.cast(function, ctypes.c_void_p).value


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


class XtPlan(ctypes.Structure):
    _fields_ = (
        ("n_values", ctypes.c_int32),
        *((name, ctypes.POINTER(ctypes.c_int32)) for name in ("new_op", "deref_op", "value", "addr")),
        *((name, ctypes.POINTER(ctypes.c_int32)) for name in ("counts", "may_drop", "expect_set")),
        ("expect", ctypes.POINTER(ctypes.c_uint64)),
    )


class XtBatch(ctypes.Structure):
    _fields_ = (
        ("histories", ctypes.c_uint64),
        ("schedules", ctypes.c_uint32),
        ("spread_spins", ctypes.c_uint32),
        ("jitter_spins", ctypes.c_uint32),
        ("pin", ctypes.c_uint32),
        ("seed", ctypes.c_uint64),
        ("stop_at_failure", ctypes.c_int32),
        ("capacity", ctypes.c_int32),
        ("n_known", ctypes.c_int32),
        ("max_ns", ctypes.c_int64),
        ("n_sigs", ctypes.c_int32),
        ("pinned", ctypes.c_int32),
        ("failed", ctypes.c_int32),
        ("run", ctypes.c_uint64),
        ("overlapped", ctypes.c_uint64),
        ("cheap_failures", ctypes.c_uint64),
        ("failing_index", ctypes.c_int64),
        ("why", ctypes.c_char * MESSAGE),
    )


class XtSigs(ctypes.Structure):
    _fields_ = (
        ("words", ctypes.POINTER(ctypes.c_uint64)),
        ("len", ctypes.POINTER(ctypes.c_uint32)),
        ("count", ctypes.POINTER(ctypes.c_uint64)),
        ("first", ctypes.POINTER(ctypes.c_int64)),
        ("results", ctypes.c_void_p),
        ("drops", ctypes.c_void_p),
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


@dataclass(frozen=True)
class Plan:
    """What every interleaving of a program gives (the driver's `xt_plan`), per value and per op in
    `ParallelProgram.steps()` order. `addr`: 0 nothing, 1 the result is the value's ref address,
    2 its value address; `counts`: the value whose count the op changes; `may_drop`: the value
    whose destructor the op may run; `expect`: the result, where no interleaving changes it."""

    new_op: tuple[int, ...]
    deref_op: tuple[int, ...]
    value: tuple[int, ...]
    addr: tuple[int, ...]
    counts: tuple[int, ...]
    may_drop: tuple[int, ...]
    expect: tuple[int | None, ...]


@dataclass(frozen=True)
class Perturbation:
    """How the threads' start is spread over the histories of a batch. Each thread waits for the
    history's start instant, then spins a number of iterations of an empty loop (a few nanoseconds
    each): history h uses schedule h % schedules (schedule 0 spins none; the others draw each
    thread's spins in 0..spread once per batch) plus a fresh 0..jitter per thread."""

    schedules: int = 8
    spread: int = 100
    jitter: int = 30
    #: Pin the threads to distinct cores when the process may use one per thread.
    pin: bool = True
    #: A batch ends after this many seconds even short of its histories (slow histories, as with
    #: a sleep in a race window, would otherwise spend the budget on a few programs).
    batch_seconds: float = 0.05

    def describe(self, pinned_share: float | None = None) -> str:
        """In words; `pinned_share`: the share of histories whose threads ran pinned."""
        where = ""
        if pinned_share is not None:
            where = f", pinned to distinct cores in {100 * pinned_share:.0f}% of histories"
        elif not self.pin:
            where = ", not pinned"
        return (
            f"{self.schedules} start schedules of 0-{self.spread} spins per thread, "
            f"0-{self.jitter} spins of jitter{where}"
        )


@dataclass(frozen=True)
class Signed:
    """A signature first seen in a batch: its words, its histories, the first one in full."""

    signature: bytes
    count: int
    first_index: int
    history: History


@dataclass(frozen=True)
class Batch:
    """What one `run_batch` did."""

    run: int
    overlapped: int
    cheap_failures: int
    #: The first history that failed a cheap verdict, its index and the verdict (None: none did).
    failing: History | None
    failing_index: int
    why: str
    new: tuple[Signed, ...]
    #: Histories of each known signature, in the order they were given.
    known_counts: tuple[int, ...]
    #: Whether the threads ran pinned to distinct cores.
    pinned: bool


@functools.cache
def _driver() -> Any:
    cdll = ctypes.CDLL(str(build_thread_driver()))
    cdll.xt_run_batch.restype = ctypes.c_int
    cdll.xt_run_batch.argtypes = (
        ctypes.POINTER(XtImpl),
        ctypes.POINTER(XtOp),
        ctypes.c_size_t,
        ctypes.c_int32,
        ctypes.POINTER(ctypes.c_uint64),
        ctypes.c_size_t,
        ctypes.POINTER(XtPlan),
        ctypes.POINTER(XtBatch),
        ctypes.POINTER(XtSigs),
        ctypes.POINTER(XtResult),
        ctypes.POINTER(XtReport),
    )
    cdll.xt_sizeof.restype = ctypes.c_size_t
    cdll.xt_sizeof.argtypes = (ctypes.c_int,)
    for which, struct in enumerate((XtImpl, XtOp, XtResult, XtReport, XtPlan, XtBatch, XtSigs)):
        if cdll.xt_sizeof(which) != ctypes.sizeof(struct):
            raise RuntimeError(f"driver layout of {struct.__name__} differs from its ctypes mirror")
    return cdll


def max_threads() -> int:
    return int(_driver().xt_max_threads())


#: Signature slots of one batch: a batch that meets more new signatures ends early (the next batch
#: goes on with them known), so this bounds how much one call returns, not what is judged.
SIGNATURE_SLOTS = 64
#: Threads' ops a signature covers (the driver's XT_SIG_OPS): a program with more has a signature
#: per history, so every history of it is judged by the model.
SIGNATURE_OPS = 64


def _ints(values: Sequence[int], kind: Any = ctypes.c_int32) -> Any:
    return (kind * max(len(values), 1))(*values)


class Runner:
    """Runs programs on one library; reuses the ctypes buffers between runs of the same program."""

    def __init__(
        self,
        library: NativeLibrary,
        on_run: Callable[[ParallelProgram], None] | None = None,
        perturbation: Perturbation | None = None,
        seed: int = 0,
    ) -> None:
        self.library = library
        #: Called with each program just before it runs (the isolated check's last-program record).
        self.on_run = on_run
        self.perturbation = perturbation or Perturbation()
        self._rng = random.Random(seed)
        self._driver = _driver()
        cdll = library.cdll
        self._impl = XtImpl(
            # A function the library lacks by its capabilities is NULL: no program calls it
            # (`program.omitted_kinds`).
            *(_address(cdll, sym) for _, sym in _IMPL_FIELDS)
        )
        self._report = XtReport()
        self._program: ParallelProgram | None = None
        self._words = int(self._driver.xt_signature_words())

    def _load(self, program: ParallelProgram) -> None:
        steps = list(program.steps())
        self._ops = (XtOp * len(steps))(
            *(XtOp(PHASES[phase], thread, KINDS[s.kind], s.a, s.b, s.out) for phase, thread, s in steps)
        )
        n_regs = 1 + max((s.out for _, _, s in steps), default=0)
        self._regs = (ctypes.c_uint64 * n_regs)()
        self._results = (XtResult * len(steps))()
        n_values = sum(1 for s in program.prefix if s.kind == "New")
        slots = SIGNATURE_SLOTS
        self._sig_words = (ctypes.c_uint64 * (slots * self._words))()
        self._sig_len = (ctypes.c_uint32 * slots)()
        self._sig_count = (ctypes.c_uint64 * slots)()
        self._sig_first = (ctypes.c_int64 * slots)()
        self._sig_results = (XtResult * (slots * len(steps)))()
        self._sig_drops = (XtDrop * (slots * max(n_values, 1)))()
        self._sigs = XtSigs(
            self._sig_words,
            self._sig_len,
            self._sig_count,
            self._sig_first,
            ctypes.cast(self._sig_results, ctypes.c_void_p),
            ctypes.cast(self._sig_drops, ctypes.c_void_p),
        )
        self._n_values = n_values
        self._plan_of: Plan | None = None
        self._plan_struct: Any = None
        self._program = program

    def _plan(self, plan: Plan) -> Any:
        if self._plan_of is not plan:
            arrays = [_ints(getattr(plan, name)) for name in ("new_op", "deref_op", "value", "addr")]
            arrays += [_ints(plan.counts), _ints(plan.may_drop), _ints([e is not None for e in plan.expect])]
            expect = _ints([0 if e is None else e for e in plan.expect], ctypes.c_uint64)
            self._plan_keep = (arrays, expect)
            self._plan_struct = XtPlan(len(plan.new_op), *arrays, expect)
            self._plan_of = plan
        return self._plan_struct

    def _call(self, program: ParallelProgram, plan: Any, batch: XtBatch) -> None:
        if self.on_run is not None:
            self.on_run(program)
        if self._program is not program:
            self._load(program)
        status = self._driver.xt_run_batch(
            ctypes.byref(self._impl),
            self._ops,
            len(self._ops),
            program.n_threads,
            self._regs,
            len(self._regs),
            plan,
            ctypes.byref(batch),
            ctypes.byref(self._sigs),
            self._results,
            ctypes.byref(self._report),
        )
        if status != 0:
            raise RuntimeError("the driver could not start the threads")

    def _batch(self, histories: int, stop: bool, n_known: int) -> XtBatch:
        p = self.perturbation
        return XtBatch(
            histories=histories,
            schedules=max(p.schedules, 1),
            spread_spins=p.spread,
            jitter_spins=p.jitter,
            pin=int(p.pin),
            seed=self._rng.getrandbits(64),
            stop_at_failure=int(stop),
            capacity=SIGNATURE_SLOTS,
            n_known=n_known,
            max_ns=int(p.batch_seconds * 1e9),
        )

    def run(self, program: ParallelProgram) -> History:
        """One history, kept whatever it shows (its start perturbed like a batch's)."""
        if self._program is not program:
            self._load(program)
        batch = self._batch(1, True, 0)
        self._call(program, None, batch)
        return self._full_history()

    def run_batch(
        self,
        program: ParallelProgram,
        plan: Plan,
        histories: int,
        known: Sequence[bytes] = (),
        stop_at_failure: bool = True,
    ) -> Batch:
        """Up to `histories` histories of `program`, each checked by the driver against `plan`;
        `known` signatures (already judged, at most `SIGNATURE_SLOTS - 1`) come back only counted."""
        if self._program is not program:
            self._load(program)
        known = list(known)[: SIGNATURE_SLOTS - 1]
        for k, sig in enumerate(known):
            words = len(sig) // 8
            ctypes.memmove(ctypes.byref(self._sig_words, k * self._words * 8), sig, len(sig))
            self._sig_len[k] = words
        batch = self._batch(histories, stop_at_failure, len(known))
        self._call(program, ctypes.byref(self._plan(plan)), batch)
        n_steps = len(self._ops)
        new = []
        for slot in range(len(known), batch.n_sigs):
            offset = slot * self._words * 8
            sig = ctypes.string_at(ctypes.addressof(self._sig_words) + offset, self._sig_len[slot] * 8)
            base = slot * n_steps
            results = tuple(_result(r) for r in self._sig_results[base : base + n_steps])
            drops = tuple(
                DropEvent(d.value, d.thread, d.pos)
                for d in self._sig_drops[slot * self._n_values : (slot + 1) * self._n_values]
            )
            history = History(results, drops, (), False, self._n_values, self._n_values)
            new.append(Signed(sig, int(self._sig_count[slot]), int(self._sig_first[slot]), history))
        return Batch(
            run=int(batch.run),
            overlapped=int(batch.overlapped),
            cheap_failures=int(batch.cheap_failures),
            failing=self._full_history() if batch.failed else None,
            failing_index=int(batch.failing_index),
            why=batch.why.decode("utf-8", "replace"),
            new=tuple(new),
            known_counts=tuple(int(self._sig_count[k]) for k in range(len(known))),
            pinned=bool(batch.pinned),
        )

    def _full_history(self) -> History:
        rep = self._report
        results = tuple(_result(r) for r in self._results)
        drops = tuple(DropEvent(d.value, d.thread, d.pos) for d in rep.drops[: min(rep.n_drops, MAX_DROPS)])
        errors = tuple(_heap_error(e) for e in rep.errors[: min(rep.n_errors, MAX_ERRORS)])
        return History(results, drops, errors, bool(rep.panicked), rep.allocations, rep.deallocations)


def _result(r: XtResult) -> OpResult:
    return OpResult(r.status, r.value, r.inv, r.resp, r.message.decode("utf-8", "replace"))


def _heap_error(e: XtHeapError) -> HeapError:
    kind = HEAP_ERRORS.get(e.kind, f"heap error {e.kind}")
    detail = f"block {e.ptr:#x} (size {e.size}, align {e.align})"
    if e.kind == 2:
        detail += f" freed as size {e.given_size}, align {e.given_align}"
    return HeapError(kind, e.thread, e.ptr, detail, e.pos)
