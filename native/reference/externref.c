/*
 * externref.c: wasmtime v0.37.0's `crates/runtime/src/externref.rs` (VMExternRef,
 * VMExternRefActivationsTable, gc) written in C against externref_abi.h, statement by statement
 * in the seed's order, so that it can be run in lockstep with the harness's model.
 *
 * Build switches (see native/build.py for the catalogue):
 *   XR_DEBUG=0|1          the seed's cfg(debug_assertions): every debug_assert! and gc_okay.
 *   XR_CHUNK_SIZE=N       VMExternRefActivationsTable::CHUNK_SIZE (default 512; 256 when loose).
 *   XR_NO_OPTIONAL        export none of the optional symbols.
 *   XR_VARIANT_LOOSE      correct but not seed-exact (chunk 256, capacity in slots, a sweep that
 *                         clears the chunk youngest slot first and drops set members in
 *                         descending address order).
 *   XR_VARIANT_EAGER_CHUNK, XR_VARIANT_NO_GC_FREE_INSERT, XR_VARIANT_GUARD_CANARY,
 *   XR_VARIANT_SINGLE_THREADED, XR_VARIANT_NO_RAW, XR_VARIANT_CAPACITY_SLOTS,
 *   XR_VARIANT_NO_STRONG_COUNT
 *                         one capability each (ABI.md "Capabilities"): each declares its XR_CAP_*
 *                         bit and exports exactly the functions its capability requires; any of
 *                         them may be combined (-DXR_VARIANT_EAGER_CHUNK -DXR_VARIANT_NO_RAW ...).
 *   XR_VARIANT_OPAQUE_REFS  the opaque-refs capability: a ref word is a handle (index + 1 into
 *                         a table of boxes the library keeps), not the address of a VMExternData
 *                         (ORs XR_CAP_OPAQUE_REFS into the declared capabilities; combines with
 *                         the other variants).
 *   XR_BUG_*              one seeded bug each.
 *   XR_RACE_WINDOW_NS=N   the race bugs' pause inside their window (default 5000; 0: none).
 *   XR_ABI_V1             a version 1 library: reports ABI version 1 and leaves the description's
 *                         version 2 field (capabilities) alone, as a library built against the
 *                         version 1 header does.
 *   XR_REPORT_*           what xr_abi_version / xr_describe report (to test the loader's refusals).
 *
 * Panics: each entry point sets a jump buffer; a panic (a failed assert! or debug_assert!)
 * writes its message to a thread-local buffer and jumps back to the innermost entry, which
 * returns XR_PANIC. The frame-visit callback, which runs inside the harness's stack walk, has its
 * own jump buffer: a panic there stops the walk and is re-raised once the walk has returned, so
 * no jump ever crosses the harness's frames.
 */
#define _POSIX_C_SOURCE 200809L /* posix_memalign */

#include "externref_abi.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef XR_DEBUG
#define XR_DEBUG 1
#endif

#ifndef XR_CHUNK_SIZE
#ifdef XR_VARIANT_LOOSE
#define XR_CHUNK_SIZE 256
#else
#define XR_CHUNK_SIZE 512
#endif
#endif

#ifdef XR_ABI_V1
#define XR_BUILT_ABI_VERSION 1u
#else
#define XR_BUILT_ABI_VERSION XR_ABI_VERSION
#endif
#ifndef XR_REPORT_ABI_VERSION
#define XR_REPORT_ABI_VERSION XR_BUILT_ABI_VERSION
#endif
#ifndef XR_REPORT_DESCRIBE_ABI_VERSION
#define XR_REPORT_DESCRIBE_ABI_VERSION XR_BUILT_ABI_VERSION
#endif
/* ---- the capability variants: each ORs its XR_CAP_* bit into XR_CAPABILITIES ------------------ */
#ifdef XR_VARIANT_LOOSE
#define XR_VARIANT_CAP_LOOSE XR_CAP_CAPACITY_SLOTS
#else
#define XR_VARIANT_CAP_LOOSE 0u
#endif
#ifdef XR_VARIANT_EAGER_CHUNK
#define XR_VARIANT_CAP_EAGER_CHUNK XR_CAP_EAGER_CHUNK
#else
#define XR_VARIANT_CAP_EAGER_CHUNK 0u
#endif
#ifdef XR_VARIANT_NO_GC_FREE_INSERT
#define XR_VARIANT_CAP_NO_GC_FREE_INSERT XR_CAP_NO_GC_FREE_INSERT
#else
#define XR_VARIANT_CAP_NO_GC_FREE_INSERT 0u
#endif
#ifdef XR_VARIANT_GUARD_CANARY
#define XR_VARIANT_CAP_GUARD_CANARY XR_CAP_CANARY_GUARD
#else
#define XR_VARIANT_CAP_GUARD_CANARY 0u
#endif
#ifdef XR_VARIANT_SINGLE_THREADED
#define XR_VARIANT_CAP_SINGLE_THREADED XR_CAP_SINGLE_THREADED
#else
#define XR_VARIANT_CAP_SINGLE_THREADED 0u
#endif
#ifdef XR_VARIANT_NO_RAW
#define XR_VARIANT_CAP_NO_RAW XR_CAP_NO_RAW
#else
#define XR_VARIANT_CAP_NO_RAW 0u
#endif
#if defined(XR_BUG_OPAQUE_FREE_EARLY) && !defined(XR_VARIANT_OPAQUE_REFS)
#define XR_VARIANT_OPAQUE_REFS /* the bug is in the opaque-refs variant's handle table */
#endif
#ifdef XR_VARIANT_OPAQUE_REFS
#define XR_VARIANT_CAP_OPAQUE_REFS XR_CAP_OPAQUE_REFS
#else
#define XR_VARIANT_CAP_OPAQUE_REFS 0u
#endif
#ifdef XR_VARIANT_OWN_REGISTRY
#define XR_VARIANT_CAP_OWN_REGISTRY XR_CAP_OWN_REGISTRY
#else
#define XR_VARIANT_CAP_OWN_REGISTRY 0u
#endif
#ifdef XR_VARIANT_CAPACITY_SLOTS
#define XR_VARIANT_CAP_CAPACITY_SLOTS XR_CAP_CAPACITY_SLOTS
#else
#define XR_VARIANT_CAP_CAPACITY_SLOTS 0u
#endif
#ifdef XR_VARIANT_NO_STRONG_COUNT
#define XR_VARIANT_CAP_NO_STRONG_COUNT XR_CAP_NO_STRONG_COUNT
#else
#define XR_VARIANT_CAP_NO_STRONG_COUNT 0u
#endif
/* The XR_CAP_* bits this build declares: the variants' (another -DXR_CAPABILITIES overrides). */
#ifndef XR_CAPABILITIES
#define XR_CAPABILITIES                                                                            \
    (XR_VARIANT_CAP_LOOSE | XR_VARIANT_CAP_EAGER_CHUNK | XR_VARIANT_CAP_NO_GC_FREE_INSERT |         \
     XR_VARIANT_CAP_GUARD_CANARY | XR_VARIANT_CAP_SINGLE_THREADED | XR_VARIANT_CAP_NO_RAW |          \
     XR_VARIANT_CAP_OPAQUE_REFS | XR_VARIANT_CAP_OWN_REGISTRY | XR_VARIANT_CAP_CAPACITY_SLOTS |    \
     XR_VARIANT_CAP_NO_STRONG_COUNT)
#endif
#ifndef XR_REPORT_CAPABILITIES
#define XR_REPORT_CAPABILITIES XR_CAPABILITIES
#endif
#ifndef XR_REPORT_NAME
#define XR_REPORT_NAME "externref-c-reference"
#endif
#ifndef XR_REPORT_VERSION
#define XR_REPORT_VERSION "1.0.0"
#endif
#ifndef XR_REPORT_MAX_VALUE_ALIGN
#define XR_REPORT_MAX_VALUE_ALIGN XR_MAX_VALUE_ALIGN
#endif
#ifndef XR_REPORT_CHUNK_SIZE
#define XR_REPORT_CHUNK_SIZE XR_CHUNK_SIZE
#endif

