"""`Lockstep.replay`: a run's start reached again along transitions already checked, in the
implementation's own process and in a child's. Each replayed step's outcome is checked as it comes
back, the memory checks run on the memory the last one left; a crash is the failure of the step
that crashed; a replay cut short by a divergence does not leave its child's frames to the next run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from crashing import crashing_gc_library, load_misbehaving

from externref_harness.isolation.pool import ChildPool
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, AdapterFactory, Lockstep, ModelSteps, drive
from externref_harness.lockstep.targets import native_target
from externref_harness.model import ops
from externref_harness.model.observation import Misuse
from externref_harness.model.state import State
from externref_harness.model.transition import step
from externref_harness.native.build import build_reference

CFG = replace(LOCKSTEP_CONFIG, build="debug")
#: Two refs, one cloned and the clone dropped, its count asked, one moved into the table with a
#: GC, a GC, the stack canary asked.
TRACE: list[ops.Op] = [
    ops.New(8, 8),
    ops.New(8, 8),
    ops.Clone(0),
    ops.Drop(2),
    ops.StrongCount(0),
    ops.InsertWithGc(1),
    ops.Gc(),
    ops.StackCanary(),
]
WHERE = ["in process", "child process"]
#: The `adapters` fixture: a library's adapter factory, in this process or in a pool's children.
Adapters = Callable[[Path], AdapterFactory]


@pytest.fixture
def adapters(request: pytest.FixtureRequest) -> Iterator[Adapters]:
    """`adapters(library)`: the library's adapter factory, in this process or in a pool's children."""
    pools: list[ChildPool] = []

    def make(library: Path) -> AdapterFactory:
        if request.param == "in process":
            return native_target(library).adapter_factory
        pool = ChildPool(library, step_timeout=5.0)
        pools.append(pool)
        return pool.adapter

    yield make
    for pool in pools:
        pool.close()


def _model_state(steps: list[ops.Op]) -> State:
    state = State.initial(CFG)
    for op in steps:
        state = step(CFG, state, op)[0]
    return state


@pytest.mark.parametrize("adapters", WHERE, indirect=True)
def test_a_replay_reaches_the_models_state_and_the_run_goes_on(adapters: Adapters) -> None:
    run = Lockstep(CFG, adapters(build_reference("debug"))())
    try:
        after: list[ops.Op] = [ops.Drop(0), ops.Gc()]
        # A child is sent the steps after the replay right behind it, and runs them next.
        checks = run.replay(TRACE, after)
        assert len(checks) == len(TRACE)
        assert [(c.model_problem, c.impl_problem) for c in checks] == [(None, None)] * len(TRACE)
        assert run.state == _model_state(TRACE)
        for i, op in enumerate(after):
            check = run.step(op, after[i + 1 :])
            assert (check.model_problem, check.impl_problem) == (None, None)
        _torn_down_clean(run)
    finally:
        run.close()


def _torn_down_clean(run: Lockstep) -> None:
    """The run's teardown passes: quiescence, each step checked, then the leak check."""
    quiesce = run.quiesce_ops()
    for i, down in enumerate(quiesce):
        assert run.step(down, quiesce[i + 1 :]).impl_problem is None
    assert run.finish() is None


def test_the_model_steps_of_a_replay_are_kept_and_the_implementation_still_checked() -> None:
    """`ModelSteps`: the second replay of a path looks its model steps up (the same state
    objects), the states are the model's, and a seeded bug in the implementation is still caught
    on a replayed step whose model side was looked up."""
    kept = ModelSteps(CFG)
    first = Lockstep(CFG, native_target(build_reference("debug")).adapter_factory(), model_steps=kept)
    try:
        assert first.state is kept.root
        assert [c.impl_problem for c in first.replay(TRACE)] == [None] * len(TRACE)
        assert kept.hits == 0 and first.state == _model_state(TRACE)
    finally:
        first.close()
    broken = native_target(build_reference("debug", bug="c-early-free")).adapter_factory()
    second = Lockstep(CFG, broken, model_steps=kept)
    try:
        checks = second.replay(TRACE)
        assert kept.hits == len(TRACE)  # every step's model side, looked up before it is sent
        assert len(checks) == 4 and [c.impl_problem for c in checks[:3]] == [None] * 3
        assert checks[3].impl_problem is not None and "[observed.result]" in checks[3].impl_problem
    finally:
        second.close()
    third = Lockstep(CFG, native_target(build_reference("debug")).adapter_factory(), model_steps=kept)
    try:
        third.replay(TRACE)
        assert kept.hits == 2 * len(TRACE)
        assert third.state == _model_state(TRACE)
        # The run goes on from a looked-up state: its invariants are checked again in full.
        assert third.step(ops.Drop(0)).model_problem is None
    finally:
        third.close()


