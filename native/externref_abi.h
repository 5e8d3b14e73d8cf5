/*
 * externref_abi.h: the C ABI through which externref-harness drives an implementation of
 * wasmtime v0.37.0's `crates/runtime/src/externref.rs` (VMExternRef,
 * VMExternRefActivationsTable, gc). ABI version 2: version 1 plus capabilities (below).
 *
 * An implementation is a shared library exporting the functions below. The user writes a thin
 * adapter from their runtime to this header and nothing else; see ABI.md beside this file for how
 * each function of the seed maps onto it.
 *
 *   harness (Python, one process)                       implementation (this ABI)
 *   ───────────────────────────────                     ─────────────────────────
 *   host world: handles, raws, globals,    xr_*()  ──▶  VMExternRef, the table, gc
 *   Wasm slots, the stack region,
 *   code registry and stack maps           ◀──  xr_hooks: alloc / dealloc / value_dropped
 *   checking heap                          ◀──  xr_stack: trace (frame walk) / lookup (pc)
 *
 * Conventions
 * - Every function that can fail returns an `int` status: XR_OK, XR_ERR (the seed's own `Err`,
 *   only from xr_table_try_insert) or XR_PANIC (a panic or a failed assertion, debug or not).
 *   After XR_PANIC, xr_panic_message() says what fired. A panic never unwinds across this
 *   boundary (a Rust adapter wraps each call in `catch_unwind`). A panic ends the run: the
 *   harness makes no further call on that table, not even xr_table_drop.
 * - A ref is a VMExternRef: a pointer-sized word that is the address of its VMExternData, never 0.
 *   It is also its raw pointer: xr_ref_as_raw(r) == r. Compiled Wasm code keeps refs in stack
 *   slots and globals as exactly these words, and gc reads them back from the stack.
 * - Ownership follows the seed. Functions taking `xr_ref r` by value consume one count of it
 *   (xr_ref_drop, xr_ref_into_raw, the inserts); those taking a ref to read it (`const`-like:
 *   strong_count, eq, hash, cmp, deref, as_raw) borrow it. xr_ref_clone, xr_ref_from_raw,
 *   xr_ref_clone_from_raw and xr_ref_new return an owned ref.
 * - Threads: the xr_ref_* functions may be called from several threads at once on the same
 *   VMExternData (VMExternRef is Send + Sync: its count is atomic). The xr_table_* functions and
 *   xr_gc take `&mut` in the seed: the harness never calls them concurrently.
 */
#ifndef EXTERNREF_ABI_H
#define EXTERNREF_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define XR_ABI_VERSION 2u

/* ---- capabilities (version 2) ------------------------------------------------------------------
 * A capability is a declared design choice that differs from the seed's, one rule each (ABI.md
 * documents each, with what the harness then does). `xr_description.capabilities` is the set, as
 * these bits; a version 1 library has none: exactly the seed. A bit the harness does not know is
 * refused. Some capabilities remove functions from the required set (the library need not export
 * them and the harness never calls them) or add some:
 *
 *   XR_CAP_OWN_REGISTRY       adds xr_table_register_module / xr_table_unregister_module; xr_gc
 *                             and xr_table_insert_with_gc get an xr_stack whose lookup is NULL
 *   XR_CAP_EAGER_CHUNK        the chunk is allocated by xr_table_new, not lazily by the first sweep
 *   XR_CAP_NO_GC_FREE_INSERT  removes xr_table_insert_without_gc, xr_table_bump_capacity_remaining,
 *                             xr_table_set_gc_okay
 *   XR_CAP_CANARY_GUARD       removes xr_table_stack_canary, xr_table_set_stack_canary; adds
 *                             xr_table_enter_wasm / xr_table_leave_wasm
 *   XR_CAP_SINGLE_THREADED    counts are not atomic: xr_ref_* are never called concurrently
 *   XR_CAP_NO_RAW             removes xr_ref_into_raw, xr_ref_from_raw, xr_ref_clone_from_raw
 *   XR_CAP_CAPACITY_SLOTS     xr_table_bump_capacity_remaining counts slots, not bytes
 *   XR_CAP_OPAQUE_REFS        a ref word is a handle (e.g. an index), not a VMExternData address:
 *                             never 0, one word per box for its life, distinct among live refs
 *   XR_CAP_NO_STRONG_COUNT    removes xr_ref_strong_count: counts are not observable
 */
#define XR_CAP_OWN_REGISTRY (1u << 0)
#define XR_CAP_EAGER_CHUNK (1u << 1)
#define XR_CAP_NO_GC_FREE_INSERT (1u << 2)
#define XR_CAP_CANARY_GUARD (1u << 3)
#define XR_CAP_SINGLE_THREADED (1u << 4)
#define XR_CAP_NO_RAW (1u << 5)
#define XR_CAP_CAPACITY_SLOTS (1u << 6)
#define XR_CAP_OPAQUE_REFS (1u << 7)
#define XR_CAP_NO_STRONG_COUNT (1u << 8)

/* Statuses. */
#define XR_OK 0
#define XR_ERR 1
#define XR_PANIC 2

