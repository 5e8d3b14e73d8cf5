"""The path labels of one model step: the names every driver counts coverage by.

A step is labelled `op:<TAG>`, then with each path the model reported taking (`Observation.events`,
first occurrence order), `values-dropped` when a destructor ran, `try_insert:chunk-full` for the
seed's one `Err`, and `misuse` for a refused move. The hypothesis machines record all of them as
`event()`s, the corpus keeps the traces that reach new ones, and the explorer counts the path
labels (all but the first) of every transition it takes, so this sits on the explorer's hot path
and is compiled: `path_labels` builds nothing for the common step that reports nothing.
"""

from __future__ import annotations

from typing import Final

from externref_harness.model.observation import Err, Misuse, Observation
from externref_harness.model.ops import Op

MISUSE: Final = "misuse"
VALUES_DROPPED: Final = "values-dropped"
CHUNK_FULL: Final = "try_insert:chunk-full"
#: `Err.kind` of `try_insert` on a full chunk (the label above names the path).
_CHUNK_FULL_KIND: Final = "chunk-full"


def reports_paths(obs: Observation) -> bool:
    """Whether `path_labels(obs)` is non-empty, without building it (the explorer's fast test)."""
    result = obs.result
    return bool(obs.events) or bool(obs.dropped) or type(result) is Err or type(result) is Misuse


def path_labels(obs: Observation) -> list[str]:
    """The labels of the paths one step took, without its `op:` label (see the module docstring)."""
    labels: list[str] = []
    events = obs.events
    if events:
        for e in events:
            if e not in labels:
                labels.append(e)
    if obs.dropped:
        labels.append(VALUES_DROPPED)
    result = obs.result
    if type(result) is Err and result.kind == _CHUNK_FULL_KIND:
        labels.append(CHUNK_FULL)
    if type(result) is Misuse:
        labels.append(MISUSE)
    return labels


def step_labels(op: Op, obs: Observation) -> list[str]:
    """`op:<TAG>`, then `path_labels(obs)`."""
    return [f"op:{op.TAG}", *path_labels(obs)]
