"""Lockstep: the reference model and an implementation driven through the same operations.

After every step the two sides are compared through one explicit observable projection (result,
values dropped by the step, stack canary, memory faults), computed by `project_model` from the
model's observation and by `project_impl` from the implementation's plain-data outcome. Then the
implementation's raw memory is checked against the model's state (`memory_problems`): `ref_count`
read at footer offset 0, `value_ptr`, every alignment and the footer's place by `layout_for`, the
table's `next`/`end` words, the chunk, handles, globals and every stack word. Whatever the checking
heap reported is a failure too, and so are leaks when the run is torn down.

Refs are model ids on one side and ref words on the other (footer addresses; handles under
`opaque-refs`); `RefMap` pairs them in allocation order, after `refs.distinct` has checked that a
new ref's word is no live ref's. A check the declared capabilities rule out
(`memory_checks.checks_ruled_out`) never fails a step. The same `Lockstep` runner serves the
hypothesis machine (`lockstep.check`), the exhaustive runs, and `drive` and `replay` of a trace.

This module is what runs per step, and is compiled (`compiled.COMPILED_MODULES`); what runs per
failure (shrinking, the report) and Hypothesis's machine are in `lockstep.check`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from externref_harness import trace as tracefile
from externref_harness.errors import UsageError, shown
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import (
    ImplAdapter,
    PlainOp,
    Replayed,
    StepOutcome,
    format_report,
    plain_config,
    plain_op,
    record,
)
from externref_harness.isolation.pool import ImplementationCrash, ReplayFrame
from externref_harness.lockstep import deadline
from externref_harness.lockstep.deadline import Timeout, time_limit
from externref_harness.lockstep.identity import IdentityChecks
from externref_harness.lockstep.memory_checks import (
    CHECKS,
    ChunkCompare,
    Level,
    Problem,
    checks_ruled_out,
    memory_problems,
    new_ref_problems,
)
from externref_harness.lockstep.projection import FIELDS, RefMap, StackFacts, project_impl, project_model
from externref_harness.model import ops
from externref_harness.model.assertions import probed_assertion, release_outcome, walk_reaches_wasm
from externref_harness.model.capabilities import OPAQUE_REFS
from externref_harness.model.moves import next_quiesce_op, quiesce_step_bound
from externref_harness.model.observation import Misuse, Observation, Panic
from externref_harness.model.runtime import SeedRuntime
from externref_harness.model.state import Config, State
from externref_harness.model.transition import step as model_step
from externref_harness.search.space import MACHINE_BOUNDS, MACHINE_CONFIG
from externref_harness.specs.invariants import Incremental, first_violation

LOCKSTEP_CONFIG = MACHINE_CONFIG
LOCKSTEP_BOUNDS = MACHINE_BOUNDS

AdapterFactory = Callable[[], ImplAdapter]
#: What `Lockstep._submit` did: None (the adapter steps synchronously), True (the step is under way
#: in the implementation's process), or the exception that starting it raised.
Submitted = bool | Exception | None
#: The most steps sent to the implementation's process in one batch (`Lockstep.step`'s `following`).
BATCH = 64


@dataclass(frozen=True)
class LockstepOptions:
    """What a lockstep run holds an implementation to, and what to call it in reports."""

    #: Only checks of these levels (`memory_checks.CHECKS`) fail a step.
    levels: frozenset[Level] = frozenset(("conformant", "strict"))
    #: Checks known to diverge (an expectations file): reported, not failing.
    expected: frozenset[str] = frozenset()
    #: The implementation, as reports name it.
    impl_name: str = "ctypes impl"
    #: What `replay` needs besides the trace to run it on the same implementation.
    replay_args: str = ""


DEFAULT_OPTIONS = LockstepOptions()


# --- one run on both sides -------------------------------------------------------------------------


class StepCheck(NamedTuple):
    """Both sides' verdict on one step (a NamedTuple: one is made every step, see `Projection`)."""

    observation: Observation
    #: The model panicked or broke an invariant.
    model_problem: str | None
    #: The implementation diverged, failed a raw-memory check, or the checking heap reported.
    impl_problem: str | None
    #: The named checks behind `impl_problem` (empty when it is a crash or an exception).
    impl_problems: tuple[Problem, ...] = ()


#: `InProcessImpl.step`, as an adapter's class has it when it does not change it.
_IN_PROCESS_STEP = InProcessImpl.step


class ReplaySent(NamedTuple):
    """A replay sent and not yet read (`Lockstep.send_replay`): each planned step
    `(op, before, after, observation, kept step)` and the adapter's iterator of its replies."""

    planned: list[tuple[ops.Op, State, State, Observation, KeptStep | None]]
    taken: Iterator[Replayed | ReplayFrame]


class _StepName:
    """"the implementation's OP", formatted only if a time limit needs it."""

    __slots__ = ("op",)

    def __init__(self, op: ops.Op) -> None:
        self.op = op

    def __str__(self) -> str:
        return f"the implementation's {self.op}"


def raised(e: Exception, at: str = "") -> str:
    """What an adapter's exception says of the implementation: a crash of its process as itself
    (`the implementation's process killed by SIGSEGV during step`), anything else as raised."""
    if isinstance(e, ImplementationCrash):
        return f"{e}{at}"
    return f"the implementation raised {type(e).__name__}{at}: {e}"


