"""What one step shows to the outside: the explicit observable projection of the model.

The lockstep comparison with the implementation compares exactly these values, never internals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Ok:
    value: Any = None

    def __str__(self) -> str:
        return "Ok" if self.value is None else f"Ok({self.value!r})"


@dataclass(frozen=True, slots=True)
class Err:
    """The seed's own `Err` (only `try_insert`'s "chunk full": the handle is given back)."""

    kind: str

    def __str__(self) -> str:
        return f"Err({self.kind})"


@dataclass(frozen=True, slots=True)
class Misuse:
    """The caller broke the API's contract; the step is refused and the state is unchanged."""

    kind: str
    detail: str = ""

    def __str__(self) -> str:
        return f"Misuse({self.kind}: {self.detail})" if self.detail else f"Misuse({self.kind})"


@dataclass(frozen=True, slots=True)
class Panic:
    """A debug assertion of the seed fired (debug builds only)."""

    message: str

    def __str__(self) -> str:
        return f"Panic({self.message})"


Result = Ok | Err | Misuse | Panic

# Misuse kinds, shared by the model and every implementation adapter.
NO_SUCH_HANDLE = "no-such-handle"
DROPPED_HANDLE = "dropped-handle"
#: One call names the same handle for two of its arguments: it cannot be moved in twice.
DUPLICATE_HANDLE = "duplicate-handle"
NO_SUCH_RAW = "no-such-raw"
UNOWNED_RAW = "from-raw-unowned"
FREED_RAW = "raw-of-freed-ref"
GC_NOT_OKAY = "gc-not-okay"
WRONG_FRAME = "wrong-frame"
BAD_SLOT = "bad-slot"
BAD_GLOBAL = "bad-global"
UNINIT_GLOBAL = "uninit-global"
BAD_FRAME = "bad-frame"
#: `set_stack_canary` outside the embedder's protocol (see `model.host.check_stack_canary`).
BAD_CANARY = "bad-canary"
BAD_LAYOUT = "bad-layout"


@dataclass(frozen=True, slots=True)
class Observation:
    """The result, the values whose destructor ran during the step, and the paths it took."""

    result: Result
    dropped: frozenset[int] = frozenset()
    events: tuple[str, ...] = ()

    def __str__(self) -> str:
        parts = [str(self.result)]
        if self.dropped:
            parts.append(f"dropped={sorted(self.dropped)}")
        if self.events:
            parts.append(f"paths={list(self.events)}")
        return " ".join(parts)