@pytest.mark.parametrize("adapters", WHERE, indirect=True)
def test_foreseen_model_steps_are_taken_from_the_state_the_replay_ends_in(adapters: Adapters) -> None:
    """`Lockstep.foresee`: a replay that ends in a state equal to the foreseen start goes on from
    that very object, and the steps after it take the model's side from what was foreseen (shown
    by foreseeing a wrong observation: the implementation's step is held to it and fails), while
    an op that was not foreseen is stepped on the model as before."""
    start = _model_state(TRACE)
    later = [ops.StrongCount(0), ops.Drop(0), ops.Gc()]
    after_count, count = step(CFG, start, later[0])
    after_drop = step(CFG, after_count, later[1])[0]
    # `Gc`'s observation given to `Drop`: foreseen, so believed.
    wrong = step(CFG, after_drop, later[2])[1]
    run = Lockstep(CFG, adapters(build_reference("debug"))(), model_steps=ModelSteps(CFG))
    try:
        run.foresee(start, [(later[0], after_count, count), (later[1], after_drop, wrong)])
        checks = run.replay(TRACE, later)
        assert [c.impl_problem for c in checks] == [None] * len(TRACE)
        assert run.state is start
        assert run.step(later[0], later[1:]).impl_problem is None
        assert run.state is after_count
        assert run.step(later[1], later[2:]).impl_problem is not None
    finally:
        run.close()
    unforeseen = Lockstep(CFG, adapters(build_reference("debug"))(), model_steps=ModelSteps(CFG))
    try:
        unforeseen.foresee(start, [(later[1], after_drop, wrong)])  # not from `start`: never found
        unforeseen.replay(TRACE, later)
        for i, op in enumerate(later):
            assert unforeseen.step(op, later[i + 1 :]).impl_problem is None
    finally:
        unforeseen.close()


@pytest.mark.parametrize("adapters", WHERE, indirect=True)
def test_a_replayed_step_whose_outcome_differs_fails_at_that_step(adapters: Adapters) -> None:
    """`c-early-free` frees a ref when one owner of two drops it: at step 4 (`Drop(2)`) the debug
    build's assertion panics, which the step's own outcome shows, without the memory checks."""
    run = Lockstep(CFG, adapters(build_reference("debug", bug="c-early-free"))())
    try:
        checks = run.replay(TRACE)
        assert len(checks) == 4
        assert [c.impl_problem for c in checks[:3]] == [None] * 3
        problem = checks[3].impl_problem
        assert problem is not None and "[observed.result]" in problem and "panicked" in problem
    finally:
        run.close()


@pytest.mark.parametrize("adapters", WHERE, indirect=True)
def test_a_replay_checks_the_memory_its_last_step_left(adapters: Adapters) -> None:
    """`c-wild-write-footer` decrements, in `gc`, the count of a ref the step does not touch: no
    outcome shows it, only the memory. The memory checks run at the replay's end, so the replay
    fails at its last step, and not before."""
    steps = [ops.New(8, 8), ops.Gc(), ops.New(8, 8)]
    run = Lockstep(CFG, adapters(build_reference("debug", bug="c-wild-write-footer"))())
    try:
        checks = run.replay(steps)
        assert len(checks) == 3
        assert [c.impl_problem for c in checks[:2]] == [None, None]
        problem = checks[2].impl_problem
        assert problem is not None and "[layout.ref-count-offset]" in problem
    finally:
        run.close()


