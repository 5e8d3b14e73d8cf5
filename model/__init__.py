"""Executable reference model of wasmtime v0.37.0's `externref.rs` and the world it runs in.

`step(cfg, state, op)` is the whole model: `State` and `Op` are immutable, hashable data, and the
seed's semantics live in `model.runtime` (the runtime) and `model.world` (everything around it).
"""

from externref_harness.model.observation import Err, Misuse, Observation, Ok, Panic
from externref_harness.model.state import Config, State
from externref_harness.model.transition import Model, run, step

__all__ = ["Config", "Err", "Misuse", "Model", "Observation", "Ok", "Panic", "State", "run", "step"]