/* A VMExternRef: the address of its VMExternData (and its raw pointer). */
typedef uintptr_t xr_ref;

/* A VMExternRefActivationsTable. For the strict level its address is that of the seed's
 * `#[repr(C)]` struct: alloc.next at offset 0, alloc.end at 8, the chunk's pointer and length
 * (`Box<[TableElem]>`) at 16 and 24. */
typedef struct xr_table xr_table;

/* ---- what the harness provides --------------------------------------------------------------- */

/* Allocation and drop hooks, backed by the harness's checking heap.
 * - alloc: `std::alloc::alloc(Layout { size, align })`; NULL when the heap is exhausted.
 * - dealloc: returns 1 when the block was the heap's (it is freed and checked against the layout
 *   it was allocated with), 0 when it is not the heap's: the runtime then frees it by its own
 *   means (a global allocator sees blocks allocated before the hooks were installed).
 * - value_dropped: the value's destructor (`drop_in_place`) ran; `value` is the value's address
 *   (values may be zero-sized, so the address is their identity). Called once per value, before
 *   its block is deallocated. */
typedef struct xr_hooks {
    void *ctx;
    void *(*alloc)(void *ctx, size_t size, size_t align);
    int (*dealloc)(void *ctx, void *ptr, size_t size, size_t align);
    void (*value_dropped)(void *ctx, void *value);
} xr_hooks;

/* What `ModuleInfoLookup::lookup(pc)` and `ModuleInfo::lookup_stack_map(pc)` say of a pc. */
#define XR_PC_HOST 0        /* lookup(pc) is None: not Wasm code */
#define XR_PC_WASM 1        /* Wasm code with no stack map at this pc: no live refs in the frame */
#define XR_PC_WASM_MAPPED 2 /* Wasm code with a stack map, written to *map */

/* A stack map: bit i (bits[i / 64] >> (i % 64) & 1) set means the word at sp + i * 8 holds a
 * live externref (possibly null). The bits stay valid until the next call of `lookup` or the end
 * of the walk (the runtime reads them after `lookup` has returned). */
typedef struct xr_stack_map {
    size_t mapped_words;
    const uint64_t *bits;
} xr_stack_map;

/* Called for each frame, youngest first; return 1 to continue the walk, 0 to stop it. */
typedef int (*xr_frame_fn)(void *walk_ctx, uintptr_t pc, uintptr_t sp);

/* The native stack, which belongs to the harness. `trace` is `backtrace::trace`: it calls `visit`
 * for each frame from the youngest until `visit` returns 0 or the unwinder can go no further.
 * `lookup` classifies a pc. The runtime reads the mapped stack words itself, at sp + i * 8: the
 * stack is real memory. */
typedef struct xr_stack {
    void *ctx;
    void (*trace)(void *ctx, xr_frame_fn visit, void *walk_ctx);
    int (*lookup)(void *ctx, uintptr_t pc, xr_stack_map *map);
} xr_stack;

/* ---- describe, hooks, panics ----------------------------------------------------------------- */

/* Optional symbols, as bits of xr_description.optional; each must match what the library exports. */
#define XR_HAS_NUM_FILLED_IN_BUMP_CHUNK 1u /* xr_table_num_filled_in_bump_chunk */
#define XR_HAS_ELEMENTS 2u                 /* xr_table_elements */
#define XR_HAS_SET_CHUNK_SIZE 4u           /* xr_table_new_with_chunk_size */
#define XR_HAS_VALUE_LAYOUTS 8u            /* xr_value_layouts (added later in version 1; optional) */

/* A value layout: mem::size_of::<T>() and mem::align_of::<T>() of a value type. */
typedef struct xr_layout {
    size_t size;
    size_t align;
} xr_layout;

typedef struct xr_description {
    uint32_t abi_version;    /* XR_ABI_VERSION the library was built against */
    const char *name;        /* implementation name, e.g. "wasmtime-runtime" */
    const char *version;     /* implementation version, e.g. "0.37.0" */
    int debug;               /* 1: debug assertions compiled in (the seed's cfg(debug_assertions)) */
    size_t chunk_size;       /* slots in the bump chunk of xr_table_new (the seed: 512) */
    size_t max_value_size;   /* largest value size xr_ref_new accepts */
    size_t max_value_align;  /* largest value alignment xr_ref_new accepts (a power of two) */
    uint32_t optional;       /* XR_HAS_* bits */
    uint32_t capabilities;   /* XR_CAP_* bits (version 2; a version 1 library leaves it alone) */
} xr_description;

/* The ABI version, callable before anything else (the harness takes 1 and 2, refuses any other). */
uint32_t xr_abi_version(void);
void xr_describe(xr_description *out);

/* Install the hooks (copied); NULL uninstalls them. Uninstalling must be safe at any time: the
 * runtime then allocates with its own allocator and hands blocks it did not get from the hooks
 * to its own deallocator. */
void xr_set_hooks(const xr_hooks *hooks);

/* What fired, after a call returned XR_PANIC (valid until the next call on this thread). */
const char *xr_panic_message(void);

/* ---- VMExternRef ------------------------------------------------------------------------------ */