#ifndef XR_MAX_VALUE_SIZE
#define XR_MAX_VALUE_SIZE ((size_t)1 << 20)
#endif
#ifndef XR_MAX_VALUE_ALIGN
#define XR_MAX_VALUE_ALIGN ((size_t)1 << 12)
#endif
#define WORD sizeof(uintptr_t)
/* `NonNull::<TableElem>::dangling()`: where `Box::new([])` points. */
#define DANGLING ((uintptr_t *)(uintptr_t)8)

#ifdef XR_NO_OPTIONAL
#define XR_OPTIONAL_BITS 0u
#else
#define XR_OPTIONAL_BITS (XR_HAS_NUM_FILLED_IN_BUMP_CHUNK | XR_HAS_ELEMENTS | XR_HAS_SET_CHUNK_SIZE)
#endif
#ifdef XR_VALUE_LAYOUTS
#define XR_LAYOUT_BITS XR_HAS_VALUE_LAYOUTS
#else
#define XR_LAYOUT_BITS 0u
#endif
#ifndef XR_REPORT_OPTIONAL
#define XR_REPORT_OPTIONAL (XR_OPTIONAL_BITS | XR_LAYOUT_BITS)
#endif

#define EXPORT __attribute__((visibility("default")))
/* Used only by some builds (debug assertions, some seeded bugs). */
#define MAYBE_UNUSED __attribute__((unused))

/* ---- panics ------------------------------------------------------------------------------------ */

static _Thread_local char panic_message[512];
static _Thread_local jmp_buf *panic_target;

__attribute__((noreturn, format(printf, 1, 2))) static void panic(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    vsnprintf(panic_message, sizeof panic_message, fmt, args);
    va_end(args);
    if (panic_target == NULL) {
        fprintf(stderr, "externref-c-reference: panic outside a call: %s\n", panic_message);
        abort();
    }
    longjmp(*panic_target, 1);
}

#if XR_DEBUG
#define debug_assert(cond, ...)                                                                    \
    do {                                                                                           \
        if (!(cond)) panic(__VA_ARGS__);                                                           \
    } while (0)
#else
#define debug_assert(cond, ...)                                                                    \
    do {                                                                                           \
    } while (0)
#endif

/* Every entry point runs its body through this: XR_PANIC when the body panicked. */
#define ENTRY(body)                                                                                \
    do {                                                                                           \
        jmp_buf here_;                                                                             \
        jmp_buf *volatile outer_ = panic_target;                                                   \
        if (setjmp(here_)) {                                                                       \
            panic_target = outer_;                                                                 \
            return XR_PANIC;                                                                       \
        }                                                                                          \
        panic_target = &here_;                                                                     \
        body;                                                                                      \
        panic_target = outer_;                                                                     \
    } while (0)

/* ---- the allocator: the hooks when installed, the C library's otherwise --------------------- */

static xr_hooks hooks;
static int hooks_installed; /* read and written with __atomic */

static void *xr_alloc(size_t size, size_t align) {
    void *p = NULL;
    if (__atomic_load_n(&hooks_installed, __ATOMIC_ACQUIRE) && hooks.alloc != NULL) {
        p = hooks.alloc(hooks.ctx, size, align);
    } else if (posix_memalign(&p, align < WORD ? WORD : align, size == 0 ? 1 : size) != 0) {
        p = NULL;
    }
    if (p == NULL) panic("memory allocation of %zu bytes (align %zu) failed", size, align);
    return p;
}

static void xr_dealloc(void *p, size_t size, size_t align) {
    if (__atomic_load_n(&hooks_installed, __ATOMIC_ACQUIRE) && hooks.dealloc != NULL) {
        if (hooks.dealloc(hooks.ctx, p, size, align)) return;
    }
    free(p); /* not the hooks' block */
}

/* ---- values and their `dyn Any` vtables ------------------------------------------------------ */

/* A `dyn Any + Send + Sync` vtable as rustc lays it out: drop_in_place, size, align, type_id. */
struct any_vtable {
    void (*drop_in_place)(void *value);
    size_t size;
    size_t align;
    uint64_t type_id;
};

static void value_drop_in_place(void *value) {
    if (__atomic_load_n(&hooks_installed, __ATOMIC_ACQUIRE) && hooks.value_dropped != NULL)
        hooks.value_dropped(hooks.ctx, value);
}

/* One static vtable per value type (size, align), made on first use and never freed. */
#define VTABLE_SLOTS 8192u
static struct any_vtable vtables[VTABLE_SLOTS];
static size_t vtables_used;
static char vtables_lock;

static const struct any_vtable *vtable_for(size_t size, size_t align) {
    size_t h = (size * 0x9E3779B97F4A7C15u) ^ (align * 0xC2B2AE3D27D4EB4Fu);
    const struct any_vtable *found = NULL;
    while (__atomic_test_and_set(&vtables_lock, __ATOMIC_ACQUIRE)) {
    }
    for (size_t probe = 0; probe < VTABLE_SLOTS; probe++) {
        struct any_vtable *v = &vtables[(h + probe) % VTABLE_SLOTS];
        if (v->align == 0 && vtables_used + 1 < VTABLE_SLOTS) {
            v->drop_in_place = value_drop_in_place;
            v->size = size;
            v->align = align;
            v->type_id = ++vtables_used;
        }
        if (v->align == 0) break;
        if (v->size == size && v->align == align) {
            found = v;
            break;
        }
    }
    __atomic_clear(&vtables_lock, __ATOMIC_RELEASE);
    if (found == NULL) panic("too many value types (%zu)", (size_t)VTABLE_SLOTS);
    return found;
}

/* ---- VMExternData -------------------------------------------------------------------------- */

/* `#[repr(C)] struct VMExternData { ref_count: AtomicUsize, value_ptr: NonNull<dyn Any> }`. */
typedef struct VMExternData {
    size_t ref_count;
    void *value_data;
    const struct any_vtable *value_vtable;
} VMExternData;

_Static_assert(sizeof(VMExternData) == 24, "VMExternData is three words");
_Static_assert(offsetof(VMExternData, ref_count) == 0, "ref_count at offset 0");

#ifndef XR_VARIANT_OPAQUE_REFS
/* The seed: a ref is the address of its VMExternData. */
static inline VMExternData *extern_data(xr_ref r) { return (VMExternData *)r; }
static inline xr_ref ref_of_new_box(VMExternData *data) { return (xr_ref)data; }
static inline void ref_box_freed(xr_ref r) { (void)r; }
#else
/* ---- opaque-refs: handles into a table of boxes ---------------------------------------------
 *
 *     ref word (handle) = index + 1          boxes[index] ──▶ VMExternData (through the hooks)
 *     1, 2, 3, ... XR_OPAQUE_CAPACITY        free indices: a stack; a freed box's index is reused
 *
 * A handle is never 0 and never above XR_OPAQUE_CAPACITY (65536): every handle lies in the lowest
 * 64 KiB, which Linux never maps (vm.mmap_min_addr), so no handle is a valid address by accident.
 * The boxes keep the seed's VMExternData shape and come from the hooks; only the word that names
 * them changed. A box is found by its handle on every use (clone, drop, strong_count, deref, hash,
 * cmp, and gc's precise roots read from the stack); an index out of range or a freed one panics,
 * as a Rust slice index or `Option::unwrap` would, in every build.
 *
 * Threads: boxes[i] changes only while no live handle names it (when it is issued, and when its
 * last owner frees it), so lookups read it without the lock; issuing and freeing take `lock`.
 * The table is reset whenever hooks are installed or uninstalled: the harness frees every block
 * of a world before it leaves it, so a handle is valid only under the hooks it was made under. */
#ifndef XR_OPAQUE_CAPACITY
#define XR_OPAQUE_CAPACITY 65536u
#endif
static VMExternData *boxes[XR_OPAQUE_CAPACITY];
static uint32_t free_indices[XR_OPAQUE_CAPACITY];
static size_t n_free;  /* entries of free_indices in use (under lock) */
static size_t n_issued; /* indices below it have been handed out at least once (atomic) */
static char boxes_lock;

