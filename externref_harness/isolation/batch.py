"""Where a batch of steps sent to the implementation's process ends early.

The lockstep sends the steps of a known trace to the child in batches (`ChildProcessImpl.submit_many`)
and compares each reply as it comes back. The child must not run past a step after which the
parent would not have sent the next one as it stands: a step whose implementation panicked, or
that was a misuse the runtime was sent (its state afterwards is the parent's to judge,
`Lockstep._assertion_probe`). The child stops its batch after such a step and the parent stops
expecting replies there; both read this one rule.
"""

from __future__ import annotations

from externref_harness.impl.interface import StepOutcome


def ends_batch(outcome: StepOutcome) -> bool:
    """Whether no step of a batch runs after this one."""
    return outcome.result[:1] in (("panic",), ("misuse",))
