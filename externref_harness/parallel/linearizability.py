"""The verdict on one parallel history: direct checks, then linearizability against the model.

Direct checks, each with its own message: every call returned `XR_OK` (a panic is a failure: the
model's ref operations never panic), the checking heap reported nothing (double free, layout,
overflow, freed-block writes, leaks at quiescence), every value was dropped exactly once, inside
some call, and the final counts after the join are those the model gives.

Linearizability (Wing and Gong's search, with the memo of PropEr and quickcheck-state-machine):
look for one sequential order of the threads' calls that respects real time (a call that responded
before another was invoked comes first) and under which the model (`model.transition.step`, the
same model every other check uses) gives every observed result: the ref each call returned,
`strong_count` values, `eq`, `deref`, and which call dropped which value. The prefix runs first
and the epilogue last, as they did. Visited (positions, model state) pairs are remembered, where
the model state is projected on what the threads can still observe: the heap (counts, freed) and
the ref each register names. Two interleavings that agree on those give the same answers to every
remaining call (a thread reaches the model only through its registers), so the projection loses no
verdict while merging interleavings that differ only in the model's handle numbering.

The cheap part runs in the driver, over many histories per call: `plan_of` computes from the model
what every interleaving of a program gives (the address each call returns, the answers of `eq` and
of the epilogue's `strong_count`, which calls may run each value's destructor, which change its
count), and the driver checks each history against it and signs the ones that pass. The signature
holds everything `linearize` reads that the plan leaves open (the threads' `strong_count` answers,
which call dropped each value, and the real-time order of the threads' calls), so one verdict per
signature is the verdict of every history that has it (`parallel.check` judges each new one).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from externref_harness.model import ops as mops
from externref_harness.model.observation import Ok
from externref_harness.model.state import Config, State
from externref_harness.model.transition import step
from externref_harness.native.library import XR_OK
from externref_harness.parallel.program import ParallelProgram, PStep, register_values
from externref_harness.parallel.run import XT_NOT_RUN, History, OpResult, Plan

#: One register's binding: (is_raw, index into the model's handles or raws).
Env = dict[int, tuple[bool, int]]


@dataclass(frozen=True, slots=True)
class Call:
    """One op of the history with where it ran and what it returned."""

    index: int  # in ParallelProgram.steps() order
    phase: str
    thread: int
    step: PStep
    result: OpResult
    #: Model ref ids of the values whose destructor ran inside this call (a Counter's items).
    dropped: tuple[tuple[int, int], ...]

    def label(self) -> str:
        where = "main" if self.thread == 0 else f"thread {self.thread}"
        return f"{where}: {self.step}"


@dataclass
class Verdict:
    passed: bool
    problems: list[str] = field(default_factory=list)
    #: A linearization that explains the history (indices of calls), when one was found.
    linearization: list[int] | None = None
    #: Distinct (positions, state) nodes the search visited.
    nodes: int = 0


@dataclass
class _Context:
    cfg: Config
    ref_addr: dict[int, int]  # model ref -> VMExternData address
    value_addr: dict[int, int]  # model ref -> value address
    deepest: int = -1
    deepest_why: list[str] = field(default_factory=list)
    deepest_order: list[int] = field(default_factory=list)
    nodes: int = 0


def model_op(s: PStep, env: Env) -> mops.Op:
    """The model's op for a step, its registers read through `env`."""
    idx = {r: env[r][1] for r in (s.a, s.b) if r in env}
    match s.kind:
        case "New":
            return mops.New(s.a, s.b)
        case "Clone":
            return mops.Clone(idx[s.a])
        case "Drop":
            return mops.Drop(idx[s.a])
        case "StrongCount":
            return mops.StrongCount(idx[s.a])
        case "IntoRaw":
            return mops.IntoRaw(idx[s.a])
        case "FromRaw":
            return mops.FromRaw(idx[s.a])
        case "CloneFromRaw":
            return mops.CloneFromRaw(idx[s.a])
        case "Eq":
            return mops.Eq(idx[s.a], idx[s.b])
        case "Deref":
            return mops.Deref(idx[s.a])
    raise ValueError(f"unknown op {s.kind}")


