"""The host's bookkeeping, written once for the model and every implementation.

The embedder owns `VMExternRef` handles and raw pointers. Which handles are live, which raw pointers
it owns, and when a request breaks the API's contract are the same facts whether a ref is a model id
or a real footer address, so both worlds inherit these methods and refuse misuse with the same
kinds (`model.observation`).
"""

from __future__ import annotations

from collections.abc import Callable

from externref_harness.model import layout
from externref_harness.model.observation import (
    BAD_CANARY,
    BAD_GLOBAL,
    BAD_LAYOUT,
    BAD_SLOT,
    DROPPED_HANDLE,
    DUPLICATE_HANDLE,
    FREED_RAW,
    NO_SUCH_HANDLE,
    NO_SUCH_RAW,
    UNOWNED_RAW,
)
from externref_harness.model.runtime import MisuseError
from externref_harness.model.state import RawPtr
from externref_harness.vec import Vec

#: Largest value the harness will allocate for real (the implementation allocates every value).
MAX_VALUE_SIZE = 1 << 16
MAX_VALUE_ALIGN = 1 << 12


def check_value_layout(size: int, align: int) -> None:
    """`VMExternRef::new` takes a Rust value: its size and alignment must be a type's."""
    problem = _LAYOUT_PROBLEMS.get((size, align), _NOT_JUDGED)
    if problem is _NOT_JUDGED:
        problem = _layout_problem(size, align)
        if len(_LAYOUT_PROBLEMS) < MAX_JUDGED_LAYOUTS:
            _LAYOUT_PROBLEMS[(size, align)] = problem
    if problem is not None:
        raise MisuseError(BAD_LAYOUT, problem)


def _layout_problem(size: int, align: int) -> str | None:
    if not layout.rust_type_layout_admissible(size, align):
        return f"no Rust type has size {size}, align {align}"
    if size > MAX_VALUE_SIZE or align > MAX_VALUE_ALIGN:
        return "larger than the harness allocates for real"
    return None


#: `check_value_layout`'s verdicts by `(size, align)`. Every `New` of the model and of the host
#: world asks, a run asks of a handful of layouts, and judging one (`layout`'s rules, written for
#: ints and z3 terms alike) costs 2.3 µs: about a bare model step. At most `MAX_JUDGED_LAYOUTS`
#: are kept (the sizes of generated ops are not bounded); the rest are judged each time.
_LAYOUT_PROBLEMS: dict[tuple[int, int], str | None] = {}
MAX_JUDGED_LAYOUTS = 4096
_NOT_JUDGED = "not judged yet"


#: The most clones one `InsertMany` host loop moves into the table.
MAX_INSERT_MANY = 4096


def check_insert_count(count: int) -> None:
    """A host loop of inserts runs at least once and at most `MAX_INSERT_MANY` times."""
    if not 1 <= count <= MAX_INSERT_MANY:
        raise MisuseError(BAD_SLOT, f"a loop of {count} inserts (1 to {MAX_INSERT_MANY})")


def check_arity(args: int, slots: int) -> None:
    """A call passes at most as many values as the callee's frame has slots."""
    if args > slots:
        raise MisuseError(BAD_SLOT, f"{args} arguments, {slots} slots")


def check_counted_args(refs: int, chunk_size: int) -> None:
    """Under `no-gc-free-insert` a call passes at most `chunk_size + 1` non-null refs: what the
    counted protocol (`model.protocol.move_refs_counted`) can keep in the table across its one GC."""
    if refs > chunk_size + 1:
        raise MisuseError(
            BAD_SLOT,
            f"{refs} externref arguments; without insert_without_gc at most {chunk_size + 1} "
            f"(the chunk's {chunk_size} slots and the hash set) fit across one GC",
        )


def check_stack_canary(new: int | None, current: int | None, wasm_on_stack: bool) -> None:
    """`set_stack_canary` as the embedder may call it (CONTEXT.md, SPEC.md "The stack canary").

    The canary is the RAII guard of `invoke_wasm_and_catch_traps`: set at the youngest host frame
    just before the first host-to-Wasm call (the `CallWasm` step does that) and reset to `None`
    when that call returns. Outside that, the embedder may only repeat what is already true
    (`gc`'s contract calls setting it idempotent): `None` with no Wasm frame on the stack, or the
    current canary while Wasm frames are live. A canary set with no Wasm on the stack, or moved or
    cleared while Wasm is live, breaks `gc`'s safety contract (seed lines 861-869).
    """
    if not wasm_on_stack and new is not None:
        raise MisuseError(BAD_CANARY, "no Wasm frame is on the stack; the call into Wasm sets it")
    if wasm_on_stack and new != current:
        moved = "cleared" if new is None else "moved"
        raise MisuseError(BAD_CANARY, f"the canary of the live host-to-Wasm call {moved}")


