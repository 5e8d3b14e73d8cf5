"""The compiled Wasm code's static layout: modules, functions, call sites, and their stack maps.

A frame suspended in Wasm code shows the pc of a call site (the call's return address). The layout
is fixed for a run's slot count, so every frame that stops with the same stack map in the same
function shows the same pc, as with real compiled code, and the runtime's lookup is put to the
test on pcs that are *not* where the maps are:

    module 0                                                  module 1 (same shape) ...
    ├─ function 0: [start, end)
    │    N0            no map: the function's first call site, before its first mapped one
    │    M{0}  N{0}    a mapped call site for each non-empty map, each followed by a call site
    │    M{1}  N{1}    without a map (a frame whose last map was that one and that now has no
    │    ...           live refs stops there)
    │    M_all         a second call site with the map of every slot: the function's last call
    ├─ function 1      site, placed just before the next function's N0
    │    N0 ...

Like wasmtime's `FunctionInfo::stack_maps`, only mapped call sites are *entries* (a binary search
over code offsets finds them); a call site without a map has none. So:

- the exact lookup (the seed's) gives `N*` no map;
- a lookup that falls back to the nearest earlier entry within the function (CVE-2021-39218's)
  gives `N{m}` exactly map `m`, which is the model's `previous_stack_map` for a frame whose last
  map was `m` (`model.world.lookup_stack_map`): the host world's mutant and the model's agree;
- a lookup that crosses into the previous function gives a function's `N0` the previous
  function's `M_all`, and one with no entry before the pc at all (the module's first `N0`) has
  no index to read.

Which function a frame runs and which of two equal call sites it stops at are chosen by the
host world from counters of the run (`impl.world`), so a trace replays to the same pcs.
"""

from __future__ import annotations

import bisect
import ctypes
from dataclasses import dataclass
from functools import cache
from itertools import combinations

from externref_harness.model.state import StackMap

#: Compiled Wasm code starts here; each module's code is `MODULE_STRIDE` bytes apart.
WASM_CODE = 0x7E00_0000_0000
MODULE_STRIDE = 0x10_0000
#: Bytes between two call sites (and from a function's entry to its first call site).
PC_STEP = 4
MODULES = 2
FUNCTIONS_PER_MODULE = 3
#: A call site per stack map of a frame's slots: 2**slots - 1 mapped ones per function. The
#: explorer's and replay's bound on `Config.slots` is the same.
MAX_LAYOUT_SLOTS = 8


@dataclass(frozen=True, slots=True)
class CallSite:
    pc: int
    #: The live externref slots at this call (None: no map, no live refs).
    stack_map: StackMap | None


@dataclass(frozen=True, slots=True)
class Function:
    """Code `[start, end)`; call sites in ascending pc order, all inside it."""

    start: int
    end: int
    call_sites: tuple[CallSite, ...]


@dataclass(frozen=True, slots=True)
class Module:
    functions: tuple[Function, ...]
    #: The words every stack map of the module covers: a frame's slots.
    mapped_words: int

    @property
    def start(self) -> int:
        return self.functions[0].start

    @property
    def end(self) -> int:
        return self.functions[-1].end


def all_maps(slots: int) -> tuple[StackMap, ...]:
    """Every non-empty stack map of a frame of `slots` slots, smaller sets first."""
    return tuple(m for n in range(1, slots + 1) for m in combinations(range(slots), n))


def _function(start: int, slots: int) -> Function:
    pcs = iter(range(start + PC_STEP, start + (1 << 20), PC_STEP))
    sites = [CallSite(next(pcs), None)]
    for stack_map in all_maps(slots):
        sites += [CallSite(next(pcs), stack_map), CallSite(next(pcs), None)]
    sites.append(CallSite(next(pcs), tuple(range(slots))))
    # The next function's entry is just after this one's last call site.
    return Function(start, sites[-1].pc + PC_STEP, tuple(sites))


