"""A checking heap: memory mapped through ctypes, watched the way a sanitizer's allocator is.

The implementation allocates every `VMExternData` block and its table chunk here, and makes every
access to them through the checked accessors (`load`, `store`, `fetch_add`), which look the address
up *before* touching memory: an access to a freed block, past the end of a block, or to an address
no block covers is reported and not performed, so a buggy implementation never writes through a wild
pointer.

    size + REDZONE bytes at an address aligned to max(align, 8), carved from a segment
    +---------------------------+----------+
    | user bytes (size)         | redzone  |   fresh user bytes hold FRESH_BYTE,
    +---------------------------+----------+   redzone bytes REDZONE_BYTE
    freed: the user bytes are poisoned with FREED_BYTE and the block is quarantined (never handed
    out again during a run, so an address names one allocation for the whole run)

`verify()` (run after every step) also finds writes that bypassed the accessors: a changed
redzone, a freed block whose poison changed, or a live value whose bytes changed. `release()`
gives every segment up at the end of a run; `leaks()` lists the blocks still live before that.

Segments of the first size (`SEGMENT`) are kept for the next heap of the process, at most
`SPARE_SEGMENTS` of them, instead of unmapped: mapping, first touching and unmapping one took about
13 µs on the project's machine, a quarter of a short run's start and close. A kept segment and its
shadow are zeroed when given up, so the next heap gets one as `mmap` gives it (every byte 0). Only
its address may repeat, as `mmap` often repeats it too.

The write record. Blocks are carved, in address order, out of segments this heap maps itself
(`mmap`), and each segment has a shadow: a copy of its bytes as the last `verify()` left them. A
step's writes, whoever made them (the Python port through the accessors, a native library
directly, a wild pointer), are found by comparing the segment with its shadow:

    segment  |blk 0|rz|blk 1|rz|  ...  |blk k|rz|              (bump-allocated, never reused)
    shadow   |     copy after the last verify()   |
      memcmp per 4 KiB page (`changes.changed_pages`, one C loop) -> the first differing byte
      of a changed page, then the first past the end of the block it fell in, and so on
      (`changes.first_difference`, C) -> the blocks that cover them

Only the blocks whose bytes (user bytes or redzone) changed, or that were allocated, freed or
given a watched value since the last `verify()`, are checked again; every other block is
byte-for-byte what the last check passed, so its redzone, poison and watched value need no second
look. The comparison runs at `memcmp` speed over the heap's bytes (a few nanoseconds per live
ref); the Python work is proportional to what changed. `take_changed()` hands the starts of the
changed blocks to the probe, which re-reads only their footers. Invariant relied on: no byte of a
segment changes without showing in the comparison, since the shadow is refreshed only from the
segment itself, page by page, after that page's blocks were checked.
"""

from __future__ import annotations

import bisect
import ctypes
import ctypes.util
from dataclasses import dataclass

from mypy_extensions import mypyc_attr

from externref_harness.changes import changed_pages, copy, filled, first_difference, holds

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
_mmap = _libc.mmap
_mmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long)
_mmap.restype = ctypes.c_void_p
_munmap = _libc.munmap
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_munmap.restype = ctypes.c_int
_MAP_FAILED = ctypes.c_void_p(-1).value
_PROT_READ_WRITE = 0x1 | 0x2
_MAP_PRIVATE_ANONYMOUS = 0x02 | 0x20
#: Bytes of the first segment; each next one is twice the last, up to `MAX_SEGMENT` (a block bigger
#: than that gets a segment of its own size). A short run maps and compares little.
SEGMENT = 1 << 16
#: How many released `SEGMENT`-sized segments a process keeps for the next heaps (see the docstring).
SPARE_SEGMENTS = 4
MAX_SEGMENT = 1 << 22
PAGE = 4096

_WORD_FROM = ctypes.c_uint64.from_address


@mypyc_attr(native_class=False)  # mypyc compiles no subclass of a builtin exception but Exception's
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


class Block:
    """One allocation: its user bytes `[start, start + size)`, then its redzone. A plain class, not
    a dataclass: one is made per allocation, and a compiled dataclass's `__init__` is generated
    Python that runs interpreted."""

    __slots__ = ("align", "live", "size", "start", "tag")

    def __init__(self, start: int, size: int, align: int, tag: str, live: bool = True) -> None:
        self.start = start
        self.size = size
        self.align = align
        self.tag = tag
        self.live = live

    def holds_to(self, address: int, size: int) -> bool:
        """Whether `size` bytes from `address`, an address in this block (`CheckingHeap.block_at`'s),
        end within its user bytes and redzone: then every write to them is in the heap's write
        record under this block (`verify`, `take_changed`), which the probe relies on."""
        return address + size <= self.start + self.size + REDZONE

    def __repr__(self) -> str:
        shown = f"start={self.start:#x}, size={self.size}, align={self.align}, tag={self.tag!r}"
        return f"Block({shown}, live={self.live})"