def _apply(ctx: _Context, state: State, env: Env, call: Call, bind: bool) -> tuple[State, Env, str | None]:
    """Run `call` on the model; the new state and env, or why the model does not explain it."""
    s, res = call.step, call.result
    new_state, obs = step(ctx.cfg, state, model_op(s, env))
    if not isinstance(obs.result, Ok):
        raise AssertionError(f"the model refused a well-formed program at {call.label()}: {obs.result}")
    if res.status != XR_OK:
        return new_state, env, f"{call.label()} returned status {res.status}, the model says {obs.result}"
    value: Any = obs.result.value
    env2 = env
    why = None
    if s.out >= 0:
        env2 = dict(env)
        env2[s.out] = (s.kind == "IntoRaw", value)
    match s.kind:
        case "New" | "Clone" | "FromRaw" | "CloneFromRaw" | "IntoRaw":
            ref = new_state.raws[value].ref if s.kind == "IntoRaw" else new_state.handles[value]
            assert ref is not None
            if bind and ref not in ctx.ref_addr:
                ctx.ref_addr[ref] = res.value
            if ctx.ref_addr.get(ref) != res.value:
                known = _addr(ctx.ref_addr, ref)
                why = f"{call.label()} gave {res.value:#x}, the model says ref {ref} ({known})"
        case "StrongCount" | "Eq":
            expected = int(value)
            if res.value != expected:
                why = f"{call.label()} gave {res.value}, the model says {expected}"
        case "Deref":
            ref = value[0]
            if bind and ref not in ctx.value_addr:
                ctx.value_addr[ref] = res.value
            if ctx.value_addr.get(ref) != res.value:
                why = f"{call.label()} gave {res.value:#x}, the model says value {ref}"
    if why is None:
        model_drops = tuple(sorted((r, 1) for r in obs.dropped))
        if model_drops != call.dropped:
            why = (
                f"{call.label()} dropped {_values(call.dropped)}, the model says it drops "
                f"{_values(model_drops)}"
            )
    return new_state, env2, why


def _addr(table: dict[int, int], ref: int) -> str:
    return f"{table[ref]:#x}" if ref in table else "never seen"


def _values(drops: tuple[tuple[int, int], ...]) -> str:
    if not drops:
        return "nothing"
    return ", ".join(f"value {r}" + (f" {n} times" if n > 1 else "") for r, n in drops)


def calls_of(program: ParallelProgram, history: History) -> tuple[list[Call], list[str]]:
    """The calls with the drops attributed to them (by thread and stamps), and drops no call holds."""
    steps = list(program.steps())
    values = register_values(program)
    ref_of: dict[int, int] = {}
    for (phase, _, s), r in zip(steps, history.results, strict=True):
        if phase == "prefix" and s.kind == "Deref" and r.status == XR_OK:
            ref_of.setdefault(r.value, values[s.a])
    by_call: dict[int, Counter[int]] = {}
    stray: list[str] = []
    for d in history.drops:
        owner = None
        for i, ((_, thread, _), r) in enumerate(zip(steps, history.results, strict=True)):
            if thread == d.thread and r.inv < d.pos < r.resp:
                owner = i
                break
        ref = ref_of.get(d.value)
        if ref is None:
            stray.append(f"a value at {d.value:#x} the program never made was dropped (thread {d.thread})")
            continue
        if owner is None:
            stray.append(f"value {ref} was dropped outside any call (thread {d.thread}, position {d.pos})")
            continue
        by_call.setdefault(owner, Counter())[ref] += 1
    calls = [
        Call(i, phase, thread, s, r, tuple(sorted(by_call.get(i, Counter()).items())))
        for i, ((phase, thread, s), r) in enumerate(zip(steps, history.results, strict=True))
    ]
    return calls, stray