/* VMExternRef::new of a value of this layout whose bytes are all `fill` (count 1). */
int xr_ref_new(size_t size, size_t align, uint8_t fill, xr_ref *out);
int xr_ref_clone(xr_ref r, xr_ref *out);               /* Clone: count + 1 (Relaxed) */
int xr_ref_drop(xr_ref r);                             /* Drop: count - 1 (Release), last drops */
int xr_ref_as_raw(xr_ref r, void **out);               /* borrows */
int xr_ref_into_raw(xr_ref r, void **out);             /* consumes r; the raw owns its count */
int xr_ref_from_raw(void *raw, xr_ref *out);           /* takes the raw's count */
int xr_ref_clone_from_raw(void *raw, xr_ref *out);     /* count + 1 */
int xr_ref_strong_count(xr_ref r, size_t *out);
int xr_ref_eq(xr_ref a, xr_ref b, int *out);           /* VMExternRef::eq: 1 or 0 */
int xr_ref_hash(xr_ref r, uint64_t *out);              /* VMExternRef::hash, finished */
int xr_ref_cmp(xr_ref a, xr_ref b, int *out);          /* VMExternRef::cmp: -1, 0 or 1 */
int xr_ref_deref(xr_ref r, void **value);              /* Deref: the value's address */

/* ---- VMExternRefActivationsTable -------------------------------------------------------------- */

int xr_table_new(xr_table **out);
/* Drop for VMExternRefActivationsTable: every element is dropped, the chunk freed. */
int xr_table_drop(xr_table *t);
int xr_table_bump_capacity_remaining(xr_table *t, size_t *out);
/* XR_OK: inserted (r consumed). XR_ERR: the chunk is full and r is still the caller's. */
int xr_table_try_insert(xr_table *t, xr_ref r);
int xr_table_insert_with_gc(xr_table *t, xr_ref r, const xr_stack *stack);
int xr_table_insert_without_gc(xr_table *t, xr_ref r);
int xr_table_stack_canary(xr_table *t, int *is_some, uintptr_t *canary);
int xr_table_set_stack_canary(xr_table *t, int is_some, uintptr_t canary);
/* The previous gc_okay (the seed: always 1 in release). */
int xr_table_set_gc_okay(xr_table *t, int okay, int *previous);

/* gc(module_info_lookup, table). */
int xr_gc(const xr_stack *stack, xr_table *t);

/* ---- XR_CAP_OWN_REGISTRY: the runtime's own code registry --------------------------------------- */

/* One call site of compiled code: `pc` is the return address of the call, the pc a frame
 * suspended there shows in the walk. `map` NULL: no live refs at this call site. */
typedef struct xr_call_site {
    uintptr_t pc;
    const xr_stack_map *map;
} xr_call_site;

/* One function: its code is [start, end); its call sites in ascending pc order, within it. */
typedef struct xr_function {
    uintptr_t start;
    uintptr_t end;
    size_t n_call_sites;
    const xr_call_site *call_sites;
} xr_function;

/* One module's code: its functions in ascending, disjoint code ranges. Everything it points to
 * is valid only during xr_table_register_module: the runtime copies what it keeps. */
typedef struct xr_module {
    size_t n_functions;
    const xr_function *functions;
} xr_module;

/* The module is instantiated in the table's store: from now on a pc in its functions' code is
 * Wasm, with the map of the call site at exactly that pc (none: no live refs). *id names it. */
int xr_table_register_module(xr_table *t, const xr_module *module, uint64_t *id);
/* The module was dropped: its pcs are no longer Wasm code. */
int xr_table_unregister_module(xr_table *t, uint64_t id);

/* ---- XR_CAP_CANARY_GUARD: the canary as a scope ----------------------------------------------- */

/* The oldest host-to-Wasm call enters the scope with the host's sp as the canary; its return
 * leaves it (the seed: set_stack_canary(Some(sp)), then set_stack_canary(None)). */
int xr_table_enter_wasm(xr_table *t, uintptr_t canary);
int xr_table_leave_wasm(xr_table *t);

/* ---- optional (private in the seed) ----------------------------------------------------------- */

int xr_table_num_filled_in_bump_chunk(xr_table *t, size_t *out);
/* Calls f for each element: over_approximated_stack_roots (in no particular order), then the filled
 * chunk slots in order, as the seed's `elements` does. */
int xr_table_elements(xr_table *t, void (*f)(void *ctx, xr_ref r), void *ctx);
/* A table whose chunk has `chunk_size` slots instead of the constant (for faster tests). */
int xr_table_new_with_chunk_size(size_t chunk_size, xr_table **out);

/* The only value layouts xr_ref_new makes, for a library with a finite set of value types (a Rust
 * adapter has one type per layout): sets *count (1 to 64) and returns the array, which stays valid
 * while the library is loaded. Each layout is within max_value_size / max_value_align, its align
 * a power of two dividing its size; no two are the same. The harness then generates only these.
 * Without it, the harness generates layouts up to max_value_size and max_value_align. */
const xr_layout *xr_value_layouts(size_t *count);

#ifdef __cplusplus
}
#endif

#endif /* EXTERNREF_ABI_H */