static void boxes_acquire(void) {
    while (__atomic_test_and_set(&boxes_lock, __ATOMIC_ACQUIRE)) {
    }
}

static void boxes_release(void) { __atomic_clear(&boxes_lock, __ATOMIC_RELEASE); }

static void boxes_reset(void) {
    boxes_acquire();
    n_free = 0;
    __atomic_store_n(&n_issued, 0, __ATOMIC_RELEASE);
    boxes_release();
}

static inline VMExternData *extern_data(xr_ref r) {
    size_t index = (size_t)r - 1;
    if (r == 0 || index >= __atomic_load_n(&n_issued, __ATOMIC_ACQUIRE))
        panic("index out of bounds: %#zx is not a handle this library issued", (size_t)r);
    VMExternData *data = __atomic_load_n(&boxes[index], __ATOMIC_ACQUIRE);
    if (data == NULL) panic("called `Option::unwrap()` on a `None` value: handle %#zx is free", (size_t)r);
    return data;
}

static xr_ref ref_of_new_box(VMExternData *data) {
    size_t index;
    boxes_acquire();
    if (n_free > 0) {
        index = free_indices[--n_free];
    } else if (n_issued < XR_OPAQUE_CAPACITY) {
        index = n_issued;
    } else {
        boxes_release();
        panic("more than %u live refs", XR_OPAQUE_CAPACITY);
    }
    __atomic_store_n(&boxes[index], data, __ATOMIC_RELEASE);
    if (index == n_issued) __atomic_store_n(&n_issued, index + 1, __ATOMIC_RELEASE);
    boxes_release();
    return (xr_ref)(index + 1);
}

/* The box of `r` is gone (or, under the seeded bug, believed gone): its index goes back. */
static void index_release(xr_ref r, bool clear) {
    size_t index = (size_t)r - 1;
    boxes_acquire();
    if (clear) __atomic_store_n(&boxes[index], NULL, __ATOMIC_RELEASE);
    free_indices[n_free++] = (uint32_t)index;
    boxes_release();
}

static inline void ref_box_freed(xr_ref r) {
#ifndef XR_BUG_OPAQUE_FREE_EARLY
    index_release(r, true);
#else
    (void)r; /* the bug gave the index back already, when one owner was left */
#endif
}
#endif /* XR_VARIANT_OPAQUE_REFS */

struct layout {
    size_t size;
    size_t align;
    size_t footer_offset;
};

/* `round_up_to_align`: None (false) on overflow. */
static bool round_up_to_align(size_t n, size_t align, size_t *out) {
    debug_assert((align & (align - 1)) == 0 && align != 0, "assertion failed: align.is_power_of_two()");
    size_t align_minus_one = align - 1;
    if (n > SIZE_MAX - align_minus_one) return false;
    *out = (n + align_minus_one) & ~align_minus_one;
    return true;
}

/* `VMExternData::layout_for`. */
static struct layout layout_for(size_t value_size, size_t value_align) {
    size_t extern_data_size = sizeof(VMExternData);
    size_t extern_data_align = _Alignof(VMExternData);
    size_t value_and_padding_size;
    if (!round_up_to_align(value_size, extern_data_align, &value_and_padding_size))
        panic("round_up_to_align(..).unwrap() on None in layout_for");
    size_t alloc_align = value_align > extern_data_align ? value_align : extern_data_align;
    size_t alloc_size = value_and_padding_size + extern_data_size;
    size_t rounded;
    debug_assert((alloc_align & (alloc_align - 1)) == 0 && round_up_to_align(alloc_size, alloc_align, &rounded) &&
                     rounded <= (size_t)INTPTR_MAX,
                 "Layout::from_size_align(alloc_size, alloc_align).is_ok()");
    (void)rounded;
    return (struct layout){alloc_size, alloc_align, value_and_padding_size};
}

#ifdef XR_BUG_WILD_WRITE_FOOTER
/* The seeded wild write: every ref made since the table was, in allocation order, so that gc can
 * decrement the count of one the step does not otherwise touch (held by the host alone). */
#define WILD_REFS 65536u
static uintptr_t wild_refs[WILD_REFS];
static size_t wild_refs_len;

static void wild_remember(uintptr_t r) {
    if (wild_refs_len < WILD_REFS) wild_refs[wild_refs_len++] = r;
}

static void wild_forget(uintptr_t r) {
    for (size_t i = 0; i < wild_refs_len; i++)
        if (wild_refs[i] == r) wild_refs[i] = 0;
}
#endif

/* `VMExternData::drop_and_dealloc`. */
static void drop_and_dealloc(VMExternData *data) {
    size_t rc = __atomic_load_n(&data->ref_count, __ATOMIC_SEQ_CST);
    debug_assert(rc == 0, "assertion failed: ref_count == 0 (it is %zu)", rc);
    (void)rc;
    const struct any_vtable *vtable = data->value_vtable;
#ifdef XR_BUG_DEALLOC_WRONG_LAYOUT
    struct layout lay = layout_for(vtable->size, _Alignof(VMExternData));
#else
    struct layout lay = layout_for(vtable->size, vtable->align);
#endif
#ifdef XR_BUG_WILD_WRITE_FOOTER
    wild_forget((uintptr_t)data);
#endif
    vtable->drop_in_place(data->value_data);
    void *alloc_ptr = data->value_data;
    xr_dealloc(alloc_ptr, lay.size, lay.align);
}

#if defined(XR_BUG_NONATOMIC_COUNT) || defined(XR_BUG_DROP_REREAD) || defined(XR_BUG_CLONE_LOAD_STORE)
/* Widens a race window (a few microseconds) so that threads driven from the harness, whose calls
 * are microseconds apart, can fall into it. */
#ifndef XR_RACE_WINDOW_NS
#define XR_RACE_WINDOW_NS 5000
#endif
/* XR_RACE_WINDOW_NS=0 leaves the window as narrow as the code makes it (to measure how often a
 * parallel check falls into the unwidened race: benchmarks/threads.py). */
static void race_window(void) {
#if XR_RACE_WINDOW_NS > 0
    struct timespec pause = {0, XR_RACE_WINDOW_NS};
    nanosleep(&pause, NULL);
#endif
}
#endif

#ifdef XR_BUG_NONATOMIC_COUNT
/* A plain load, a pause, a plain store: the window in which another thread's change is lost. */
static size_t racy_add(size_t *count, size_t delta) {
    volatile size_t *p = count;
    size_t old = *p;
    race_window();
    *p = old + delta;
    return old;
}
#endif

/* `VMExternData::increment_ref_count`: Relaxed, as `Arc::clone`. */
static void increment_ref_count(VMExternData *data) {
#if defined(XR_BUG_NONATOMIC_COUNT)
    racy_add(&data->ref_count, 1);
#elif defined(XR_BUG_CLONE_LOAD_STORE)
    /* An atomic load and an atomic store instead of one fetch_add: each is atomic, the pair is not,
     * so a drop or a clone between them is undone by the store. */
    size_t old = __atomic_load_n(&data->ref_count, __ATOMIC_RELAXED);
    race_window();
    __atomic_store_n(&data->ref_count, old + 1, __ATOMIC_RELAXED);
#elif defined(XR_VARIANT_SINGLE_THREADED)
    data->ref_count += 1; /* XR_CAP_SINGLE_THREADED: a plain count */
#else
    __atomic_fetch_add(&data->ref_count, 1, __ATOMIC_RELAXED);
#endif
}

/* `Clone for VMExternRef`. */
static xr_ref ref_clone(xr_ref r) {
    increment_ref_count(extern_data(r));
    return r;
}

