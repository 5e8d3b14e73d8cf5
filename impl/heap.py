"""A checking heap: the C allocator through ctypes, watched the way a sanitizer's allocator is.

The implementation allocates every `VMExternData` block and its table chunk here, and makes every
access to them through the checked accessors (`load`, `store`, `fetch_add`), which look the address
up *before* touching memory: an access to a freed block, past the end of a block, or to an address
no block covers is reported and not performed, so a buggy implementation never writes through a wild
pointer.

    posix_memalign(align, size + REDZONE)
    +---------------------------+----------+
    | user bytes (size)         | redzone  |   fresh user bytes hold FRESH_BYTE,
    +---------------------------+----------+   redzone bytes REDZONE_BYTE
    freed: the user bytes are poisoned with FREED_BYTE and the block is quarantined (never handed
    out again during a run, so an address names one allocation for the whole run)

`verify()` (run after every step) also finds writes that bypassed the accessors: a changed
redzone, a freed block whose poison changed, or a live value whose bytes changed. `release()` frees
every block for real at the end of a run; `leaks()` lists the blocks still live before that.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
from dataclasses import dataclass

WORD = 8
REDZONE = 32
#: Fresh blocks hold this byte until written, so reading memory nobody wrote is deterministic.
FRESH_BYTE = 0xAB
FREED_BYTE = 0xDD
REDZONE_BYTE = 0xFA

# Report kinds.
USE_AFTER_FREE = "heap-use-after-free"
BUFFER_OVERFLOW = "heap-buffer-overflow"
WILD_ACCESS = "wild-access"
MISALIGNED = "misaligned-atomic"
DOUBLE_FREE = "double-free"
INVALID_FREE = "invalid-free"
BAD_DEALLOC_LAYOUT = "dealloc-layout-mismatch"
FREED_BLOCK_WRITTEN = "freed-block-written"
REDZONE_WRITTEN = "redzone-written"
VALUE_CORRUPTED = "value-corrupted"
LEAK = "leak"
REPORT_KINDS = (
    USE_AFTER_FREE, BUFFER_OVERFLOW, WILD_ACCESS, MISALIGNED, DOUBLE_FREE, INVALID_FREE,
    BAD_DEALLOC_LAYOUT, FREED_BLOCK_WRITTEN, REDZONE_WRITTEN, VALUE_CORRUPTED, LEAK,
)  # fmt: skip

#: The access label of `Drop for VMExternRef`'s `fetch_sub`: a freed block there is a double drop.
DECREMENT = "decrement ref_count"

# Address status, as `status` answers it.
LIVE = "live"
FREED = "freed"
OVERFLOW = "overflow"
WILD = "wild"

_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_posix_memalign = _libc.posix_memalign
_posix_memalign.argtypes = (ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_size_t)
_posix_memalign.restype = ctypes.c_int
_free = _libc.free
_free.argtypes = (ctypes.c_void_p,)
_free.restype = None

_WORD_FROM = ctypes.c_uint64.from_address


class HeapExhausted(MemoryError):
    pass


@dataclass(frozen=True, slots=True)
class Report:
    """One finding. `access` says what the caller was doing (e.g. `decrement ref_count`)."""

    kind: str
    address: int
    access: str
    detail: str = ""

    def __str__(self) -> str:
        text = f"{self.kind} at {self.address:#x} during {self.access}"
        return f"{text}: {self.detail}" if self.detail else text


@dataclass(slots=True)
class Block:
    start: int
    size: int
    align: int
    tag: str
    live: bool = True


class CheckingHeap:
    """Live blocks, quarantined freed blocks, watched value bytes, and the reports made so far."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._blocks: dict[int, Block] = {}
        self._values: dict[int, bytes] = {}
        #: Memory that is no block and that nothing may write (`watch_foreign`): address -> bytes, what.
        self._foreign: dict[int, tuple[bytes, str]] = {}
        self.reports: list[Report] = []
        self._released = False

    # --- allocation -------------------------------------------------------------------------

    def alloc(self, size: int, align: int, tag: str) -> int:
        """`std::alloc::alloc(Layout { size, align })` with a redzone behind the block.

        The block records the layout asked for; alignments below a word are served word-aligned."""
        if align < 1 or align & (align - 1):
            raise ValueError(f"an alignment must be a power of two, got {align}")
        real_align = max(align, WORD)
        out = ctypes.c_void_p()
        if _posix_memalign(ctypes.byref(out), real_align, size + REDZONE) != 0 or not out.value:
            raise HeapExhausted(f"posix_memalign({real_align}, {size + REDZONE}) failed")
        start = out.value
        ctypes.memset(start, FRESH_BYTE, size)
        ctypes.memset(start + size, REDZONE_BYTE, REDZONE)
        bisect.insort(self._starts, start)
        self._blocks[start] = Block(start, size, align, tag)
        return start

    def free(self, start: int, size: int, align: int, access: str) -> None:
        """`std::alloc::dealloc(ptr, layout)`: poisons and quarantines; checks the layout matches."""
        block = self._blocks.get(start)
        if block is None:
            self.report(INVALID_FREE, start, access, "not the start of any allocation")
            return
        if not block.live:
            self.report(DOUBLE_FREE, start, access, f"{block.tag} block already freed")
            return
        if (size, align) != (block.size, block.align):
            self.report(
                BAD_DEALLOC_LAYOUT, start, access,
                f"allocated with size {block.size} align {block.align}, "
                f"freed with size {size} align {align}",
            )  # fmt: skip
        block.live = False
        self._values.pop(start, None)
        ctypes.memset(start, FREED_BYTE, block.size)

    def release(self) -> None:
        """Frees every block for real (live and quarantined). The heap is unusable afterwards."""
        if self._released:
            return
        self._released = True
        for start in self._starts:
            _free(start)
        self._starts.clear()
        self._blocks.clear()
        self._values.clear()
        self._foreign.clear()

    # --- queries (harness side; they never report) ------------------------------------------

    def owns(self, start: int) -> bool:
        """Whether `start` is the start of a block this heap handed out (live or freed): a runtime's
        global allocator must free anything else by its own means ("not mine")."""
        return start in self._blocks

    def block_at(self, address: int) -> Block | None:
        """The block whose user bytes or redzone cover `address`."""
        i = bisect.bisect_right(self._starts, address) - 1
        if i < 0:
            return None
        block = self._blocks[self._starts[i]]
        return block if address < block.start + block.size + REDZONE else None

    def status(self, address: int, size: int = WORD) -> str:
        block = self.block_at(address)
        if block is None:
            return WILD
        if not block.live:
            return FREED
        if address + size > block.start + block.size:
            return OVERFLOW
        return LIVE

    def peek(self, address: int) -> int:
        """Read a word without checks: only for the harness's inspection of known-live memory."""
        return _WORD_FROM(address).value

    def live_blocks(self) -> list[Block]:
        return [b for b in self._blocks.values() if b.live]

    def leaks(self) -> list[Report]:
        """A report per block still live (call once the program has dropped everything)."""
        return [
            Report(LEAK, b.start, "teardown", f"{b.tag} block of {b.size} bytes never freed")
            for b in self.live_blocks()
        ]

    # --- checked accessors (implementation side) ----------------------------------------------

    def check(self, address: int, size: int, access: str, atomic: bool = False) -> bool:
        """Whether `size` bytes at `address` may be touched; reports (and refuses) otherwise."""
        state = self.status(address, size)
        if state == LIVE:
            if atomic and address % size:
                self.report(MISALIGNED, address, access, f"{size}-byte atomic access")
            return True
        kind = {FREED: USE_AFTER_FREE, OVERFLOW: BUFFER_OVERFLOW, WILD: WILD_ACCESS}[state]
        self.report(kind, address, access)
        return False

    def load(self, address: int, access: str) -> int | None:
        if not self.check(address, WORD, access):
            return None
        return _WORD_FROM(address).value

    def store(self, address: int, value: int, access: str) -> bool:
        if not self.check(address, WORD, access):
            return False
        _WORD_FROM(address).value = value
        return True

    def fetch_add(self, address: int, delta: int, access: str) -> int | None:
        """`AtomicUsize::fetch_add` (wrapping); returns the old value, or None when refused."""
        if not self.check(address, WORD, access, atomic=True):
            return None
        cell = _WORD_FROM(address)
        old: int = cell.value
        cell.value = (old + delta) & 0xFFFF_FFFF_FFFF_FFFF
        return old

    # --- values ---------------------------------------------------------------------------------

    def watch_value(self, address: int, data: bytes) -> None:
        """The value written at `address` must keep these bytes until it is dropped."""
        if data:
            self._values[address] = data

    def unwatch_value(self, address: int, access: str) -> None:
        """The value at `address` is being dropped: its bytes must still be intact."""
        data = self._values.pop(address, None)
        if data is not None and ctypes.string_at(address, len(data)) != data:
            self.report(VALUE_CORRUPTED, address, access, "value bytes changed while alive")

    def watch_foreign(self, address: int, data: bytes, what: str) -> None:
        """Memory outside every block that must keep these bytes: a write through a pointer into
        it is a wild access (the accessors refuse it as one, since no block covers it)."""
        self._foreign[address] = (data, what)

    def verify(self) -> None:
        """Find writes the accessors did not see: values, freed blocks' poison, redzones, and
        memory watched with `watch_foreign`."""
        for address, (data, what) in self._foreign.items():
            if ctypes.string_at(address, len(data)) != data:
                self.report(WILD_ACCESS, address, "verify", f"{what} written")
                ctypes.memmove(address, data, len(data))
        for address, data in self._values.items():
            now = ctypes.string_at(address, len(data))
            if now != data:
                self.report(VALUE_CORRUPTED, address, "verify", "value bytes changed while alive")
                self._values[address] = now
        for block in self._blocks.values():
            end = block.start + block.size
            if ctypes.string_at(end, REDZONE) != _REDZONE_BYTES:
                self.report(REDZONE_WRITTEN, end, "verify", f"behind a {block.tag} block")
                ctypes.memset(end, REDZONE_BYTE, REDZONE)
            if not block.live and ctypes.string_at(block.start, block.size) != _freed(block.size):
                self.report(FREED_BLOCK_WRITTEN, block.start, "verify", f"freed {block.tag} block")
                ctypes.memset(block.start, FREED_BYTE, block.size)

    def report(self, kind: str, address: int, access: str, detail: str = "") -> None:
        self.reports.append(Report(kind, address, access, detail))


_REDZONE_BYTES = bytes([REDZONE_BYTE]) * REDZONE
_FREED_CACHE: dict[int, bytes] = {}


def _freed(size: int) -> bytes:
    data = _FREED_CACHE.get(size)
    if data is None:
        data = _FREED_CACHE[size] = bytes([FREED_BYTE]) * size
    return data