def check_history(program: ParallelProgram, history: History, cfg: Config) -> Verdict:
    """Every direct check, then the linearizability search (when every call ran)."""
    calls, problems = calls_of(program, history)
    for c in calls:
        if c.result.status not in (XR_OK, XT_NOT_RUN):
            message = f": {c.result.message}" if c.result.message else ""
            problems.append(f"{c.label()} returned status {c.result.status}{message}")
    for e in history.heap_errors:
        where = "main" if e.thread == 0 else f"thread {e.thread}"
        problems.append(f"checking heap: {e.kind}: {e.detail} ({where})")
    totals: Counter[int] = Counter()
    for c in calls:
        for ref, n in c.dropped:
            totals[ref] += n
    n_values = sum(1 for s in program.prefix if s.kind == "New")
    for ref in range(n_values):
        if totals[ref] > 1 or (totals[ref] == 0 and not history.panicked):
            problems.append(f"value {ref} was dropped {totals[ref]} times (exactly once by the end)")
    if history.panicked or any(c.result.status == XT_NOT_RUN for c in calls):
        return Verdict(False, problems or ["a call panicked; the run was cut short"])
    problems += _final_counts(program, calls, cfg)
    verdict = linearize(calls, cfg)
    verdict.problems = problems + verdict.problems
    verdict.passed = verdict.passed and not problems
    return verdict


def _final_counts(program: ParallelProgram, calls: list[Call], cfg: Config) -> list[str]:
    """The epilogue's counts against the model run in thread order (final counts do not depend on
    the interleaving: every call completed)."""
    state, env = State.initial(cfg), Env()
    out = []
    for c in calls:
        state, obs = step(cfg, state, model_op(c.step, env))
        assert isinstance(obs.result, Ok), obs
        if c.step.out >= 0:
            env[c.step.out] = (c.step.kind == "IntoRaw", obs.result.value)
        if c.phase == "epilogue" and c.step.kind == "StrongCount" and c.result.value != obs.result.value:
            ref = state.handles[env[c.step.a][1]]
            out.append(
                f"final count of value {ref} after the join: {c.result.value}, "
                f"the model says {obs.result.value}"
            )
    return out


#: Ops whose result is the ref address (1) or the value address (2) of the value they name.
_ADDR = {"New": 1, "Clone": 1, "FromRaw": 1, "CloneFromRaw": 1, "IntoRaw": 1, "Deref": 2}


def plan_of(program: ParallelProgram, cfg: Config) -> Plan:
    """What the model says every interleaving of `program` gives (the driver's cheap verdicts).

    Invariant relied on: the program is well formed, so every interleaving is a correct use of the
    API; a value's count after the threads, hence whether its destructor runs inside a thread's
    `drop` (any of them may be the last) or in the epilogue (exactly the model's call), does not
    depend on the interleaving, and neither do `eq` answers nor the counts read after the join."""
    steps = list(program.steps())
    values = register_values(program)
    state, env = State.initial(cfg), Env()
    value, addr, counts, expect = [], [], [], []
    dropped_by: dict[int, int] = {}
    new_op: dict[int, int] = {}
    deref_op: dict[int, int] = {}
    for i, (phase, _, s) in enumerate(steps):
        v = values[s.out] if s.kind == "New" else values.get(s.a, -1)
        if s.kind == "New":
            new_op[v] = i
        if s.kind == "Deref" and phase == "prefix":
            deref_op.setdefault(v, i)
        state, obs = step(cfg, state, model_op(s, env))
        assert isinstance(obs.result, Ok), obs
        if s.out >= 0:
            env[s.out] = (s.kind == "IntoRaw", obs.result.value)
        for ref in obs.dropped:
            dropped_by[ref] = i
        value.append(v)
        addr.append(_ADDR.get(s.kind, 0))
        counts.append(v if s.kind in ("Clone", "CloneFromRaw", "Drop") else -1)
        fixed = s.kind == "Eq" or (s.kind == "StrongCount" and phase != "parallel")
        expect.append(int(obs.result.value) if fixed else None)
    may_drop = [-1] * len(steps)
    for ref, i in dropped_by.items():
        if steps[i][0] == "parallel":  # the count reached 0 among the threads: any of its drops
            for j, (phase, _, s) in enumerate(steps):
                if phase == "parallel" and s.kind == "Drop" and value[j] == ref:
                    may_drop[j] = ref
        else:
            may_drop[i] = ref
    n_values = len(new_op)
    return Plan(
        tuple(new_op[v] for v in range(n_values)),
        tuple(deref_op[v] for v in range(n_values)),
        tuple(value),
        tuple(addr),
        tuple(counts),
        tuple(may_drop),
        tuple(expect),
    )


