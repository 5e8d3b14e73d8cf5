"""The pool's time budget (`ChildPool.deadline`, what `--time-limit` sets) against a reply still
being written. A frame may reach the pipe in more than one write, so the budget can run out
between two of them: that is the budget's doing (`OutOfTime`, which the driver reports as a run
cut short), not the implementation's. A frame left half written past the step's own time limit
still is the implementation's failure.

The library is the C reference behind a wrapper (`misbehaving.py`) whose second `xr_ref_new`
writes a frame header announcing 100 bytes and 10 of them to the protocol's pipe, then waits
forever.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from misbehaving import build, leftovers

from externref_harness.impl.interface import plain_config, plain_op
from externref_harness.isolation.pool import ChildPool, ImplementationCrash, OutOfTime
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG
from externref_harness.model.ops import New

HALF_FRAME = "if (calls == 2) { hostile_frame(BODY, 10, 100); pause(); }"


@pytest.mark.parametrize("budget_first", [True, False])
def test_a_frame_half_written_when_the_time_runs_out(tmp_path: Path, budget_first: bool) -> None:
    library = build(tmp_path, "half-frame", new_after=HALF_FRAME, body=bytes(10))
    pool = ChildPool(library, step_timeout=30.0 if budget_first else 1.0)
    adapter = pool.adapter()
    try:
        adapter.start(plain_config(LOCKSTEP_CONFIG))
        adapter.step(plain_op(New(8, 8)))
        if budget_first:
            pool.set_deadline(time.monotonic() + 1.0)
            with pytest.raises(OutOfTime, match="the time limit ran out during step"):
                adapter.step(plain_op(New(8, 8)))
        else:
            with pytest.raises(ImplementationCrash, match="a partial frame: 10 of 100 bytes arrived"):
                adapter.step(plain_op(New(8, 8)))
    finally:
        adapter.close()
        pool.close()
    assert leftovers(library) == []