/* `Drop for VMExternRef`: Release decrement; the last one fences (Acquire) and frees. */
static void ref_drop(xr_ref r) {
    VMExternData *data = extern_data(r);
#ifdef XR_BUG_NONATOMIC_COUNT
    size_t old = racy_add(&data->ref_count, (size_t)-1);
#elif defined(XR_VARIANT_SINGLE_THREADED)
    size_t old = data->ref_count--; /* XR_CAP_SINGLE_THREADED: a plain count */
#else
    size_t old = __atomic_fetch_sub(&data->ref_count, 1, __ATOMIC_RELEASE);
#endif
#ifdef XR_BUG_OPAQUE_FREE_EARLY
    /* One owner is left, yet the index goes back on the free list (the box stays in it until the
     * next New takes the index): that New's ref aliases the live one. */
    if (old == 2) index_release(r, false);
#endif
#if defined(XR_BUG_EARLY_FREE)
    if (old != 2) return;
#elif defined(XR_BUG_DROP_REREAD)
    if ((void)old, race_window(), __atomic_load_n(&data->ref_count, __ATOMIC_RELAXED) != 0) return;
#else
    if (old != 1) return;
#endif
    __atomic_thread_fence(__ATOMIC_ACQUIRE);
    drop_and_dealloc(data);
    ref_box_freed(r);
}

/* `VMExternRef::new_with`: one allocation, the value at offset 0, the footer after it. */
static xr_ref ref_new(size_t size, size_t align, uint8_t fill) {
    struct layout lay = layout_for(size, align);
    uint8_t *alloc_ptr = xr_alloc(lay.size, lay.align);
    memset(alloc_ptr, fill, size); /* ptr::write(value_ptr, make_value()) */
    VMExternData *data = (VMExternData *)(alloc_ptr + lay.footer_offset);
    data->ref_count = 1;
    data->value_data = alloc_ptr;
    data->value_vtable = vtable_for(size, align);
#ifdef XR_BUG_WILD_WRITE_FOOTER
    wild_remember((uintptr_t)data);
#endif
    return ref_of_new_box(data);
}

/* ---- a HashSet<VMExternRefWithTraits> ------------------------------------------------------- */

/* Open addressing with linear probing; 0 marks an empty slot (refs are never 0). Members are only
 * ever added, or all taken at once, so no tombstones are needed. */
struct ref_set {
    uintptr_t *slots;
    size_t capacity; /* 0 or a power of two */
    size_t len;
};

/* `VMExternRef::hash`: only the address is fed to the hasher (a splitmix64 finaliser). */
static uint64_t hash_address(uintptr_t p) {
    uint64_t z = (uint64_t)p + 0x9E3779B97F4A7C15u;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9u;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBu;
    return z ^ (z >> 31);
}

#ifndef XR_VARIANT_OPAQUE_REFS
/* `VMExternRef::hash` and `cmp`: the pointer itself. */
static uint64_t ref_hash(xr_ref r) { return hash_address(r); }
static int ref_cmp(xr_ref a, xr_ref b) { return (a > b) - (a < b); }
#else
/* opaque-refs: eq stays word equality (one handle per box), but hash and cmp go through the box,
 * as a runtime whose identity is its heap object does: neither is a function of the word. */
static uint64_t ref_hash(xr_ref r) { return hash_address((uintptr_t)extern_data(r)); }
static int ref_cmp(xr_ref a, xr_ref b) {
    uintptr_t x = (uintptr_t)extern_data(a), y = (uintptr_t)extern_data(b);
    return (x > y) - (x < y);
}
#endif

static bool set_contains(const struct ref_set *s, uintptr_t r) {
    if (s->capacity == 0) return false;
    for (size_t i = hash_address(r) & (s->capacity - 1);; i = (i + 1) & (s->capacity - 1)) {
        if (s->slots[i] == r) return true;
        if (s->slots[i] == 0) return false;
    }
}

static void set_put(uintptr_t *slots, size_t capacity, uintptr_t r) {
    size_t i = hash_address(r) & (capacity - 1);
    while (slots[i] != 0) i = (i + 1) & (capacity - 1);
    slots[i] = r;
}

/* `HashSet::insert`: keeps the member already present and drops the one passed in. */
static void set_insert(struct ref_set *s, xr_ref r) {
    if (set_contains(s, r)) {
#ifndef XR_BUG_DUPLICATE_INSERT_LEAKS
        ref_drop(r);
#endif
        return;
    }
    if ((s->len + 1) * 2 > s->capacity) {
        size_t capacity = s->capacity ? s->capacity * 2 : 8;
        uintptr_t *slots = xr_alloc(capacity * WORD, WORD);
        memset(slots, 0, capacity * WORD);
        for (size_t i = 0; i < s->capacity; i++)
            if (s->slots[i]) set_put(slots, capacity, s->slots[i]);
        if (s->capacity) xr_dealloc(s->slots, s->capacity * WORD, WORD);
        s->slots = slots;
        s->capacity = capacity;
    }
    set_put(s->slots, s->capacity, r);
    s->len++;
}

static int compare_addresses(const void *a, const void *b) {
    uintptr_t x = *(const uintptr_t *)a, y = *(const uintptr_t *)b;
    return (x > y) - (x < y);
}

/* `HashSet::clear` (members dropped in ascending address order, as the Python port does; the
 * loose variant drops in descending order within a sweep). The storage is kept, as hashbrown
 * keeps its capacity. */
static void set_clear(struct ref_set *s, bool descending) {
    if (s->len == 0) return;
    qsort(s->slots, s->capacity, WORD, compare_addresses); /* empties (0) first */
    size_t first = s->capacity - s->len;
    s->len = 0;
    for (size_t k = 0; k < s->capacity - first; k++) {
        size_t i = descending ? s->capacity - 1 - k : first + k;
        uintptr_t r = s->slots[i];
        s->slots[i] = 0;
        ref_drop(r);
    }
}

static void set_free_storage(struct ref_set *s) {
    if (s->capacity) xr_dealloc(s->slots, s->capacity * WORD, WORD);
    s->slots = NULL;
    s->capacity = 0;
}

/* ---- VMExternRefActivationsTable ----------------------------------------------------------- */

/* `#[repr(C)]`: `alloc` (next, end, chunk) first, read by compiled code. */
struct xr_table {
    uintptr_t *next;       /* offset 0 */
    uintptr_t *end;        /* offset 8 */
    uintptr_t *chunk_ptr;  /* offset 16: Box<[TableElem]> */
    size_t chunk_len;      /* offset 24, in slots */
    struct ref_set over_approximated_stack_roots;
    struct ref_set precise_stack_roots;
    size_t stack_canary_is_some;
    uintptr_t stack_canary;
#if XR_DEBUG
    bool gc_okay;
#endif
    /* Self::CHUNK_SIZE of this table (xr_table_new_with_chunk_size may make it smaller). */
    size_t chunk_size;
#ifdef XR_BUG_BUMP_OFF_BY_ONE
    bool overran;
#endif
#ifdef XR_VARIANT_OWN_REGISTRY
    struct registry *registry; /* the modules registered in this table's store */
#endif
};

_Static_assert(offsetof(struct xr_table, next) == 0, "next at 0");
_Static_assert(offsetof(struct xr_table, end) == 8, "end at 8");
_Static_assert(offsetof(struct xr_table, chunk_ptr) == 16, "chunk pointer at 16");
_Static_assert(offsetof(struct xr_table, chunk_len) == 24, "chunk length at 24");

#ifdef XR_VARIANT_EAGER_CHUNK
static void table_allocate_chunk_eagerly(xr_table *t);
#endif

static xr_table *table_new(size_t chunk_size) {
    xr_table *t = xr_alloc(sizeof *t, _Alignof(xr_table));
    memset(t, 0, sizeof *t);
    /* Start with an empty chunk, so the first insert goes to the slow gc path. */
    t->chunk_ptr = DANGLING;
    t->chunk_len = 0;
    t->next = t->chunk_ptr;
    t->end = t->chunk_ptr + t->chunk_len;
    t->stack_canary_is_some = 0;
#if XR_DEBUG
    t->gc_okay = true;
#endif
    t->chunk_size = chunk_size;
#ifdef XR_VARIANT_EAGER_CHUNK
    table_allocate_chunk_eagerly(t);
#endif
#ifdef XR_BUG_WILD_WRITE_FOOTER
    wild_refs_len = 0; /* a new run: the refs of earlier tables' runs are the harness's no more */
#endif
    return t;
}