def test_a_crash_during_a_replay_fails_the_step_that_crashed(tmp_path: Path) -> None:
    pool = ChildPool(crashing_gc_library(tmp_path), step_timeout=5.0)
    run = Lockstep(CFG, pool.adapter())
    try:
        checks = run.replay([ops.New(8, 8), ops.Gc(), ops.New(8, 8)])
        assert len(checks) == 2 and checks[0].impl_problem is None
        problem = checks[1].impl_problem
        assert problem is not None and "killed by SIGSEGV" in problem
    finally:
        run.close()
        pool.close()


@pytest.mark.parametrize(
    "bug,steps,failing", [("c-early-free", TRACE, 4), ("c-wild-write-footer", [ops.New(8, 8), ops.Gc()], 2)]
)
def test_a_failed_replay_leaves_no_frame_to_the_next_run(bug: str, steps: list[ops.Op], failing: int) -> None:
    """The child ran the whole replay and the batch sent behind it; the parent stopped reading at
    the divergence (`c-early-free`: a step's outcome), or after the replay (`c-wild-write-footer`:
    its end's memory checks). The next run on the same pool gets a child that is not behind on
    its frames."""
    pool = ChildPool(build_reference("debug", bug=bug), step_timeout=5.0)
    try:
        first = Lockstep(CFG, pool.adapter())
        try:
            checks = first.replay(steps, [ops.New(8, 8), ops.Gc(), ops.New(8, 8)])
            assert len(checks) == failing and checks[-1].impl_problem is not None
        finally:
            first.close()
        second = Lockstep(CFG, pool.adapter())
        try:
            checks = second.replay(TRACE[:2])
            assert [c.impl_problem for c in checks] == [None, None]
        finally:
            second.close()
    finally:
        pool.close()


def test_a_replay_ends_before_a_step_the_model_refuses() -> None:
    """After a refused misuse the model's state depends on the implementation's answer: such a
    step is never replayed; the caller takes it with `step`."""
    misuse = ops.Drop(0)
    after = _model_state([ops.New(8, 8), misuse])
    assert not isinstance(step(CFG, _model_state([ops.New(8, 8)]), misuse)[1].result, Misuse)
    refused = ops.Drop(0)  # the handle was dropped: a second drop is a refused misuse
    assert isinstance(step(CFG, after, refused)[1].result, Misuse)
    run = Lockstep(CFG, native_target(build_reference("debug")).adapter_factory())
    try:
        checks = run.replay([ops.New(8, 8), misuse, refused, ops.New(8, 8)])
        assert len(checks) == 2 and all(c.impl_problem is None for c in checks)
        assert run.state == after
    finally:
        run.close()


def test_a_write_no_accessor_saw_is_found_at_the_replays_end(tmp_path: Path) -> None:
    """A library whose `xr_ref_new` writes a byte just past the footer (its block's redzone):
    `drive` (the checking heap verified after every step) fails at step 1; a replay, which
    verifies after its last step only, still fails, at that step, with the same report."""
    past_the_footer = "if (status == 0) ((volatile unsigned char *)(uintptr_t)*out)[24] = 0x55"
    library = load_misbehaving().build(tmp_path, "redzone-after-new", new_after=past_the_footer)
    steps = [ops.New(8, 8), ops.Gc(), ops.Gc()]
    cfg = replace(CFG, build="release")
    first = drive(cfg, steps, native_target(library).adapter_factory(), until_first=True).first
    assert first is not None and first.step == 1 and "redzone-written" in first.problem
    run = Lockstep(cfg, native_target(library).adapter_factory())
    try:
        checks = run.replay(steps)
        assert len(checks) == 3 and [c.impl_problem for c in checks[:2]] == [None, None]
        problem = checks[2].impl_problem
        assert problem is not None and "[heap.report] redzone-written" in problem
    finally:
        run.close()


def _replayed_in_runs(
    library: Path, steps: list[ops.Op], runs: int, kept: ModelSteps | None = None
) -> tuple[ModelSteps, list[list[str | None]]]:
    """`steps` replayed from the start in `runs` runs, one after another in one pool's child,
    sharing one `ModelSteps` (`kept`, a new one by default): the kept steps and each run's
    replayed steps' problems."""
    kept = ModelSteps(CFG) if kept is None else kept
    problems: list[list[str | None]] = []
    pool = ChildPool(library, step_timeout=5.0)
    try:
        for _ in range(runs):
            run = Lockstep(CFG, pool.adapter(), model_steps=kept)
            try:
                problems.append([c.impl_problem for c in run.replay(steps)])
            finally:
                run.close()
    finally:
        pool.close()
    return kept, problems