#: The node of `ModelSteps`' tree of replies at a run's start, before any reply.
REPLY_ROOT = 0
#: `ModelSteps.reply_limit`: a remembered reply costs the lockstep's process a few hundred bytes.
#: The C reference's replies at the exhaustive default bounds leave at most 31,560 (the replayed
#: steps not known; the 2.28 million known are what they save); a library whose replies differ
#: from run to run (a serial number in a value, say) would leave one per replayed step, 2.3
#: million, and match none.
REPLY_LIMIT = 250_000


class KeptStep:
    """A replayed step whose model side passed, from one kept state by one op (`ModelSteps`), and
    the implementation's replies to it that passed every check, by the lockstep state they came in."""

    __slots__ = ("after", "observation", "replies", "state")

    def __init__(self, state: State, after: State, observation: Observation) -> None:
        self.state = state
        self.after = after
        self.observation = observation
        #: `(node before, reply's bytes)` -> `(node after, the reply's allocations)` (`ModelSteps`).
        self.replies: dict[tuple[int, bytes], tuple[int, tuple[tuple[int, int], ...]]] = {}


class ModelSteps:
    """The model's side of replayed steps, kept across the runs of one search (`Lockstep.replay`),
    and the implementation's replies to them that were checked and passed.

    The exhaustive runs each replay a tree path from the root, and the paths share their
    prefixes, so the model would step the same state by the same op, and check the same
    invariants, once per run that passes there. The model is a pure function: a step taken before
    from the very same state object is looked up, not computed again, with its invariants (they
    held, or it would not be kept). Lookups are by identity, so each run starts from the one
    `root` object and follows the kept objects; the kept states keep their ids from being reused.

    The implementation's side of each replayed step is run in its process, and its reply read,
    every time. The checks of a reply (`Lockstep._outcome_problems`) are a function of the op,
    the model's step, the reply and the lockstep's state before it, which in a replay is a function
    of the replies before it in the run: so a run's lockstep state is a node of a tree of replies,
    the root a run's start (`REPLY_ROOT`), and a reply that repeats, byte for byte, one that passed every
    check from the same node and by the same kept step passes them again, with the same
    allocations. It is not decoded or checked again (`ReplayFrame.known`). A reply that differs in
    any byte is checked in full, and so is every step after it in that run. A child process puts
    each run's stack where the last one's was (`impl.stack.NativeStack.release`), and the kernel
    hands a released heap's mappings back to the next heap, so a deterministic implementation
    repeats its replies."""

    def __init__(self, cfg: Config, reply_limit: int = REPLY_LIMIT) -> None:
        self.cfg = cfg
        self.root = State.initial(cfg)
        #: How many replies are remembered at most (`passed`): past it, a run's lockstep state
        #: leaves the tree at its next checked reply, and what follows is checked in full.
        self.reply_limit = reply_limit
        self.replies_kept = 0
        self._steps: dict[tuple[int, ops.Op], KeptStep] = {}
        #: Replayed model steps looked up rather than computed (what a test counts).
        self.hits = 0
        #: Replies known, byte for byte, to pass (not decoded or checked again), and replies that
        #: were checked in full: what a test and the figures count.
        self.known_replies = 0
        self.checked_replies = 0
        self._nodes = REPLY_ROOT

    def get(self, state: State, op: ops.Op) -> KeptStep | None:
        kept = self._steps.get((id(state), op))
        if kept is None:
            return None
        assert kept.state is state, "a kept state keeps its id"
        self.hits += 1
        return kept

    def keep(self, state: State, op: ops.Op, after: State, obs: Observation) -> KeptStep:
        """A replayed step whose model side passed (no panic, no misuse, its invariants held)."""
        kept = self._steps[(id(state), op)] = KeptStep(state, after, obs)
        return kept

    def passed(
        self, step: KeptStep, node: int, raw: bytes, allocated: tuple[tuple[int, int], ...]
    ) -> int | None:
        """The reply `raw` to `step` from lockstep state `node` passed every check: the node after
        it, or None when `reply_limit` replies are remembered already (the run leaves the tree)."""
        if self.replies_kept >= self.reply_limit:
            return None
        self.replies_kept += 1
        self._nodes += 1
        step.replies[(node, raw)] = (self._nodes, allocated)
        return self._nodes