class CodeLayout:
    """All modules of a run with `slots` slots per Wasm frame, and the lookups over them.

    Built once per slot count (`code_layout`) and never changed: the indexes below are its own."""

    def __init__(self, slots: int, modules: tuple[Module, ...]) -> None:
        self.slots = slots
        self.modules = modules
        self.functions = tuple(f for m in modules for f in m.functions)
        self._starts = [f.start for f in self.functions]
        self._exact = {
            s.pc: s.stack_map for f in self.functions for s in f.call_sites if s.stack_map is not None
        }

    def function_at(self, pc: int) -> Function | None:
        """The function whose code holds `pc` (None: not Wasm code)."""
        i = bisect.bisect_right(self._starts, pc) - 1
        if i >= 0 and pc < self.functions[i].end:
            return self.functions[i]
        return None

    def call_site(
        self, function: int, stack_map: StackMap | None, last_map: StackMap | None, turn: int
    ) -> int:
        """The pc of the call site a frame running `function` stops at with `stack_map`.

        A frame without a map stops after the call site of its last map (`N{last}`), or at the
        function's first call site if it never had one. A map with two call sites (every slot) is
        taken at one or the other by `turn`'s parity."""
        sites = self.functions[function].call_sites
        if stack_map is None:
            if last_map is None:
                return sites[0].pc
            return sites[_mapped_index(self.slots, last_map) + 1].pc
        candidates = [sites[_mapped_index(self.slots, stack_map)].pc]
        if stack_map == sites[-1].stack_map:
            candidates.append(sites[-1].pc)
        return candidates[turn % len(candidates)]

    def exact_map(self, pc: int) -> StackMap | None:
        """The seed's `lookup_stack_map`: the map of the call site at exactly `pc`."""
        return self._exact.get(pc)

    def nearest_earlier_map(self, pc: int) -> StackMap | None:
        """CVE-2021-39218's lookup: the map of the last entry at or before `pc` in its function."""
        function = self.function_at(pc)
        if function is None:
            return None
        found = None
        for site in function.call_sites:
            if site.pc > pc:
                break
            if site.stack_map is not None:
                found = site.stack_map
        return found


def _mapped_index(slots: int, stack_map: StackMap) -> int:
    """Index of the mapped call site `M{stack_map}` in a function's call sites."""
    return 1 + 2 * _map_numbers(slots)[stack_map]


@cache
def _map_numbers(slots: int) -> dict[StackMap, int]:
    return {m: i for i, m in enumerate(all_maps(slots))}


@cache
def code_layout(slots: int) -> CodeLayout:
    """The layout for frames of `slots` slots (the same object for a slot count: it is static)."""
    if not 1 <= slots <= MAX_LAYOUT_SLOTS:
        raise ValueError(
            f"the code layout has a call site per stack map: 1 to {MAX_LAYOUT_SLOTS} slots, got {slots}"
        )
    modules = []
    for m in range(MODULES):
        functions: list[Function] = []
        start = WASM_CODE + m * MODULE_STRIDE
        for _ in range(FUNCTIONS_PER_MODULE):
            functions.append(_function(start, slots))
            start = functions[-1].end
        modules.append(Module(tuple(functions), slots))
    return CodeLayout(slots, tuple(modules))


class MapRecords:
    """Each stack map of a layout in memory as `[mapped_words, bitmap words...]` (what `lookup`
    hands a runtime), kept alive as long as this object."""

    def __init__(self, layout: CodeLayout) -> None:
        self.mapped_words = layout.slots
        self._arrays: dict[StackMap, ctypes.Array[ctypes.c_uint64]] = {}
        for stack_map in all_maps(layout.slots):
            bits = [0] * ((layout.slots + 63) // 64)
            for i in stack_map:
                bits[i // 64] |= 1 << (i % 64)
            self._arrays[stack_map] = (ctypes.c_uint64 * (1 + len(bits)))(layout.slots, *bits)

    def address(self, stack_map: StackMap) -> int:
        return ctypes.addressof(self._arrays[stack_map])


@cache
def map_records(slots: int) -> MapRecords:
    return MapRecords(code_layout(slots))
