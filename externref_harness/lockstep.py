"""Lockstep: the reference model and an implementation driven through the same operations.

After every step the two sides are compared through one explicit observable projection (result,
values dropped by the step, stack canary, memory faults), computed by `project_model` from the
model's observation and by `project_impl` from the implementation's plain-data outcome. Then the
implementation's raw memory is checked against the model's state (`memory_problems`): `ref_count`
read at footer offset 0, `value_ptr`, every alignment and the footer's place by `layout_for`, the
table's `next`/`end` words, the chunk, handles, globals and every stack word. Whatever the checking
heap reported is a failure too, and so are leaks when the run is torn down.

Refs are model ids on one side and footer addresses on the other; `RefMap` pairs them in allocation
order. The same `Lockstep` runner serves the hypothesis machine (`make_lockstep_machine`, with the
model machine's move drawing, labels and failure report) and `replay` of a saved trace.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from externref_harness import deadline
from externref_harness import trace as tracefile
from externref_harness.deadline import Timeout, time_limit
from externref_harness.impl import heap as checking_heap
from externref_harness.impl.adapter import (
    ImplAdapter,
    InProcessImpl,
    Probe,
    StepOutcome,
    format_report,
    plain_config,
    plain_op,
)
from externref_harness.model import layout, ops
from externref_harness.model.moves import Bounds, next_quiesce_op, quiesce_step_bound
from externref_harness.model.observation import Err, Misuse, Observation, Ok, Panic
from externref_harness.model.runtime import (
    FAULT_DOUBLE_DROP,
    FAULT_USE_AFTER_FREE,
    FAULT_WILD_POINTER,
    SeedRuntime,
)
from externref_harness.model.state import (
    STACK_TOP,
    Config,
    RawPtr,
    Scalar,
    State,
    Uninit,
    WasmFrame,
    frame_sps,
)
from externref_harness.model.transition import step as model_step
from externref_harness.model_check import (
    MACHINE_BOUNDS,
    MACHINE_CONFIG,
    CheckOutcome,
    InvariantViolation,
    RunStats,
    draw_move,
    example_failure,
    misuse_problem,
    record_step,
    search_settings,
)
from externref_harness.report import save_and_format
from externref_harness.shrink import ddmin, delete_with_renumbering
from externref_harness.specs.invariants import first_violation, reachable_refs

LOCKSTEP_CONFIG = MACHINE_CONFIG
LOCKSTEP_BOUNDS = MACHINE_BOUNDS

AdapterFactory = Callable[[], ImplAdapter]


class RefMap:
    """Model ref ids <-> footer addresses (and value addresses), paired in allocation order."""

    def __init__(self) -> None:
        self.footers: list[int] = []
        self._by_footer: dict[int, int] = {}
        self._by_value: dict[int, int] = {}

    def add(self, footer: int, value: int) -> None:
        r = len(self.footers)
        self.footers.append(footer)
        self._by_footer[footer] = r
        self._by_value[value] = r

    def ref(self, footer: int) -> int | str:
        """The model id of a footer address; an unknown address reads as `?0x...`."""
        r = self._by_footer.get(footer)
        return f"?{footer:#x}" if r is None else r

    def value(self, address: int) -> int | str:
        r = self._by_value.get(address)
        return f"?{address:#x}" if r is None else r

    def slot(self, word: int) -> int | str | None:
        """A pointer-sized word that holds an `Option<VMExternRef>`."""
        return None if word == 0 else self.ref(word)


# --- the observable projection -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Projection:
    """What one step shows, the same plain shape for both sides."""

    #: `("ok", value)`, `("err", kind)`, `("misuse", kind)` or `("panic",)`; refs as model ids.
    result: tuple[Any, ...]
    #: Model ids of the values whose destructor ran in this step.
    dropped: tuple[Any, ...]
    #: The stack canary as bytes below the top of the stack (None: no canary).
    canary: int | None
    #: Memory faults of the step, as `model.runtime` FAULT_* kinds.
    faults: tuple[str, ...]


def _sorted_ids(ids: Iterator[int | str]) -> tuple[int | str, ...]:
    return tuple(sorted(ids, key=lambda r: (1, 0, r) if isinstance(r, str) else (0, r, "")))


def project_model(op: ops.Op, obs: Observation, before: State, after: State) -> Projection:
    result = obs.result
    if isinstance(result, Panic):
        # A panicking step keeps the pre-step state: no canary or fault of its own to compare.
        return Projection(("panic",), _sorted_ids(iter(obs.dropped)), None, ())
    if isinstance(result, Ok):
        value = result.value
        if isinstance(op, ops.StackCanary) and value is not None:
            value = STACK_TOP - value
        shown: tuple[Any, ...] = ("ok", value)
    elif isinstance(result, Err):
        shown = ("err", result.kind)
    else:
        assert isinstance(result, Misuse)
        shown = ("misuse", result.kind)
    canary = after.table.stack_canary
    faults = tuple(sorted(f.split(":", 1)[0] for f in after.faults[len(before.faults) :]))
    return Projection(
        shown,
        _sorted_ids(iter(obs.dropped)),
        None if canary is None else STACK_TOP - canary,
        faults,
    )


def model_fault_of(report: tuple[str, int, str, str]) -> str:
    """The model's FAULT_* kind for a checking-heap report (its own kind when the model has none)."""
    kind, _, access, _ = report
    if kind in (checking_heap.WILD_ACCESS, checking_heap.BUFFER_OVERFLOW, checking_heap.INVALID_FREE):
        return FAULT_WILD_POINTER
    if kind == checking_heap.USE_AFTER_FREE:
        return FAULT_DOUBLE_DROP if access == checking_heap.DECREMENT else FAULT_USE_AFTER_FREE
    if kind == checking_heap.DOUBLE_FREE:
        return FAULT_DOUBLE_DROP
    return kind


