"""Running the conformance corpus: the lockstep on an implementation, and the model against the file.

`run_corpus_trace` drives a corpus trace's steps (its teardown included) through `lockstep.drive`, so
every check of the lockstep applies to the implementation; and it compares what the model observes
with the `expect` the file carries. The two fail differently: a lockstep failure is the
implementation's (or, with a seeded bug on, the bug's), while a mismatch with `expect` while no
seeded bug is on means the harness's shared code (the model, the embedder protocol, the host world)
changed what the trace observes, a change both sides of a lockstep would agree on.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from externref_harness.corpus.format import (
    CorpusTrace,
    expect_diff,
    expectation,
    is_corpus_json,
    load_file,
)
from externref_harness.corpus.write import shipped_corpus_dir
from externref_harness.errors import UsageError
from externref_harness.impl.interface import ImplAdapter
from externref_harness.lockstep import runner as lockstep
from externref_harness.lockstep.targets import Target
from externref_harness.model.moves import next_quiesce_op
from externref_harness.model.observation import Panic
from externref_harness.model.ops import Op, left_out, unavailable
from externref_harness.model.state import Build, Config, State
from externref_harness.model.transition import step
from externref_harness.specs.invariants import first_violation
from externref_harness.trace import TraceFormatError

__all__ = [
    "CorpusResult",
    "CorpusTrace",
    "cannot_run",
    "corpus_files",
    "load_corpus",
    "run_config",
    "run_corpus_trace",
    "run_on_model",
]


@dataclass(frozen=True)
class CorpusResult:
    """One corpus trace run: `step` is the 1-based index of the failing step in the file (teardown
    steps included), or None when it passed or when only the final heap check failed."""

    name: str
    passed: bool
    step: int | None = None
    problem: str = ""
    #: Expected divergences (`LockstepOptions.expected`) that did happen.
    expected_seen: frozenset[str] = frozenset()
    #: Steps left out: observers the implementation lacks by its capabilities (`ops.left_out`).
    left_out: tuple[str, ...] = ()

    def summary(self) -> str:
        if self.passed:
            return f"pass  {self.name}"
        where = f" at step {self.step}" if self.step is not None else ""
        return f"FAIL  {self.name}{where}: {self.problem.splitlines()[0] if self.problem else ''}"


def corpus_files(directory: Path) -> list[Path]:
    """The corpus files under `directory` (its build subdirectories included), in a stable order."""
    if not directory.is_dir():
        raise UsageError(f"{directory}: no such corpus directory")
    return sorted(p for p in directory.rglob("*.json") if p.is_file() and p.name != "schema.json")


def load_corpus(directory: Path | None = None, build: Build | None = None) -> list[CorpusTrace]:
    """Every corpus trace in `directory` (the shipped corpus by default), of one build if given.

    Bad files raise one-line `TraceFormatError`s naming the file; an empty corpus is a `UsageError`.
    """
    root = shipped_corpus_dir() if directory is None else Path(directory)
    traces = []
    for path in corpus_files(root):
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            obj = None  # `load_file` says what is wrong with it
        if obj is not None and not is_corpus_json(obj):
            raise TraceFormatError(f"{path}: not a corpus trace (no corpus_version)")
        traces.append(load_file(path))
    if not traces:
        raise UsageError(f"{root}: no corpus traces")
    ids = [t.id for t in traces]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        raise TraceFormatError(f"{root}: corpus traces named twice: {twice}")
    return [t for t in traces if build is None or t.config.build == build]


def cannot_run(chosen: Target, trace: CorpusTrace | Config, steps: Sequence[Op] = ()) -> str | None:
    """Why `chosen` cannot run this trace (its build; a step calling a function the library lacks
    by its capabilities, `ops.unavailable`; its chunk size, unless the trace runs at any chunk
    size of at least its own and the library's is); None if it can. A `Config` stands for a
    saved trace, whose `steps` are given."""
    desc = chosen.description
    if desc is None:
        return None  # the Python port runs any build and chunk size
    cfg = trace.config if isinstance(trace, CorpusTrace) else trace
    own: Build = "debug" if desc.debug else "release"
    if cfg.build != own:
        return f"a {cfg.build} trace; {chosen.path} is a {own} build"
    corpus = isinstance(trace, CorpusTrace)
    for at, op in enumerate(trace.all_operations if isinstance(trace, CorpusTrace) else steps, 1):
        if corpus and left_out(op, desc.capabilities):
            continue  # the run leaves it out (`run_corpus_trace`)
        why = unavailable(op, desc.capabilities)
        if why is not None:
            return f"step {at} ({op}): {why}"
    if desc.has_set_chunk_size or cfg.chunk_size == desc.chunk_size:
        return None
    if isinstance(trace, CorpusTrace) and trace.runs_at(desc.chunk_size):
        return None
    at_least = " at least" if isinstance(trace, CorpusTrace) and trace.any_chunk_size else ""
    return (
        f"written for a chunk of{at_least} {cfg.chunk_size} slots; {chosen.path} has a fixed chunk of "
        f"{desc.chunk_size} slots (no xr_table_new_with_chunk_size)"
    )


def run_config(chosen: Target, trace: CorpusTrace) -> Config:
    """The config `chosen` runs `trace` at: the trace's own, or the library's fixed chunk size when
    the trace runs at any chunk size at least as large (`CorpusTrace.runs_at`); a library's
    declared capabilities in either case (the checks consult them, `opaque-refs` to read its ref
    words as handles)."""
    desc = chosen.description
    if desc is None:
        return trace.config
    cfg = replace(trace.config, capabilities=desc.capabilities)
    if desc.has_set_chunk_size or not trace.runs_at(desc.chunk_size):
        return cfg
    return replace(cfg, chunk_size=desc.chunk_size)


def run_corpus_trace(
    trace: CorpusTrace,
    adapter: ImplAdapter,
    options: lockstep.LockstepOptions = lockstep.DEFAULT_OPTIONS,
    mutant: str | None = None,
    chunk_size: int | None = None,
    capabilities: tuple[str, ...] | None = None,
) -> CorpusResult:
    """Run `trace` in lockstep on `adapter` (at the trace's config, or at `chunk_size` where the
    trace runs at any; `mutant` switches a seeded bug of any layer on; `capabilities`, when given,
    are the implementation's, as `run_config` gives them) and hold the model to the file's
    expectations.

    The adapter must run the trace's build and chunk size (see `cannot_run`, `run_config`). The
    first problem wins. At the same step, a mismatch with the file comes first (the model itself
    moved), unless a seeded bug is on (then what it breaks does).

    With `capabilities` (an implementation's declared ones, `model.capabilities`) the model runs
    with them, and the file's expectations, which are the seed's, are not compared: the trace is
    held to the lockstep with that model alone.
    """
    if chunk_size is not None and not trace.runs_at(chunk_size):
        raise ValueError(f"{trace.id} does not run at a chunk of {chunk_size} slots")
    cfg = replace(trace.config, mutant=mutant, chunk_size=chunk_size or trace.config.chunk_size)
    if capabilities is not None:
        cfg = replace(cfg, capabilities=capabilities)
    # Under capabilities, observers the implementation lacks are left out; `kept` maps each step
    # driven to its step in the file (1-based).
    ops_ = trace.all_operations
    kept = [at for at, op in enumerate(ops_, 1) if not (capabilities and left_out(op, capabilities))]
    driven_steps = set(kept)
    dropped = tuple(f"step {at} ({op})" for at, op in enumerate(ops_, 1) if at not in driven_steps)
    driven = lockstep.drive(cfg, [ops_[at - 1] for at in kept], adapter, until_first=True, options=options)
    mismatch = None if capabilities else expectation_mismatch(trace, driven, mutant)
    failure = driven.first
    seen = driven.expected_seen
    if failure is None:
        if mismatch is None:
            return CorpusResult(trace.id, True, None, "", seen, dropped)
        return CorpusResult(trace.id, False, mismatch[0], mismatch[1], seen, dropped)
    # The file's teardown steps are driven as steps: past them is only the final heap check (or a
    # teardown the model grew, already a mismatch).
    at_step = kept[failure.step - 1] if failure.step <= len(kept) else None
    side = "the model" if failure.side == lockstep.MODEL else options.impl_name
    where = f"step {at_step}" if at_step is not None else "teardown"
    lockstep_problem = f"{side} fails at {where}: {failure.problem}"
    other = driven.impl_failure if failure.side == lockstep.MODEL else None
    if other is not None and other.step == failure.step:
        # The implementation failed at the same step (it crashed, say): that is news too.
        lockstep_problem += f"\nalso: {options.impl_name} fails at {where}: {other.problem}"
    if mismatch is None or (at_step is not None and at_step < mismatch[0]):
        return CorpusResult(trace.id, False, at_step, lockstep_problem, seen, dropped)
    if at_step == mismatch[0] and mutant is not None:
        # A seeded bug on: what it breaks says more than how the observation moved.
        problem = f"{lockstep_problem}\nalso: {mismatch[1]}"
        return CorpusResult(trace.id, False, at_step, problem, seen, dropped)
    also = f"\nalso: {lockstep_problem}" if at_step == mismatch[0] else ""
    return CorpusResult(trace.id, False, mismatch[0], mismatch[1] + also, seen, dropped)


def run_on_model(trace: CorpusTrace, mutant: str | None = None) -> CorpusResult:
    """The model alone against the file (no implementation; `mutant` switches a seeded bug of the
    model or protocol layer on): every step observes what `expect` says, the teardown is the
    model's own and reaches quiescence, and no invariant breaks. Well under a millisecond a step,
    so `check` runs the whole corpus this way to catch a change to the shared embedder protocol."""
    cfg = replace(trace.config, mutant=mutant)
    if mutant is None:
        lead = "the model no longer observes what the corpus expects"
        why = " (the harness's shared code changed what this trace observes)"
    else:
        lead, why = f"with {mutant} on, the model observes other than the corpus expects", ""
    state = State.initial(cfg)
    for at, s in enumerate(trace.steps, 1):
        if s.teardown:
            wanted = next_quiesce_op(state)
            if wanted != s.op:
                problem = (
                    f"{lead} at step {at}: its teardown now runs {wanted} here, the file lists {s.op}{why}"
                )
                return CorpusResult(trace.id, False, at, problem)
        state, obs = step(cfg, state, s.op)
        observed = expectation(s.op, obs, state)
        if observed != s.expect:
            problem = f"{lead} at step {at} ({s.op}): {expect_diff(s.expect, observed)}{why}"
            return CorpusResult(trace.id, False, at, problem)
        if isinstance(obs.result, Panic):
            return CorpusResult(
                trace.id, False, at, f"the model panicked at step {at} ({s.op}): {obs.result.message}"
            )
        bad = first_violation(cfg, state)
        if bad is not None:
            problem = f"the model breaks {bad[0].id} {bad[0].name} at step {at} ({s.op}): {bad[1]}"
            return CorpusResult(trace.id, False, at, problem)
    left = next_quiesce_op(state)
    if left is not None:
        at = len(trace.steps)
        return CorpusResult(
            trace.id, False, at, f"{lead} after step {at}: its teardown needs more steps (next: {left}){why}"
        )
    return CorpusResult(trace.id, True)


def expectation_mismatch(
    trace: CorpusTrace, driven: lockstep.Driven, mutant: str | None
) -> tuple[int, str] | None:
    """The first step (1-based) where the model's run differs from the file, and how."""
    steps = trace.steps
    if mutant is None:
        lead = "the model no longer observes what the corpus expects"
        why = " (the harness's shared code changed what this trace observes)"
    else:
        lead, why = f"with {mutant} on, the model observes other than the corpus expects", ""
    for i, (op, obs) in enumerate(zip(driven.steps, driven.observations, strict=True)):
        at = i + 1
        if i >= len(steps):
            return len(
                steps
            ), f"{lead} after step {len(steps)}: its teardown needs more steps (next: {op}){why}"
        if steps[i].teardown:
            wanted = next_quiesce_op(driven.states[i])
            if wanted != op:
                return (
                    at,
                    f"{lead} at step {at}: its teardown now runs {wanted} here, the file lists {op}{why}",
                )
        observed = expectation(op, obs, driven.states[i + 1])
        if observed != steps[i].expect:
            return at, f"{lead} at step {at} ({op}): {expect_diff(steps[i].expect, observed)}{why}"
    return None
