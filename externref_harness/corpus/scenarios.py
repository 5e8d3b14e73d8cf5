"""What the conformance corpus holds: the scenarios, each a config and a list of operations.

Three kinds, each run on the seed's semantics (no mutant):
- the explorer's shortest trace of every seeded bug of the model and protocol layers
  (`explorer_trace`, the only place the explorer is called);
- one regression scenario per advisory, written by hand as an embedder would hit it, and carried on
  past the point where the advisory's bug would have broken memory safety;
- path coverage: one short trace per path label every CI run must reach
  (`model_check.REQUIRED_EVENTS`) at a chunk of 2, and a few at the seed's 512 slots, filled by host
  loops of inserts (`InsertMany`).

Every scenario runs on an implementation with the seed's fixed 512-slot chunk: most observe the
same at any chunk size (the generator verifies it and marks the file `any_chunk_size`); the few
that need a chunk of 2 to fill have a version at 512 (`at_seed_chunk`), where a host loop first
fills all but two slots, so the rest runs as it does at a chunk of 2:

    advisory-cve-2021-39216            chunk 2    New Gc ................ CallWasm(0,1,2) ...
    advisory-cve-2021-39216-chunk-512  chunk 512  New Gc InsertMany(0,510) CallWasm(0,1,2) ...

`externref_harness.corpus.write` turns them into files with the model's observations.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from externref_harness.model.mutants import MODEL_MUTANTS
from externref_harness.model.ops import (
    BumpCapacityRemaining,
    CallWasm,
    Clone,
    Deref,
    Drop,
    Gc,
    HostGlobalSet,
    InitGlobals,
    InsertMany,
    InsertWithGc,
    InsertWithoutGc,
    New,
    NumFilledInBumpChunk,
    Op,
    ReturnToWasm,
    StackCanary,
    StrongCount,
    TeardownGlobals,
    TryInsert,
    WasmCallHost,
    WasmCallWasm,
    WasmMove,
    WasmNull,
    WasmReturn,
    WasmScalar,
)
from externref_harness.model.state import SEED_CHUNK_SIZE, Config
from externref_harness.search.space import MACHINE_CONFIG


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    origin: str
    config: Config
    ops: tuple[Op, ...]
    #: The path label this scenario exists to reach (path coverage only); checked when generated.
    reaches: str | None = None
    #: The scenario this is a version of at another chunk size (None: its own).
    version_of: str | None = None


#: Hand-written scenarios run at the model machine's config: a chunk of 2, 3 slots, 2 globals.
SMALL = replace(MACHINE_CONFIG, mutant=None)
LARGE = replace(SMALL, chunk_size=SEED_CHUNK_SIZE)


#: The longer hand-written scenarios' operations (used below).
_CVE_2021_39216: tuple[Op, ...] = (
    New(8, 8), Gc(), New(0, 1), New(8, 8), CallWasm((0, 1, 2)),
    WasmCallHost((0, 1, 2), 0, True), Gc(), Deref(3), Deref(4), Deref(5),
    ReturnToWasm(None), WasmReturn(2),
)  # fmt: skip
_CVE_2021_39218: tuple[Op, ...] = (
    New(8, 8), CallWasm((0,)), WasmCallHost((), 1, True), ReturnToWasm(None),
    WasmScalar(0), WasmCallHost((), 1, True), Gc(), ReturnToWasm(None), WasmReturn(None),
    New(8, 8), CallWasm((1,)), WasmMove(0, 1), WasmScalar(0), WasmCallHost((), 2, True), Gc(),
    ReturnToWasm(None), WasmReturn(1), Deref(2),
)  # fmt: skip
_CVE_2022_24791: tuple[Op, ...] = (
    New(8, 8), CallWasm((0,)), WasmCallWasm((), 1), WasmCallHost((), 0, True), Gc(),
    ReturnToWasm(None), WasmReturn(None), WasmReturn(0), Deref(1), StrongCount(1),
)  # fmt: skip
_CVE_2022_31146: tuple[Op, ...] = (
    New(8, 8), New(16, 8), CallWasm((0, 1)), WasmCallHost((), 2, True), Gc(),
    ReturnToWasm(None), WasmReturn(1), Deref(2), StrongCount(2),
)  # fmt: skip
#: A full chunk of the seed's size.
FULL = SEED_CHUNK_SIZE
_FULL_CHUNK: tuple[Op, ...] = (
    New(8, 8), Gc(), InsertMany(0, FULL, False), NumFilledInBumpChunk(), BumpCapacityRemaining(),
    Clone(0), TryInsert(1), StrongCount(0), Gc(), StrongCount(0), NumFilledInBumpChunk(),
)  # fmt: skip
_GC_IN_WASM: tuple[Op, ...] = (
    New(8, 8), New(8, 8), CallWasm((0, 1)), WasmNull(1), WasmCallHost((0,), 2, True),
    InsertMany(2, FULL, True), StrongCount(2), ReturnToWasm(None), WasmReturn(0), Deref(3),
)  # fmt: skip


# --- the explorer's shortest traces ----------------------------------------------------------------


def explorer_trace(mutant: str) -> tuple[Config, tuple[Op, ...], str]:
    """The explorer's shortest trace to a violation under `mutant`: its config (mutant removed), the
    operations, and the violation's title. The one function that uses the explorer."""
    from externref_harness.explore.driver import explore
    from externref_harness.explore.explorer import MUTANT_KNOBS, ExploreBounds

    bounds = ExploreBounds(mutant=mutant, **MUTANT_KNOBS.get(mutant, {}))  # type: ignore[arg-type]
    search = bounds.search()
    outcome = explore(search)
    if outcome.violation is None:
        raise RuntimeError(f"the explorer finds no violation under {mutant} at {bounds}")
    return replace(search.cfg, mutant=None), tuple(outcome.violation.trace), outcome.violation.title