#: Released segments of `SEGMENT` bytes, zeroed with their shadows: `(base, shadow)`.
_spare: list[tuple[int, ctypes.Array[ctypes.c_char]]] = []


@dataclass(slots=True)
class _Segment:
    """A mapped range blocks are bump-allocated from, and its shadow (the bytes `verify` last saw)."""

    base: int
    size: int
    used: int
    shadow: ctypes.Array[ctypes.c_char]


class CheckingHeap:
    """Live blocks, quarantined freed blocks, watched value bytes, and the reports made so far."""

    def __init__(self) -> None:
        self._starts: list[int] = []
        self._blocks: dict[int, Block] = {}
        self._values: dict[int, bytes] = {}
        #: Memory that is no block and that nothing may write (`watch_foreign`): address -> bytes, what.
        self._foreign: dict[int, tuple[bytes, str]] = {}
        #: Block start -> the watched value addresses inside it.
        self._values_in: dict[int, set[int]] = {}
        self.reports: list[Report] = []
        self._released = False
        self._segments: list[_Segment] = []
        #: Blocks to check at the next `verify` whatever their bytes (allocated, freed, watched).
        self._touched: set[int] = set()
        #: Blocks `verify` found changed (or touched) since the last `take_changed`.
        self._changed: set[int] = set()

    # --- allocation -------------------------------------------------------------------------

    def alloc(self, size: int, align: int, tag: str) -> int:
        """`std::alloc::alloc(Layout { size, align })` with a redzone behind the block.

        The block records the layout asked for; alignments below a word are served word-aligned."""
        if align < 1 or align & (align - 1):
            raise ValueError(f"an alignment must be a power of two, got {align}")
        real_align = max(align, WORD)
        start = self._carve(size + REDZONE, real_align)
        ctypes.memset(start, FRESH_BYTE, size)
        ctypes.memset(start + size, REDZONE_BYTE, REDZONE)
        bisect.insort(self._starts, start)
        self._blocks[start] = Block(start, size, align, tag)
        self._touched.add(start)
        return start

    def _carve(self, length: int, align: int) -> int:
        """`length` bytes at an `align`-aligned address of a segment (a new one if none has room)."""
        if self._segments:
            seg = self._segments[-1]
            start = -(-(seg.base + seg.used) // align) * align
            if start + length <= seg.base + seg.size:
                seg.used = start + length - seg.base
                return start
        grown = min(MAX_SEGMENT, 2 * self._segments[-1].size) if self._segments else SEGMENT
        size = max(grown, -(-(length + align) // PAGE) * PAGE)
        if size == SEGMENT and _spare:
            kept, kept_shadow = _spare.pop()
            seg = _Segment(kept, size, 0, kept_shadow)
            self._segments.append(seg)
            start = -(-kept // align) * align
            seg.used = start + length - kept
            return start
        base: int | None = _mmap(None, size, _PROT_READ_WRITE, _MAP_PRIVATE_ANONYMOUS, -1, 0)
        if base is None or base == _MAP_FAILED:
            raise HeapExhausted(f"mmap of a {size}-byte segment failed (a block of {length} bytes)")
        try:
            shadow = (ctypes.c_char * size)()
        except MemoryError:
            _munmap(base, size)
            raise HeapExhausted(f"no memory for the shadow of a {size}-byte segment") from None
        seg = _Segment(base, size, 0, shadow)
        self._segments.append(seg)
        start = -(-base // align) * align
        seg.used = start + length - base
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
        self._touched.add(start)

    def release(self) -> None:
        """Frees every block for real (live and quarantined). The heap is unusable afterwards."""
        if self._released:
            return
        self._released = True
        for seg in self._segments:
            if seg.size == SEGMENT and len(_spare) < SPARE_SEGMENTS:
                # As `mmap` would give it again: every byte 0, and the shadow the same.
                ctypes.memset(seg.base, 0, seg.size)
                ctypes.memset(seg.shadow, 0, seg.size)
                _spare.append((seg.base, seg.shadow))
            else:
                _munmap(seg.base, seg.size)
        self._segments.clear()
        self._starts.clear()
        self._blocks.clear()
        self._values.clear()
        self._foreign.clear()
        self._values_in.clear()

    # --- queries (harness side; they never report) ------------------------------------------

    def owns(self, start: int) -> bool:
        """Whether `start` is the start of a block this heap handed out (live or freed): a runtime's
        global allocator must free anything else by its own means ("not mine")."""
        return start in self._blocks

    def maps(self, address: int, size: int) -> bool:
        """Whether `size` bytes at `address` all lie in one segment of this heap: memory it mapped
        readable and keeps mapped until `release`, whatever the blocks in it (freed ones are
        quarantined, never unmapped), so the harness may read it directly."""
        for seg in self._segments:
            if seg.base <= address and address + size <= seg.base + seg.size:
                return True
        return False

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
            block = self.block_at(address)
            if block is not None:
                self._values_in.setdefault(block.start, set()).add(address)
                self._touched.add(block.start)
            else:
                self._values_in.setdefault(-1, set()).add(address)

    def unwatch_value(self, address: int, access: str) -> None:
        """The value at `address` is being dropped: its bytes must still be intact."""
        data = self._values.pop(address, None)
        block = self.block_at(address)
        self._values_in.get(-1 if block is None else block.start, set()).discard(address)
        if data is not None and not holds(address, data):
            self.report(VALUE_CORRUPTED, address, access, "value bytes changed while alive")

    def watch_foreign(self, address: int, data: bytes, what: str) -> None:
        """Memory outside every block that must keep these bytes: a write through a pointer into
        it is a wild access (the accessors refuse it as one, since no block covers it)."""
        self._foreign[address] = (data, what)

    def verify(self) -> None:
        """Find writes the accessors did not see: values, freed blocks' poison, redzones, and
        memory watched with `watch_foreign` (outside every block: compared every time).

        Only blocks whose bytes changed since the last call, or that were allocated, freed or
        given a watched value, are looked at (see the module's docstring): the others passed
        these checks with the bytes they still have."""
        for address, (data, what) in self._foreign.items():
            if not holds(address, data):
                self.report(WILD_ACCESS, address, "verify", f"{what} written")
                ctypes.memmove(address, data, len(data))
        dirty_pages: list[tuple[_Segment, int]] = []
        blocks = self._touched
        self._touched = set()
        for seg in self._segments:
            for offset in self._dirty_pages(seg):
                dirty_pages.append((seg, offset))
                self._changed_blocks(seg, offset, blocks)
        for start in sorted(blocks):
            self._check_block(self._blocks[start])
        for address in self._values_in.get(-1, ()):  # outside every block: checked every time
            self._check_value(address)
        for seg, offset in dirty_pages:
            length = min(PAGE, seg.used - offset)
            copy(ctypes.addressof(seg.shadow) + offset, seg.base + offset, length)
        for start in blocks:
            # A block allocated, freed or repaired: its pages go into the shadow as they are now.
            self._refresh(start)
        self._changed |= blocks

    def take_changed(self) -> set[int]:
        """Starts of the blocks `verify` found changed (or allocated, freed, watched) since the
        last call: the ones whose footers a probe must read again."""
        out, self._changed = self._changed, set()
        return out

    def _dirty_pages(self, seg: _Segment) -> list[int]:
        """Offsets of the pages of `seg` whose bytes differ from its shadow."""
        return changed_pages(seg.base, ctypes.addressof(seg.shadow), seg.used, PAGE)

    def _changed_blocks(self, seg: _Segment, offset: int, into: set[int]) -> None:
        """Add the blocks covering the bytes of page `offset` that differ from the shadow: the
        first difference, then the first past the end of the block (and redzone) it fell in."""
        length = min(PAGE, seg.used - offset)
        now = seg.base + offset
        then = ctypes.addressof(seg.shadow) + offset
        at = first_difference(now, then, length, 0)
        while at >= 0:
            block = self.block_at(now + at)
            step = 1
            if block is not None:
                into.add(block.start)
                step = block.start + block.size + REDZONE - (now + at)
            at = first_difference(now, then, length, at + step)

    def _refresh(self, start: int) -> None:
        """Copy a block's bytes (user bytes and redzone) into its segment's shadow."""
        block = self._blocks[start]
        for seg in self._segments:
            if seg.base <= start < seg.base + seg.size:
                copy(ctypes.addressof(seg.shadow) + (start - seg.base), start, block.size + REDZONE)
                return

    def _check_block(self, block: Block) -> None:
        for address in self._values_in.get(block.start, ()):
            self._check_value(address)
        end = block.start + block.size
        if not filled(end, REDZONE, REDZONE_BYTE):
            self.report(REDZONE_WRITTEN, end, "verify", f"behind a {block.tag} block")
            ctypes.memset(end, REDZONE_BYTE, REDZONE)
        if not block.live and not filled(block.start, block.size, FREED_BYTE):
            self.report(FREED_BLOCK_WRITTEN, block.start, "verify", f"freed {block.tag} block")
            ctypes.memset(block.start, FREED_BYTE, block.size)

    def _check_value(self, address: int) -> None:
        data = self._values.get(address)
        if data is None or holds(address, data):
            return
        self.report(VALUE_CORRUPTED, address, "verify", "value bytes changed while alive")
        self._values[address] = ctypes.string_at(address, len(data))

    def report(self, kind: str, address: int, access: str, detail: str = "") -> None:
        self.reports.append(Report(kind, address, access, detail))