def linearize(calls: Sequence[Call], cfg: Config) -> Verdict:
    """Search for a real-time-respecting order of the parallel calls that the model explains."""
    ctx = _Context(cfg, {}, {})
    state, env = State.initial(cfg), Env()
    for c in calls:
        if c.phase != "prefix":
            continue
        state, env, why = _apply(ctx, state, env, c, bind=True)
        if why is not None:
            return Verdict(False, [f"the prefix is not what the model says: {why}"])
    threads: dict[int, list[Call]] = {}
    for c in calls:
        if c.phase == "parallel":
            threads.setdefault(c.thread, []).append(c)
    per_thread = [threads[t] for t in sorted(threads)]
    epilogue = [c for c in calls if c.phase == "epilogue"]
    seen: set[Any] = set()
    order: list[int] = []

    def key(positions: tuple[int, ...], st: State, en: Env) -> Any:
        regs = tuple((r, st.raws[i] if raw else st.handles[i]) for r, (raw, i) in sorted(en.items()))
        return positions, st.heap, st.faults, regs

    def note_failure(depth: int, why: list[str]) -> None:
        if depth > ctx.deepest:
            ctx.deepest, ctx.deepest_why, ctx.deepest_order = depth, why, list(order)

    def search(positions: tuple[int, ...], st: State, en: Env) -> bool:
        k = key(positions, st, en)
        if k in seen:
            return False
        seen.add(k)
        ctx.nodes += 1
        if all(p == len(ops) for p, ops in zip(positions, per_thread, strict=True)):
            for c in epilogue:
                st, en, why = _apply(ctx, st, en, c, bind=False)
                if why is not None:
                    note_failure(len(order), [f"after every thread: {why}"])
                    return False
            return True
        firsts = [
            (t, ops[p]) for t, (p, ops) in enumerate(zip(positions, per_thread, strict=True)) if p < len(ops)
        ]
        whys = []
        for t, c in firsts:
            if any(o.result.resp < c.result.inv for u, o in firsts if u != t):
                continue  # another pending call responded before this one was invoked
            st2, en2, why = _apply(ctx, st, en, c, bind=False)
            if why is not None:
                whys.append(why)
                continue
            order.append(c.index)
            pos2 = (*positions[:t], positions[t] + 1, *positions[t + 1 :])
            if search(pos2, st2, en2):
                return True
            order.pop()
        if whys:
            note_failure(len(order), whys)
        return False

    found = search(tuple(0 for _ in per_thread), state, env)
    if found:
        return Verdict(True, [], list(order), ctx.nodes)
    placed = ", ".join(calls[i].label() for i in ctx.deepest_order) or "nothing"
    why = "; ".join(ctx.deepest_why) or "no call can come next"
    return Verdict(
        False,
        [
            f"not linearizable: no order of the threads' calls explains the results (longest explained: "
            f"{placed}; then {why})"
        ],
        None,
        ctx.nodes,
    )
