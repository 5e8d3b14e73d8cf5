/*
 * driver.c: runs one parallel program against an implementation of externref_abi.h, natively.
 *
 * The harness's parallel check needs threads that really run at once. A ctypes callback into
 * Python (a Python drop hook, a Python checking heap) would take the GIL back on every call and
 * serialise the threads, so everything the implementation calls during a run is here, in C:
 *
 *   - a checking heap (the xr_hooks alloc/dealloc): blocks from posix_memalign with a red zone
 *     behind them, a mutex-protected registry, freed blocks quarantined (never handed back during
 *     the run) with a snapshot of their bytes, so a double free, a dealloc with another layout, a
 *     red-zone overwrite, a write to a freed block and a leak at quiescence are all reported;
 *   - the value_dropped hook: a lock-free log of (value, thread, position);
 *   - the program's interpreter: a sequential prefix on the calling thread, then 1..XT_MAX_THREADS
 *     threads started together (they spin on an atomic flag until all are ready), then a
 *     sequential epilogue after they are joined.
 *
 * Each call's invocation and response are stamped from one global sequentially consistent counter,
 * so "a responded before b was invoked" is exactly `a.resp < b.inv`, and a drop logged by a thread
 * between an op's two stamps happened inside that op. Ops name registers: each op writes at most
 * one register no other op writes, and reads registers written before it on its own thread or in
 * the prefix, so the registers themselves are free of data races.
 *
 * The implementation's functions come in as addresses (xt_impl), so the driver links against
 * nothing but libc and pthreads. xt_run is not reentrant: one run at a time per process.
 */
#define _GNU_SOURCE /* sched_yield, posix_memalign */

#include "externref_abi.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define EXPORT __attribute__((visibility("default")))

#define XT_MAX_THREADS 8
#define XT_MAX_BLOCKS 1024
#define XT_MAX_DROPS 1024
#define XT_MAX_ERRORS 64
#define XT_MESSAGE 96
#define XT_REDZONE 16
#define XT_REDZONE_BYTE 0xFB

/* Op kinds (the Python side's OP_KINDS). */
enum {
    XT_NEW = 0, /* a = size, b = align (immediates) */
    XT_CLONE = 1,
    XT_DROP = 2,
    XT_STRONG_COUNT = 3,
    XT_INTO_RAW = 4,
    XT_FROM_RAW = 5,
    XT_CLONE_FROM_RAW = 6,
    XT_EQ = 7,
    XT_DEREF = 8,
};

/* Phases of an op. */
enum { XT_PREFIX = 0, XT_PARALLEL = 1, XT_EPILOGUE = 2 };

/* Statuses of a result beyond the ABI's: the op was never called. */
#define XT_NOT_RUN (-1)

/* Heap error kinds (the Python side's HEAP_ERRORS). */
enum {
    XT_DOUBLE_FREE = 1,
    XT_LAYOUT_MISMATCH = 2,
    XT_REDZONE_WRITTEN = 3,
    XT_FREED_BLOCK_WRITTEN = 4,
    XT_LEAK = 5,
    XT_FOREIGN_FREE = 6,
    XT_OUT_OF_BLOCKS = 7,
};

typedef struct xt_impl {
    void (*set_hooks)(const xr_hooks *);
    const char *(*panic_message)(void);
    int (*ref_new)(size_t, size_t, uint8_t, xr_ref *);
    int (*clone)(xr_ref, xr_ref *);
    int (*drop)(xr_ref);
    int (*into_raw)(xr_ref, void **);
    int (*from_raw)(void *, xr_ref *);
    int (*clone_from_raw)(void *, xr_ref *);
    int (*strong_count)(xr_ref, size_t *);
    int (*eq)(xr_ref, xr_ref, int *);
    int (*deref)(xr_ref, void **);
} xt_impl;

typedef struct xt_op {
    int32_t phase;
    int32_t thread; /* 0 for the prefix and the epilogue, 1..n_threads in parallel */
    int32_t kind;
    int32_t a, b;   /* registers (immediates for XT_NEW); -1: none */
    int32_t out;    /* register written, -1: none */
} xt_op;

typedef struct xt_result {
    int32_t status; /* XR_OK, XR_ERR, XR_PANIC or XT_NOT_RUN */
    uint64_t value;
    int64_t inv, resp;
    char message[XT_MESSAGE];
} xt_result;

typedef struct xt_drop {
    uint64_t value;
    int32_t thread;
    int64_t pos;
} xt_drop;