class Lockstep:
    """One run: the model's state and an implementation, stepped together."""

    def __init__(
        self,
        cfg: Config,
        adapter: ImplAdapter,
        check_invariants: bool = True,
        options: LockstepOptions = DEFAULT_OPTIONS,
        model_steps: ModelSteps | None = None,
    ) -> None:
        self.cfg = cfg
        assert model_steps is None or model_steps.cfg == cfg, "the kept steps are of another config"
        self.state = State.initial(cfg) if model_steps is None else model_steps.root
        #: The model's replayed steps kept across runs (None: each computed and checked).
        self._model_steps = model_steps
        #: The node of `ModelSteps`' tree of replies this run's lockstep state is at (None: off it).
        self._reply_node: int | None = None
        self.adapter = adapter
        self.refs = RefMap()
        self.check_invariants = check_invariants
        #: Only checks of these levels fail a step; `expected` names checks known to diverge.
        self.levels = options.levels
        self.expected = options.expected
        #: Checks that failed but were expected to (an expectations file): reported, not failing.
        self.expected_seen: set[str] = set()
        self._chunk = ChunkCompare()
        self._identity = IdentityChecks(opaque=cfg.has(OPAQUE_REFS))
        #: The model's invariants after each step, at the cost of what the step changed.
        self._invariants = Incremental()
        #: Checks the declared capabilities rule out: never run, never failing.
        self.ruled_out = frozenset(r.check for r in checks_ruled_out(cfg.capabilities))
        #: The model's state last checked by `_model_problem` whose invariants held (None: none,
        #: or not checked): the memory checks may rely on them there (`memory_problems`).
        self._sound: State | None = None
        #: Why the teardown stopped before quiescence, if it did.
        self.gave_up: str | None = None
        #: Why the implementation is no longer stepped (it hung, or could not start).
        self.impl_broken: str | None = None
        #: Steps sent to the implementation's process ahead of this one, in order (a batch): each
        #: is under way there, its reply collected when `step` reaches it.
        self._under_way: deque[ops.Op] = deque()
        #: The model's steps `_batch` computed ahead, `(op, before, after, observation)` in order:
        #: `step` takes its own from here when it is that op from that very state (the model is
        #: deterministic), instead of stepping the model a second time.
        self._ahead: deque[tuple[ops.Op, State, State, Observation]] = deque()
        #: The model's steps the caller computed before the run (`foresee`) and the teardown's
        #: (`quiesce_ops`), by (id of the state before, id of the op): `(before, op, after,
        #: observation)`.
        self._foreseen: dict[tuple[int, int], tuple[State, ops.Op, State, Observation]] = {}
        self._foreseen_start: State | None = None
        # What an adapter in another process offers besides `ImplAdapter` (`isolation.pool`),
        # looked up once: a failed `getattr` on an in-process adapter costs an exception per step.
        self._replay_on: Callable[[list[tuple[PlainOp, int | None]]], Iterator[Replayed | ReplayFrame]] | None
        self._replay_on = getattr(adapter, "replay", None)
        self._submit_one: Callable[[PlainOp, int | None], None] | None = getattr(adapter, "submit", None)
        self._submit_many: Callable[[list[tuple[PlainOp, int | None]]], None] | None
        self._submit_many = getattr(adapter, "submit_many", None)
        #: An adapter in this process may take the op itself (`InProcessImpl.step_op`): its plain
        #: form, made here and read back there, would only be the same op again. Not when a
        #: subclass changes `step`: what it answers there is what the lockstep must see.
        self._step_op: Callable[[ops.Op, int | None], StepOutcome] | None = None
        if getattr(type(adapter), "step", None) is _IN_PROCESS_STEP:
            self._step_op = getattr(adapter, "step_op", None)
        try:
            with time_limit(self._own_limit(), "the implementation's start"):
                adapter.start(plain_config(cfg))
        except Timeout as hung:
            self.impl_broken = f"the implementation hung: {hung}"
        except Exception as e:
            self.impl_broken = raised(e, " at start")

    def _own_limit(self) -> float:
        """The seconds the lockstep gives a call of the implementation (`deadline.time_limit`):
        none for one in another process, whose pool limits every read of its replies (and whose
        start or batch is only sent here, not waited for), so no timer is armed for it."""
        return 0 if self._submit_one is not None else deadline.STEP_SECONDS

    def step(self, op: ops.Op, following: Sequence[ops.Op] = ()) -> StepCheck:
        """Step both sides by `op` and check them.

        `following` (the steps the caller will give next, when it knows them) lets an adapter in
        another process take `op` and the steps after it in one batch (`_submit`): the child runs
        them back to back while the parent compares each reply as it comes back, instead of a
        round trip per step. The checks are the same, step by step, in order."""
        before = self.state
        if self._under_way:
            assert self._under_way[0] is op, "step() must be given the steps it was told follow"
            self._under_way.popleft()
            submitted: Submitted = True
        else:
            submitted = self._submit(op, before, following)
        ahead = self._ahead
        if ahead and ahead[0][0] is op and ahead[0][1] is before:
            _, _, self.state, obs = ahead.popleft()
        else:
            ahead.clear()
            self.state, obs = self._model_step(before, op)
        model_problem = self._model_problem(before, obs)
        problem, problems = self._impl_step(op, obs, before, submitted)
        return record(StepCheck, (obs, model_problem, problem, problems))

    def foresee(self, start: State, steps: Sequence[tuple[ops.Op, State, Observation]]) -> None:
        """The model's steps by the ops that follow from `start`, as the caller already computed
        them with the same pure function (`model.transition.step`; the exhaustive planner steps the
        model to choose a run's moves): the lockstep looks them up, by identity, instead of
        stepping the model again, and still checks each one (its panic, its invariants) as its
        own. A replay that ends in a state equal to `start` goes on from `start` itself, so that
        the look-ups find it (`send_replay`)."""
        self._foreseen_start = start
        self._foreseen = {}
        before = start
        for op, after, obs in steps:
            self._foreseen[(id(before), id(op))] = (before, op, after, obs)
            before = after

    def _model_step(self, before: State, op: ops.Op) -> tuple[State, Observation]:
        """The model's step from `before` by `op`: looked up if the caller foresaw it (`foresee`)."""
        foreseen = self._foreseen.get((id(before), id(op)))
        if foreseen is not None and foreseen[0] is before and foreseen[1] is op:
            return foreseen[2], foreseen[3]
        return model_step(self.cfg, before, op)

    def _model_problem(self, before: State, obs: Observation) -> str | None:
        """The model's failure at the step from `before` to `self.state`: a panic, or a broken
        invariant. A state whose invariants were checked and held is `_sound`."""
        self._sound = None
        if isinstance(obs.result, Panic):
            return f"the model panicked: {obs.result.message}"
        if self.check_invariants:
            violation = self._invariants.check(self.cfg, before, self.state)
            if violation is not None:
                return f"{violation[0].id} {violation[0].name}: {violation[1]}"
            self._sound = self.state
        return None

    def replay(
        self,
        steps: Sequence[ops.Op],
        following: Sequence[ops.Op] = (),
        meanwhile: Callable[[], object] | None = None,
    ) -> list[StepCheck]:
        """Reach a state again along transitions this implementation has already passed: `steps`
        run in its process without a probe between them, and checked as they come back.

        The exhaustive runs start each run at the root and follow the plan's tree path to the class
        whose moves they cover next; every step of that path was executed and checked, every
        check included, by an earlier run (`exhaustive.execute`). What a replayed step is held to:
        the model's side as `step`'s (its panic, its invariants; or, for a step the model took
        before from the very same state, looked up: `ModelSteps`); the implementation's outcome as
        `step`'s (`_outcome_problems`: allocations, the new refs' words, the projection of its
        result, dropped values, canary and faults, the drop order, the checking heap's reports).
        Not per replayed step: the identity checks of `Eq` and `Cmp` (they read a probe), and the
        memory checks and the checking heap's comparison with its shadow
        (`InProcessImpl.replay`), which run once, on the memory the last replayed step left,
        against the model's state there.

        The replay ends before a step the model panics on or refuses (`_batch`'s rule: the state
        after it depends on the implementation's answer) and at the first failing step; the
        caller goes on from `self.state` with `step`. An adapter without `replay`, or a run
        with steps under way, replays nothing (the empty list). `following` are the steps the
        caller will `step` after the replay: an adapter in another process is sent their first
        batch right behind the replay, so that it runs them while the replay is checked here.
        `meanwhile` is called once the replay is sent, before anything comes back: work of the
        caller's that the implementation's process need not wait for (not called when nothing is
        replayed)."""
        sent = self.send_replay(steps, following)
        if sent is None:
            return []
        if meanwhile is not None:
            meanwhile()
        return self.check_replay(sent)

    def send_replay(self, steps: Sequence[ops.Op], following: Sequence[ops.Op] = ()) -> ReplaySent | None:
        """`replay`'s first half: the model's side planned and the replay (and `following`'s first
        batch) sent, nothing read. `check_replay` reads and checks it; until then this run's
        state is the one before the replay. None: nothing to replay (`replay`'s empty list)."""
        replay = self._replay_on
        if replay is None or self.impl_broken is not None or self._under_way:
            return None
        planned: list[tuple[ops.Op, State, State, Observation, KeptStep | None]] = []
        state = self.state
        kept = self._model_steps
        for op in steps:
            known = None if kept is None else kept.get(state, op)
            if known is None:
                after, obs = model_step(self.cfg, state, op)
                if isinstance(obs.result, (Panic, Misuse)):
                    break
            else:
                after, obs = known.after, known.observation
            planned.append((op, state, after, obs, known))
            state = after
        self._ahead.clear()
        if not planned:
            return None
        start = self._foreseen_start
        if start is not None and state is not start and state == start:
            # The replay ends where the caller's foreseen steps start: go on from that very
            # object (equal states, one pure model), so that `_model_step` finds them.
            op, before, _, obs, known = planned[-1]
            planned[-1] = (op, before, start, obs, known)
            state = start
        try:
            taken = replay([(plain_op(op), self._capacity(before)) for op, before, _, _, _ in planned])
        except Exception as e:  # the implementation's process was gone: its first step's failure
            taken = _raising(e)
        submit_many = self._submit_many
        if following and submit_many is not None and len(planned) == len(steps):
            try:
                self._under_way.extend(self._send_batch(submit_many, following[0], state, following[1:]))
            except Exception:
                self._ahead.clear()  # the replay's first frame says what became of the process
        return ReplaySent(planned, taken)

    def check_replay(self, sent: ReplaySent) -> list[StepCheck]:
        """`replay`'s second half: each replayed step's reply read and checked, in order (see
        `replay`), after `send_replay` sent them."""
        planned, taken = sent.planned, sent.taken
        kept = self._model_steps
        checks: list[StepCheck] = []
        # A run's start is the root of the replies' tree (`ModelSteps`); any other state is off it.
        at_start = kept is not None and self.state is kept.root and not self.refs.footers
        self._reply_node = REPLY_ROOT if at_start else None
        for i, (op, before, after, obs, known) in enumerate(planned):
            self.state = after
            model_problem = None if known is not None else self._model_problem(before, obs)
            if kept is not None and known is None and model_problem is None:
                known = kept.keep(before, op, after, obs)
            last = i == len(planned) - 1
            problem, problems = self._replayed(op, obs, before, taken, last, known)
            checks.append(record(StepCheck, (obs, model_problem, problem, problems)))
            if model_problem is not None or problem is not None:
                break
        self._reply_node = None
        close = getattr(taken, "close", None)
        if close is not None:
            close()  # a replay stopped at a failure: its adapter knows it now, not at collection
        return checks

    @property
    def steps_under_way(self) -> int:
        """How many of the steps a `following` named are in the implementation's process, not yet
        stepped here."""
        return len(self._under_way)

    def close_ahead(self, finish: bool = False) -> bool:
        """Every request of this run is sent (the caller knows no step follows those under way;
        with `finish`, its teardown's steps are among them and the leak check's `finish` is sent
        first, for `finish` to read): the implementation's process is told now to close the run,
        so that it goes on to the next run's requests while this one's replies are still being
        checked here. False when the adapter cannot (it steps in this process) or the run is
        broken; `close` (and `finish`) then do as they would have."""
        close_ahead: Callable[[], bool] | None = getattr(self.adapter, "close_ahead", None)
        send_finish: Callable[[], bool] | None = getattr(self.adapter, "send_finish", None)
        if close_ahead is None or self.impl_broken is not None:
            return False
        if finish and (send_finish is None or not send_finish()):
            return False
        return close_ahead()

    def _replayed(
        self,
        op: ops.Op,
        obs: Observation,
        before: State,
        taken: Iterator[Replayed | ReplayFrame],
        last: bool,
        known: KeptStep | None,
    ) -> tuple[str | None, tuple[Problem, ...]]:
        """One replayed step's checks, and after the last one the memory checks (`replay`)."""
        return self._limited(
            op, self._own_limit(), lambda: self._replayed_checked(op, obs, before, taken, last, known)
        )

    def _replayed_checked(
        self,
        op: ops.Op,
        obs: Observation,
        before: State,
        taken: Iterator[Replayed | ReplayFrame],
        last: bool,
        known: KeptStep | None,
    ) -> tuple[str | None, tuple[Problem, ...]]:
        node = self._reply_node
        try:
            got = next(taken)
            frame = got if type(got) is ReplayFrame else None
            if frame is not None:
                passed = None if node is None or known is None else known.replies.get((node, frame.raw))
                if passed is not None:
                    return self._known_reply(frame, passed, taken, last)
                got = frame.decoded()
        except Exception as e:  # the implementation under test crashed: that is its failure
            return raised(e), ()
        assert type(got) is Replayed
        problems, obs, complete = self._outcome_problems(op, obs, before, got.outcome, got)
        kept = self._model_steps
        if node is not None and kept is not None:
            kept.checked_replies += 1
            passed_all = not problems and known is not None and frame is not None
            self._reply_node = None
            if passed_all:
                assert known is not None and frame is not None
                self._reply_node = kept.passed(known, node, frame.raw, tuple(got.outcome.allocated))
        if complete and last:
            try:
                problems += self._replay_end(taken)
            except Exception as e:
                return raised(e), ()
        return self._verdict(problems)

    def _known_reply(
        self,
        frame: ReplayFrame,
        passed: tuple[int, tuple[tuple[int, int], ...]],
        taken: Iterator[Replayed | ReplayFrame],
        last: bool,
    ) -> tuple[str | None, tuple[Problem, ...]]:
        """A reply that repeats one that passed every check from this lockstep state (`ModelSteps`):
        the same allocations are added, and it passes again."""
        assert self._model_steps is not None
        self._model_steps.known_replies += 1
        frame.known = True
        self._reply_node, allocated = passed
        for word, value in allocated:
            self.refs.add(word, value)
        problems: list[Problem] = []
        if last:
            try:
                problems = self._replay_end(taken)
            except Exception as e:
                return raised(e), ()
        return self._verdict(problems)

    def _replay_end(self, taken: Iterator[Replayed | ReplayFrame]) -> list[Problem]:
        """After a replay's last step: the probe of the memory it left, and the memory checks."""
        if next(taken, None) is not None:
            raise RuntimeError("the replay ran more steps than it was given")
        probe = self.adapter.probe()
        return memory_problems(
            self.cfg, self.state, probe, self.refs, self._chunk, model_sound=self._sound is self.state
        )

    def _capacity(self, before: State) -> int | None:
        """When capacity in another unit is an expected divergence (an expectations file), the
        embedder's pre-GC check uses the model's capacity (the seed's bytes), so a runtime that
        counts in slots is charged for that one divergence, not for the embedder's knock-on choices.
        Without it, capacity in slots must be declared (`capacity-slots`): it is no tolerance."""
        if "observed.bump-capacity-bytes" in self.expected:
            # Under `capacity-slots` the model answers in slots too, so the two sides agree.
            return SeedRuntime(self.cfg, before).bump_capacity_remaining()
        return None

    def _submit(self, op: ops.Op, before: State, following: Sequence[ops.Op] = ()) -> Submitted:
        """An adapter in another process starts the step now, and runs it while the model steps;
        with `following`, it starts the batch `_batch` cuts from `op` and them."""
        submit = self._submit_one
        if submit is None or self.impl_broken is not None:
            return None
        submit_many = self._submit_many
        try:
            if following and submit_many is not None:
                self._under_way.extend(self._send_batch(submit_many, op, before, following)[1:])
            else:
                submit(plain_op(op), self._capacity(before))
        except Exception as e:
            return e
        return True

    def _send_batch(
        self,
        submit_many: Callable[[list[tuple[PlainOp, int | None]]], None],
        op: ops.Op,
        before: State,
        following: Sequence[ops.Op],
    ) -> list[ops.Op]:
        """Send the batch `_batch` cuts from `op` and `following`; the steps it holds."""
        batch = self._batch(op, before, following)
        submit_many([(plain_op(o), capacity) for o, capacity in batch])
        return [o for o, _ in batch]

    def _batch(
        self, op: ops.Op, before: State, following: Sequence[ops.Op]
    ) -> list[tuple[ops.Op, int | None]]:
        """`op` and the steps after it, each with the embedder capacity its model state gives,
        up to `BATCH` steps. The model's states are computed ahead here (the model is
        deterministic); the batch ends at a step the model panics on or refuses, since after a
        refused misuse the model's state depends on the implementation's answer
        (`_assertion_probe`). The child ends it at a step the implementation panics on."""
        batch: list[tuple[ops.Op, int | None]] = []
        state = before
        self._ahead.clear()
        for o in (op, *following[: BATCH - 1]):
            batch.append((o, self._capacity(state)))
            after, obs = self._model_step(state, o)
            self._ahead.append((o, state, after, obs))
            state = after
            if isinstance(obs.result, (Panic, Misuse)):
                break
        return batch

    def _impl_step(
        self, op: ops.Op, obs: Observation, before: State, submitted: Submitted = None
    ) -> tuple[str | None, tuple[Problem, ...]]:
        """The implementation's step and every check of it, within `_own_limit`. After
        a step that hung, the implementation is not run again (its state is unknown)."""
        if self.impl_broken is not None:
            return self.impl_broken, ()
        return self._limited(
            op, self._own_limit(), lambda: self._impl_step_checked(op, obs, before, submitted)
        )

    def _limited(
        self, op: ops.Op, seconds: float, checked: Callable[[], tuple[str | None, tuple[Problem, ...]]]
    ) -> tuple[str | None, tuple[Problem, ...]]:
        """`checked` (the implementation's step and its checks) within a step time limit of
        `seconds` (0: none here). A hang breaks the run: the implementation is not run again."""
        try:
            with time_limit(seconds, _StepName(op)):
                return checked()
        except Timeout as hung:
            self.impl_broken = f"the implementation hung: {hung}"
            return self.impl_broken, ()
        except Exception as e:  # a check could not read what the implementation handed back
            return f"the lockstep checks raised {type(e).__name__} on the implementation's outcome: {e}", ()

    def _impl_step_checked(
        self, op: ops.Op, obs: Observation, before: State, submitted: Submitted = None
    ) -> tuple[str | None, tuple[Problem, ...]]:
        capacity = self._capacity(before)
        try:
            if isinstance(submitted, Exception):
                raise submitted
            if submitted:
                try:
                    outcome = self.adapter.collect()  # type: ignore[attr-defined]
                finally:
                    # The adapter says how many of the batch are still under way: none after a
                    # panic (the child ended the batch there) or a crash.
                    for _ in range(len(self._under_way) - getattr(self.adapter, "pending", 0)):
                        self._under_way.pop()
            elif self._step_op is not None:
                outcome = self._step_op(op, capacity)
            elif capacity is None:
                outcome = self.adapter.step(plain_op(op))
            else:
                outcome = self.adapter.step(plain_op(op), capacity)
            probe = self.adapter.probe()
        except Exception as e:  # the implementation under test crashed: that is its failure
            return raised(e), ()
        problems, obs, complete = self._outcome_problems(op, obs, before, outcome, probe)
        if complete:
            problems += self._identity.problems(op, outcome, probe, self.refs)
            if not isinstance(obs.result, Panic):
                problems += memory_problems(
                    self.cfg, self.state, probe, self.refs, self._chunk, model_sound=self._sound is self.state
                )
        return self._verdict(problems)

    def _outcome_problems(
        self, op: ops.Op, obs: Observation, before: State, outcome: StepOutcome, stack: StackFacts
    ) -> tuple[list[Problem], Observation, bool]:
        """The checks of one step's outcome (the allocations, the new refs' words, the misuse probe,
        the projection, the drop order, the checking heap's reports); whether the step's outcome was
        whole enough for the memory checks (the model and the implementation allocated as many
        refs). The observation is the model's, as `_assertion_probe` may have changed it."""
        new_refs = len(self.state.heap) - len(before.heap)
        if new_refs != len(outcome.allocated):
            text = f"the model allocated {new_refs} refs, the implementation {len(outcome.allocated)}"
            text += _panic_note(outcome.result)
            return [Problem("observed.allocations", text)], obs, False
        problems: list[Problem] = new_ref_problems(before, outcome.allocated, self.refs)
        for word, value in outcome.allocated:
            self.refs.add(word, value)
        if isinstance(obs.result, Misuse) and len(outcome.result) > 3:
            probed, obs = self._assertion_probe(op, obs, before, outcome.result[3])
            problems += probed
        model_view = project_model(op, obs, before, self.state)
        impl_view = project_impl(op, outcome, stack, self.refs)
        if outcome.result[0] == "unsupported":
            # The runtime lacks this optional function (`num_filled_in_bump_chunk`, `elements`).
            impl_view = impl_view._replace(result=model_view.result)
        problems += [
            Problem(
                f"observed.{name}", f"model {getattr(model_view, name)!r}, impl {getattr(impl_view, name)!r}"
            )
            for name in FIELDS
            if getattr(model_view, name) != getattr(impl_view, name)
        ]
        problems = [_capacity_unit(op, p, model_view.result, impl_view.result) for p in problems]
        problems = [_with_panic_message(p, outcome.result) for p in problems]
        problems += drop_order_problems(before, outcome.dropped, self.refs)
        problems += [Problem("heap.report", format_report(r)) for r in outcome.reports]
        return problems, obs, True

    def _assertion_probe(
        self, op: ops.Op, obs: Observation, before: State, answer: object
    ) -> tuple[list[Problem], Observation]:
        """The refused misuse was also sent to the implementation (`model.assertions`). Strict:
        it panicked where the seed's assertion fires. Conformant: it kept everything; after a
        panic the model's state is the refused step's, and an implementation that went ahead is
        held to the seed's release build from here on, which must break no invariant."""
        assert isinstance(obs.result, Misuse)
        expected = probed_assertion(op, obs.result.kind, walk_reaches_wasm(self.cfg, before))
        if not isinstance(answer, tuple) or answer[:1] not in (("panic",), ("returned",)):
            text = f"the misuse probe's answer is not understood: {shown(repr(answer)[:200])}"
            return [Problem("assert.state-kept", text)], obs
        if expected is None:
            text = f"{op} was sent to the implementation, though it reaches none of the seed's assertions"
            return [Problem("assert.state-kept", text)], obs
        if answer[0] == "panic":
            return [], obs
        problems = [
            Problem("assert.fires", f"the seed panics here ({expected}); the implementation returned")
        ]
        self.state, obs = release_outcome(self.cfg, before, op, obs)
        violation = first_violation(self.cfg, self.state)
        if violation is not None:
            problems.append(
                Problem(
                    "assert.state-kept",
                    f"it went on as the seed's release build does, which breaks "
                    f"{violation[0].id} {violation[0].name}: {violation[1]}",
                )
            )
        return problems, obs

    def _verdict(self, problems: list[Problem]) -> tuple[str | None, tuple[Problem, ...]]:
        """The problems that fail the step: of a selected level and not expected to diverge."""
        failing = []
        for p in problems:
            if CHECKS[p.check] not in self.levels or p.check in self.ruled_out:
                continue
            if p.check in self.expected:
                self.expected_seen.add(p.check)
                continue
            failing.append(p)
        if not failing:
            return None, ()
        lines = "\n".join(f"    {p}" for p in failing)
        return "the implementation fails the lockstep checks:\n" + lines, tuple(failing)

    def quiesce_ops(self, state: State | None = None) -> list[ops.Op]:
        """The shared teardown from `state` (by default this run's state now): unwind, drop
        everything, GC (`model.moves.next_quiesce_op`), within the steps the state needs
        (`quiesce_step_bound`); past that `finish` says it gave up.

        Worked out on the model before any runs (the lockstep steps the model by the same rule),
        so the caller can hand the implementation's process the whole teardown as one batch
        (`step`'s `following`), even behind the run's own steps when it knows the state they
        reach. The model's steps are foreseen (`foresee`), so that stepping the teardown looks them
        up rather than computing them a second time."""
        state = self.state if state is None else state
        bound = quiesce_step_bound(state)
        out: list[ops.Op] = []
        for _ in range(bound):
            op = next_quiesce_op(state)
            if op is None:
                return out
            out.append(op)
            after, obs = model_step(self.cfg, state, op)
            self._foreseen[(id(state), id(op))] = (state, op, after, obs)
            state = after
        if next_quiesce_op(state) is not None:
            self.gave_up = f"the teardown gave up: {bound} steps did not reach quiescence"
        return out

    def finish(self) -> str | None:
        """Drop the runtime and check that the checking heap is empty (not if teardown gave up:
        what is still held would read as a leak)."""
        if self.impl_broken is not None:
            return self.impl_broken
        try:
            with time_limit(self._own_limit(), "the implementation's teardown"):
                reports = self.adapter.finish()
        except Timeout as hung:
            return f"the implementation hung: {hung}"
        except Exception as e:
            return raised(e, " at teardown")
        if self.gave_up is not None:
            return f"{self.gave_up} (a harness bug); the leak check was not run"
        if not reports:
            return None
        lines = [f"    {format_report(r)}" for r in reports]
        return "at teardown the checking heap reports:\n" + "\n".join(lines)

    def close(self) -> None:
        try:
            self.adapter.close()
        finally:
            deadline.release()  # the timer the steps' limits left running (`deadline`)