def project_impl(op: ops.Op, outcome: StepOutcome, probe: Probe, refs: RefMap) -> Projection:
    dropped = _sorted_ids(refs.value(v) for v in outcome.dropped)
    status = outcome.result[0]
    if status == "panic":
        return Projection(("panic",), dropped, None, ())
    if status == "ok":
        value = outcome.result[1]
        if isinstance(op, ops.StackCanary) and value is not None:
            value = probe.stack_top - value
        elif isinstance(op, ops.Elements):
            value = _sorted_ids(refs.ref(a) for a in value)
        elif isinstance(op, ops.Deref):
            value = ("unreadable",) if value is None else (refs.value(value[0]), *value[1:])
        elif isinstance(op, ops.Cmp):
            value = value == 0
        shown: tuple[Any, ...] = ("ok", value)
    else:
        shown = (status, outcome.result[1])
    return Projection(
        shown,
        dropped,
        None if probe.canary is None else probe.stack_top - probe.canary,
        tuple(sorted(model_fault_of(r) for r in outcome.reports)),
    )


def projection_diff(model: Projection, impl: Projection) -> list[str]:
    return [
        f"{name}: model {getattr(model, name)!r}, impl {getattr(impl, name)!r}"
        for name in Projection.__slots__
        if getattr(model, name) != getattr(impl, name)
    ]


# --- raw memory against the model state ----------------------------------------------------------


def memory_problems(cfg: Config, state: State, probe: Probe, refs: RefMap) -> list[str]:
    """Every way the implementation's memory disagrees with the model's state."""
    out = _ref_problems(state, probe)
    out += _table_problems(cfg, state, probe, refs)
    handles = tuple(None if a is None else refs.ref(a) for a in probe.handles)
    if handles != state.handles:
        out.append(f"handles: model {state.handles}, impl {handles}")
    raws = tuple(None if p is None else RawPtr(refs.ref(p[0]), p[1]) for p in probe.raws)  # type: ignore[arg-type]
    if raws != state.raws:
        out.append(f"raw pointers: model {state.raws}, impl {raws}")
    globals_ = tuple(Uninit() if g is None else refs.slot(g) for g in probe.globals)
    if globals_ != state.globals:
        out.append(f"globals: model {state.globals}, impl {globals_}")
    out += _stack_problems(state, probe, refs)
    return out


