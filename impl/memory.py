"""Reading the process's memory by address, safely: what the lockstep's memory checks see.

The checks read a ref's footer words, a vtable, the table's words and the chunk by address and
offset, never through a runtime's objects, so they work on any implementation in this process. An
implementation's words may point anywhere (that is what is being checked), so every read goes
through `/proc/self/mem`: an unmapped address answers None instead of crashing the harness.
"""

from __future__ import annotations

import os
import struct

WORD = 8


class MemoryReader:
    def __init__(self) -> None:
        self._fd = os.open("/proc/self/mem", os.O_RDONLY)

    def read(self, address: int, size: int) -> bytes | None:
        """`size` bytes at `address`, or None if any of them is not mapped readable."""
        if address <= 0 or size < 0 or address + size > 1 << 63:
            return None
        try:
            data = os.pread(self._fd, size, address)
        except OSError:
            return None
        return data if len(data) == size else None

    def words(self, address: int, count: int) -> tuple[int, ...] | None:
        data = self.read(address, count * WORD)
        return None if data is None else struct.unpack(f"<{count}Q", data)

    def word(self, address: int) -> int | None:
        got = self.words(address, 1)
        return None if got is None else got[0]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()


#: One reader per process (a file descriptor, opened on first use).
_READER: MemoryReader | None = None


def reader() -> MemoryReader:
    global _READER
    if _READER is None:
        _READER = MemoryReader()
    return _READER