def check_instantiation(count: int, initialised: list[bool]) -> None:
    """Instantiation runs once, and writes a prefix (`count`) of the instance's globals."""
    if any(initialised):
        raise MisuseError(BAD_GLOBAL, "the instance is already instantiated")
    if not 0 <= count <= len(initialised):
        raise MisuseError(BAD_GLOBAL, f"{count} of {len(initialised)} globals")


class HostBookkeeping:
    """Handles (`None`: dropped or moved) and raw pointers (`None`: consumed by `from_raw`).

    The host's half of a world, composed into the model's `Machine` and the implementation's
    `World` (`host`), which pass `is_freed`: whether a ref's allocation has been freed (asked
    before `clone_from_raw`).
    """

    def __init__(
        self,
        handles: Vec[int | None],
        raws: list[RawPtr | None],
        is_freed: Callable[[int], bool],
    ) -> None:
        #: As long as the refs the host ever held: a persistent vector (`externref_harness.vec`),
        #: so a step that moves or adds one handle copies one leaf, and the model's state and the
        #: adapter's probe take it as it is.
        self.handles = handles
        self.raws = raws
        self.is_freed = is_freed

    def handle(self, h: int) -> int:
        if not 0 <= h < len(self.handles):
            raise MisuseError(NO_SUCH_HANDLE, f"handle {h}")
        r = self.handles[h]
        if r is None:
            raise MisuseError(DROPPED_HANDLE, f"handle {h} was dropped or moved")
        return r

    def take(self, h: int) -> int:
        """Move the ref out of handle `h` (it is gone from the host afterwards)."""
        r = self.handle(h)
        self.clear(h)
        return r

    def clear(self, h: int) -> None:
        """Handle `h` no longer holds its ref (moved into the table)."""
        self.handles = self.handles.set(h, None)

    def new_handle(self, r: int) -> int:
        self.handles = self.handles.append(r)
        return len(self.handles) - 1

    def raw(self, p: int) -> RawPtr:
        if not 0 <= p < len(self.raws):
            raise MisuseError(NO_SUCH_RAW, f"raw pointer {p}")
        raw = self.raws[p]
        if raw is None:
            raise MisuseError(NO_SUCH_RAW, f"raw pointer {p} was already consumed by from_raw")
        return raw

    def take_args(self, args: tuple[int, ...], slots: int) -> list[int]:
        """`TypedFunc::call` moves each argument handle in; a handle cannot be moved twice."""
        check_arity(len(args), slots)
        if len(set(args)) != len(args):
            raise MisuseError(DUPLICATE_HANDLE, f"handles {list(args)}: one handle moved in twice")
        return [self.take(h) for h in args]

    def as_raw(self, h: int) -> int:
        """`as_raw`: a borrowed pointer; no count changes hands."""
        self.raws.append(RawPtr(self.handle(h), owned=False))
        return len(self.raws) - 1

    def into_raw(self, h: int) -> int:
        """`into_raw`: the handle's count moves into the raw pointer."""
        self.raws.append(RawPtr(self.take(h), owned=True))
        return len(self.raws) - 1

    def from_raw(self, p: int) -> int:
        """`from_raw`: only a pointer that owns a count (from `into_raw`) may become a handle."""
        raw = self.raw(p)
        if not raw.owned:
            raise MisuseError(UNOWNED_RAW, f"raw pointer {p} came from as_raw; nobody owns it")
        self.raws[p] = None
        return self.new_handle(raw.ref)

    def clone_from_raw_target(self, p: int) -> int:
        """The ref `clone_from_raw(p)` may increment: refused if its count already reached zero."""
        raw = self.raw(p)
        if self.is_freed(raw.ref):
            raise MisuseError(FREED_RAW, f"raw pointer {p} points at freed ref {raw.ref}")
        return raw.ref