def _ref_problems(state: State, probe: Probe) -> list[str]:
    out: list[str] = []
    if len(probe.refs) != len(state.heap):
        out.append(f"the model allocated {len(state.heap)} refs, the implementation {len(probe.refs)}")
    reachable: set[int] | None = None
    for r, (box, facts) in enumerate(zip(state.heap, probe.refs, strict=False)):
        at = f"ref {r} (footer {facts.footer:#x})"
        if facts.status != checking_heap.LIVE:
            # Asked of the checking heap, not of the implementation (nor of the model).
            reachable = reachable_refs(state) if reachable is None else reachable
            if r in reachable:
                out.append(f"{at}: reachable, yet the checking heap says {facts.status}")
            elif not box.freed:
                out.append(f"{at}: the model has it live, the checking heap says {facts.status}")
            continue
        if box.freed:
            out.append(f"{at}: the model freed it, the checking heap says {facts.status}")
            continue
        lay = _layout_for(box.size, box.align)
        if facts.footer % layout.EXTERN_DATA_ALIGN:
            out.append(f"{at}: the footer is not {layout.EXTERN_DATA_ALIGN}-aligned")
        if facts.block_start % lay.alloc_align:
            out.append(f"{at}: the block at {facts.block_start:#x} is not {lay.alloc_align}-aligned")
        if facts.footer - facts.block_start != lay.footer_offset:
            out.append(
                f"{at}: the footer is at offset {facts.footer - facts.block_start}, "
                f"layout_for({box.size}, {box.align}) puts it at {lay.footer_offset}"
            )
        if facts.block_size != lay.alloc_size:
            out.append(f"{at}: a block of {facts.block_size} bytes, layout_for says {lay.alloc_size}")
        if facts.ref_count != box.ref_count:
            out.append(
                f"{at}: the word at footer offset {layout.REF_COUNT_OFFSET} is {facts.ref_count}, "
                f"the model's ref_count is {box.ref_count}"
            )
        if facts.value_ptr_data != facts.block_start:
            out.append(f"{at}: value_ptr is {facts.value_ptr_data:#x}, not the block's start")
        if (facts.vtable_size, facts.vtable_align) != (box.size, box.align):
            out.append(
                f"{at}: value_ptr's vtable says size {facts.vtable_size} align "
                f"{facts.vtable_align}, the value has size {box.size} align {box.align}"
            )
    return out


@cache
def _layout_for(value_size: int, value_align: int) -> layout.ExternLayout[int]:
    return layout.layout_for(value_size, value_align)


def _table_problems(cfg: Config, state: State, probe: Probe, refs: RefMap) -> list[str]:
    table, facts = state.table, probe.table
    if facts.chunk_len != len(table.chunk):
        return [f"the chunk has {facts.chunk_len} slots, the model's {len(table.chunk)}"]
    out: list[str] = []
    capacity = SeedRuntime(cfg, state).bump_capacity_remaining()
    if facts.end - facts.next != capacity:
        out.append(f"end - next = {facts.end - facts.next}, the model's capacity is {capacity}")
    if facts.chunk_len and facts.end != facts.chunk_ptr + facts.chunk_len * layout.EXTERN_DATA_ALIGN:
        out.append(f"end {facts.end:#x} is not just after the chunk at {facts.chunk_ptr:#x}")
    chunk = tuple(refs.slot(w) for w in facts.chunk_words)
    if chunk != table.chunk:
        out.append(f"chunk slots: model {table.chunk}, impl {chunk}")
    return out


def _stack_problems(state: State, probe: Probe, refs: RefMap) -> list[str]:
    if len(probe.frames) != len(state.frames):
        return [f"{len(state.frames)} frames in the model, {len(probe.frames)} on the stack"]
    out: list[str] = []
    for i, (frame, sp, facts) in enumerate(
        zip(state.frames, frame_sps(state.frames), probe.frames, strict=True)
    ):
        if isinstance(frame, WasmFrame) != facts.wasm:
            out.append(f"frame {i}: Wasm in one, host in the other")
            continue
        if STACK_TOP - sp != probe.stack_top - facts.sp:
            out.append(f"frame {i}: sp is {probe.stack_top - facts.sp} bytes below the top, "
                       f"the model's {STACK_TOP - sp}")  # fmt: skip
        if isinstance(frame, WasmFrame):
            words = tuple(
                Scalar() if not typed else refs.slot(w)
                for w, typed in zip(facts.words, facts.ref_typed, strict=True)
            )
            if words != frame.slots:
                out.append(f"frame {i} slots: model {frame.slots}, impl {words}")
    return out


# --- one run on both sides -------------------------------------------------------------------------


@dataclass(frozen=True)
class StepCheck:
    observation: Observation
    #: The model panicked or broke an invariant.
    model_problem: str | None
    #: The implementation diverged, failed a raw-memory check, or the checking heap reported.
    impl_problem: str | None