def _raising(e: Exception) -> Iterator[Replayed]:
    """A replay that fails at its first step with `e`."""
    raise e
    yield  # a generator: `e` is raised by the first `next`


def _capacity_unit(op: ops.Op, p: Problem, model: tuple[object, ...], impl: tuple[object, ...]) -> Problem:
    """`bump_capacity_remaining` in slots where the model answers bytes: named, so the failure says
    what to declare (`capacity-slots`) or expect."""
    if p.check != "observed.result" or not isinstance(op, ops.BumpCapacityRemaining):
        return p
    if model[0] == impl[0] == "ok" and isinstance(model[1], int) and impl[1] == model[1] // 8:
        return Problem(
            "observed.bump-capacity-bytes",
            f"{p.text} (slots, not bytes: a library that counts in slots declares capacity-slots)",
        )
    return p


#: How much of an implementation's panic message a failing step shows.
PANIC_MESSAGE_LIMIT = 300


def _panic_note(result: tuple[object, ...]) -> str:
    """What fired when the implementation panicked (the message `xr_panic_message` gave, escaped
    and cut), for the problem a failing step reports; "" when it did not panic."""
    if result[:1] != ("panic",) or len(result) < 2:
        return ""
    return f"; the implementation panicked: {shown(str(result[1]), PANIC_MESSAGE_LIMIT)}"


