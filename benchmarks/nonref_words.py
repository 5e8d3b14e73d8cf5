"""How often a suspended Wasm frame carries non-ref words in the slots no map covers, at GC time.

A stack-map lookup bug shows only through such words (`impl.nonref`). This counts, at every call
that may GC (`gc`, `insert_with_gc`), each suspended Wasm frame of the host world: how many have a
slot that holds no live ref (a slot the right map leaves out), and how many of those hold a
non-null non-ref word there, by kind. It does so for the lockstep search's generated cases and for
the corpus, with the Python port (the embedder's lookup) and with the C reference's
`c-own-registry` variant (the runtime's own registry).

    .venv/bin/python benchmarks/nonref_words.py [--examples N]
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, Verbosity, settings

from externref_harness.corpus.run import load_corpus, run_config, run_corpus_trace
from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.world import World
from externref_harness.lockstep.check import run_lockstep_check
from externref_harness.lockstep.runner import LOCKSTEP_BOUNDS, LOCKSTEP_CONFIG, LockstepOptions
from externref_harness.lockstep.targets import PYTHON, Target, bounds_for, native_target
from externref_harness.native.build import build_reference


@dataclass
class Census:
    calls: int = 0
    frames: int = 0
    #: Frames with at least one slot holding no live ref.
    with_unmapped: int = 0
    #: Of those, frames with a non-null non-ref word in such a slot.
    with_nonref: int = 0
    unmapped_slots: int = 0
    nonref_slots: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def take(self, world: World) -> None:
        self.calls += 1
        for frame in world.stack.frames[:-1]:  # the youngest runs (a host frame at a GC)
            if not frame.wasm:
                continue
            self.frames += 1
            unmapped = [
                i
                for i, typed in enumerate(frame.ref_typed)
                if not (typed and frame.own_word(i, world.stack.load(frame.sp + 8 * i)))
            ]
            # An i64 slot holds its own non-ref word; a null externref slot one the world left.
            i64 = [i for i in unmapped if not frame.ref_typed[i]]
            self.unmapped_slots += len(unmapped)
            self.nonref_slots += len(frame.planted) + len(i64)
            self.kinds.update(kind for _, _, kind in frame.planted.values())
            self.kinds["i64"] += len(i64)
            if unmapped:
                self.with_unmapped += 1
                self.with_nonref += bool(frame.planted or i64)

    def line(self, label: str) -> str:
        share = self.with_nonref / self.frames if self.frames else 0.0
        of_unmapped = self.with_nonref / self.with_unmapped if self.with_unmapped else 0.0
        kinds = ", ".join(f"{k} {n}" for k, n in sorted(self.kinds.items()))
        return (
            f"{label}: {self.frames} suspended Wasm frames at {self.calls} calls that may GC; "
            f"{self.with_unmapped} with a slot no map covers, {self.with_nonref} of them with non-ref "
            f"words there: share {share:.1%} of all frames, {of_unmapped:.1%} of those with such a "
            f"slot; slots {self.nonref_slots}/{self.unmapped_slots} ({kinds})"
        )


class _Watched:
    """The world's runtime, with a census before every call that may GC."""

    def __init__(self, inner: Any, world: World, census: Census) -> None:
        self._inner, self._world, self._census = inner, world, census

    def gc(self, stack: Any) -> None:
        self._census.take(self._world)
        self._inner.gc(stack)

    def insert_with_gc(self, r: int, stack: Any) -> None:
        self._census.take(self._world)
        self._inner.insert_with_gc(r, stack)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def counting(factory: Callable[[], Any], census: Census) -> Callable[[], InProcessImpl]:
    def make() -> InProcessImpl:
        adapter: InProcessImpl = factory()
        start = adapter.start

        def started(config: Any) -> None:
            start(config)
            world = adapter.world
            world.rt = _Watched(world.rt, world, census)

        adapter.start = started  # type: ignore[method-assign]
        return adapter

    return make


def generated(target: Target, examples: int) -> Census:
    census = Census()
    cfg = target.config(LOCKSTEP_CONFIG, None, None)
    config = settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        verbosity=Verbosity.quiet,
        suppress_health_check=list(HealthCheck),
    )
    out = run_lockstep_check(
        cfg,
        bounds_for(cfg, LOCKSTEP_BOUNDS, target.description),
        config,
        None,
        counting(target.adapter_factory, census),
        LockstepOptions(impl_name=target.name),
    )
    if not out.passed:
        raise SystemExit(f"{target.name} failed the lockstep: {out.failure}")
    return census


def corpus(target: Target) -> Census:
    census = Census()
    make = counting(target.adapter_factory, census)
    for trace in load_corpus():
        if target.description is not None and trace.config.build != (
            "debug" if target.description.debug else "release"
        ):
            continue
        config = run_config(target, trace)
        result = run_corpus_trace(
            trace, make(), chunk_size=config.chunk_size, capabilities=config.capabilities
        )
        if not result.passed:
            raise SystemExit(f"{target.name} failed {result.summary()}")
    return census


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200)
    args = parser.parse_args()
    own = native_target(build_reference("debug", variant="c-own-registry"))
    for label, target in (("Python port", PYTHON), ("c-own-registry", own)):
        print(generated(target, args.examples).line(f"generated, {label}"), flush=True)
        print(corpus(target).line(f"corpus, {label}"), flush=True)


if __name__ == "__main__":
    main()
