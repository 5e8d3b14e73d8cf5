"""The native stack's region: a released stack's region goes to the next stack of the process."""

from __future__ import annotations

from externref_harness.impl.stack import NativeStack


def test_a_stack_after_a_released_one_is_at_the_same_address_and_zeroed() -> None:
    """One process's runs of the same steps put their frames at the same addresses, so replies that
    name them repeat (`lockstep.runner.ModelSteps`); a region is handed to one stack at a time."""
    first = NativeStack()
    base = first.base
    first.store(first.base, 0xDEAD)
    first.release()
    first.release()  # once only: the region is not handed to two stacks
    second, third = NativeStack(), NativeStack()
    assert second.base == base and third.base != base
    assert second.load(second.base) == 0