class Lockstep:
    """One run: the model's state and an implementation, stepped together."""

    def __init__(self, cfg: Config, adapter: ImplAdapter, check_invariants: bool = True) -> None:
        self.cfg = cfg
        self.state = State.initial(cfg)
        self.adapter = adapter
        self.refs = RefMap()
        self.check_invariants = check_invariants
        #: Why the teardown stopped before quiescence, if it did.
        self.gave_up: str | None = None
        #: Why the implementation is no longer stepped (it hung, or could not start).
        self.impl_broken: str | None = None
        try:
            with time_limit(deadline.STEP_SECONDS, "the implementation's start"):
                adapter.start(plain_config(cfg))
        except Timeout as e:
            self.impl_broken = f"the implementation hung: {e}"
        except Exception as e:
            self.impl_broken = f"the implementation raised {type(e).__name__} at start: {e}"

    def step(self, op: ops.Op) -> StepCheck:
        before = self.state
        self.state, obs = model_step(self.cfg, before, op)
        model_problem = None
        if isinstance(obs.result, Panic):
            model_problem = f"the model panicked: {obs.result.message}"
        elif self.check_invariants:
            violation = first_violation(self.cfg, self.state)
            if violation is not None:
                model_problem = f"{violation[0].id} {violation[0].name}: {violation[1]}"
        return StepCheck(obs, model_problem, self._impl_step(op, obs, before))

    def _impl_step(self, op: ops.Op, obs: Observation, before: State) -> str | None:
        """The implementation's step and every check of it, under `deadline.STEP_SECONDS`. After
        a step that hung, the implementation is not run again (its state is unknown)."""
        if self.impl_broken is not None:
            return self.impl_broken
        try:
            with time_limit(deadline.STEP_SECONDS, f"the implementation's {op}"):
                return self._impl_step_checked(op, obs, before)
        except Timeout as e:
            self.impl_broken = f"the implementation hung: {e}"
            return self.impl_broken
        except Exception as e:  # a check could not read what the implementation handed back
            return f"the lockstep checks raised {type(e).__name__} on the implementation's outcome: {e}"

    def _impl_step_checked(self, op: ops.Op, obs: Observation, before: State) -> str | None:
        try:
            outcome = self.adapter.step(plain_op(op))
            probe = self.adapter.probe()
        except Exception as e:  # the implementation under test crashed: that is its failure
            return f"the implementation raised {type(e).__name__}: {e}"
        new_refs = len(self.state.heap) - len(before.heap)
        if new_refs != len(outcome.allocated):
            return f"the model allocated {new_refs} refs, the implementation {len(outcome.allocated)}"
        for footer, value in outcome.allocated:
            self.refs.add(footer, value)
        model_view = project_model(op, obs, before, self.state)
        lines = [
            f"observed {x}" for x in projection_diff(model_view, project_impl(op, outcome, probe, self.refs))
        ]
        lines += [f"observed {x}" for x in _identity_problems(op, outcome, probe)]
        lines += [f"checking heap: {format_report(r)}" for r in outcome.reports]
        if not isinstance(obs.result, Panic):
            lines += [f"memory: {x}" for x in memory_problems(self.cfg, self.state, probe, self.refs)]
        if not lines:
            return None
        return "the implementation fails the lockstep checks:\n" + "\n".join(f"    {x}" for x in lines)

    def quiesce_ops(self) -> Iterator[ops.Op]:
        """The shared teardown: unwind, drop everything, GC (`model.moves.next_quiesce_op`), within
        the steps the state needs (`quiesce_step_bound`); past that `finish` says it gave up."""
        bound = quiesce_step_bound(self.state)
        for _ in range(bound):
            op = next_quiesce_op(self.state)
            if op is None:
                return
            yield op
        if next_quiesce_op(self.state) is not None:
            self.gave_up = f"the teardown gave up: {bound} steps did not reach quiescence"

    def finish(self) -> str | None:
        """Drop the runtime and check that the checking heap is empty (not if teardown gave up:
        what is still held would read as a leak)."""
        if self.impl_broken is not None:
            return self.impl_broken
        try:
            with time_limit(deadline.STEP_SECONDS, "the implementation's teardown"):
                reports = self.adapter.finish()
        except Timeout as e:
            return f"the implementation hung: {e}"
        except Exception as e:
            return f"the implementation raised {type(e).__name__} at teardown: {e}"
        if self.gave_up is not None:
            return f"{self.gave_up} (a harness bug); the leak check was not run"
        if not reports:
            return None
        lines = [f"    {format_report(r)}" for r in reports]
        return "at teardown the checking heap reports:\n" + "\n".join(lines)

    def close(self) -> None:
        self.adapter.close()