static uintptr_t *new_chunk(const xr_table *t, size_t size) {
    if (size < t->chunk_size) panic("assertion failed: size >= Self::CHUNK_SIZE");
    uintptr_t *chunk = xr_alloc(size * WORD, WORD);
    memset(chunk, 0, size * WORD); /* every slot None */
    return chunk;
}

/* ---- XR_VARIANT_EAGER_CHUNK (XR_CAP_EAGER_CHUNK): new allocates the chunk --------------------- */
#ifdef XR_VARIANT_EAGER_CHUNK
static void table_allocate_chunk_eagerly(xr_table *t) {
#ifdef XR_BUG_EAGER_CHUNK_OFF_BY_ONE
    size_t slots = t->chunk_size - 1; /* the seeded bug: one slot short */
    if (slots == 0) return;           /* no chunk: the first sweep allocates it */
    t->chunk_ptr = xr_alloc(slots * WORD, WORD);
    memset(t->chunk_ptr, 0, slots * WORD);
#else
    size_t slots = t->chunk_size;
    t->chunk_ptr = new_chunk(t, slots);
#endif
    t->chunk_len = slots;
    t->next = t->chunk_ptr;
    t->end = t->chunk_ptr + t->chunk_len;
}
#endif

MAYBE_UNUSED static size_t bump_capacity_remaining(const xr_table *t) {
#if defined(XR_VARIANT_LOOSE) || defined(XR_VARIANT_CAPACITY_SLOTS)
    return (size_t)(t->end - t->next); /* slots */
#else
    return (uintptr_t)t->end - (uintptr_t)t->next; /* the seed's arithmetic: bytes */
#endif
}

static bool try_insert(xr_table *t, xr_ref r) {
    uintptr_t *next = t->next;
#ifdef XR_BUG_BUMP_OFF_BY_ONE
    if (next > t->end || (next == t->end && (t->overran || t->chunk_len == 0))) return false;
    t->overran |= next == t->end; /* the one slot past the chunk is taken, once */
#else
    if (next == t->end) return false;
#endif
    debug_assert(*next == 0, "slots >= the `next` bump finger are always `None`");
    *next = r;
    next = next + 1;
    debug_assert(next <= t->end, "assertion failed: next <= self.alloc.end");
    t->next = next;
    return true;
}

static void insert_slow_without_gc(xr_table *t, xr_ref r) {
    set_insert(&t->over_approximated_stack_roots, r);
}

MAYBE_UNUSED static void insert_without_gc(xr_table *t, xr_ref r) {
    if (!try_insert(t, r)) insert_slow_without_gc(t, r);
}

static size_t num_filled_in_bump_chunk(const xr_table *t) {
    size_t bytes_unused = (uintptr_t)t->end - (uintptr_t)t->next;
    size_t slots_unused = bytes_unused / WORD;
#ifdef XR_BUG_CHUNK_INDEX_U8
    uint8_t filled = (uint8_t)(t->chunk_len > slots_unused ? t->chunk_len - slots_unused : 0);
#else
    size_t filled = t->chunk_len > slots_unused ? t->chunk_len - slots_unused : 0;
#endif
    return filled;
}

/* Whether `r` is an element (over_approximated_stack_roots, then the filled chunk slots). */
MAYBE_UNUSED static bool table_contains(const xr_table *t, uintptr_t r) {
    if (set_contains(&t->over_approximated_stack_roots, r)) return true;
    size_t num_filled = num_filled_in_bump_chunk(t);
    for (size_t i = 0; i < num_filled; i++)
        if (t->chunk_ptr[i] == r) return true;
    return false;
}

static void insert_precise_stack_root(struct ref_set *precise_stack_roots, uintptr_t root) {
#ifdef XR_BUG_PRECISE_ROOT_UNCOUNTED
    xr_ref r = root;
#else
    xr_ref r = ref_clone(root); /* VMExternRef::clone_from_raw */
#endif
    set_insert(precise_stack_roots, r);
}

static void sweep(xr_table *t) {
    /* Sweep the bump chunk. */
    size_t num_filled = num_filled_in_bump_chunk(t);
    t->next = t->end;
    for (size_t k = 0; k < num_filled; k++) {
#ifdef XR_VARIANT_LOOSE
        size_t i = num_filled - 1 - k; /* the youngest slot first */
#else
        size_t i = k;
#endif
        /* `*slot.get() = None`: the old ref is dropped in place, then None written. */
        uintptr_t old = t->chunk_ptr[i];
        if (old) ref_drop(old);
        t->chunk_ptr[i] = 0;
    }
#if XR_DEBUG
    for (size_t i = 0; i < t->chunk_len; i++)
        debug_assert(t->chunk_ptr[i] == 0, "after sweeping the bump chunk, all slots should be `None`");
#endif
    /* The first gc allocates the chunk the table started without. */
    if (t->chunk_len == 0) {
        t->chunk_ptr = new_chunk(t, t->chunk_size);
        t->chunk_len = t->chunk_size;
        t->end = t->chunk_ptr + t->chunk_len;
    }
    t->next = t->chunk_ptr;
    /* The precise roots become the over-approximation of the next cycle. */
    struct ref_set swap = t->precise_stack_roots;
    t->precise_stack_roots = t->over_approximated_stack_roots;
    t->over_approximated_stack_roots = swap;
#ifdef XR_VARIANT_LOOSE
    set_clear(&t->precise_stack_roots, true);
#else
    set_clear(&t->precise_stack_roots, false);
#endif
}

#ifdef XR_VARIANT_OWN_REGISTRY
static void registry_free(xr_table *t);
#endif

static void table_drop(xr_table *t) {
    /* Field by field, in declaration order: alloc (its chunk's slots, then the chunk), then
     * over_approximated_stack_roots, then precise_stack_roots. */
#ifdef XR_VARIANT_OWN_REGISTRY
    registry_free(t); /* modules still registered go with the store */
#endif
    for (size_t i = 0; i < t->chunk_len; i++) {
        uintptr_t elem = t->chunk_ptr[i];
        if (elem) ref_drop(elem);
    }
#ifndef XR_BUG_LEAK_CHUNK
    if (t->chunk_len) xr_dealloc(t->chunk_ptr, t->chunk_len * WORD, WORD);
#endif
    set_clear(&t->over_approximated_stack_roots, false);
    set_free_storage(&t->over_approximated_stack_roots);
    set_clear(&t->precise_stack_roots, false);
    set_free_storage(&t->precise_stack_roots);
    xr_dealloc(t, sizeof *t, _Alignof(xr_table));
}

#ifdef XR_VARIANT_OWN_REGISTRY
/* ---- own-registry: the runtime's own code registry ------------------------------------------
 *
 * Each registered module is copied: its functions' code ranges, and one entry per call site that
 * has a stack map (a call site without one has no entry: no live refs there), in pc order over
 * the whole module, as wasmtime's `FunctionInfo::stack_maps` keeps them per function. A pc is
 * Wasm when a function's range holds it; its map is the entry at exactly that pc, found by binary
 * search; no entry there means no map. The seeded bugs below each get one of these steps wrong. */

struct reg_entry {
    uintptr_t pc;
    size_t function; /* index in the module's functions */
    xr_stack_map map;
};

struct reg_function {
    uintptr_t start, end;
    size_t first_entry, n_entries;
};

struct reg_module {
    uint64_t id;
    size_t n_functions;
    struct reg_function *functions;
    size_t n_entries;
    struct reg_entry *entries;
    size_t n_bits;
    uint64_t *bits; /* every entry's bitmap words, one block */
};

struct registry {
    size_t n_modules, capacity;
    struct reg_module *modules;
    uint64_t next_id;
};

static size_t bitmap_words(size_t mapped_words) { return (mapped_words + 63) / 64; }