def explorer_scenarios() -> list[Scenario]:
    out = []
    for m in MODEL_MUTANTS:
        cfg, trace, title = explorer_trace(m.name)
        out.append(
            Scenario(
                f"explorer-{m.name}",
                f"The shortest trace to a violation with the seeded {m.layer}-layer bug {m.name} on "
                f"({m.description}); in a debug build its last step then breaks {title}. On the "
                "seed's semantics it runs clean: a correct implementation must observe what the model does.",
                f"explorer: shortest trace of {m.name}",
                cfg,
                trace,
            )
        )
    return out


# --- the advisories' regression scenarios ----------------------------------------------------------


def advisory_scenarios() -> list[Scenario]:
    def advisory(cve: str, description: str, ops: tuple[Op, ...], cfg: Config = SMALL) -> Scenario:
        return Scenario(f"advisory-{cve.lower()}", description, f"advisory regression: {cve}", cfg, ops)

    return [
        advisory(
            "CVE-2021-39216",
            "The host passes three refs to Wasm in one call after the first GC allocated a chunk of "
            "2 slots. The embedder must move them into the table without a GC in between "
            "(a pre-GC, then insert_without_gc under gc_okay=false): with insert_with_gc per argument "
            "the third finds the chunk full, GCs with no canary yet, and sweeps the first two, which "
            "only the table holds. Wasm then passes all three to the host, GCs, and returns one.",
            _CVE_2021_39216,
        ),
        advisory(
            "CVE-2021-39218",
            "A Wasm frame's slot holds a ref at one safepoint and an i64 at the next, where no ref is "
            "live and the compiler registers no stack map. The lookup must find no map for that pc "
            "(not fall back to the earlier safepoint's), so the GC treats no stack word as a ref: "
            "the i64 is left alone and ref 0, which Wasm no longer holds, is swept from the table. "
            "Then a frame holds an i64 in slot 0 below a ref in slot 1 at a GC: only the slot the "
            "map marks is read, and the ref survives to be returned to the host.",
            _CVE_2021_39218,
        ),
        advisory(
            "CVE-2022-24791",
            "A Wasm function holding a ref calls another Wasm function, which calls the host, which "
            "GCs. The caller is suspended at a Wasm-to-Wasm call: its safepoint needs a stack map too, "
            "or the ref it still holds is swept. The caller then returns the ref to the host, which "
            "dereferences it.",
            _CVE_2022_24791,
        ),
        advisory(
            "CVE-2022-31146",
            "A Wasm frame holds two live refs when it calls the host, which GCs: the stack map must "
            "list both slots (the advisory's compiler dropped the highest one). Wasm then returns the "
            "second ref to the host, which dereferences it.",
            _CVE_2022_31146,
        ),
        advisory(
            "CVE-2022-23636",
            "Instantiation of a module with two externref globals stops after the first (as when a "
            "later initialiser traps). Dropping the instance must drop only the globals that were "
            "initialised; the second holds garbage, and decrementing it is a wild write.",
            (New(8, 8), InitGlobals(1), HostGlobalSet(0, 0), TeardownGlobals(), StrongCount(0)),
        ),
    ]


# --- path coverage ---------------------------------------------------------------------------------


