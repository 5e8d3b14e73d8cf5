"""The cost of a frame on the lockstep's pipe, the way each side handles it, against the stdlib's way.

Three frames of a real run (the C reference, in process, along an exhaustive plan's tree path):
a replay request (what the child decodes once a run: `fast_wire.decode_any`, then `wire.plain`),
a replayed step's reply and a checked step's reply (what the parent splits and decodes, typed:
`fast_wire.split_ok`, `fast_wire.conform_reply`). Each is timed as the two processes handle it
and as the stdlib's JSON and `wire.conform` would (the same values: asserted), best of the
rounds. The figures in microseconds depend on the machine; the ratios, measured in one run, less.

    .venv/bin/python benchmarks/wire.py [--rounds R]

Last lines: `request_speedup=<stdlib µs / fast µs>` for the replay request, and
`reply_speedup=<stdlib µs / fast µs>` for the checked step's reply.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from externref_harness.exhaustive.plan import build_plan
from externref_harness.explore.explorer import ExploreBounds
from externref_harness.impl.interface import Replayed, plain_config, plain_op
from externref_harness.isolation.child import _Sent, _step
from externref_harness.isolation.fast_wire import conform_reply, decode_any, encode_plain, split_ok
from externref_harness.isolation.pool import StepReply
from externref_harness.isolation.wire import conform, decode, decode_plain, tagged
from externref_harness.lockstep.targets import bounds_for, native_target
from externref_harness.native.build import build_reference


def best_us(work: Callable[[], object], rounds: int, n: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(n):
            work()
        best = min(best, (time.perf_counter() - started) / n * 1e6)
    return best


def frames() -> tuple[bytes, bytes, bytes]:
    """A replay request along the deepest tree path of `--refs 2 --frames 1`, the reply of its
    last replayed step, and the reply of the same step checked (outcome and probe)."""
    target = native_target(build_reference("debug"))
    search = ExploreBounds(refs=2, frames=1).search()
    cfg = target.config(search.cfg, None, search.cfg.chunk_size)
    search = replace(search, cfg=cfg, bounds=bounds_for(cfg, search.bounds, target.description))
    plan = build_plan(search)
    deepest = max(range(plan.classes), key=lambda c: plan.depth[c])
    steps = [(plain_op(op), None) for op in plan.ops_to(deepest)]
    request = encode_plain(("replay", [list(step) for step in steps]))
    adapter = target.adapter_factory()
    try:
        adapter.start(plain_config(cfg))
        replayed = list(adapter.replay(steps[:-1]))[-1]  # type: ignore[attr-defined]
        checked = _step(adapter, *steps[-1], _Sent())  # type: ignore[arg-type]
    finally:
        adapter.close()
    return request, encode_plain(("ok", replayed)), encode_plain(("ok", checked))


def slow_reply(body: bytes, expected: Any) -> Any:
    return conform(tagged(decode(body))[1], expected)


def fast_reply(body: bytes, expected: Any) -> Any:
    ok = split_ok(body)
    assert ok is not None, "a real reply takes the fast path"
    return conform_reply(ok, expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    request, replayed, checked = frames()
    assert decode_plain(decode_any(request)) == decode_plain(decode(request))
    assert fast_reply(replayed, Replayed) == slow_reply(replayed, Replayed)
    assert fast_reply(checked, StepReply) == slow_reply(checked, StepReply)
    figures = {
        "request": (
            best_us(lambda: decode_plain(decode(request)), args.rounds, 20_000),
            best_us(lambda: decode_plain(decode_any(request)), args.rounds, 20_000),
        ),
        "replayed step's reply": (
            best_us(lambda: slow_reply(replayed, Replayed), args.rounds, 50_000),
            best_us(lambda: fast_reply(replayed, Replayed), args.rounds, 50_000),
        ),
        "checked step's reply": (
            best_us(lambda: slow_reply(checked, StepReply), args.rounds, 20_000),
            best_us(lambda: fast_reply(checked, StepReply), args.rounds, 20_000),
        ),
    }
    for (name, (slow, fast)), body in zip(figures.items(), (request, replayed, checked), strict=True):
        print(f"{name} ({len(body)} bytes): {fast:.2f} µs, {slow:.2f} µs the stdlib's way")
    request_slow, request_fast = figures["request"]
    reply_slow, reply_fast = figures["checked step's reply"]
    print(f"request_speedup={request_slow / request_fast:.2f}")
    print(f"reply_speedup={reply_slow / reply_fast:.2f}")


if __name__ == "__main__":
    main()
