"""A native library's hooks are one per process (`xr_set_hooks`): a second in-process run of the
same library while one is open would take them over, and the first run's allocations would land in
the second's checking heap. That start is refused (`errors.RunsOverlap`, not the implementation's
failure), the first run goes on undisturbed, and once it is closed the next run starts."""

from __future__ import annotations

import pytest

from externref_harness.errors import RunsOverlap
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, Lockstep
from externref_harness.lockstep.targets import native_target
from externref_harness.model.ops import Gc, New
from externref_harness.native.build import build_reference


def test_a_second_run_of_a_library_in_one_process_waits_for_the_first_to_close() -> None:
    target = native_target(build_reference("debug"))
    first = Lockstep(LOCKSTEP_CONFIG, target.adapter_factory())
    try:
        assert first.step(New(8, 8)).impl_problem is None
        with pytest.raises(RunsOverlap, match="hooks are one per process"):
            Lockstep(LOCKSTEP_CONFIG, target.adapter_factory())
        assert first.step(New(8, 8)).impl_problem is None
        assert first.step(Gc()).impl_problem is None, "the first run's hooks are still its own"
    finally:
        first.close()
    again = Lockstep(LOCKSTEP_CONFIG, target.adapter_factory())
    try:
        assert again.impl_broken is None and again.step(New(8, 8)).impl_problem is None
    finally:
        again.close()
