"""An in-process adapter started at the lockstep's config, run through some steps and probed once:
the state the probe tests (`test_probe_table.py`, `test_probe_host.py`) start from."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from externref_harness.impl.adapter import InProcessImpl
from externref_harness.impl.interface import plain_config, plain_op
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG
from externref_harness.model.ops import Op


def probed(adapter: InProcessImpl, steps: Sequence[Op]) -> Iterator[InProcessImpl]:
    """`adapter` started, stepped through `steps` and probed once; closed when the caller is done
    (a fixture's body: `yield from probed(...)`)."""
    adapter.start(plain_config(LOCKSTEP_CONFIG))
    try:
        for op in steps:
            adapter.step(plain_op(op))
        adapter.probe()
        yield adapter
    finally:
        adapter.close()
