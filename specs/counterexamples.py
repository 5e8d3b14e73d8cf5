"""Counterexamples of the sweep proofs as concrete scenarios, and as traces of real model ops.

`Scenario.read` turns a z3 model of the bounded encoding into plain values (the state before `gc`
and what `gc` did to it). `scenario_trace` builds, from such a scenario, a `Trace` of operations of
`model.ops` that starts from `State.initial` and drives the model into the same situation before a
final `Gc`; `replay_on_model` runs it and reports where the model's invariants fail.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import z3

from externref_harness.model import ops
from externref_harness.model.observation import Misuse
from externref_harness.model.protocol import CVE_2021_39216
from externref_harness.model.state import Config, State
from externref_harness.model.transition import run
from externref_harness.specs.invariants import first_violation
from externref_harness.specs.mutants import DROP_ROOTS_IN_TABLE
from externref_harness.specs.proving import DEFAULT_TIMEOUT_MS, find_example
from externref_harness.specs.sweep_encoding import (
    SCALAR,
    Bounds,
    GcState,
    Namer,
    Scenario,
    Switches,
    Term,
    any_of,
    gc,
)
from externref_harness.specs.sweep_proofs import (
    PROPERTIES,
    Variant,
    assumptions,
    holds_ref,
    stack_map_exemption,
)
from externref_harness.trace import Trace

# --- counterexamples a trace can reproduce ----------------------------------------------------------


def normal_form(s: GcState, mutant: str | None) -> list[Term]:
    """Restrictions on a counterexample (never on a proof) that make it buildable from
    `State.initial` with the embedder's operations:

    - the oldest frame is the host's main frame (with unwind info) and the youngest a host frame
      (the caller of `gc`); no two host frames are adjacent (only Wasm calls the host);
    - the canary is where `invoke_wasm_and_catch_traps` puts it: main's sp, iff Wasm is on the stack;
    - each stack map is exactly what the compiler emits (`stack_map_exemption` for a compiler mutant);
    - the heap is as `drop` leaves it (freed iff the count is 0), with at most two other owners.
    """
    out: list[Term] = []
    n = s.n_frames
    for k, f in enumerate(s.frames):
        present, oldest = s.present(k), n == k + 1
        if k == 0:
            out.append(z3.Not(f.wasm))
        out.append(z3.Implies(z3.And(present, oldest), z3.And(z3.Not(f.wasm), f.unwind_info)))
        if k + 1 < len(s.frames):
            out.append(z3.Implies(s.present(k + 1), z3.Or(f.wasm, s.frames[k + 1].wasm)))
        out.append(z3.Implies(present, z3.And(f.sp >= 0, f.sp == z3.IntVal(0) + k)))
        for i, (w, m) in enumerate(zip(f.slots, f.mapped, strict=True)):
            emitted = z3.And(holds_ref(w), z3.Not(stack_map_exemption(s, k, i, mutant)))
            out.append(z3.Implies(s.wasm(k), m == emitted))
    any_wasm = any_of([s.wasm(k) for k in range(s.bounds.frames)])
    oldest_sp = _pick([(s.n_frames == k + 1, f.sp) for k, f in enumerate(s.frames)])
    out += [s.stack_canary_set == any_wasm, z3.Implies(any_wasm, s.stack_canary == oldest_sp)]
    for c, other in zip(s.cells, s.other_owners, strict=True):
        out += [c.freed == (c.ref_count == 0), other <= 2]
    return out


def _pick(cases: list[tuple[Term, Term]]) -> Term:
    out: Term = z3.IntVal(0)
    for cond, value in reversed(cases):
        out = z3.If(cond, value, out)
    return out


@dataclass(frozen=True)
class Counterexample:
    """A bounded counterexample of one property under one variant, in normal form."""

    variant: str | None
    debug: bool
    property_id: str
    scenario: Scenario

    def describe(self) -> str:
        return self.scenario.describe()


def find_counterexample(
    bounds: Bounds,
    variant: Variant,
    debug: bool,
    property_id: str,
    timeout_ms: int = DEFAULT_TIMEOUT_MS,
) -> Counterexample | None:
    """A normal-form counterexample of `property_id` (None: there is none within `bounds`)."""
    prop = next(p for p in PROPERTIES if p.id == property_id)
    namer = Namer()
    s = GcState.symbolic(bounds)
    out = gc(s, Switches(debug, variant.mutant), namer)
    constraints = [a.formula for a in assumptions(s, variant)] + namer.definitions
    constraints += normal_form(s, variant.mutant)
    constraints.append(z3.Not(prop.formula(s, out)))
    model = find_example(constraints, timeout_ms)
    if model is None:
        return None
    return Counterexample(variant.mutant, debug, property_id, Scenario.read(s, out, model))


# --- from a counterexample to a trace --------------------------------------------------------------


class _Builder:
    """Appends operations and tracks the handle indices the model will hand out."""

    def __init__(self) -> None:
        self.steps: list[ops.Op] = []
        self.handles = 0

    def add(self, *steps: ops.Op) -> None:
        self.steps.extend(steps)

    def handle(self, op: ops.New | ops.Clone) -> int:
        self.add(op)
        self.handles += 1
        return self.handles - 1


def _distinct_refs(slots: tuple[int, ...]) -> dict[int, int]:
    """Each ref of a frame and the first slot holding it."""
    first: dict[int, int] = {}
    for i, w in enumerate(slots):
        if w >= 0 and w not in first:
            first[w] = i
    return first


def _fill_frame(b: _Builder, slots: tuple[int, ...], masters: dict[int, int]) -> None:
    """Give the (all-null) youngest Wasm frame these slots: each ref is returned into its first
    slot by a host call (`Func::invoke` moves it into the table), then copied and spilled."""
    first = _distinct_refs(slots)
    for r, i in first.items():
        b.add(ops.WasmCallHost((), i))
        b.add(ops.ReturnToWasm(b.handle(ops.Clone(masters[r]))))
    for i, w in enumerate(slots):
        if w >= 0 and first[w] != i:
            b.add(ops.WasmMove(first[w], i))
        elif w == SCALAR:
            b.add(ops.WasmScalar(i))


def scenario_trace(cex: Counterexample) -> Trace:
    """Operations from `State.initial` that rebuild `cex`'s stack, owners and table membership,
    then run `Gc` with the variant's seeded bug switched on.

    The chunk is allocated first (one `Gc` with nothing on the stack) and has a slot for every
    later move into the table, so none of them collects. For the proof-only variant that drops I8 no correct
    protocol can put a ref on the stack without the table; the trace uses the mechanism that did,
    CVE-2021-39216 (see `_dangling_root_trace`).
    """
    if cex.variant == DROP_ROOTS_IN_TABLE:
        return _dangling_root_trace(cex)
    sc = cex.scenario
    frames = tuple(reversed(sc.frames))
    on_stack = {w for f in frames if f.wasm for w in f.slots if w >= 0}
    in_table = {r for r in range(len(sc.cells)) if sc.in_table(r)}
    wanted = sorted(
        r for r, other in enumerate(sc.other_owners) if r in on_stack or r in in_table or other > 0
    )
    b = _Builder()
    b.add(ops.Gc())
    masters = {r: b.handle(ops.New(8, 8)) for r in wanted}
    for r in wanted:
        for _ in range(sc.other_owners[r] - 1):
            b.handle(ops.Clone(masters[r]))
        if r in in_table and r not in on_stack:
            b.add(ops.InsertWithoutGc(b.handle(ops.Clone(masters[r]))))
    for previous, frame in itertools.pairwise(frames):
        if frame.wasm:
            b.add(ops.WasmCallWasm((), 0) if previous.wasm else ops.CallWasm(()))
            _fill_frame(b, frame.slots, masters)
        else:
            b.add(ops.WasmCallHost((), 0, unwind_info=frame.unwind_info))
    for r in wanted:
        if sc.other_owners[r] == 0:
            b.add(ops.Drop(masters[r]))
    b.add(ops.Gc())
    moves_into_table = sum(isinstance(op, ops.ReturnToWasm | ops.InsertWithoutGc) for op in b.steps)
    cfg = Config(
        chunk_size=moves_into_table + 1,
        build="debug" if cex.debug else "release",
        slots=len(frames[0].slots),
        n_globals=0,
        mutant=cex.variant,
    )
    return Trace(cfg, tuple(b.steps), f"{cex.variant}: counterexample of property {cex.property_id}")


def _dangling_root_trace(cex: Counterexample) -> Trace:
    """A stack root outside the table, as CVE-2021-39216 made one: with a one-slot chunk, the host
    moves two arguments in with `insert_with_gc`; the second one's GC sweeps the first, which
    only the table held. The dangling ref is then copied into the counterexample's slots of the
    frame, and the final `Gc` finds it on the stack."""
    sc = cex.scenario
    victim_frame, victim = next(
        (f, w) for f in reversed(sc.frames) if f.wasm for w in f.slots if w >= 0 and not sc.in_table(w)
    )
    cfg = Config(
        chunk_size=1,
        build="debug" if cex.debug else "release",
        slots=len(victim_frame.slots),
        n_globals=0,
        mutant=CVE_2021_39216,
    )
    b = _Builder()
    b.add(ops.Gc())
    dangling, other = b.handle(ops.New(8, 8)), b.handle(ops.New(8, 8))
    b.add(ops.CallWasm((dangling, other)))
    for i, w in enumerate(victim_frame.slots):
        if w == victim and i != 0:
            b.add(ops.WasmMove(0, i))
    for i, w in enumerate(victim_frame.slots):
        if w != victim and i < 2:
            b.add(ops.WasmNull(i))
    b.add(ops.WasmCallHost((), 0))
    b.add(ops.Gc())
    return Trace(cfg, tuple(b.steps), f"{cex.variant}: counterexample of property {cex.property_id}")


@dataclass(frozen=True)
class ModelReplay:
    """How the model ran a counterexample's trace."""

    trace: Trace
    #: The first step (1-based) after which an invariant of `specs.invariants` fails, and which.
    first_failure: tuple[int, str] | None
    #: The state before the final `Gc`, and after it.
    before_gc: State
    after_gc: State

    def describe(self) -> str:
        if self.first_failure is None:
            return "model: no invariant fails"
        step, message = self.first_failure
        return f"model: step {step} of {len(self.trace.steps)} ({self.trace.steps[step - 1]}): {message}"