def path_scenarios() -> list[Scenario]:
    def path(label: str, description: str, ops: tuple[Op, ...], cfg: Config = SMALL) -> Scenario:
        chunk = f"-chunk-{cfg.chunk_size}" if cfg.chunk_size != SMALL.chunk_size else ""
        name = "path-" + label.replace(":", "-").replace("_", "-") + chunk
        origin = f"path coverage: {label}" + (f" at chunk size {cfg.chunk_size}" if chunk else "")
        return Scenario(name, description, origin, cfg, ops, reaches=label)

    return [
        path(
            "gc:no-canary",
            "A ref the host moved into the table's hash set is swept by a GC with no Wasm on the "
            "stack (no canary): the table held the only count.",
            (New(8, 8), InsertWithoutGc(0), Gc()),
        ),
        path(
            "gc:canary-found",
            "A GC from a host function Wasm called: the walk passes the Wasm frame and finds the "
            "canary the first host-to-Wasm call set, so it sweeps; the ref Wasm passed out survives.",
            (New(8, 8), CallWasm((0,)), WasmCallHost((0,), 0, True), Gc(), StackCanary()),
        ),
        path(
            "gc:canary-not-found",
            "A GC from a host function without unwind info: the walk stops there, the canary is not "
            "found, and nothing is swept (the table keeps every ref).",
            (New(8, 8), CallWasm((0,)), WasmCallHost((), 0, False), Gc(), NumFilledInBumpChunk()),
        ),
        path(
            "gc:wasm-frame",
            "A GC with one Wasm frame on the stack that holds no ref: the frame has no stack map.",
            (CallWasm(()), WasmCallHost((), 0, True), Gc()),
        ),
        path(
            "gc:nested-wasm-frame",
            "A GC with two Wasm frames on the stack, both holding the same ref under their stack maps.",
            (New(8, 8), CallWasm((0,)), WasmCallWasm((0,), 1), WasmCallHost((), 2, True), Gc()),
        ),
        path(
            "gc:stack-map-root",
            "A GC reads a live ref out of a Wasm frame through its stack map and keeps it as a "
            "precise root; the refs held only by the table are swept.",
            (New(8, 8), New(8, 8), CallWasm((0, 1)), WasmNull(1), WasmCallHost((), 2, True), Gc()),
        ),
        path(
            "gc:wasm-frame-without-stack-map",
            "Wasm drops the ref it was passed, then calls the host, which GCs: the frame has no stack "
            "map, and the ref only the table held is swept.",
            (New(8, 8), CallWasm((0,)), WasmNull(0), WasmCallHost((), 0, True), Gc()),
        ),
        path(
            "gc:unwinder-stopped",
            "A host function without unwind info, called with a ref, GCs: the unwinder stops at "
            "once, no precise root is taken, and the table keeps the ref Wasm holds.",
            (New(8, 8), CallWasm((0,)), WasmCallHost((0,), 1, False), Gc(), Drop(1)),
        ),
        path(
            "sweep:lazy-chunk-allocation",
            "The table starts with an empty chunk; the first sweep allocates it. Its capacity is "
            "then reported in bytes (the seed's bump_capacity_remaining), not slots.",
            (BumpCapacityRemaining(), Gc(), BumpCapacityRemaining()),
        ),
        path(
            "insert:gc-and-insert-slow",
            "The first insert_with_gc finds the chunk empty (it is allocated lazily) and takes the "
            "slow path: a GC, then the hash set.",
            (New(8, 8), InsertWithGc(0)),
        ),
        path(
            "insert:slow-without-gc",
            "The chunk is full, so insert_without_gc puts the third ref in the hash set.",
            (New(8, 8), Gc(), Clone(0), Clone(0), InsertWithoutGc(0), InsertWithoutGc(1), InsertWithoutGc(2)),
        ),
        path(
            "hashset:duplicate-dropped",
            "Two counts of one ref go into the hash set: the set keeps the first and the second "
            "count is dropped (the ref stays alive, held by the set).",
            (New(8, 8), Clone(0), InsertWithoutGc(0), InsertWithoutGc(1)),
        ),
        path(
            "try_insert:chunk-full",
            "try_insert on the empty initial chunk fails and gives the handle back.",
            (New(8, 8), TryInsert(0), StrongCount(0)),
        ),
        path(
            "values-dropped",
            "Dropping the last handle of a ref runs its destructor and frees it.",
            (New(16, 8), Clone(0), Drop(0), Drop(1)),
        ),
        path(
            "misuse",
            "Using a handle after dropping it is refused as misuse and changes nothing.",
            (New(8, 8), Drop(0), Drop(0), StrongCount(0)),
        ),
    ]


