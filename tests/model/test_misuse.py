"""Contract breaches the moves try: each refused with its kind, by the model and the implementation.

Every case runs in lockstep, so it fails if either world's check is gone: the model's refusal is
asserted here, and the implementation must refuse it with the same kind or the lockstep reports a
divergence. `misuse_moves` must offer each case to the machines, and `Bounds` is validated eagerly.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from externref_harness.impl.adapter import InProcessImpl
from externref_harness.lockstep.runner import LOCKSTEP_CONFIG, drive
from externref_harness.model import host, layout, ops
from externref_harness.model.moves import Bounds, misuse_moves, moves
from externref_harness.model.observation import BAD_LAYOUT, Misuse, Ok
from externref_harness.model.runtime import MisuseError
from externref_harness.model.state import State
from externref_harness.model.transition import run

CFG = LOCKSTEP_CONFIG  # 3 slots, 2 globals
assert (CFG.slots, CFG.n_globals) == (3, 2)

FOUR_HANDLES: list[ops.Op] = [ops.New(8, 8)] * 4
IN_HOST_CALLED_FROM_WASM: list[ops.Op] = [ops.CallWasm(()), ops.WasmCallHost((), 0)]

#: (what is wrong, the steps before, the misuse, the kind it is refused with)
CASES: list[tuple[str, list[ops.Op], ops.Op, str]] = [
    ("global index out of range", [ops.InitGlobals(2)], ops.HostGlobalGet(2), "bad-global"),
    ("global index out of range, from Wasm", [ops.InitGlobals(2), ops.CallWasm(())],
     ops.WasmGlobalGet(2, 0), "bad-global"),
    ("uninitialised global", [ops.InitGlobals(1)], ops.HostGlobalGet(1), "uninit-global"),
    ("uninitialised global set", [ops.InitGlobals(1)], ops.HostGlobalSet(1, None), "uninit-global"),
    ("uninitialised global, from Wasm", [ops.InitGlobals(1), ops.CallWasm(())],
     ops.WasmGlobalGet(1, 0), "uninit-global"),
    ("alignment not a power of two", [], ops.New(8, 3), "bad-layout"),
    ("size not a multiple of the alignment", [], ops.New(12, 8), "bad-layout"),
    ("more arguments than slots", FOUR_HANDLES, ops.CallWasm((0, 1, 2, 3)), "bad-slot"),
    ("more arguments than slots, Wasm to Wasm", [ops.CallWasm(())],
     ops.WasmCallWasm((0, 0, 0, 0), 0), "bad-slot"),
    ("return slot past the frame", [ops.CallWasm(())], ops.WasmReturn(3), "bad-slot"),
    ("negative return slot", [ops.CallWasm(())], ops.WasmReturn(-1), "bad-slot"),
    ("the same handle twice in one call", [ops.New(8, 8)], ops.CallWasm((0, 0)), "duplicate-handle"),
    ("a canary with no Wasm on the stack", [], ops.SetStackCanary(0), "bad-canary"),
    ("the live canary cleared", IN_HOST_CALLED_FROM_WASM, ops.SetStackCanary(None), "bad-canary"),
    ("the live canary moved", IN_HOST_CALLED_FROM_WASM, ops.SetStackCanary(2), "bad-canary"),
    ("a canary in no frame", [], ops.SetStackCanary(1), "bad-frame"),
]  # fmt: skip


@pytest.mark.parametrize(("why", "before", "misuse", "kind"), CASES, ids=[c[0] for c in CASES])
def test_misuse_is_refused_by_both_worlds(why: str, before: list[ops.Op], misuse: ops.Op, kind: str) -> None:
    driven = drive(CFG, [*before, misuse], InProcessImpl(), until_first=False)
    assert driven.model_failure is None and driven.impl_failure is None, driven.first
    for op, obs in zip(before, driven.observations, strict=False):
        assert not isinstance(obs.result, Misuse), f"{op}: {obs}"
    result = driven.observations[len(before)].result
    assert isinstance(result, Misuse) and result.kind == kind, f"{why}: {misuse} -> {result}"
    # Refused means unchanged.
    assert driven.states[len(before) + 1] == driven.states[len(before)]


@pytest.mark.parametrize(("why", "before", "misuse", "kind"), CASES, ids=[c[0] for c in CASES])
def test_the_machines_try_each_misuse(why: str, before: list[ops.Op], misuse: ops.Op, kind: str) -> None:
    state = run(CFG, before)[-1][0] if before else State.initial(CFG)
    assert misuse in misuse_moves(CFG, state), f"{why}: {misuse} is never tried"


def test_well_formed_canary_resets_are_moves_and_change_nothing() -> None:
    """The embedder's guard may repeat what is true: `None` with no Wasm, the live canary with Wasm."""
    bounds = Bounds()
    cases: list[tuple[list[ops.Op], ops.Op]] = [
        ([], ops.SetStackCanary(None)),
        (IN_HOST_CALLED_FROM_WASM, ops.SetStackCanary(0)),
    ]
    for before, expected in cases:
        state = run(CFG, before)[-1][0] if before else State.initial(CFG)
        assert moves(CFG, bounds, state)["set_stack_canary"] == [expected]
        driven = drive(CFG, [*before, expected], InProcessImpl(), until_first=False)
        assert driven.first is None, driven.first
        assert driven.observations[len(before)].result == Ok()
        assert driven.states[len(before) + 1] == driven.states[len(before)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"refs": -1}, "refs must be >= 0, got -1"),
        ({"handles": -2}, "handles must be >= 0, got -2"),
        ({"frames": 1.5}, "frames must be an int, got 1.5"),
        ({"args": True}, "args must be an int, got True"),
        ({"raws": -1}, "raws must be >= 0, got -1"),
        ({"layouts": ((8, 3),)}, "layouts[0] = (8, 3): no Rust type has size 8, align 3"),
        ({"layouts": ((8, 8), (12, 8))}, "layouts[1] = (12, 8): no Rust type has size 12, align 8"),
        ({"layouts": ((8,),)}, "layouts[0] must be a (size, align) pair of ints, got (8,)"),
        ({"layouts": [(8, 8)]}, "layouts must be a tuple of (size, align) pairs"),
        ({"layouts": ((1 << 20, 8),)}, "larger than the harness allocates for real"),
        ({"scalars": 1}, "scalars must be true or false, got 1"),
    ],
)
def test_bounds_refuse_impossible_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=None) as e:
        Bounds(**kwargs)  # type: ignore[arg-type]
    assert message in str(e.value)