class SynthesisError(AssertionError):
    """The trace built from a counterexample was refused by the model: a bug of the builder."""


def replay_on_model(trace: Trace) -> ModelReplay:
    """Run the trace on the model; every step must be accepted (no misuse)."""
    states = [State.initial(trace.config)]
    first: tuple[int, str] | None = None
    for n, (state, obs) in enumerate(run(trace.config, trace.steps), 1):
        if isinstance(obs.result, Misuse):
            raise SynthesisError(f"step {n} ({trace.steps[n - 1]}) refused: {obs}")
        states.append(state)
        violation = first_violation(trace.config, state)
        if first is None and violation is not None:
            first = (n, f"{violation[0].id} {violation[0].name}: {violation[1]}")
    return ModelReplay(trace, first, states[-2], states[-1])


def property_on_model_state(cfg: Config, state: State, variant: Variant, property_id: str) -> bool:
    """The bounded encoding's property, evaluated on `gc` from a concrete model state."""
    prop = next(p for p in PROPERTIES if p.id == property_id)
    s = GcState.from_model(cfg, state)
    out = gc(s, Switches(cfg.debug, variant.mutant))
    return bool(z3.is_true(z3.simplify(prop.formula(s, out))))


def assumptions_on_model_state(cfg: Config, state: State, variant: Variant) -> dict[str, bool]:
    """Each of the proof's assumptions, evaluated on a concrete model state."""
    s = GcState.from_model(cfg, state)
    return {a.id: bool(z3.is_true(z3.simplify(a.formula))) for a in assumptions(s, variant)}