def _with_panic_message(p: Problem, result: tuple[object, ...]) -> Problem:
    """A step whose result differs because the implementation panicked says what fired."""
    note = _panic_note(result)
    return Problem(p.check, p.text + note) if note and p.check == "observed.result" else p


def drop_order_problems(before: State, dropped: Sequence[int], refs: RefMap) -> list[Problem]:
    """The seed's `sweep` drops the chunk's refs slot by slot, before any hash-set member: a ref
    held only by chunk slots dies at its last slot, so those drops come in last-slot order."""
    chunk = before.table.chunk
    if len(dropped) < 2 or not chunk:
        return []
    sets = before.table.over_approximated_stack_roots | before.table.precise_stack_roots
    last_slot = {r: i for i, r in enumerate(chunk) if r is not None and r not in sets}
    order = [refs.value(v) for v in dropped]
    chunk_only = [r for r in order if isinstance(r, int) and r in last_slot]
    expected = sorted(chunk_only, key=last_slot.__getitem__)
    if chunk_only == expected:
        return []
    return [
        Problem(
            "observed.drop-order", f"chunk refs dropped in the order {chunk_only}, the seed's is {expected}"
        )
    ]


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
    #: Expected divergences (`LockstepOptions.expected`) that did happen.
    expected_seen: frozenset[str] = frozenset()

    @property
    def first(self) -> Failure | None:
        found = [f for f in (self.model_failure, self.impl_failure) if f is not None]
        return min(found, key=lambda f: f.step) if found else None