def _identity_problems(op: ops.Op, outcome: StepOutcome, probe: Probe) -> list[str]:
    """`eq` and `cmp` follow the addresses the handles hold, and equal refs hash equal."""
    if outcome.result[0] != "ok" or not isinstance(op, ops.Eq | ops.Cmp):
        return []
    a, b = probe.handles[op.a], probe.handles[op.b]
    if a is None or b is None:
        return [f"{op} answered for a dropped handle"]
    expected: object = a == b if isinstance(op, ops.Eq) else (a > b) - (a < b)
    got = outcome.result[1]
    if got != expected:
        return [f"{op} answered {got!r}; the addresses say {expected!r}"]
    if a == b and probe.hashes[op.a] != probe.hashes[op.b]:
        return [f"{op}: equal refs hash to {probe.hashes[op.a]} and {probe.hashes[op.b]}"]
    return []


# --- driving a trace ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Failure:
    """The first thing that went wrong: 1-based step (`len(steps) + 1` is the teardown)."""

    step: int
    side: str
    problem: str


@dataclass
class Driven:
    """A trace run on both sides: every step run (the teardown's included), what each side showed."""

    steps: list[ops.Op]
    observations: list[Observation]
    #: The model's states: the initial one, then one after each step.
    states: list[State]
    model_failure: Failure | None = None
    impl_failure: Failure | None = None

    @property
    def first(self) -> Failure | None:
        found = [f for f in (self.model_failure, self.impl_failure) if f is not None]
        return min(found, key=lambda f: f.step) if found else None


MODEL = "model"
IMPLEMENTATION = "implementation"


def drive(cfg: Config, steps: Sequence[ops.Op], adapter: ImplAdapter, until_first: bool) -> Driven:
    """Run `steps` in lockstep, then tear down (unless a side panicked or already failed).

    With `until_first`, stop at the first failure of either side; otherwise go on until both
    sides have failed, so each side's first failure is known.
    """
    run = Lockstep(cfg, adapter)
    out = Driven([], [], [run.state])

    def note(at: int, op: ops.Op, check: StepCheck) -> bool:
        out.steps.append(op)
        out.observations.append(check.observation)
        out.states.append(run.state)
        if out.model_failure is None and check.model_problem is not None:
            out.model_failure = Failure(at, MODEL, check.model_problem)
        if out.impl_failure is None and check.impl_problem is not None:
            out.impl_failure = Failure(at, IMPLEMENTATION, check.impl_problem)
        both = out.model_failure is not None and out.impl_failure is not None
        return both or (until_first and out.first is not None)

    try:
        for at, op in enumerate(steps, 1):
            if note(at, op, run.step(op)):
                return out
        teardown = len(steps) + 1
        if run.state.panic is not None or out.impl_failure is not None:
            return out
        for op in run.quiesce_ops():
            if note(teardown, op, run.step(op)):
                return out
        problem = run.finish()
        if problem is not None:
            out.impl_failure = Failure(teardown, IMPLEMENTATION, problem)
        return out
    finally:
        run.close()


def shrink_lockstep_trace(
    cfg: Config, steps: Sequence[ops.Op], adapter_factory: AdapterFactory = InProcessImpl
) -> list[ops.Op]:
    """The shortest-found trace that still fails on the same side, cut at its failing step."""
    original = drive(cfg, steps, adapter_factory(), until_first=True).first
    if original is None:
        return list(steps)

    def fails(candidate: Sequence[ops.Op]) -> bool:
        found = drive(cfg, candidate, adapter_factory(), until_first=True).first
        return found is not None and found.side == original.side

    shrunk = delete_with_renumbering(cfg, ddmin(steps[: original.step], fails), fails)
    final = drive(cfg, shrunk, adapter_factory(), until_first=True).first
    assert final is not None
    return shrunk[: final.step]


# --- the hypothesis machine ------------------------------------------------------------------------


