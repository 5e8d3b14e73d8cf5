"""The configuration and bounds the stateful machines draw their steps from.

The model's machine (`search.model_check`) and the lockstep's (`lockstep.check`) share them, and
so do `lockstep.runner` (compiled) and the corpus. Kept apart from the machines so a module can
name the space without importing Hypothesis: mypyc, which compiles the lockstep's runner, checks
every module it imports in a build environment that has no Hypothesis.
"""

from __future__ import annotations

from externref_harness.model.moves import Bounds
from externref_harness.model.state import Config

#: Configuration of the model-only machine: tiny chunk, so every slow path is near.
MACHINE_CONFIG = Config(chunk_size=2, slots=3, n_globals=2)
MACHINE_BOUNDS = Bounds(
    refs=6,
    handles=4,
    raws=2,
    frames=3,
    args=3,
    layouts=((8, 8), (16, 8), (0, 1), (1, 1), (24, 8), (32, 16)),
)