MODEL = "model"
IMPLEMENTATION = "implementation"


def check_available(cfg: Config, steps: Sequence[ops.Op]) -> None:
    """Every step runs on an implementation with `cfg`'s capabilities (one-line `UsageError`)."""
    for at, op in enumerate(steps, 1):
        why = ops.unavailable(op, cfg.capabilities)
        if why is not None:
            raise UsageError(f"step {at} ({op}) cannot run: {why} ({', '.join(cfg.capabilities)})")


def drive(
    cfg: Config,
    steps: Sequence[ops.Op],
    adapter: ImplAdapter,
    until_first: bool,
    options: LockstepOptions = DEFAULT_OPTIONS,
) -> Driven:
    """Run `steps` in lockstep, then tear down (unless a side panicked or already failed).

    With `until_first`, stop at the first failure of either side; otherwise go on until both
    sides have failed, so each side's first failure is known. A step that calls a function the
    implementation lacks by its capabilities (`ops.unavailable`) is refused before anything runs.
    """
    check_available(cfg, steps)
    run = Lockstep(cfg, adapter, options=options)
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
            if note(at, op, run.step(op, steps[at : at + BATCH])):
                return out
        teardown = len(steps) + 1
        if run.state.panic is not None or out.impl_failure is not None:
            return out
        quiesce = run.quiesce_ops()
        for i, op in enumerate(quiesce):
            if note(teardown, op, run.step(op, quiesce[i + 1 :])):
                return out
        problem = run.finish()
        if problem is not None:
            out.impl_failure = Failure(teardown, IMPLEMENTATION, problem)
        return out
    finally:
        out.expected_seen = frozenset(run.expected_seen)
        run.close()


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


def replay(
    trace: tracefile.Trace, adapter: ImplAdapter | None = None, options: LockstepOptions = DEFAULT_OPTIONS
) -> ReplayReport:
    """Run a trace on both sides with its config (its mutant, of any layer, included)."""
    driven = drive(trace.config, trace.steps, adapter or InProcessImpl(), until_first=False, options=options)

    def at(failure: Failure | None) -> tuple[int, str] | None:
        return None if failure is None else (failure.step, failure.problem)

    return ReplayReport(len(trace.steps), at(driven.model_failure), at(driven.impl_failure))