typedef struct xt_heap_error {
    int32_t kind;
    int32_t thread;
    uint64_t ptr;
    uint64_t size, align;         /* the block's layout */
    uint64_t given_size, given_align; /* what dealloc was called with */
    int64_t pos;
} xt_heap_error;

typedef struct xt_report {
    uint64_t n_drops;
    xt_drop drops[XT_MAX_DROPS];
    uint64_t n_errors;
    xt_heap_error errors[XT_MAX_ERRORS];
    uint64_t allocations;
    uint64_t deallocations;
    int32_t panicked; /* some op returned XR_PANIC: the epilogue was not run */
} xt_report;

/* ---- the run's shared state ------------------------------------------------------------------- */

static int64_t clock_;
static _Thread_local int32_t current_thread;
static xt_report *report;

static int64_t tick(void) { return __atomic_fetch_add(&clock_, 1, __ATOMIC_SEQ_CST); }

/* ---- the checking heap ------------------------------------------------------------------------ */

enum { BLOCK_LIVE = 1, BLOCK_FREED = 2 };

typedef struct block {
    unsigned char *ptr;
    size_t size, align;
    int state;
    unsigned char *snapshot; /* the bytes at free time */
} block;

static block blocks[XT_MAX_BLOCKS];
static size_t n_blocks;
static pthread_mutex_t heap_lock = PTHREAD_MUTEX_INITIALIZER;

static void heap_error(int kind, const block *b, const void *ptr, size_t size, size_t align) {
    uint64_t i = __atomic_fetch_add(&report->n_errors, 1, __ATOMIC_SEQ_CST);
    if (i >= XT_MAX_ERRORS) return;
    xt_heap_error *e = &report->errors[i];
    e->kind = kind;
    e->thread = current_thread;
    e->ptr = (uint64_t)(uintptr_t)ptr;
    e->size = b ? b->size : 0;
    e->align = b ? b->align : 0;
    e->given_size = size;
    e->given_align = align;
    e->pos = tick();
}

static int redzone_intact(const block *b) {
    for (size_t i = 0; i < XT_REDZONE; i++)
        if (b->ptr[b->size + i] != XT_REDZONE_BYTE) return 0;
    return 1;
}

static void *heap_alloc(void *ctx, size_t size, size_t align) {
    (void)ctx;
    void *p = NULL;
    size_t a = align < sizeof(void *) ? sizeof(void *) : align;
    pthread_mutex_lock(&heap_lock);
    if (n_blocks == XT_MAX_BLOCKS) {
        heap_error(XT_OUT_OF_BLOCKS, NULL, NULL, size, align);
    } else if (posix_memalign(&p, a, size + XT_REDZONE) == 0) {
        block *b = &blocks[n_blocks++];
        b->ptr = p;
        b->size = size;
        b->align = align;
        b->state = BLOCK_LIVE;
        b->snapshot = NULL;
        memset(b->ptr + size, XT_REDZONE_BYTE, XT_REDZONE);
        __atomic_fetch_add(&report->allocations, 1, __ATOMIC_RELAXED);
    } else {
        p = NULL;
    }
    pthread_mutex_unlock(&heap_lock);
    return p;
}

static int heap_dealloc(void *ctx, void *ptr, size_t size, size_t align) {
    (void)ctx;
    int mine = 1;
    pthread_mutex_lock(&heap_lock);
    block *b = NULL;
    for (size_t i = 0; i < n_blocks; i++)
        if (blocks[i].ptr == ptr) b = &blocks[i];
    if (b == NULL) {
        /* Not this heap's: the ABI's "not mine" (a block from before the hooks were installed). */
        heap_error(XT_FOREIGN_FREE, NULL, ptr, size, align);
        mine = 0;
    } else if (b->state == BLOCK_FREED) {
        heap_error(XT_DOUBLE_FREE, b, ptr, size, align);
    } else {
        if (b->size != size || b->align != align) heap_error(XT_LAYOUT_MISMATCH, b, ptr, size, align);
        if (!redzone_intact(b)) heap_error(XT_REDZONE_WRITTEN, b, ptr, size, align);
        b->snapshot = malloc(b->size);
        if (b->snapshot != NULL) memcpy(b->snapshot, b->ptr, b->size);
        b->state = BLOCK_FREED; /* quarantined: the memory stays mapped and untouched until the end */
        __atomic_fetch_add(&report->deallocations, 1, __ATOMIC_RELAXED);
    }
    pthread_mutex_unlock(&heap_lock);
    return mine;
}