def make_lockstep_machine(
    cfg: Config = LOCKSTEP_CONFIG,
    bounds: Bounds = LOCKSTEP_BOUNDS,
    stats: RunStats | None = None,
    adapter_factory: AdapterFactory = InProcessImpl,
) -> type[RuleBasedStateMachine]:
    """A fresh machine class bound to one config (and so to at most one mutant, of any layer)."""
    run_stats = stats if stats is not None else RunStats()

    class LockstepMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.run = Lockstep(cfg, adapter_factory())
            self.steps: list[ops.Op] = []
            self.observations: list[Observation] = []
            self.failed = False
            run_stats.examples += 1

        def apply(self, op: ops.Op, expect_misuse: bool = False) -> None:
            before = self.run.state
            check = self.run.step(op)
            self.steps.append(op)
            self.observations.append(check.observation)
            record_step(op, check.observation, run_stats)
            problem = (
                misuse_problem(op, check.observation, expect_misuse)
                or check.model_problem
                or check.impl_problem
            )
            if problem is not None:
                self.fail(problem, before)

        def fail(self, problem: str, before: State) -> None:
            self.failed = True
            raise example_failure(
                "Lockstep check",
                cfg,
                run_stats,
                self.steps,
                self.observations,
                before,
                self.run.state,
                problem,
            )

        @rule(data=st.data())
        def step(self, data: st.DataObject) -> None:
            drawn = draw_move(data, cfg, bounds, self.run.state)
            if drawn is not None:
                self.apply(*drawn)

        def teardown(self) -> None:
            try:
                if not self.failed:
                    for op in self.run.quiesce_ops():
                        self.apply(op)
                    problem = self.run.finish()
                    if problem is not None:
                        self.fail(problem, self.run.state)
            finally:
                self.run.close()

    LockstepMachine.__name__ = LockstepMachine.__qualname__ = "LockstepMachine"
    return LockstepMachine


def run_lockstep_check(
    cfg: Config = LOCKSTEP_CONFIG,
    bounds: Bounds = LOCKSTEP_BOUNDS,
    hypothesis_settings: settings | None = None,
    save_as: Path | None = None,
    adapter_factory: AdapterFactory = InProcessImpl,
) -> CheckOutcome:
    """The lockstep machine under a profile's budget; a failure is shrunk, printed and saved."""
    stats = RunStats()
    machine = make_lockstep_machine(cfg, bounds, stats, adapter_factory)
    try:
        run_state_machine_as_test(machine, settings=search_settings(hypothesis_settings))
    except InvariantViolation as e:
        return CheckOutcome(
            "lockstep", False, stats, report_lockstep_failure(cfg, e, save_as, adapter_factory)
        )
    return CheckOutcome("lockstep", True, stats)


def report_lockstep_failure(
    cfg: Config,
    failure: InvariantViolation,
    save_as: Path | None,
    adapter_factory: AdapterFactory = InProcessImpl,
) -> str:
    """Shrink the failing steps, print them with the state diff, and save them for replay."""
    steps = shrink_lockstep_trace(cfg, failure.steps, adapter_factory)
    driven = drive(cfg, steps, adapter_factory(), until_first=True)
    found = driven.first
    problem = failure.problem if found is None else found.problem
    teardown = " and the teardown" if found is not None and found.step > len(steps) else ""
    if found is None:
        # Only the machine knew this failure (a misuse expectation): show the steps it ran.
        del driven.steps[len(steps) :], driven.observations[len(steps) :], driven.states[len(steps) + 1 :]
    return save_and_format(
        f"Lockstep check failed ({cfg.build} build, mutant={cfg.mutant}; shrunk from "
        f"{len(failure.steps)} to {len(steps)} steps{teardown}): {problem}",
        cfg,
        driven.steps,
        driven.observations,
        driven.states,
        problem,
        save_as,
    )


# --- replay ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayReport:
    """Where a trace first goes wrong on each side (1-based steps; `steps + 1` is the teardown)."""

    steps: int
    model_failure: tuple[int, str] | None
    impl_failure: tuple[int, str] | None

    def describe(self) -> str:
        def side(name: str, failure: tuple[int, str] | None) -> str:
            if failure is None:
                return f"{name}: ok"
            at = "teardown" if failure[0] == self.steps + 1 else f"step {failure[0]}"
            return f"{name}: fails at {at}: {failure[1]}"

        return "\n".join(
            [
                f"replayed {self.steps} steps on the model and the implementation",
                side("model", self.model_failure),
                side("implementation", self.impl_failure),
            ]
        )


def replay(trace: tracefile.Trace, adapter: ImplAdapter | None = None) -> ReplayReport:
    """Run a trace on both sides with its config (its mutant, of any layer, included)."""
    driven = drive(trace.config, trace.steps, adapter or InProcessImpl(), until_first=False)

    def at(failure: Failure | None) -> tuple[int, str] | None:
        return None if failure is None else (failure.step, failure.problem)

    return ReplayReport(len(trace.steps), at(driven.model_failure), at(driven.impl_failure))
