"""Shrinking a hang: candidates get a shorter step timeout, and the result is confirmed at the
full one. A library whose `gc` takes 1 s (slower than the short timeout, well within the full 2 s)
and whose 4th `new` never returns: under the short timeout alone the shrink keeps a lone `Gc`,
which does not hang (without the confirmation, this test fails with `[Gc()]`); the confirmation
finds that and shrinks again at the full timeout."""

from __future__ import annotations

from pathlib import Path

import pytest
from misbehaving import build

from externref_harness.isolation.pool import HANG
from externref_harness.lockstep.check import shrink_lockstep_trace
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, drive
from externref_harness.lockstep.targets import open_isolated
from externref_harness.model.ops import Gc, New


@pytest.mark.slow
def test_a_step_slower_than_the_short_timeout_is_not_taken_for_the_hang(tmp_path: Path) -> None:
    library = build(tmp_path, "slow-gc-hangs-at-4th-new", gc="sleep(1)", new_before="if (calls == 4) pause()")
    target, pool = open_isolated(library, step_timeout=2.0)
    try:
        cfg = target.config(LOCKSTEP_CONFIG, None, None)
        steps = [New(8, 8), Gc(), New(8, 8), New(8, 8), New(8, 8)]
        first = drive(cfg, steps, pool.adapter(fresh=True), until_first=True).first
        assert first is not None and HANG in first.problem and "within 2 s" in first.problem
        shrunk = shrink_lockstep_trace(cfg, steps, lambda: pool.adapter(fresh=True))
        assert shrunk == [New(0, 1)] * 4  # the sizes simplified too (`search.shrink.simplify_fields`)
        again = drive(cfg, shrunk, pool.adapter(fresh=True), until_first=True).first
        assert again is not None and HANG in again.problem
    finally:
        pool.close()