def large_chunk_scenarios() -> list[Scenario]:
    """At the seed's 512 slots, where host loops of inserts (`InsertMany`) fill the chunk."""

    def path(label: str, slug: str, description: str, ops: tuple[Op, ...]) -> Scenario:
        origin = f"path coverage: {label} at chunk size {LARGE.chunk_size}"
        return Scenario(f"chunk-{LARGE.chunk_size}-{slug}", description, origin, LARGE, ops, reaches=label)

    return [
        path(
            "try_insert:chunk-full",
            "full-chunk",
            "After the first GC allocates the 512-slot chunk, a host loop fills it exactly; the "
            "filled count and the capacity (in bytes) say so, try_insert fails, and a GC empties it.",
            _FULL_CHUNK,
        ),
        path(
            "hashset:duplicate-dropped",
            "slow-paths",
            "A host loop of insert_without_gc one past a full chunk and one more: the 513th count "
            "goes to the hash set, the 514th is a duplicate there and is dropped.",
            (New(8, 8), Gc(), InsertMany(0, FULL + 2, False), StrongCount(0), Drop(0), Gc()),
        ),
        path(
            "insert:gc-and-insert-slow",
            "gc-at-512",
            "A host loop of insert_with_gc past a full chunk: the 513th insert GCs (no Wasm on the "
            "stack), the sweep drops the 512 counts the chunk held, and the insert goes to the hash "
            "set; the loop goes on in the emptied chunk.",
            (New(8, 8), Gc(), InsertMany(0, FULL + 5, True), StrongCount(0), NumFilledInBumpChunk()),
        ),
        path(
            "gc:stack-map-root",
            "gc-in-wasm",
            "Inside a host function Wasm called, a host loop of insert_with_gc overflows the chunk "
            "and GCs with the Wasm frame on the stack: the ref it holds is a precise root and "
            "survives the sweep.",
            _GC_IN_WASM,
        ),
    ]


# --- versions at the seed's chunk size ---------------------------------------------------------------

#: The scenarios that need a small chunk to fill, with whether their version at the seed's chunk
#: first fills all but `SMALL.chunk_size` slots (False: the same operations, other observations).
#: The generator refuses a scenario that observes otherwise at 512 slots and is not listed here.
SEED_CHUNK_VERSIONS: dict[str, bool] = {
    "explorer-cve-2021-39216": True,
    "advisory-cve-2021-39216": True,
    "path-insert-slow-without-gc": True,
    "path-sweep-lazy-chunk-allocation": False,
}


def at_seed_chunk(scenario: Scenario, fill: bool) -> Scenario:
    """`scenario` at the seed's 512 slots. With `fill`, right after the first `Gc` (which allocates
    the chunk) a host loop of `insert_without_gc` puts clones of handle 0 into all but
    `SMALL.chunk_size` slots: the rest of the scenario then meets a full chunk where it did at a chunk
    of 2. Handle 0 stays the host's, so no handle or ref changes its number."""
    own = scenario.config.chunk_size
    ops = scenario.ops
    if fill:
        first_gc = next(i for i, op in enumerate(ops) if isinstance(op, Gc))
        ops = (*ops[: first_gc + 1], InsertMany(0, SEED_CHUNK_SIZE - own, False), *ops[first_gc + 1 :])
        how = (
            f" At the seed's {SEED_CHUNK_SIZE} slots: after the first GC a host loop fills all but "
            f"{own} slots with clones of handle 0, so the rest meets the full chunk where it did at {own}."
        )
    else:
        how = f" At the seed's {SEED_CHUNK_SIZE} slots: the same operations."
    return Scenario(
        f"{scenario.name}-chunk-{SEED_CHUNK_SIZE}",
        scenario.description + how,
        f"{scenario.origin} at chunk size {SEED_CHUNK_SIZE}",
        replace(scenario.config, chunk_size=SEED_CHUNK_SIZE),
        ops,
        scenario.reaches,
        version_of=scenario.name,
    )


def all_scenarios() -> list[Scenario]:
    small = explorer_scenarios() + advisory_scenarios() + path_scenarios()
    by_name = {s.name: s for s in small}
    unknown = sorted(set(SEED_CHUNK_VERSIONS) - set(by_name))
    if unknown:
        raise RuntimeError(f"SEED_CHUNK_VERSIONS names no scenario: {unknown}")
    versions = [at_seed_chunk(by_name[name], fill) for name, fill in SEED_CHUNK_VERSIONS.items()]
    return small + versions + large_chunk_scenarios()
