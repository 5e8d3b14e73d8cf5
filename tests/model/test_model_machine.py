"""The model-only stateful test: random well-formed moves, every invariant after every step."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import settings

from externref_harness.model.state import Build
from externref_harness.search.model_check import REQUIRED_EVENTS, make_model_machine, run_model_check
from externref_harness.search.space import MACHINE_BOUNDS, MACHINE_CONFIG

#: The pytest-native form of the machine (Hypothesis shrinks and prints on failure), at the seed's
#: own CHUNK_SIZE; the tiny-chunk configuration runs below through `run_model_check`.
TestModelSeedChunkSize = make_model_machine(replace(MACHINE_CONFIG, chunk_size=512)).TestCase


@pytest.mark.parametrize("build", ["debug", "release"])
def test_every_interesting_path_is_reached_under_the_ci_profile(build: Build) -> None:
    """Upstream's fuzzer never reached the stack-map scan; this run must reach every labelled path.

    It is also the control for the mutant tests: the identical run passes on the seed as it is.
    """
    cfg = replace(MACHINE_CONFIG, build=build)
    out = run_model_check(cfg, MACHINE_BOUNDS, settings(settings.get_profile("ci")))
    assert out.passed, out.failure
    missing = [e for e in REQUIRED_EVENTS if out.stats.events[e] == 0]
    assert not missing, f"paths never reached: {missing}"
    # `InsertMany` is for full-size chunks (`Bounds.insert_many`); the machine's chunk of 2 reaches
    # the full-chunk paths one insert at a time.
    ops_missing = [
        tag
        for tag in _all_tags()
        # Host loops of inserts are generated for large chunks only (tests/lockstep/test_native_lockstep.py).
        if out.stats.events[f"op:{tag}"] == 0 and tag != "insert_many"
    ]
    assert not ops_missing, f"operations never generated: {ops_missing}"


def _all_tags() -> list[str]:
    from externref_harness.model.ops import ALL_OPS

    return [cls.TAG for cls in ALL_OPS]
