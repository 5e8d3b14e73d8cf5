"""The native stack in real memory, the compiled code's pcs, and the stack maps registered by pc.

The stack is a ctypes region growing downward, carved into frames of the model's sizes
(`model.state.frame_bytes`), so a frame's distance below the top of the stack is the same on both
sides. Every frame ends with a saved frame pointer and a return address, as on x86-64:

    high ┌──────────────────────┐ <- caller's sp
         │ return address (pc)  │ fp + 8
         │ saved fp             │ fp = sp + bytes - 16
         │ slot n-1 ... slot 0  │ Wasm: slot i at sp + i * 8; host: two local words
    low  └──────────────────────┘ <- sp

`walk()` is the stand-in for `backtrace::trace`: from the youngest frame's registers it follows the
saved frame pointers in memory, youngest first, and stops after a host frame whose code has no
unwind info. `CodeRegistry` is `ModuleInfoLookup` / `ModuleInfo` over the static code layout
(`impl.code`): a pc in Wasm code may have a stack map, stored in memory as
`[mapped_words, bitmap words...]`.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable, Iterator
from functools import cache

from mypy_extensions import mypyc_attr

from externref_harness.impl.code import code_layout, map_records
from externref_harness.model.state import WORD, Config, HostFrame, StackMap, WasmFrame, frame_bytes
from externref_harness.model.world import lookup_stack_map

#: Host code the unwinder has unwind info for.
HOST_CODE = 0x5555_5555_0000
#: Host code without unwind info: the walk cannot step past a frame suspended here.
OPAQUE_HOST_CODE = 0x5555_5556_0000

STACK_BYTES = 1 << 16
#: The two words every frame ends with: saved frame pointer, return address.
LINK_BYTES = 2 * WORD

HOST_BYTES = frame_bytes(HostFrame())
if HOST_BYTES < LINK_BYTES or HOST_BYTES % WORD:
    raise ImportError(f"a host frame of {HOST_BYTES} bytes cannot hold its frame link")


@cache
def wasm_frame_bytes(slots: int) -> int:
    size = frame_bytes(WasmFrame(slots=(None,) * slots))
    if size - slots * WORD != LINK_BYTES:
        raise ValueError(f"a Wasm frame's overhead must be its frame link ({LINK_BYTES} bytes)")
    return size


@mypyc_attr(native_class=False)  # mypyc compiles no subclass of a builtin exception but Exception's
class StackOverflow(RuntimeError):
    pass


class Frame:
    """The host's bookkeeping of one frame; its words live in the stack region. A plain class, not
    a dataclass: one is made per call, and a compiled dataclass's `__init__` is generated Python
    that runs interpreted."""

    __slots__ = (
        "called_from_wasm", "fp", "function", "last_map", "pc", "planted", "ref_typed", "resets_canary",
        "ret_slot", "sp", "wasm",
    )

    def __init__(self, wasm: bool, sp: int, fp: int, pc: int) -> None:
        self.wasm = wasm
        self.sp = sp
        self.fp = fp
        #: Where this frame is suspended (for the youngest, where it runs).
        self.pc = pc
        self.called_from_wasm = False
        self.ret_slot: int | None = None
        #: This call set the canary (the RAII guard of `invoke_wasm_and_catch_traps`).
        self.resets_canary = False
        #: The compiler's static type of each slot: True for externref, False for i64.
        self.ref_typed: list[bool] = []
        #: The function of the code layout this frame runs (an index into `CodeLayout.functions`).
        self.function = 0
        #: The map of this frame's last call site that had one (where its next call without one is).
        self.last_map: StackMap | None = None
        #: While suspended: slot -> (its own word, the non-ref word left there, that word's kind).
        self.planted: dict[int, tuple[int, int, str]] = {}

    def __repr__(self) -> str:
        return f"Frame(wasm={self.wasm}, sp={self.sp:#x}, fp={self.fp:#x}, pc={self.pc:#x})"

    def own_word(self, slot: int, word: int) -> int:
        """What slot `slot` holds for the program, given the word in memory: its own word while a
        non-ref word stands in for it, unless something overwrote that word (then what is there)."""
        entry = self.planted.get(slot)
        return entry[0] if entry is not None and entry[1] == word else word


#: Regions of stacks released (`NativeStack.release`), for the next stack of this process to use.
_SPARE_REGIONS: list[ctypes.Array[ctypes.c_uint64]] = []


class NativeStack:
    def __init__(self, size: int = STACK_BYTES) -> None:
        # The region a released stack left, zeroed as a new one is: one process's runs of the same
        # steps then put their frames at the same addresses, and their replies repeat byte for
        # byte (`lockstep.runner.ModelSteps`).
        spare = _SPARE_REGIONS.pop() if _SPARE_REGIONS and len(_SPARE_REGIONS[-1]) * WORD == size else None
        if spare is not None:
            ctypes.memset(spare, 0, size)
        self._region = (ctypes.c_uint64 * (size // WORD))() if spare is None else spare
        self._released = False
        #: The region as unsigned 64-bit words (`words`): no ctypes object per word read.
        self._words = memoryview(self._region).cast("B").cast("Q")
        self.base = ctypes.addressof(self._region)
        self.top = self.base + size
        self.frames: list[Frame] = []
        self._push(wasm=False, nbytes=HOST_BYTES, pc=HOST_CODE, words=(0, 0))

    def release(self) -> None:
        """The run is over: the region goes to the next stack of this process. This stack is not
        used again."""
        if not self._released and not _SPARE_REGIONS:
            _SPARE_REGIONS.append(self._region)
        self._released = True

    def load(self, address: int) -> int:
        self._bounds(address)
        return ctypes.c_uint64.from_address(address).value

    def words(self, address: int, n: int) -> tuple[int, ...]:
        """The `n` words from `address` (a frame's slots), read in one slice of the region."""
        if n == 0:
            return ()
        self._bounds(address)
        self._bounds(address + (n - 1) * WORD)
        first = (address - self.base) // WORD
        return tuple(self._words[first : first + n])

    def store(self, address: int, value: int) -> None:
        self._bounds(address)
        ctypes.c_uint64.from_address(address).value = value

    def _bounds(self, address: int) -> None:
        if not (self.base <= address <= self.top - WORD and address % WORD == 0):
            raise IndexError(f"{address:#x} is not a word of the stack region")

    @property
    def youngest(self) -> Frame:
        return self.frames[-1]

    def push_host(self, unwind_info: bool, called_from_wasm: bool, ret_slot: int | None) -> Frame:
        pc = HOST_CODE if unwind_info else OPAQUE_HOST_CODE
        frame = self._push(wasm=False, nbytes=HOST_BYTES, pc=pc, words=(0, 0))
        frame.called_from_wasm, frame.ret_slot = called_from_wasm, ret_slot
        return frame

    def push_wasm(self, words: list[int], ref_typed: list[bool], function: int, entry_pc: int) -> Frame:
        frame = self._push(wasm=True, nbytes=wasm_frame_bytes(len(words)), pc=entry_pc, words=words)
        frame.ref_typed, frame.function = ref_typed, function
        return frame

    def _push(self, wasm: bool, nbytes: int, pc: int, words: tuple[int, ...] | list[int]) -> Frame:
        caller = self.frames[-1] if self.frames else None
        sp = (caller.sp if caller else self.top) - nbytes
        if sp < self.base:
            raise StackOverflow(f"the {len(self.frames)}-frame stack outgrew {self.top - self.base} bytes")
        fp = sp + nbytes - LINK_BYTES
        for i, word in enumerate(words):
            self.store(sp + i * WORD, word)
        self.store(fp, caller.fp if caller else 0)
        self.store(fp + WORD, caller.pc if caller else 0)
        frame = Frame(wasm=wasm, sp=sp, fp=fp, pc=pc)
        self.frames.append(frame)
        return frame

    def pop(self) -> Frame:
        return self.frames.pop()

    def walk(self, has_unwind_info: Callable[[int], bool]) -> Iterator[tuple[int, int]]:
        """`backtrace::trace`: `(pc, sp)` of every frame it can reach, youngest first."""
        top = self.frames[-1]
        pc, sp, fp = top.pc, top.sp, top.fp
        while True:
            yield pc, sp
            if not has_unwind_info(pc):
                return
            ret = self.load(fp + WORD)
            if ret == 0:
                return
            pc, sp, fp = ret, fp + LINK_BYTES, self.load(fp)


class CodeRegistry:
    """`ModuleInfoLookup` / `ModuleInfo` over the compiled code's static layout (`impl.code`)."""

    def __init__(self, cfg: Config) -> None:
        self.layout = code_layout(cfg.slots)
        self._records = map_records(cfg.slots)

    @staticmethod
    def has_unwind_info(pc: int) -> bool:
        return pc != OPAQUE_HOST_CODE

    def is_wasm(self, pc: int) -> bool:
        """`ModuleInfoLookup::lookup(pc).is_some()`."""
        return self.layout.function_at(pc) is not None

    def stack_map_at(self, cfg: Config, pc: int) -> StackMap | None:
        """`ModuleInfo::lookup_stack_map(pc)`, by the registry's one rule (`model.world`): the
        exact call site's map, or under CVE-2021-39218 the nearest earlier one in the function
        (the layout places it so that it is the frame's previous map, as the model has it)."""
        frame = WasmFrame(
            slots=(),
            stack_map=self.layout.exact_map(pc),
            previous_stack_map=self.layout.nearest_earlier_map(pc),
        )
        return lookup_stack_map(cfg, frame)

    def lookup_stack_map(self, cfg: Config, pc: int) -> int | None:
        """The address of the record of `stack_map_at(pc)`, `[mapped_words, bitmap words...]`."""
        stack_map = self.stack_map_at(cfg, pc)
        return None if stack_map is None else self._records.address(stack_map)
