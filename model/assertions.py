"""The seed's own assertions that guard misuse, and what its release build does instead.

The host world refuses misuse before it calls the runtime, so on a correct implementation the
seed's debug assertions would never run. Two misuses of the table reach an assertion of the seed
that fires before `gc` has changed anything, so a debug build also sends them to the
implementation after refusing them ("probes" them, `impl.world.World`):

    misuse, refused by the host                 the seed's assertion (debug build)
    Gc() while gc_okay is false                  gc: `assert!(externref_activations_table.gc_okay)`
                                                 (seed line 878)
    SetStackCanary(None) while the stack walk    gc with no canary: `backtrace::trace(|frame|
      reaches a Wasm frame, then a GC (the       assert!(module_info_lookup.lookup(frame.ip())
      probe clears the canary, runs gc, and      .is_none()))` (line 900)
      sets the canary back)

The implementation's answer is judged at two levels (`lockstep.runner`):

- strict (`assert.fires`): it panics, as the seed does;
- conformant (`assert.state-kept`): whatever it did, it neither corrupts nor loses anything the
  harness can ask about afterwards. A panic must leave everything as it was (the model's state is
  the refused step's, and every later step is compared with it); an implementation that returned
  instead must have done what the seed's release build does (`release_outcome`, where the
  assertions are compiled out), and that must break no invariant. With no canary and Wasm live the
  release build sweeps refs only those frames hold: a use after free the assertion exists to stop.

Under the capabilities (`model.capabilities`): a `no-gc-free-insert` implementation has no
`set_gc_okay`, so `gc_okay` stays true and the first probe never arises (nothing draws
`SetGcOkay`). Under `canary-guard` the second probe leaves the canary's scope, GCs and enters it
again (`impl.world.World.set_stack_canary` maps set and clear onto enter and leave), which is what
the seed's set and reset do: the assertion and the release outcome are the same.

`insert_with_gc`'s own `assert!(self.gc_okay)` (line 649) is not probed: its panic unwinds through
the ref passed in by value, which the seed's unwinding drops and an implementation without
unwinding (a C `longjmp`) cannot, so the count after it would say nothing about the table.
"""

from __future__ import annotations

from dataclasses import replace

from externref_harness.model import ops
from externref_harness.model.observation import BAD_CANARY, GC_NOT_OKAY, Observation
from externref_harness.model.state import Config, State
from externref_harness.model.world import Machine

#: The seed's assertion each probed misuse reaches, as reports name it.
GC_OKAY_ASSERTION = "gc: assert!(externref_activations_table.gc_okay) (seed line 878)"
NO_CANARY_ASSERTION = (
    "gc with no canary: assert!(module_info_lookup.lookup(frame.ip()).is_none()) for every frame "
    "(seed line 900)"
)


def probed_assertion(op: ops.Op, kind: str, walk_reaches_wasm: bool) -> str | None:
    """The seed's assertion that a refused misuse reaches in a debug build (None: not probed).

    The no-canary assertion runs inside the stack walk, so it fires only if the walk reaches a
    Wasm frame: a host frame without unwind info ends the walk first, and then the seed's debug
    build sweeps as its release build does (a misuse no assertion catches is not probed)."""
    if isinstance(op, ops.Gc) and kind == GC_NOT_OKAY:
        return GC_OKAY_ASSERTION
    if isinstance(op, ops.SetStackCanary) and op.frame is None and kind == BAD_CANARY and walk_reaches_wasm:
        return NO_CANARY_ASSERTION
    return None


def walk_reaches_wasm(cfg: Config, state: State) -> bool:
    """Whether `backtrace::trace` from the youngest frame reaches a Wasm frame."""
    return any(frame.is_wasm for frame in Machine(cfg, state).walk_stack())


def release_outcome(
    cfg: Config, state: State, op: ops.Op, refused: Observation
) -> tuple[State, Observation]:
    """What a probe does on the seed's release build (no assertion to fire): the state after it,
    and the refused step's observation with the values the probe dropped and the paths it took."""
    machine = Machine(replace(cfg, build="release"), state)
    if isinstance(op, ops.SetStackCanary):
        saved = machine.stack_canary()
        machine.set_stack_canary(None)
        try:
            machine.gc()
        finally:
            machine.set_stack_canary(saved)
    else:
        machine.gc()
    return machine.freeze(), Observation(refused.result, frozenset(machine.dropped), tuple(machine.events))