static void value_dropped(void *ctx, void *value) {
    (void)ctx;
    int64_t pos = tick();
    uint64_t i = __atomic_fetch_add(&report->n_drops, 1, __ATOMIC_SEQ_CST);
    if (i >= XT_MAX_DROPS) return;
    report->drops[i].value = (uint64_t)(uintptr_t)value;
    report->drops[i].thread = current_thread;
    report->drops[i].pos = pos;
}

/* At quiescence: leaks, writes to freed blocks, red zones; then every block goes back to libc. */
static void heap_finish(int check_leaks) {
    for (size_t i = 0; i < n_blocks; i++) {
        block *b = &blocks[i];
        if (b->state == BLOCK_LIVE && check_leaks) heap_error(XT_LEAK, b, b->ptr, b->size, b->align);
        if (b->state == BLOCK_FREED && b->snapshot != NULL && memcmp(b->snapshot, b->ptr, b->size) != 0)
            heap_error(XT_FREED_BLOCK_WRITTEN, b, b->ptr, b->size, b->align);
        if (!redzone_intact(b)) heap_error(XT_REDZONE_WRITTEN, b, b->ptr, b->size, b->align);
        free(b->snapshot);
        free(b->ptr);
    }
    n_blocks = 0;
}

/* ---- the interpreter ---------------------------------------------------------------------------- */

typedef struct worker {
    const xt_impl *impl;
    const xt_op *ops;
    size_t n_ops;
    uint64_t *regs;
    xt_result *results;
    int32_t thread;
    pthread_t handle;
} worker;

/* Pause instructions a waiting thread spins before it starts yielding (some hundreds of
 * microseconds: longer than starting the other threads takes, so they all leave the barrier
 * together, yet short enough not to starve the main thread on a machine with fewer free cores). */
#define SPIN_BEFORE_YIELD 5000u

/* After everyone is ready the main thread sets a start instant this far ahead; every thread spins
 * until then, so the threads that are on a core at that instant leave within nanoseconds. */
#define START_DELAY_NS 40000

static int ready;
static int go;
static int64_t start_ns;

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void wait_for_start(void) {
    int64_t start = __atomic_load_n(&start_ns, __ATOMIC_ACQUIRE);
    while (now_ns() < start) {
#if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
#endif
    }
}
static int panicked;

/* One call; returns its status. */
static int exec_op(const xt_impl *im, const xt_op *op, uint64_t *regs, xt_result *res) {
    uint64_t out = 0;
    int status = XR_OK;
    res->inv = tick();
    switch (op->kind) {
    case XT_NEW: {
        xr_ref r = 0;
        status = im->ref_new((size_t)op->a, (size_t)op->b, 0x5A, &r);
        out = r;
        break;
    }
    case XT_CLONE: {
        xr_ref r = 0;
        status = im->clone(regs[op->a], &r);
        out = r;
        break;
    }
    case XT_DROP:
        status = im->drop(regs[op->a]);
        break;
    case XT_STRONG_COUNT: {
        size_t n = 0;
        status = im->strong_count(regs[op->a], &n);
        out = n;
        break;
    }
    case XT_INTO_RAW: {
        void *p = NULL;
        status = im->into_raw(regs[op->a], &p);
        out = (uint64_t)(uintptr_t)p;
        break;
    }
    case XT_FROM_RAW: {
        xr_ref r = 0;
        status = im->from_raw((void *)(uintptr_t)regs[op->a], &r);
        out = r;
        break;
    }
    case XT_CLONE_FROM_RAW: {
        xr_ref r = 0;
        status = im->clone_from_raw((void *)(uintptr_t)regs[op->a], &r);
        out = r;
        break;
    }
    case XT_EQ: {
        int e = 0;
        status = im->eq(regs[op->a], regs[op->b], &e);
        out = (uint64_t)(int64_t)e;
        break;
    }
    case XT_DEREF: {
        void *v = NULL;
        status = im->deref(regs[op->a], &v);
        out = (uint64_t)(uintptr_t)v;
        break;
    }
    default:
        status = XT_NOT_RUN;
        break;
    }
    res->resp = tick();
    res->status = status;
    res->value = out;
    res->message[0] = '\0';
    if (op->out >= 0) regs[op->out] = out;
    if (status == XR_PANIC) {
        const char *m = im->panic_message();
        strncpy(res->message, m ? m : "(no message)", XT_MESSAGE - 1);
        res->message[XT_MESSAGE - 1] = '\0';
        __atomic_store_n(&panicked, 1, __ATOMIC_SEQ_CST);
    }
    return status;
}

