"""The model as one pure function: `step(cfg, state, op) -> (state', observation)`.

Same inputs, same result; no hidden globals. A refused misuse leaves the state unchanged, and a
debug assertion that fires leaves the pre-step state marked with `panic` (a terminal state: the
seed would have unwound out of the runtime).
"""

from __future__ import annotations

from collections.abc import Iterable

from externref_harness.model.observation import Misuse, Observation, Panic
from externref_harness.model.ops import Op
from externref_harness.model.runtime import DebugAssertion, MisuseError
from externref_harness.model.state import Config, State
from externref_harness.model.world import Machine


def step(cfg: Config, state: State, op: Op) -> tuple[State, Observation]:
    if state.panic is not None:
        return state, Observation(Panic(state.panic))
    machine = Machine(cfg, state)
    try:
        result = machine.apply(op)
    except MisuseError as refused:
        return state, Observation(Misuse(refused.kind, refused.detail))
    except DebugAssertion as fired:
        message = str(fired)
        return state.with_(panic=message), Observation(
            Panic(message), frozenset(machine.dropped), tuple(machine.events)
        )
    return machine.freeze(), Observation(result, frozenset(machine.dropped), tuple(machine.events))


def run(cfg: Config, ops: Iterable[Op], state: State | None = None) -> list[tuple[State, Observation]]:
    """Every intermediate state and observation of a trace, from `State.initial(cfg)` by default."""
    current = State.initial(cfg) if state is None else state
    out: list[tuple[State, Observation]] = []
    for op in ops:
        current, obs = step(cfg, current, op)
        out.append((current, obs))
    return out


class Model:
    """A thin mutable wrapper for callers that want an object: holds the current state."""

    def __init__(self, cfg: Config, state: State | None = None) -> None:
        self.cfg = cfg
        self.state = State.initial(cfg) if state is None else state

    def __call__(self, op: Op) -> Observation:
        self.state, obs = step(self.cfg, self.state, op)
        return obs
