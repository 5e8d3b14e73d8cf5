"""The field offsets compiled code relies on, read from the implementation's ctypes structures.

Compiled Wasm code addresses `VMExternData::ref_count` and the activations table's bump finger by
fixed offsets (`wasmtime_environ::VMOffsets`, pointer size 8). The seed's own unit tests compare
those offsets with the Rust structs; here they are compared with the `repr(C)` ctypes structures
the implementation actually uses (its `Runtime`, so a layout mutant of `impl/` shows up), and the
footer's size and alignment with what `model.layout.layout_for` assumes.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from typing import Any

from externref_harness.impl import externref
from externref_harness.impl.backend import Hooks
from externref_harness.impl.heap import CheckingHeap
from externref_harness.model import layout
from externref_harness.model.state import WORD, Config
from externref_harness.specs.proving import Verdict

#: `VMOffsets::vm_extern_data_ref_count()`.
VM_EXTERN_DATA_REF_COUNT = 0
#: `VMOffsets::vm_extern_ref_activation_table_next()` / `..._end()` (pointer size 8).
VM_EXTERN_REF_ACTIVATION_TABLE_NEXT = 0
VM_EXTERN_REF_ACTIVATION_TABLE_END = WORD


@dataclass(frozen=True)
class OffsetFact:
    name: str
    text: str
    actual: int
    expected: int


def _runtime_layout(cfg: Config) -> tuple[int, int, int]:
    """`(ref_count offset, value_ptr offset, table alloc offset)` of the Python runtime for `cfg`."""
    heap = CheckingHeap()
    try:
        runtime = externref.PythonRuntime(cfg, Hooks(heap, lambda _address: None))
        table: Any = type(runtime.table)
        return runtime.ref_count_offset, runtime.value_ptr_offset, table.alloc.offset
    finally:
        heap.release()


def offset_facts(mutant: str | None) -> list[OffsetFact]:
    """Each offset or size as the implementation lays it out (with `mutant` switched on)."""
    data: Any = externref.VMExternData
    alloc: Any = externref.VMExternRefTableAlloc
    ref_count, value_ptr, _ = _runtime_layout(Config(mutant=mutant))
    facts = [
        OffsetFact(
            "offsets.ref_count",
            "VMExternData.ref_count at offset 0 (VMOffsets::vm_extern_data_ref_count)",
            ref_count,
            VM_EXTERN_DATA_REF_COUNT,
        ),
        OffsetFact(
            "offsets.value_ptr",
            "VMExternData.value_ptr (data, vtable) at offset 8",
            value_ptr,
            layout.VALUE_PTR_OFFSET,
        ),
        OffsetFact(
            "offsets.value_ptr-fat",
            "value_ptr is a fat pointer: 16 bytes",
            data.value_ptr.size,
            2 * WORD,
        ),
        OffsetFact(
            "offsets.footer-size",
            "size_of::<VMExternData>() is the footer size layout_for adds",
            ctypes.sizeof(data),
            layout.EXTERN_DATA_SIZE,
        ),
        OffsetFact(
            "offsets.footer-align",
            "align_of::<VMExternData>() is the footer alignment layout_for rounds to",
            ctypes.alignment(data),
            layout.EXTERN_DATA_ALIGN,
        ),
    ]
    for build in ("debug", "release"):
        _, _, table_alloc = _runtime_layout(Config(build=build, mutant=mutant))
        facts += [
            OffsetFact(
                f"offsets.table-next ({build})",
                "VMExternRefActivationsTable.alloc.next at offset 0 "
                "(VMOffsets::vm_extern_ref_activation_table_next)",
                table_alloc + alloc.next.offset,
                VM_EXTERN_REF_ACTIVATION_TABLE_NEXT,
            ),
            OffsetFact(
                f"offsets.table-end ({build})",
                "VMExternRefActivationsTable.alloc.end at offset 8 "
                "(VMOffsets::vm_extern_ref_activation_table_end)",
                table_alloc + alloc.end.offset,
                VM_EXTERN_REF_ACTIVATION_TABLE_END,
            ),
        ]
    return facts


def check_facts(facts: list[OffsetFact], seconds: float) -> list[Verdict]:
    """Equal: proven (there is one structure, so the check is exhaustive); else a counterexample."""
    out = []
    for f in facts:
        if f.actual == f.expected:
            out.append(Verdict(f.name, "proven", seconds, f.text))
        else:
            detail = f"{f.text}: the implementation has {f.actual}, compiled code uses {f.expected}"
            out.append(Verdict(f.name, "counterexample", seconds, detail))
    return out


def prove_offsets(mutant: str | None = None) -> list[Verdict]:
    started = time.perf_counter()
    facts = offset_facts(mutant)
    return check_facts(facts, (time.perf_counter() - started) / len(facts))