def test_bounds_accept_the_drivers_own() -> None:
    from externref_harness.search.space import MACHINE_BOUNDS

    assert Bounds(**{f: getattr(MACHINE_BOUNDS, f) for f in MACHINE_BOUNDS.__dataclass_fields__})
    assert Bounds(refs=0, handles=0, raws=0, frames=0, args=0, layouts=())


#: Sizes and alignments around the rules' edges (multiples, powers of two, the harness's caps),
#: few enough that pairs recur and come swapped.
_LAYOUT_NUMBERS = st.sampled_from([0, 1, 2, 3, 4, 8, 12, 16, 24, 4096, 8192, 1 << 16, (1 << 16) + 8])


@given(st.lists(st.tuples(_LAYOUT_NUMBERS, _LAYOUT_NUMBERS), max_size=30))
def test_check_value_layout_keeps_the_verdicts_layout_gives(pairs: list[tuple[int, int]]) -> None:
    # Each pair asked twice: the second answer comes from the kept verdicts.
    for size, align in pairs + pairs:
        admissible = bool(layout.rust_type_layout_admissible(size, align))
        fits = size <= host.MAX_VALUE_SIZE and align <= host.MAX_VALUE_ALIGN
        if admissible and fits:
            host.check_value_layout(size, align)
        else:
            with pytest.raises(MisuseError) as raised:
                host.check_value_layout(size, align)
            assert raised.value.kind == BAD_LAYOUT
            assert (f"no Rust type has size {size}, align {align}" in str(raised.value)) == (not admissible)