def test_a_reply_that_repeats_one_checked_from_the_same_state_is_known_and_the_run_goes_on() -> None:
    """`ModelSteps`' tree of replies: the second run's replies repeat the first's byte for byte (the
    child's heap and stack are where they were), so none is decoded or checked again; the run
    reaches the model's state with the refs it had, and goes on to a clean teardown."""
    kept = ModelSteps(CFG)
    pool = ChildPool(build_reference("debug"), step_timeout=5.0)
    try:
        for known in (0, len(TRACE)):
            run = Lockstep(CFG, pool.adapter(), model_steps=kept)
            try:
                assert [c.impl_problem for c in run.replay(TRACE)] == [None] * len(TRACE)
                assert (kept.known_replies, kept.checked_replies) == (known, len(TRACE))
                assert run.state == _model_state(TRACE) and run.refs.footers
                assert run.step(ops.Drop(0)).impl_problem is None
                _torn_down_clean(run)
            finally:
                run.close()
    finally:
        pool.close()


def test_a_known_last_reply_still_has_the_memory_checks(tmp_path: Path) -> None:
    """The third `xr_ref_new` of the process (the second run's first step) adds one to its new
    ref's count, which no reply shows: every reply of the second run is known, and the memory
    checks at the replay's end still find the count."""
    wrong_count = "if (status == 0 && calls == 3) ((volatile uint64_t *)(uintptr_t)*out)[0] += 1"
    library = load_misbehaving().build(tmp_path, "count-in-second-run", new_after=wrong_count)
    steps = [ops.New(8, 8), ops.New(8, 8), ops.StackCanary()]
    kept, problems = _replayed_in_runs(library, steps, 2)
    assert kept.known_replies == len(steps) and problems[0] == [None] * len(steps)
    assert problems[1][:2] == [None, None]
    assert problems[1][2] is not None and "[layout.ref-count-offset]" in problems[1][2]


def test_after_a_reply_that_differs_every_reply_is_checked_in_full(tmp_path: Path) -> None:
    """The fourth `xr_ref_new` of the process (the second run's second step) allocates a ref of
    its own first, so its reply names another address: from there on the lockstep's state is not
    the first run's, and the steps after it are checked in full even where their bytes repeat."""
    extra = "if (calls == 4) { xr_ref leaked; real_xr_ref_new(size, align, fill, &leaked); }"
    library = load_misbehaving().build(tmp_path, "extra-ref-in-second-run", new_before=extra)
    steps = [ops.New(8, 8), ops.New(8, 8), ops.Gc(), ops.StackCanary()]
    kept, problems = _replayed_in_runs(library, steps, 2)
    assert problems == [[None] * len(steps)] * 2  # nothing a replayed step sees (a leak, at teardown)
    assert (kept.known_replies, kept.checked_replies) == (1, len(steps) + 3)


def test_a_reply_that_failed_is_not_remembered() -> None:
    """`c-early-free` panics at the replay's fourth step in every run: the second run knows the
    three replies before it, and checks the fourth again, and fails there again."""
    kept, problems = _replayed_in_runs(build_reference("debug", bug="c-early-free"), TRACE, 2)
    for run in problems:
        assert len(run) == 4 and run[:3] == [None] * 3
        assert run[3] is not None and "panicked" in run[3]
    assert (kept.known_replies, kept.checked_replies, kept.replies_kept) == (3, 4 + 1, 3)


def test_past_the_reply_limit_a_run_leaves_the_tree_and_is_checked_in_full() -> None:
    """At most `reply_limit` replies are remembered: the first run's third reply is checked but
    not remembered, so the run leaves the tree there; the second knows the first two replies
    and checks the rest in full, the third counted as checked on the tree (`checked_replies`)."""
    kept, problems = _replayed_in_runs(build_reference("debug"), TRACE, 2, ModelSteps(CFG, reply_limit=2))
    assert problems == [[None] * len(TRACE)] * 2
    assert (kept.known_replies, kept.checked_replies, kept.replies_kept) == (2, 3 + 1, 2)