static void module_free(struct reg_module *m) {
    if (m->n_functions) xr_dealloc(m->functions, m->n_functions * sizeof *m->functions, _Alignof(struct reg_function));
    if (m->n_entries) xr_dealloc(m->entries, m->n_entries * sizeof *m->entries, _Alignof(struct reg_entry));
    if (m->n_bits) xr_dealloc(m->bits, m->n_bits * sizeof *m->bits, _Alignof(uint64_t));
}

static void registry_free(xr_table *t) {
    struct registry *r = t->registry;
    if (r == NULL) return;
    for (size_t i = 0; i < r->n_modules; i++) module_free(&r->modules[i]);
    if (r->capacity) xr_dealloc(r->modules, r->capacity * sizeof *r->modules, _Alignof(struct reg_module));
    xr_dealloc(r, sizeof *r, _Alignof(struct registry));
    t->registry = NULL;
}

/* Copies `module` after checking its shape (a malformed module panics, and nothing is kept). */
static uint64_t register_module(xr_table *t, const xr_module *module) {
    if (module == NULL || module->n_functions == 0 || module->functions == NULL)
        panic("xr_table_register_module: a module with no functions");
    size_t n_entries = 0, n_bits = 0;
    for (size_t f = 0; f < module->n_functions; f++) {
        const xr_function *fn = &module->functions[f];
        if (fn->start >= fn->end || (f > 0 && fn->start < module->functions[f - 1].end))
            panic("xr_table_register_module: function %zu's code is not after the previous one's", f);
        if (fn->n_call_sites && fn->call_sites == NULL) panic("xr_table_register_module: no call sites");
        for (size_t c = 0; c < fn->n_call_sites; c++) {
            const xr_call_site *cs = &fn->call_sites[c];
            if (cs->pc < fn->start || cs->pc >= fn->end || (c > 0 && cs->pc <= fn->call_sites[c - 1].pc))
                panic("xr_table_register_module: call site %zu of function %zu is out of order", c, f);
            if (cs->map != NULL) {
                if (cs->map->mapped_words && cs->map->bits == NULL)
                    panic("xr_table_register_module: a stack map without bits");
                n_entries++;
                n_bits += bitmap_words(cs->map->mapped_words);
            }
        }
    }
    struct reg_module m = {0, module->n_functions, NULL, n_entries, NULL, n_bits, NULL};
    m.functions = xr_alloc(m.n_functions * sizeof *m.functions, _Alignof(struct reg_function));
    if (n_entries) m.entries = xr_alloc(n_entries * sizeof *m.entries, _Alignof(struct reg_entry));
    if (n_bits) m.bits = xr_alloc(n_bits * sizeof *m.bits, _Alignof(uint64_t));
    size_t e = 0, b = 0;
    for (size_t f = 0; f < module->n_functions; f++) {
        const xr_function *fn = &module->functions[f];
        m.functions[f] = (struct reg_function){fn->start, fn->end, e, 0};
        for (size_t c = 0; c < fn->n_call_sites; c++) {
            const xr_call_site *cs = &fn->call_sites[c];
            if (cs->map == NULL) continue;
            size_t words = bitmap_words(cs->map->mapped_words);
            if (words) memcpy(&m.bits[b], cs->map->bits, words * sizeof *m.bits);
            m.entries[e++] = (struct reg_entry){cs->pc, f, {cs->map->mapped_words, words ? &m.bits[b] : NULL}};
            b += words;
        }
        m.functions[f].n_entries = e - m.functions[f].first_entry;
    }
    if (t->registry == NULL) {
        t->registry = xr_alloc(sizeof *t->registry, _Alignof(struct registry));
        memset(t->registry, 0, sizeof *t->registry);
    }
    struct registry *r = t->registry;
    if (r->n_modules == r->capacity) {
        size_t capacity = r->capacity ? 2 * r->capacity : 4;
        struct reg_module *modules = xr_alloc(capacity * sizeof *modules, _Alignof(struct reg_module));
        if (r->n_modules) memcpy(modules, r->modules, r->n_modules * sizeof *modules);
        if (r->capacity) xr_dealloc(r->modules, r->capacity * sizeof *r->modules, _Alignof(struct reg_module));
        r->modules = modules;
        r->capacity = capacity;
    }
    m.id = ++r->next_id;
#ifndef XR_OWN_REGISTRY_IGNORED
    r->modules[r->n_modules++] = m;
#else
    /* A library that declares own-registry and ignores what it is given (for the harness's tests). */
    module_free(&m);
#endif
    return m.id;
}

static void unregister_module(xr_table *t, uint64_t id) {
    struct registry *r = t->registry;
    for (size_t i = 0; r != NULL && i < r->n_modules; i++) {
        if (r->modules[i].id != id) continue;
        module_free(&r->modules[i]);
        memmove(&r->modules[i], &r->modules[i + 1], (r->n_modules - i - 1) * sizeof *r->modules);
        r->n_modules--;
        return;
    }
#ifndef XR_OWN_REGISTRY_IGNORED
    panic("xr_table_unregister_module: no module %llu is registered", (unsigned long long)id);
#endif
}

/* The first index in [lo, hi) whose entry's pc is above `pc` (hi if none). */
static size_t entries_above(const struct reg_entry *entries, size_t lo, size_t hi, uintptr_t pc) {
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (entries[mid].pc <= pc) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* `ModuleInfoLookup::lookup(pc)` and `ModuleInfo::lookup_stack_map(pc)`, from the registry. */
static int registry_lookup(const xr_table *t, uintptr_t pc, xr_stack_map *map) {
    const struct registry *r = t->registry;
    for (size_t i = 0; r != NULL && i < r->n_modules; i++) {
        const struct reg_module *m = &r->modules[i];
        if (pc < m->functions[0].start || pc >= m->functions[m->n_functions - 1].end) continue;
        size_t lo = 0, hi = m->n_functions; /* the last function starting at or before pc */
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (m->functions[mid].start <= pc) lo = mid + 1;
            else hi = mid;
        }
        size_t f = lo - 1;
        const struct reg_function *fn = &m->functions[f];
        if (pc >= fn->end) return XR_PC_HOST; /* between two functions */
        const struct reg_entry *e;
#if defined(XR_BUG_REGISTRY_NEAREST_SAFEPOINT)
        /* CVE-2021-39218's lookup: no exact entry takes the nearest earlier one in the function. */
        size_t above = entries_above(m->entries, fn->first_entry, fn->first_entry + fn->n_entries, pc);
        if (above == fn->first_entry) return XR_PC_WASM;
        e = &m->entries[above - 1];
#else
        size_t above = entries_above(m->entries, 0, m->n_entries, pc);
#if defined(XR_BUG_REGISTRY_FIRST_PC_PANICS)
        /* No entry at or before pc leaves `above - 1` wrapped: out of bounds. */
        size_t at = above - 1;
        debug_assert(at < m->n_entries, "index out of bounds: the len is %zu but the index is %zu", m->n_entries, at);
        e = &m->entries[at];
#else
        if (above == 0) return XR_PC_WASM;
        e = &m->entries[above - 1];
#endif
#if defined(XR_BUG_REGISTRY_PREVIOUS_FUNCTION)
        /* The exact match is checked only against the pc's own function's entries. */
        if (e->function == f && e->pc != pc) return XR_PC_WASM;
#else
        if (e->pc != pc) return XR_PC_WASM;
#endif
#endif
        *map = e->map;
        return XR_PC_WASM_MAPPED;
    }
    return XR_PC_HOST;
}
#endif /* XR_VARIANT_OWN_REGISTRY */

/* ---- gc ------------------------------------------------------------------------------------ */

struct walk {
    const xr_stack *stack;
    xr_table *table;
    uintptr_t stack_canary;
    bool has_last_sp;
    uintptr_t last_sp;
    bool found_canary;
    bool panicked;
};

