"""Parallel programs: a sequential prefix, two to four threads of ref operations, a derived epilogue.

    prefix (main thread)        New, Deref, Clone, IntoRaw: the values, each thread's own handles,
                                the shared handles and shared owned raw pointers
    thread 1 | thread 2 | ...   Clone, Drop, StrongCount, IntoRaw, FromRaw, CloneFromRaw, Eq, Deref,
                                started together on shared refs
    epilogue (main thread)      after the join: StrongCount of one live handle per value (the exact
                                final count), FromRaw of every owned raw, Drop of every live handle

Ops name registers. Each op writes at most one register no other op writes; a thread reads the
prefix's registers and its own. A prefix register is either shared (every thread may borrow it:
StrongCount, Eq, Deref, Clone, CloneFromRaw; only the main thread consumes it, in the epilogue) or
given to one thread, which owns it and may consume it (Drop, IntoRaw, FromRaw). Any interleaving of
a well-formed program is a correct use of the API, as Rust's ownership rules would make it: what a
thread consumes is its own, what it borrows outlives the threads.

Only `xr_ref_*` functions appear: the table and `gc` are not `Sync` (they take `&mut`), so the
parallel check never calls them. A program saves as a parallel trace (JSON) and loads back with
one precise line for any flaw.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from externref_harness.errors import UsageError
from externref_harness.model.ops import REMOVED_BY

#: Op kinds, numbered as the driver's `XT_*` (native/threads/driver.c).
KINDS: dict[str, int] = {
    "New": 0,
    "Clone": 1,
    "Drop": 2,
    "StrongCount": 3,
    "IntoRaw": 4,
    "FromRaw": 5,
    "CloneFromRaw": 6,
    "Eq": 7,
    "Deref": 8,
}
#: Ops that write a handle register, a raw register, or no register.
MAKES_HANDLE = frozenset({"New", "Clone", "FromRaw", "CloneFromRaw"})
MAKES_RAW = frozenset({"IntoRaw"})
#: Ops that consume their first operand (a handle for Drop and IntoRaw, a raw for FromRaw).
CONSUMES = frozenset({"Drop", "IntoRaw", "FromRaw"})
#: Ops whose first operand is a raw register.
TAKES_RAW = frozenset({"FromRaw", "CloneFromRaw"})

MIN_THREADS, MAX_THREADS = 1, 8
#: Bounds of a loaded program (the driver's heap registry and drop log are fixed-size arrays).
MAX_VALUES, MAX_OPS, MAX_REGISTER = 64, 2048, 65535
FORMAT = "externref-harness-parallel-trace"
VERSION = 1
#: The value layout every `New` of a generated program uses.
VALUE_LAYOUT = (8, 8)


class ParallelTraceError(UsageError):
    """A parallel trace that is not well formed; the message names the file and the flaw."""


@dataclass(frozen=True, slots=True)
class PStep:
    """One op: `a`, `b` are registers (`New`: size and align), `out` the register written or -1."""

    kind: str
    a: int = -1
    b: int = -1
    out: int = -1

    def __str__(self) -> str:
        if self.kind == "New":
            args = f"{self.a}, {self.b}"
        elif self.kind == "Eq":
            args = f"r{self.a}, r{self.b}"
        else:
            args = f"r{self.a}"
        return f"{self.kind}({args})" + (f" -> r{self.out}" if self.out >= 0 else "")

    def to_json(self) -> dict[str, Any]:
        return {"op": self.kind, "a": self.a, "b": self.b, "out": self.out}


@dataclass(frozen=True)
class ParallelProgram:
    """A prefix, the threads' ops, and which prefix registers each thread owns."""

    prefix: tuple[PStep, ...]
    threads: tuple[tuple[PStep, ...], ...]
    #: prefix register -> the thread (1-based) it is given to; the other prefix registers are shared.
    owners: tuple[tuple[int, int], ...] = ()
    epilogue: tuple[PStep, ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        check_program(self)
        if not self.epilogue:
            object.__setattr__(self, "epilogue", derive_epilogue(self))

    @property
    def n_threads(self) -> int:
        return len(self.threads)

    @property
    def n_ops(self) -> int:
        """Ops of the threads (the part that runs in parallel)."""
        return sum(len(t) for t in self.threads)

    def steps(self) -> Iterator[tuple[str, int, PStep]]:
        """(phase, thread, step) in the driver's order: prefix, thread 1.., epilogue."""
        for s in self.prefix:
            yield "prefix", 0, s
        for t, ops in enumerate(self.threads, 1):
            for s in ops:
                yield "parallel", t, s
        for s in self.epilogue:
            yield "epilogue", 0, s

    def to_json(self) -> dict[str, Any]:
        return {
            "prefix": [s.to_json() for s in self.prefix],
            "threads": [[s.to_json() for s in t] for t in self.threads],
            "owners": [list(pair) for pair in self.owners],
        }

    @staticmethod
    def from_json(obj: object) -> ParallelProgram:
        if not isinstance(obj, dict):
            raise ValueError("program: expected an object")
        prefix = _steps(obj.get("prefix"), "prefix")
        threads_raw = obj.get("threads")
        if not isinstance(threads_raw, list):
            raise ValueError("threads: expected a list of lists")
        threads = tuple(_steps(t, f"thread {i}") for i, t in enumerate(threads_raw, 1))
        owners_raw = obj.get("owners", [])
        if not isinstance(owners_raw, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(_is_int(x) for x in p) for p in owners_raw
        ):
            raise ValueError("owners: expected a list of [register, thread] pairs")
        return ParallelProgram(prefix, threads, tuple((int(r), int(t)) for r, t in owners_raw))


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _steps(raw: object, where: str) -> tuple[PStep, ...]:
    if not isinstance(raw, list):
        raise ValueError(f"{where}: expected a list of ops")
    out = []
    for i, s in enumerate(raw, 1):
        if not isinstance(s, dict) or set(s) != {"op", "a", "b", "out"}:
            raise ValueError(f"{where} op {i}: expected an object with op, a, b, out")
        if s["op"] not in KINDS:
            raise ValueError(f"{where} op {i}: unknown op {s['op']!r}")
        if not all(_is_int(s[k]) for k in ("a", "b", "out")):
            raise ValueError(f"{where} op {i}: a, b and out must be integers")
        out.append(PStep(s["op"], s["a"], s["b"], s["out"]))
    return tuple(out)


# ---- well-formedness ---------------------------------------------------------------------------


@dataclass
class _Reg:
    is_raw: bool
    value: int  # the index of the New that made the value it names
    definer: int  # 0: the prefix; t: thread t
    consumed: bool = False


def check_program(p: ParallelProgram) -> None:
    """Raise `ValueError` naming the first op that breaks the ownership rules."""
    if not MIN_THREADS <= len(p.threads) <= MAX_THREADS:
        raise ValueError(f"{len(p.threads)} threads: expected {MIN_THREADS} to {MAX_THREADS}")
    n_ops = len(p.prefix) + sum(len(t) for t in p.threads)
    if n_ops > MAX_OPS:
        raise ValueError(f"{n_ops} ops: at most {MAX_OPS}")
    for s in (*p.prefix, *(s for t in p.threads for s in t)):
        if s.kind != "New" and not all(-1 <= r <= MAX_REGISTER for r in (s.a, s.b, s.out)):
            raise ValueError(f"{s.kind}: registers are r0 to r{MAX_REGISTER}")
        if s.kind == "New" and not -1 <= s.out <= MAX_REGISTER:
            raise ValueError(f"New: registers are r0 to r{MAX_REGISTER}")
    regs: dict[int, _Reg] = {}
    values = 0
    for i, s in enumerate(p.prefix, 1):
        values = _define(regs, s, 0, f"prefix op {i}", values)
    if values > MAX_VALUES:
        raise ValueError(f"{values} values: at most {MAX_VALUES}")
    derefed = {regs[s.a].value for s in p.prefix if s.kind == "Deref"}
    missing = sorted(set(range(values)) - derefed)
    if missing:
        raise ValueError(f"prefix: value {missing[0]} is never dereferenced (its address names its drop)")
    owners = dict(p.owners)
    if len(owners) != len(p.owners):
        raise ValueError("owners: a register is given twice")
    for r, t in owners.items():
        if r not in regs or regs[r].consumed:
            raise ValueError(f"owners: r{r} is not a live register of the prefix")
        if not 1 <= t <= len(p.threads):
            raise ValueError(f"owners: r{r} given to thread {t}, which does not exist")
    for t, ops in enumerate(p.threads, 1):
        for i, s in enumerate(ops, 1):
            where = f"thread {t} op {i}"
            for operand in _operands(s):
                reg = regs.get(operand)
                if reg is None or reg.definer not in (0, t):
                    raise ValueError(f"{where}: r{operand} is not visible to thread {t}")
                if reg.definer == 0 and owners.get(operand, t) != t:
                    raise ValueError(f"{where}: r{operand} belongs to thread {owners[operand]}")
            if s.kind in CONSUMES and regs[s.a].definer == 0 and owners.get(s.a) != t:
                raise ValueError(f"{where}: {s.kind} of the shared r{s.a} (threads only borrow it)")
            values = _define(regs, s, t, where, values)


def _operands(s: PStep) -> tuple[int, ...]:
    if s.kind == "New":
        return ()
    return (s.a, s.b) if s.kind == "Eq" else (s.a,)


def _define(regs: dict[int, _Reg], s: PStep, thread: int, where: str, values: int) -> int:
    if s.kind == "New":
        if (s.a, s.b) != VALUE_LAYOUT:
            raise ValueError(f"{where}: New({s.a}, {s.b}): the parallel check uses values of {VALUE_LAYOUT}")
        if thread != 0:
            raise ValueError(f"{where}: New only in the prefix (the checking heap's allocator is serial)")
    for operand in _operands(s):
        reg = regs.get(operand)
        if reg is None:
            raise ValueError(f"{where}: r{operand} is not defined before it")
        if reg.consumed:
            raise ValueError(f"{where}: r{operand} was already consumed")
        if reg.is_raw != (s.kind in TAKES_RAW and operand == s.a):
            wanted = "a raw pointer" if s.kind in TAKES_RAW else "a handle"
            raise ValueError(f"{where}: {s.kind} takes {wanted}, r{operand} is not one")
    makes = s.kind in MAKES_HANDLE or s.kind in MAKES_RAW
    if makes != (s.out >= 0):
        raise ValueError(f"{where}: {s.kind} {'writes' if makes else 'writes no'} register")
    if s.out >= 0 and s.out in regs:
        raise ValueError(f"{where}: r{s.out} is written twice")
    if s.kind in CONSUMES:
        regs[s.a].consumed = True
    if s.kind == "New":
        regs[s.out] = _Reg(False, values, thread)
        return values + 1
    if s.out >= 0:
        regs[s.out] = _Reg(s.kind in MAKES_RAW, regs[s.a].value, thread)
    return values


def _registers(p: ParallelProgram) -> dict[int, _Reg]:
    regs: dict[int, _Reg] = {}
    values = 0
    for s in p.prefix:
        values = _define(regs, s, 0, "prefix", values)
    for t, ops in enumerate(p.threads, 1):
        for s in ops:
            values = _define(regs, s, t, f"thread {t}", values)
    return regs


def register_values(p: ParallelProgram) -> dict[int, int]:
    """Register -> the value it names (the index of its `New`, which is the model's ref id)."""
    return {r: reg.value for r, reg in _registers(p).items()}


def live_registers(p: ParallelProgram) -> dict[int, tuple[bool, int]]:
    """Registers not consumed by the prefix or the threads: reg -> (is_raw, value)."""
    regs = _registers(p)
    return {r: (reg.is_raw, reg.value) for r, reg in sorted(regs.items()) if not reg.consumed}


def derive_epilogue(p: ParallelProgram) -> tuple[PStep, ...]:
    """After the join: the exact final count of every live value, then every count given back."""
    live = live_registers(p)
    next_reg = 1 + max([r for r in live] + [s.out for s in _body(p)], default=-1)
    counted: set[int] = set()
    counts: list[PStep] = []
    handles: list[int] = []
    raws: list[PStep] = []
    for r, (is_raw, value) in live.items():
        if is_raw:
            raws.append(PStep("FromRaw", r, -1, next_reg))
            handles.append(next_reg)
            next_reg += 1
            continue
        handles.append(r)
        if value not in counted:
            counted.add(value)
            counts.append(PStep("StrongCount", r))
    return (*counts, *raws, *(PStep("Drop", r) for r in handles))


def _body(p: ParallelProgram) -> Iterator[PStep]:
    yield from p.prefix
    for ops in p.threads:
        yield from ops


# ---- generation ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shape:
    """How large the generated programs are."""

    threads: tuple[int, int] = (2, 4)
    ops_per_thread: tuple[int, int] = (1, 5)
    values: tuple[int, int] = (1, 2)


def omitted_kinds(declared: tuple[str, ...]) -> frozenset[str]:
    """The op kinds a library with these capabilities lacks the function of (`ops.REMOVED_BY`:
    `no-raw`, `no-strong-count`): never generated for it, and a program holding one does not run."""
    removed = (cls.__name__ for capability in declared for cls in REMOVED_BY.get(capability, ()))
    return frozenset(name for name in removed if name in KINDS)


def generate(
    rng: random.Random, shape: Shape = Shape(), omit: frozenset[str] = frozenset()
) -> ParallelProgram:
    """A random well-formed program: shared or given handles, shared raws, a mix of ref ops; none
    of the kinds in `omit` (`omitted_kinds`)."""
    # Fewer threads than cores leave together most often, and run many times faster (a thread
    # waiting for a core waits a time slice): each thread more is drawn a quarter as often.
    counts = list(range(shape.threads[0], shape.threads[1] + 1))
    n_threads = rng.choices(counts, [4.0**-i for i in range(len(counts))])[0]
    prefix: list[PStep] = []
    owners: list[tuple[int, int]] = []
    reg = 0

    def fresh() -> int:
        nonlocal reg
        reg += 1
        return reg - 1

    own: dict[int, list[int]] = {t: [] for t in range(1, n_threads + 1)}
    own_raws: dict[int, list[int]] = {t: [] for t in range(1, n_threads + 1)}
    shared: list[int] = []
    shared_raws: list[int] = []
    for _ in range(rng.randint(*shape.values)):
        r = fresh()
        prefix += [PStep("New", *VALUE_LAYOUT, r), PStep("Deref", r)]
        holders = [t for t in own if rng.random() < 0.8] or [rng.randint(1, n_threads)]
        if rng.random() < 0.35:
            shared.append(r)
        else:
            owners.append((r, holders.pop(0)))
            own[owners[-1][1]].append(r)
        for t in holders:
            c = fresh()
            prefix.append(PStep("Clone", r, -1, c))
            owners.append((c, t))
            own[t].append(c)
        if "IntoRaw" not in omit and rng.random() < 0.25:
            c, raw = fresh(), fresh()
            prefix += [PStep("Clone", r, -1, c), PStep("IntoRaw", c, -1, raw)]
            shared_raws.append(raw)
    threads: list[tuple[PStep, ...]] = []
    for t in range(1, n_threads + 1):
        ops: list[PStep] = []
        for _ in range(rng.randint(*shape.ops_per_thread)):
            handles = own[t] + shared
            raws = own_raws[t] + shared_raws
            choices: list[tuple[str, int]] = []
            if handles:
                choices += [("Clone", 3), ("StrongCount", 2), ("Eq", 1), ("Deref", 1)]
            if own[t]:
                choices += [("Drop", 4), ("IntoRaw", 1)]
            if raws:
                choices.append(("CloneFromRaw", 2))
            if own_raws[t]:
                choices.append(("FromRaw", 2))
            choices = [(k, w) for k, w in choices if k not in omit]
            if not choices:
                break
            kind = rng.choices([k for k, _ in choices], [w for _, w in choices])[0]
            if kind == "Clone":
                out = fresh()
                ops.append(PStep(kind, rng.choice(handles), -1, out))
                own[t].append(out)
            elif kind in ("StrongCount", "Deref"):
                ops.append(PStep(kind, rng.choice(handles)))
            elif kind == "Eq":
                ops.append(PStep(kind, rng.choice(handles), rng.choice(handles)))
            elif kind == "Drop":
                h = rng.choice(own[t])
                own[t].remove(h)
                ops.append(PStep(kind, h))
            elif kind == "IntoRaw":
                h, out = rng.choice(own[t]), fresh()
                own[t].remove(h)
                own_raws[t].append(out)
                ops.append(PStep(kind, h, -1, out))
            elif kind == "CloneFromRaw":
                out = fresh()
                ops.append(PStep(kind, rng.choice(raws), -1, out))
                own[t].append(out)
            else:  # FromRaw
                p, out = rng.choice(own_raws[t]), fresh()
                own_raws[t].remove(p)
                own[t].append(out)
                ops.append(PStep(kind, p, -1, out))
        threads.append(tuple(ops))
    return ParallelProgram(tuple(prefix), tuple(threads), tuple(owners))


# ---- smaller programs, for shrinking --------------------------------------------------------------


def without(p: ParallelProgram, thread: int, index: int | None) -> ParallelProgram | None:
    """`p` without thread `thread`'s op `index` (None: the whole thread), and every op that depends
    on what it wrote; None when that leaves no thread or no well-formed program."""
    removed: set[int] = set()
    threads = list(p.threads)
    drop = range(len(threads[thread - 1])) if index is None else [index]
    for i in drop:
        s = threads[thread - 1][i]
        if s.out >= 0:
            removed.add(s.out)
    kept_self = tuple(s for i, s in enumerate(threads[thread - 1]) if i not in drop)
    threads[thread - 1] = kept_self
    owners = list(p.owners)
    if index is None:
        del threads[thread - 1]
        removed |= {r for r, t in owners if t == thread}
        owners = [(r, t if t < thread else t - 1) for r, t in owners if t != thread]
    if not threads:
        return None
    threads = [_prune(ops, removed) for ops in threads]
    try:
        return ParallelProgram(p.prefix, tuple(threads), tuple(owners))
    except ValueError:
        return None


def _prune(ops: tuple[PStep, ...], removed: set[int]) -> tuple[PStep, ...]:
    out = []
    for s in ops:
        if any(r in removed for r in _operands(s)):
            if s.out >= 0:
                removed.add(s.out)
            continue
        out.append(s)
    return tuple(out)


def smaller(p: ParallelProgram) -> Iterator[ParallelProgram]:
    """Candidates one step smaller: a thread fewer, then an op fewer (last ops first)."""
    if p.n_threads > 1:
        for t in range(p.n_threads, 0, -1):
            q = without(p, t, None)
            if q is not None:
                yield q
    for t in range(1, p.n_threads + 1):
        for i in range(len(p.threads[t - 1]) - 1, -1, -1):
            q = without(p, t, i)
            if q is not None and q.n_ops > 0:
                yield q
    # Values no thread touches, with every prefix op on them.
    values = register_values(p)
    touched = {values[r] for ops in p.threads for s in ops for r in _operands(s)}
    for v in sorted(set(values.values()) - touched):
        prefix = tuple(s for s in p.prefix if values.get(s.out if s.kind == "New" else s.a) != v)
        try:
            yield ParallelProgram(prefix, p.threads, tuple(o for o in p.owners if values[o[0]] != v))
        except ValueError:
            pass
    # Prefix clones given to a thread that never uses them.
    used = {r for ops in p.threads for s in ops for r in _operands(s)}
    for r, _thread in p.owners:
        if r not in used:
            prefix = tuple(s for s in p.prefix if s.out != r)
            if len(prefix) < len(p.prefix):
                try:
                    yield ParallelProgram(prefix, p.threads, tuple(o for o in p.owners if o[0] != r))
                except ValueError:
                    pass


# ---- parallel traces ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParallelTrace:
    """A saved failing program: the library it failed on, how often, and what it showed."""

    program: ParallelProgram
    library: str = ""
    note: str = ""
    runs: int = 0
    failures: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "library": self.library,
            "program": self.program.to_json(),
            "runs": self.runs,
            "failures": self.failures,
            "note": self.note,
        }


