"""What one step shows to the outside: the explicit observable projection of the model.

The lockstep comparison with the implementation compares exactly these values, never internals.
Like the state's records (`model.state`), they are plain classes with read-only fields and
explicit equality, so a compiled step builds them without the dataclass machinery.
"""

from __future__ import annotations

from typing import Any, ClassVar, Final

from mypy_extensions import mypyc_attr


@mypyc_attr(acyclic=True)
class Ok:
    __slots__ = ("value",)
    FIELDS: ClassVar[tuple[str, ...]] = ("value",)
    __match_args__ = ("value",)

    def __init__(self, value: Any = None) -> None:
        self.value: Final = value

    def __eq__(self, other: object) -> bool:
        if type(other) is not Ok:
            return NotImplemented
        assert isinstance(other, Ok)
        return bool(self.value == other.value)

    def __hash__(self) -> int:
        return hash((Ok, self.value))

    def __repr__(self) -> str:
        return f"Ok(value={self.value!r})"

    def __str__(self) -> str:
        return "Ok" if self.value is None else f"Ok({self.value!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Ok, (self.value,))


@mypyc_attr(acyclic=True)
class Err:
    """The seed's own `Err` (only `try_insert`'s "chunk full": the handle is given back)."""

    __slots__ = ("kind",)
    FIELDS: ClassVar[tuple[str, ...]] = ("kind",)
    __match_args__ = ("kind",)

    def __init__(self, kind: str) -> None:
        self.kind: Final = kind

    def __eq__(self, other: object) -> bool:
        if type(other) is not Err:
            return NotImplemented
        assert isinstance(other, Err)
        return self.kind == other.kind

    def __hash__(self) -> int:
        return hash((Err, self.kind))

    def __repr__(self) -> str:
        return f"Err(kind={self.kind!r})"

    def __str__(self) -> str:
        return f"Err({self.kind})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Err, (self.kind,))


@mypyc_attr(acyclic=True)
class Misuse:
    """The caller broke the API's contract; the step is refused and the state is unchanged."""

    __slots__ = ("detail", "kind")
    FIELDS: ClassVar[tuple[str, ...]] = ("kind", "detail")
    __match_args__ = ("kind", "detail")

    def __init__(self, kind: str, detail: str = "") -> None:
        self.kind: Final = kind
        self.detail: Final = detail

    def __eq__(self, other: object) -> bool:
        if type(other) is not Misuse:
            return NotImplemented
        assert isinstance(other, Misuse)
        return self.kind == other.kind and self.detail == other.detail

    def __hash__(self) -> int:
        return hash((Misuse, self.kind, self.detail))

    def __repr__(self) -> str:
        return f"Misuse(kind={self.kind!r}, detail={self.detail!r})"

    def __str__(self) -> str:
        return f"Misuse({self.kind}: {self.detail})" if self.detail else f"Misuse({self.kind})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Misuse, (self.kind, self.detail))


@mypyc_attr(acyclic=True)
class Panic:
    """A debug assertion of the seed fired (debug builds only)."""

    __slots__ = ("message",)
    FIELDS: ClassVar[tuple[str, ...]] = ("message",)
    __match_args__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message: Final = message

    def __eq__(self, other: object) -> bool:
        if type(other) is not Panic:
            return NotImplemented
        assert isinstance(other, Panic)
        return self.message == other.message

    def __hash__(self) -> int:
        return hash((Panic, self.message))

    def __repr__(self) -> str:
        return f"Panic(message={self.message!r})"

    def __str__(self) -> str:
        return f"Panic({self.message})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Panic, (self.message,))


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


@mypyc_attr(acyclic=True)
class Observation:
    """The result, the values whose destructor ran during the step, and the paths it took."""

    __slots__ = ("dropped", "events", "result")
    FIELDS: ClassVar[tuple[str, ...]] = ("result", "dropped", "events")
    __match_args__ = ("result", "dropped", "events")

    def __init__(
        self, result: Result, dropped: frozenset[int] = frozenset(), events: tuple[str, ...] = ()
    ) -> None:
        self.result: Final = result
        self.dropped: Final = dropped
        self.events: Final = events

    def __eq__(self, other: object) -> bool:
        if type(other) is not Observation:
            return NotImplemented
        assert isinstance(other, Observation)
        return (
            self.result == other.result
            and self.dropped == other.dropped
            and self.events == other.events
        )

    def __hash__(self) -> int:
        return hash((self.result, self.dropped, self.events))

    def __repr__(self) -> str:
        return f"Observation(result={self.result!r}, dropped={self.dropped!r}, events={self.events!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (Observation, (self.result, self.dropped, self.events))

    def __str__(self) -> str:
        parts = [str(self.result)]
        if self.dropped:
            parts.append(f"dropped={sorted(self.dropped)}")
        if self.events:
            parts.append(f"paths={list(self.events)}")
        return " ".join(parts)