/* What the walk learns of a pc: from the embedder's lookup, or (own-registry) the table's own. */
static int lookup_pc(const struct walk *w, uintptr_t pc, xr_stack_map *map) {
#ifdef XR_VARIANT_OWN_REGISTRY
    return registry_lookup(w->table, pc, map);
#else
    return w->stack->lookup(w->stack->ctx, pc, map);
#endif
}

MAYBE_UNUSED static int map_bit(const xr_stack_map *map, size_t i) { return (int)((map->bits[i / 64] >> (i % 64)) & 1u); }

/* The closure given to `backtrace::trace` when there is a canary. */
static void visit_frame(struct walk *w, uintptr_t pc, uintptr_t sp) {
    xr_stack_map map = {0, NULL};
    if (lookup_pc(w, pc, &map) == XR_PC_WASM_MAPPED) {
        debug_assert(sp != 0, "we should always get a valid SP for Wasm frames");
        for (size_t i = 0; i < map.mapped_words; i++) {
#ifdef XR_BUG_WILD_READ
            if (1) {
#else
            if (map_bit(&map, i)) {
#endif
#ifdef XR_BUG_STACK_MAP_OFFSET
                uintptr_t ptr_to_ref = sp + (i + 1) * WORD;
#else
                uintptr_t ptr_to_ref = sp + i * WORD;
#endif
                uintptr_t r = *(const uintptr_t *)ptr_to_ref;
                debug_assert(r == 0 || table_contains(w->table, r),
                             "every on-stack externref inside a Wasm frame should have an entry in the "
                             "VMExternRefActivationsTable; %#zx is not in the table",
                             (size_t)r);
                if (r) insert_precise_stack_root(&w->table->precise_stack_roots, r);
            }
        }
    }
    if (w->has_last_sp) w->found_canary |= w->last_sp <= w->stack_canary && w->stack_canary <= sp;
    w->has_last_sp = true;
    w->last_sp = sp;
}

/* Runs inside the harness's walk: a panic stops the walk and is re-raised after it. */
static int visit_with_canary(void *walk_ctx, uintptr_t pc, uintptr_t sp) {
    struct walk *w = walk_ctx;
    if (w->panicked) return 0;
    jmp_buf here;
    jmp_buf *volatile outer = panic_target;
    if (setjmp(here)) {
        panic_target = outer;
        w->panicked = true;
        return 0;
    }
    panic_target = &here;
    visit_frame(w, pc, sp);
    panic_target = outer;
    return !w->found_canary;
}

/* With no canary, the debug build asserts that no frame is Wasm. */
MAYBE_UNUSED static int visit_without_canary(void *walk_ctx, uintptr_t pc, uintptr_t sp) {
    struct walk *w = walk_ctx;
    xr_stack_map map = {0, NULL};
    (void)sp;
    if (lookup_pc(w, pc, &map) != XR_PC_HOST) {
        snprintf(panic_message, sizeof panic_message, "no canary, yet a Wasm frame is on the stack");
        w->panicked = true;
        return 0;
    }
    return 1;
}

static void rethrow_if_panicked(const struct walk *w) {
    if (w->panicked) longjmp(*panic_target, 1); /* the message is already written */
}

#ifdef XR_BUG_WILD_WRITE_FOOTER
/* A wild write during gc: the oldest live ref the table does not hold (so neither the walk nor the
 * sweep touches it) loses one from its count. */
static void wild_write_footer(const xr_table *t) {
    for (size_t i = 0; i < wild_refs_len; i++) {
        uintptr_t r = wild_refs[i];
        if (r == 0 || table_contains(t, r)) continue;
        VMExternData *data = extern_data(r);
        if (data->ref_count > 0) data->ref_count -= 1;
        return;
    }
}
#endif

static void gc_inner(const xr_stack *stack, xr_table *t);

static void gc(const xr_stack *stack, xr_table *t) {
    gc_inner(stack, t);
#ifdef XR_BUG_WILD_WRITE_FOOTER
    wild_write_footer(t);
#endif
}

static void gc_inner(const xr_stack *stack, xr_table *t) {
#if XR_DEBUG && !defined(XR_BUG_GC_OKAY_UNCHECKED)
    if (!t->gc_okay) panic("gc while gc_okay is false");
#endif
    debug_assert(t->precise_stack_roots.len == 0, "precise_stack_roots is empty on entry to gc");

    struct walk w = {stack, t, 0, false, 0, false, false};
    if (!t->stack_canary_is_some) {
#if XR_DEBUG && !defined(XR_BUG_NO_WASM_FRAME_ASSERT)
        stack->trace(stack->ctx, visit_without_canary, &w);
        rethrow_if_panicked(&w);
#endif
        sweep(t);
        return;
    }
    w.stack_canary = t->stack_canary;
    /* activations_table_set: the debug assertion looks the table up directly (nothing in the
     * table changes during the walk; precise roots go to precise_stack_roots). */
#ifdef XR_BUG_GC_HANG
    while (!w.found_canary) { /* retries the walk until it finds the canary */
        w.has_last_sp = false;
        stack->trace(stack->ctx, visit_with_canary, &w);
        rethrow_if_panicked(&w);
    }
#else
    stack->trace(stack->ctx, visit_with_canary, &w);
    rethrow_if_panicked(&w);
#endif

#ifdef XR_BUG_SWEEP_WITHOUT_CANARY
    if (w.found_canary || true) {
#else
    if (w.found_canary) {
#endif
        sweep(t);
    } else {
        /* "did not find stack canary; skipping GC sweep" */
        set_clear(&t->precise_stack_roots, false);
    }
}

static void gc_and_insert_slow(xr_table *t, xr_ref r, const xr_stack *stack) {
    gc(stack, t);
    set_insert(&t->over_approximated_stack_roots, r);
}

static void insert_with_gc(xr_table *t, xr_ref r, const xr_stack *stack) {
#if XR_DEBUG
    if (!t->gc_okay) panic("insert_with_gc while gc_okay is false");
#endif
    if (!try_insert(t, r)) gc_and_insert_slow(t, r, stack);
}

/* ---- the ABI ------------------------------------------------------------------------------- */

EXPORT uint32_t xr_abi_version(void) { return XR_REPORT_ABI_VERSION; }

EXPORT void xr_describe(xr_description *out) {
    out->abi_version = XR_REPORT_DESCRIBE_ABI_VERSION;
    out->name = XR_REPORT_NAME;
    out->version = XR_REPORT_VERSION;
    out->debug = XR_DEBUG;
    out->chunk_size = XR_REPORT_CHUNK_SIZE;
    out->max_value_size = XR_MAX_VALUE_SIZE;
    out->max_value_align = XR_REPORT_MAX_VALUE_ALIGN;
    out->optional = XR_REPORT_OPTIONAL;
#ifndef XR_ABI_V1
    out->capabilities = XR_REPORT_CAPABILITIES;
#endif
}

EXPORT void xr_set_hooks(const xr_hooks *h) {
    __atomic_store_n(&hooks_installed, 0, __ATOMIC_RELEASE);
    if (h == NULL) {
        memset(&hooks, 0, sizeof hooks);
#ifdef XR_VARIANT_OPAQUE_REFS
        boxes_reset();
#endif
        return;
    }
    hooks = *h;
    __atomic_store_n(&hooks_installed, 1, __ATOMIC_RELEASE);
#ifdef XR_VARIANT_OPAQUE_REFS
    boxes_reset(); /* a new world: no handle of the last one is valid */
#endif
}

EXPORT const char *xr_panic_message(void) { return panic_message; }

#ifdef XR_VALUE_LAYOUTS
/* -DXR_VALUE_LAYOUTS='{8,8},{16,8}': only these value types, as a Rust adapter with one type per
 * layout has. */
static const xr_layout value_layouts[] = {XR_VALUE_LAYOUTS};

EXPORT const xr_layout *xr_value_layouts(size_t *count) {
    *count = sizeof value_layouts / sizeof value_layouts[0];
    return value_layouts;
}
#endif

/* A layout `mem::size_of::<T>()` / `align_of::<T>()` can be, within what this library makes. */
static void check_value_layout(size_t size, size_t align) {
    if (align == 0 || (align & (align - 1)) != 0 || size % align != 0)
        panic("no Rust type has size %zu, align %zu", size, align);
    if (size > XR_MAX_VALUE_SIZE || align > XR_MAX_VALUE_ALIGN)
        panic("size %zu, align %zu is larger than this implementation makes", size, align);
#ifdef XR_VALUE_LAYOUTS
    for (size_t i = 0; i < sizeof value_layouts / sizeof value_layouts[0]; i++)
        if (value_layouts[i].size == size && value_layouts[i].align == align) return;
    panic("no value type of size %zu, align %zu in this implementation", size, align);
#endif
}

EXPORT int xr_ref_new(size_t size, size_t align, uint8_t fill, xr_ref *out) {
    ENTRY({
        check_value_layout(size, align);
        *out = ref_new(size, align, fill);
    });
    return XR_OK;
}

EXPORT int xr_ref_clone(xr_ref r, xr_ref *out) {
    ENTRY(*out = ref_clone(r));
    return XR_OK;
}

EXPORT int xr_ref_drop(xr_ref r) {
    ENTRY(ref_drop(r));
    return XR_OK;
}

EXPORT int xr_ref_as_raw(xr_ref r, void **out) {
    *out = (void *)r;
    return XR_OK;
}

/* XR_VARIANT_NO_RAW (XR_CAP_NO_RAW): no into_raw, from_raw or clone_from_raw. */
#ifndef XR_VARIANT_NO_RAW
EXPORT int xr_ref_into_raw(xr_ref r, void **out) {
    *out = (void *)r; /* mem::forget(self): the raw owns the count */
    return XR_OK;
}

EXPORT int xr_ref_from_raw(void *raw, xr_ref *out) {
    ENTRY({
        debug_assert(raw != NULL, "assertion failed: !ptr.is_null()");
        *out = (xr_ref)raw;
    });
    return XR_OK;
}

EXPORT int xr_ref_clone_from_raw(void *raw, xr_ref *out) {
    ENTRY({
        debug_assert(raw != NULL, "assertion failed: !ptr.is_null()");
        *out = ref_clone((xr_ref)raw);
    });
    return XR_OK;
}
#endif /* XR_VARIANT_NO_RAW */

/* XR_VARIANT_NO_STRONG_COUNT (XR_CAP_NO_STRONG_COUNT): counts are not observable. */
#ifndef XR_VARIANT_NO_STRONG_COUNT
EXPORT int xr_ref_strong_count(xr_ref r, size_t *out) {
    ENTRY(*out = __atomic_load_n(&extern_data(r)->ref_count, __ATOMIC_SEQ_CST));
    return XR_OK;
}
#endif /* XR_VARIANT_NO_STRONG_COUNT */

EXPORT int xr_ref_eq(xr_ref a, xr_ref b, int *out) {
    *out = a == b;
    return XR_OK;
}

EXPORT int xr_ref_hash(xr_ref r, uint64_t *out) {
    ENTRY(*out = ref_hash(r));
    return XR_OK;
}

EXPORT int xr_ref_cmp(xr_ref a, xr_ref b, int *out) {
    ENTRY(*out = ref_cmp(a, b));
    return XR_OK;
}

EXPORT int xr_ref_deref(xr_ref r, void **value) {
    ENTRY(*value = extern_data(r)->value_data);
    return XR_OK;
}

EXPORT int xr_table_new(xr_table **out) {
    ENTRY(*out = table_new(XR_CHUNK_SIZE));
    return XR_OK;
}

EXPORT int xr_table_drop(xr_table *t) {
    ENTRY(table_drop(t));
    return XR_OK;
}

/* XR_VARIANT_NO_GC_FREE_INSERT (XR_CAP_NO_GC_FREE_INSERT): no bump_capacity_remaining,
 * insert_without_gc or set_gc_okay (below). */
#ifndef XR_VARIANT_NO_GC_FREE_INSERT
EXPORT int xr_table_bump_capacity_remaining(xr_table *t, size_t *out) {
    *out = bump_capacity_remaining(t);
    return XR_OK;
}
#endif

EXPORT int xr_table_try_insert(xr_table *t, xr_ref r) {
    bool inserted = false;
    ENTRY(inserted = try_insert(t, r));
    return inserted ? XR_OK : XR_ERR;
}

EXPORT int xr_table_insert_with_gc(xr_table *t, xr_ref r, const xr_stack *stack) {
    ENTRY(insert_with_gc(t, r, stack));
    return XR_OK;
}

#ifndef XR_VARIANT_NO_GC_FREE_INSERT
EXPORT int xr_table_insert_without_gc(xr_table *t, xr_ref r) {
    ENTRY(insert_without_gc(t, r));
    return XR_OK;
}
#endif

/* XR_VARIANT_GUARD_CANARY (XR_CAP_CANARY_GUARD): the canary is a scope, entered and left, with no
 * getter. */
#ifdef XR_VARIANT_GUARD_CANARY
EXPORT int xr_table_enter_wasm(xr_table *t, uintptr_t canary) {
    t->stack_canary_is_some = 1;
    t->stack_canary = canary;
    return XR_OK;
}

EXPORT int xr_table_leave_wasm(xr_table *t) {
#ifndef XR_BUG_GUARD_CANARY_NOT_CLEARED
    t->stack_canary_is_some = 0;
    t->stack_canary = 0;
#else
    (void)t; /* the seeded bug: leaving the scope keeps the canary */
#endif
    return XR_OK;
}
#else
EXPORT int xr_table_stack_canary(xr_table *t, int *is_some, uintptr_t *canary) {
    *is_some = t->stack_canary_is_some != 0;
    *canary = t->stack_canary_is_some ? t->stack_canary : 0;
    return XR_OK;
}

EXPORT int xr_table_set_stack_canary(xr_table *t, int is_some, uintptr_t canary) {
    t->stack_canary_is_some = is_some != 0;
    t->stack_canary = is_some ? canary : 0;
    return XR_OK;
}
#endif /* XR_VARIANT_GUARD_CANARY */

#ifndef XR_VARIANT_NO_GC_FREE_INSERT
EXPORT int xr_table_set_gc_okay(xr_table *t, int okay, int *previous) {
#if XR_DEBUG
    *previous = t->gc_okay;
    t->gc_okay = okay != 0;
#else
    (void)t;
    (void)okay;
    *previous = 1;
#endif
    return XR_OK;
}
#endif /* XR_VARIANT_NO_GC_FREE_INSERT */

EXPORT int xr_gc(const xr_stack *stack, xr_table *t) {
    ENTRY(gc(stack, t));
    return XR_OK;
}

#ifdef XR_VARIANT_OWN_REGISTRY
EXPORT int xr_table_register_module(xr_table *t, const xr_module *module, uint64_t *id) {
    ENTRY(*id = register_module(t, module));
    return XR_OK;
}

EXPORT int xr_table_unregister_module(xr_table *t, uint64_t id) {
    ENTRY(unregister_module(t, id));
    return XR_OK;
}
#endif

#ifndef XR_NO_OPTIONAL
EXPORT int xr_table_num_filled_in_bump_chunk(xr_table *t, size_t *out) {
    *out = num_filled_in_bump_chunk(t);
    return XR_OK;
}

EXPORT int xr_table_elements(xr_table *t, void (*f)(void *ctx, xr_ref r), void *ctx) {
    const struct ref_set *s = &t->over_approximated_stack_roots;
    for (size_t i = 0; i < s->capacity; i++)
        if (s->slots[i]) f(ctx, s->slots[i]);
    size_t num_filled = num_filled_in_bump_chunk(t);
    for (size_t i = 0; i < num_filled; i++)
        if (t->chunk_ptr[i]) f(ctx, t->chunk_ptr[i]);
    return XR_OK;
}

EXPORT int xr_table_new_with_chunk_size(size_t chunk_size, xr_table **out) {
    ENTRY({
        if (chunk_size == 0) panic("a chunk of 0 slots");
        *out = table_new(chunk_size);
    });
    return XR_OK;
}
#endif