/* Runs the ops of one phase and thread in order; a panic ends that thread's run. */
static void run_ops(const xt_impl *im, const xt_op *ops, size_t n, int32_t phase, int32_t thread,
                    uint64_t *regs, xt_result *results) {
    int stopped = 0;
    for (size_t i = 0; i < n; i++) {
        if (ops[i].phase != phase || ops[i].thread != thread) continue;
        if (stopped) continue;
        if (exec_op(im, &ops[i], regs, &results[i]) == XR_PANIC) stopped = 1;
    }
}

static void *worker_main(void *arg) {
    worker *w = arg;
    current_thread = w->thread;
    __atomic_fetch_add(&ready, 1, __ATOMIC_SEQ_CST);
    /* Spin (so the threads leave together), but yield once the spin is long: with more threads
     * than free cores a spinning thread would otherwise keep the main thread from saying go. */
    for (unsigned spins = 0; !__atomic_load_n(&go, __ATOMIC_ACQUIRE); spins++) {
        if (spins < SPIN_BEFORE_YIELD) {
#if defined(__x86_64__) || defined(__i386__)
            __builtin_ia32_pause();
#endif
        } else {
            sched_yield();
        }
    }
    wait_for_start();
    run_ops(w->impl, w->ops, w->n_ops, XT_PARALLEL, w->thread, w->regs, w->results);
    return NULL;
}

/* Runs the program: prefix, threads 1..n_threads together, epilogue (skipped after a panic).
 * Returns 0, or -1 when threads could not be started (nothing was called then). */
EXPORT int xt_run(const xt_impl *im, const xt_op *ops, size_t n_ops, int32_t n_threads, uint64_t *regs,
                  xt_result *results, xt_report *out) {
    if (n_threads < 0 || n_threads > XT_MAX_THREADS) return -1;
    memset(out, 0, sizeof *out);
    for (size_t i = 0; i < n_ops; i++) {
        results[i].status = XT_NOT_RUN;
        results[i].inv = results[i].resp = -1;
        results[i].value = 0;
        results[i].message[0] = '\0';
    }
    report = out;
    clock_ = 0;
    ready = 0;
    go = 0;
    panicked = 0;
    current_thread = 0;
    n_blocks = 0;
    xr_hooks hooks = {NULL, heap_alloc, heap_dealloc, value_dropped};
    im->set_hooks(&hooks);

    run_ops(im, ops, n_ops, XT_PREFIX, 0, regs, results);
    worker workers[XT_MAX_THREADS];
    int started = 0;
    int status = 0;
    if (!panicked) {
        /* Threads 2..n are workers; the main thread is thread 1 and says go itself, so at least
         * two threads leave the barrier at the same instant. */
        for (int32_t t = 1; t < n_threads; t++) {
            workers[started] = (worker){im, ops, n_ops, regs, results, t + 1, 0};
            if (pthread_create(&workers[started].handle, NULL, worker_main, &workers[started]) != 0) {
                status = -1;
                break;
            }
            started++;
        }
        while (__atomic_load_n(&ready, __ATOMIC_SEQ_CST) < started) sched_yield();
        current_thread = 1;
        __atomic_store_n(&start_ns, now_ns() + START_DELAY_NS, __ATOMIC_RELEASE);
        __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
        wait_for_start();
        if (status == 0 && n_threads > 0) run_ops(im, ops, n_ops, XT_PARALLEL, 1, regs, results);
        for (int t = 0; t < started; t++) pthread_join(workers[t].handle, NULL);
        current_thread = 0;
    }
    if (status == 0 && !panicked) run_ops(im, ops, n_ops, XT_EPILOGUE, 0, regs, results);
    out->panicked = panicked;
    /* Every block goes back before the hooks are uninstalled, as the ABI asks (no call of the
     * implementation comes in between). */
    heap_finish(status == 0 && !panicked);
    im->set_hooks(NULL);
    report = NULL;
    return status;
}

/* Sizes of the structures, so the Python side can check its ctypes layouts against them. */
EXPORT size_t xt_sizeof(int which) {
    switch (which) {
    case 0: return sizeof(xt_impl);
    case 1: return sizeof(xt_op);
    case 2: return sizeof(xt_result);
    case 3: return sizeof(xt_report);
    default: return 0;
    }
}

EXPORT int32_t xt_max_threads(void) { return XT_MAX_THREADS; }