def save_trace(trace: ParallelTrace, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(trace.to_json(), indent=1) + "\n")
    return path


def is_parallel_trace(path: Path) -> bool:
    """Whether a file is a parallel trace (so `replay` can tell the two kinds apart). Any doubt (not
    a regular file, huge, malformed) answers no, and the trace loader says what is wrong."""
    try:
        if not Path(path).is_file() or Path(path).stat().st_size > 16 << 20:
            return False
        obj = json.loads(Path(path).read_text())
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return False
    return isinstance(obj, dict) and obj.get("format") == FORMAT


def load_trace(path: Path) -> ParallelTrace:
    where = str(path)
    try:
        obj = json.loads(Path(path).read_text())
    except OSError as e:
        raise ParallelTraceError(f"cannot read {where}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ParallelTraceError(f"{where} is not JSON: {e}") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ParallelTraceError(f"{where}: not an {FORMAT} file")
    if obj.get("version") != VERSION:
        raise ParallelTraceError(
            f"{where}: parallel trace version {obj.get('version')!r} (expected {VERSION})"
        )
    try:
        program = ParallelProgram.from_json(obj.get("program"))
    except ValueError as e:
        raise ParallelTraceError(f"{where}: {e}") from None
    runs, failures = obj.get("runs", 0), obj.get("failures", 0)
    if not _is_int(runs) or not _is_int(failures):
        raise ParallelTraceError(f"{where}: runs and failures must be integers")
    return ParallelTrace(program, str(obj.get("library", "")), str(obj.get("note", "")), runs, failures)
