/*
 * driver.c: runs parallel programs against an implementation of externref_abi.h, natively, many
 * histories per call.
 *
 * The harness's parallel check needs threads that really run at once, and many histories a second:
 * a real race window is a few instructions wide. A ctypes callback into Python would take the GIL
 * back on every call and serialise the threads, so everything the implementation calls during a
 * run is here, in C:
 *
 *   - a checking heap (the xr_hooks alloc/dealloc): blocks from posix_memalign with a red zone
 *     behind them, a mutex-protected registry, freed blocks quarantined (never handed back during
 *     the history) with a snapshot of their bytes, so a double free, a dealloc with another layout,
 *     a red-zone overwrite, a write to a freed block and a leak at quiescence are all reported;
 *   - the value_dropped hook: a lock-free log of (value, thread, position);
 *   - the program's interpreter: a sequential prefix on the calling thread, then 1..XT_MAX_THREADS
 *     threads started together, then a sequential epilogue after they have all finished;
 *   - the cheap verdicts (xt_plan, computed by the Python side from the model): every call XR_OK,
 *     the heap clean, each result address the one its value has, the answers that no interleaving
 *     changes (eq, the exact final counts), each value dropped exactly once, inside a call that may
 *     be its last owner, and only once every other call changing its count had been invoked;
 *   - a signature of what the linearizability check reads of a history that passed those (the
 *     strong_count answers of the threads, which call dropped each value, and which calls of two
 *     threads were ordered in real time): histories with one signature get one verdict, so only
 *     the first history of each signature goes back to Python to be judged.
 *
 *        xt_run_batch(program, plan, batch)          workers: created once per batch, pinned
 *        ┌─▶ prefix (main) ─▶ start instant S ─────▶ spin on gen ─▶ wait S + offset[t]
 *        │   main is thread 1: wait S + offset[1]         │              │
 *        │   thread 1's ops           ...             thread t's ops ─┘ done++
 *        │   wait for done, epilogue, heap check, cheap verdict, signature
 *        └── next history (schedule h % schedules, fresh jitter) until the budget or a failure
 *
 * Each call's invocation and response are stamped from one global sequentially consistent counter,
 * so "a responded before b was invoked" is exactly `a.resp < b.inv`, and a drop logged by a thread
 * between an op's two stamps happened inside that op. Ops name registers: each op writes at most
 * one register no other op writes, and reads registers written before it on its own thread or in
 * the prefix, so the registers themselves are free of data races.
 *
 * The implementation's functions come in as addresses (xt_impl), so the driver links against
 * nothing but libc and pthreads. xt_run_batch is not reentrant: one batch at a time per process.
 */
#define _GNU_SOURCE /* sched_yield, posix_memalign, CPU affinity */

#include "externref_abi.h"

#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
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

/* ---- starting together, with perturbed timing ------------------------------------------------------ */

/* Pause instructions a waiting thread spins before it starts yielding: with a core per thread,
 * longer than a history takes (a worker on its own core never sleeps between histories); with
 * more threads than cores, a few only, since the thread waited for needs the core. */
#define SPIN_BEFORE_YIELD 20000u
#define SPIN_BEFORE_YIELD_CROWDED 50u
static unsigned spin_before_yield = SPIN_BEFORE_YIELD;

/* The main thread sets each history's start instant this far ahead: long enough for a spinning
 * worker to see it (a cache-line transfer, well under a microsecond), so the threads that are on a
 * core at that instant leave within nanoseconds of each other. */
#define START_LEAD_NS 1500

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* A few nanoseconds per iteration: the fine perturbation after the start instant. */
static void spin(uint32_t n) {
    for (volatile uint32_t i = 0; i < n; i++) {
    }
}

static uint64_t rng_next(uint64_t *s) { /* splitmix64 */
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static uint32_t below(uint64_t *s, uint32_t n) { return n == 0 ? 0 : (uint32_t)(rng_next(s) % (n + 1u)); }

static uint64_t gen;     /* bumped by the main thread to start a history; XT_QUIT to end */
static uint64_t acks;    /* workers that saw this history's gen: they are on a core, spinning */
static uint64_t go;      /* set to gen once every worker acked and start_at is set */
static uint64_t done;    /* workers that finished this history's ops */
static int64_t start_at; /* this history's start instant */
static uint32_t offset[XT_MAX_THREADS + 1]; /* spins after the start instant, per thread */
#define XT_QUIT UINT64_MAX

typedef struct worker {
    const xt_impl *impl;
    const xt_op *ops;
    size_t n_ops;
    uint64_t *regs;
    xt_result *results;
    int32_t thread;
    int cpu; /* -1: not pinned */
    pthread_t handle;
} worker;

static void pin_to(pthread_t t, int cpu) {
    if (cpu < 0) return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu, &set);
    pthread_setaffinity_np(t, sizeof set, &set);
}

/* Waits for the counter to leave `seen`: spins first, then yields (see SPIN_BEFORE_YIELD). */
static uint64_t wait_change(const uint64_t *counter, uint64_t seen) {
    uint64_t v;
    for (unsigned spins = 0; (v = __atomic_load_n(counter, __ATOMIC_ACQUIRE)) == seen; spins++) {
        if (spins < spin_before_yield)
            cpu_relax();
        else
            sched_yield();
    }
    return v;
}

/* Waits for the start instant, then spins the thread's offset. Before the instant the thread
 * touches what its first calls read and write that another core wrote last (its offset, its
 * operands' registers, its result slots): otherwise a worker would leave the instant together
 * with the main thread and still reach its first call some cache misses (hundreds of ns) later. */
static void start_own_ops(int32_t thread, const xt_op *ops, size_t n_ops, const uint64_t *regs,
                          xt_result *results) {
    int64_t start = __atomic_load_n(&start_at, __ATOMIC_ACQUIRE);
    uint32_t spins = offset[thread];
    uint64_t sink = 0;
    for (size_t i = 0; i < n_ops; i++) {
        if (ops[i].phase != XT_PARALLEL || ops[i].thread != thread) continue;
        if (ops[i].a >= 0 && ops[i].kind != XT_NEW) sink += regs[ops[i].a];
        __atomic_store_n(&results[i].inv, -1, __ATOMIC_RELAXED);
    }
    __asm__ volatile("" : : "r"(sink));
    while (now_ns() < start) cpu_relax();
    spin(spins);
}

static void *worker_main(void *arg) {
    worker *w = arg;
    current_thread = w->thread;
    pin_to(pthread_self(), w->cpu);
    uint64_t seen = 0;
    for (;;) {
        seen = wait_change(&gen, seen);
        if (seen == XT_QUIT) break;
        __atomic_fetch_add(&acks, 1, __ATOMIC_ACQ_REL);
        wait_change(&go, seen - 1);
        start_own_ops(w->thread, w->ops, w->n_ops, w->regs, w->results);
        run_ops(w->impl, w->ops, w->n_ops, XT_PARALLEL, w->thread, w->regs, w->results);
        __atomic_fetch_add(&done, 1, __ATOMIC_RELEASE);
    }
    return NULL;
}

/* ---- the cheap verdicts and the signature ----------------------------------------------------------- */

/* What the model says of a program, whatever the interleaving (the Python side's `Plan`). Arrays
 * indexed by op have n_ops entries, in the program's order (prefix, thread 1.., epilogue). */
typedef struct xt_plan {
    int32_t n_values;
    const int32_t *new_op;   /* per value: the prefix New that made it */
    const int32_t *deref_op; /* per value: the prefix Deref that gave its address */
    const int32_t *value;    /* per op: the value its first operand names (New: the one it makes) */
    const int32_t *addr;     /* per op: XT_ADDR_* the result must be */
    const int32_t *counts;   /* per op: the value whose count it changes (Clone, CloneFromRaw, Drop), -1 */
    const int32_t *may_drop; /* per op: the value whose destructor it may run, -1 */
    const int32_t *expect_set; /* per op: 1 if every interleaving gives the result `expect` */
    const uint64_t *expect;
} xt_plan;

enum { XT_ADDR_NONE = 0, XT_ADDR_REF = 1, XT_ADDR_VALUE = 2 };

/* A signature is at most this many words: the strong_count answers of the threads (one word per
 * parallel op), the dropper of each value, and the real-time order of the parallel ops as bits. */
#define XT_SIG_OPS 64
#define XT_SIG_WORDS (XT_SIG_OPS + 64 + XT_SIG_OPS * XT_SIG_OPS / 64 + 1)

typedef struct xt_batch {
    /* in */
    uint64_t histories;       /* at most this many */
    uint32_t schedules;       /* history h runs start schedule h % schedules (at least 1) */
    uint32_t spread_spins;    /* a schedule's offset of each thread: 0..spread_spins spins */
    uint32_t jitter_spins;    /* plus, per history and thread, 0..jitter_spins spins */
    uint32_t pin;             /* pin the threads to distinct cores where there are enough */
    uint64_t seed;            /* of the schedules and the jitter */
    int32_t stop_at_failure;  /* end the batch at the first history that fails a cheap verdict */
    int32_t capacity;         /* signature slots; a new signature with none free ends the batch */
    int32_t n_known;          /* slots filled by the caller: signatures already judged (passed) */
    int64_t max_ns;           /* end the batch once it has run this long (0: no limit) */
    /* out */
    int32_t n_sigs;           /* slots filled now (known ones included) */
    int32_t pinned;           /* the threads ran pinned to distinct cores */
    int32_t failed;           /* the kept history failed a cheap verdict */
    uint64_t run;             /* histories run */
    uint64_t overlapped;      /* histories in which calls of two threads overlapped in time */
    uint64_t cheap_failures;  /* histories that failed a cheap verdict */
    int64_t failing_index;    /* the kept failing history's index, -1 */
    char why[XT_MESSAGE];     /* the first cheap verdict the kept history failed */
} xt_batch;

/* Where the batch writes each signature slot's words, count and first history. */
typedef struct xt_sigs {
    uint64_t *words;          /* capacity x XT_SIG_WORDS */
    uint32_t *len;            /* words used */
    uint64_t *count;          /* histories with this signature in this batch */
    int64_t *first;           /* the first one's index (-1 for known slots not seen) */
    xt_result *results;       /* capacity x n_ops: the first history's results (new slots only) */
    xt_drop *drops;           /* capacity x n_values: its drops */
} xt_sigs;

static int fail(char *why, const char *fmt, long a, long b) {
    snprintf(why, XT_MESSAGE, fmt, a, b);
    return 0;
}

/* The cheap verdicts of one finished history: 1 if they hold, else 0 and `why`. */
static int judge(const xt_plan *pl, const xt_op *ops, size_t n_ops, const xt_result *res,
                 const xt_report *rep, char *why) {
    for (size_t i = 0; i < n_ops; i++)
        if (res[i].status != XR_OK) return fail(why, "op %ld returned status %ld", (long)i, res[i].status);
    int32_t nv = pl->n_values;
    for (size_t i = 0; i < n_ops; i++) {
        int32_t v = pl->value[i];
        if (pl->addr[i] == XT_ADDR_REF && res[i].value != res[pl->new_op[v]].value)
            return fail(why, "op %ld gave another address than value %ld's ref", (long)i, v);
        if (pl->addr[i] == XT_ADDR_VALUE && res[i].value != res[pl->deref_op[v]].value)
            return fail(why, "op %ld gave another address than value %ld's", (long)i, v);
        if (pl->expect_set[i] && res[i].value != pl->expect[i])
            return fail(why, "op %ld gave %ld, which no interleaving gives", (long)i, (long)res[i].value);
    }
    if (rep->n_errors > 0) {
        static const char *const kinds[] = {"", "double free", "dealloc with another layout",
                                            "red zone written", "freed block written", "leak",
                                            "foreign free", "out of blocks"};
        int32_t k = rep->errors[0].kind;
        snprintf(why, XT_MESSAGE, "checking heap: %s (%ld errors)", k >= 1 && k <= 7 ? kinds[k] : "?",
                 (long)rep->n_errors);
        return 0;
    }
    if (rep->n_drops != (uint64_t)nv)
        return fail(why, "%ld drops of %ld values", (long)rep->n_drops, nv);
    uint64_t dropped = 0;
    for (uint64_t k = 0; k < rep->n_drops; k++) {
        const xt_drop *d = &rep->drops[k];
        int32_t v = -1;
        for (int32_t u = 0; u < nv; u++)
            if (res[pl->deref_op[u]].value == d->value) v = u;
        if (v < 0) return fail(why, "drop %ld of a value the program never made", (long)k, 0);
        if (dropped & (1ull << v)) return fail(why, "value %ld dropped twice", v, 0);
        dropped |= 1ull << v;
        long in = -1;
        for (size_t i = 0; i < n_ops && in < 0; i++)
            if (ops[i].thread == d->thread && res[i].inv < d->pos && d->pos < res[i].resp) in = (long)i;
        if (in < 0) return fail(why, "value %ld dropped outside any call", v, 0);
        if (pl->may_drop[in] != v) return fail(why, "value %ld dropped by op %ld, not its last owner", v, in);
        if (ops[in].phase != XT_PARALLEL) continue;
        for (size_t j = 0; j < n_ops; j++)
            if ((long)j != in && ops[j].phase == XT_PARALLEL && pl->counts[j] == v &&
                !(res[j].inv < res[in].resp))
                return fail(why, "value %ld dropped by op %ld before op %ld changed its count", v, in);
    }
    return 1;
}

/* The signature of a history that passed the cheap verdicts (see the file's comment); returns its
 * length in words and whether calls of two threads overlapped. */
static uint32_t signature(const xt_plan *pl, const xt_op *ops, size_t n_ops, const xt_result *res,
                          const xt_report *rep, uint64_t index, uint64_t *w, int *overlap) {
    uint32_t n = 0;
    size_t par[XT_SIG_OPS];
    size_t np = 0;
    int big = 0;
    for (size_t i = 0; i < n_ops; i++) {
        if (ops[i].phase != XT_PARALLEL) continue;
        if (np == XT_SIG_OPS) {
            big = 1;
            break;
        }
        par[np++] = i;
        w[n++] = (pl->addr[i] == XT_ADDR_NONE && !pl->expect_set[i]) ? res[i].value : 0;
    }
    for (int32_t v = 0; v < pl->n_values && v < 64; v++) {
        uint64_t at = UINT64_MAX;
        for (uint64_t k = 0; k < rep->n_drops; k++)
            if (rep->drops[k].value == res[pl->deref_op[v]].value)
                for (size_t i = 0; i < n_ops; i++)
                    if (ops[i].thread == rep->drops[k].thread && res[i].inv < rep->drops[k].pos &&
                        rep->drops[k].pos < res[i].resp)
                        at = i;
        w[n++] = at;
    }
    *overlap = 0;
    uint32_t bits = n;
    for (size_t a = 0; a < np; a++)
        for (size_t b = 0; b < np; b++) {
            size_t bit = a * np + b;
            if (bit % 64 == 0) w[n++] = 0;
            const xt_result *x = &res[par[a]], *y = &res[par[b]];
            if (ops[par[a]].thread == ops[par[b]].thread) continue;
            if (x->resp < y->inv) w[bits + bit / 64] |= 1ull << (bit % 64);
            if (!(x->resp < y->inv) && !(y->resp < x->inv)) *overlap = 1;
        }
    /* Too many threads' ops to sign: the history is its own signature (judged by itself). */
    if (big) w[n++] = index ^ 0x8000000000000000ull;
    return n;
}

static uint64_t hash_words(const uint64_t *w, uint32_t n) {
    uint64_t h = 1469598103934665603ull;
    for (uint32_t i = 0; i < n; i++) h = (h ^ w[i]) * 1099511628211ull;
    return h;
}

/* ---- the batch ----------------------------------------------------------------------------------- */

static xt_report scratch; /* the current history's report */

/* Runs up to batch->histories histories of one program. With plan == NULL no verdict is taken
 * and every history is kept in `fail_results`/`out` (the caller runs one). Returns 0, or -1 when
 * threads could not be started (nothing was run then). */
EXPORT int xt_run_batch(const xt_impl *im, const xt_op *ops, size_t n_ops, int32_t n_threads,
                        uint64_t *regs, size_t n_regs, const xt_plan *plan, xt_batch *batch,
                        xt_sigs *sigs, xt_result *fail_results, xt_report *out) {
    if (n_threads < 1 || n_threads > XT_MAX_THREADS) return -1;
    xt_result *res = calloc(n_ops ? n_ops : 1, sizeof *res);
    if (res == NULL) return -1;
    batch->run = batch->overlapped = batch->cheap_failures = 0;
    batch->failing_index = -1;
    batch->failed = 0;
    batch->why[0] = '\0';
    batch->n_sigs = batch->n_known;
    for (int32_t s = 0; s < batch->n_known; s++) {
        sigs->count[s] = 0;
        sigs->first[s] = -1;
    }
    memset(out, 0, sizeof *out);
    report = &scratch;
    uint32_t schedules = batch->schedules ? batch->schedules : 1;
    uint32_t table[XT_MAX_THREADS + 1];
    uint64_t rng = batch->seed;
    uint32_t *sched = calloc((size_t)schedules * (XT_MAX_THREADS + 1), sizeof *sched);
    if (sched == NULL) {
        free(res);
        return -1;
    }
    for (uint32_t s = 1; s < schedules; s++) /* schedule 0 starts every thread at the instant */
        for (int32_t t = 1; t <= n_threads; t++) sched[s * (XT_MAX_THREADS + 1) + t] = below(&rng, batch->spread_spins);

    /* Pinning: thread t to the t-th allowed CPU, when there is one for each thread. */
    cpu_set_t allowed, saved;
    int cpus[XT_MAX_THREADS + 1];
    int n_cpus = 0;
    pthread_t self = pthread_self();
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0) {
        CPU_ZERO(&allowed);
        CPU_SET(0, &allowed);
    }
    for (int c = 0; c < CPU_SETSIZE && n_cpus < n_threads; c++)
        if (CPU_ISSET(c, &allowed)) cpus[n_cpus++] = c;
    int crowded = n_cpus < n_threads;
    int pinned = batch->pin && n_threads > 1 && !crowded &&
                 pthread_getaffinity_np(self, sizeof saved, &saved) == 0;
    batch->pinned = pinned;
    spin_before_yield = crowded ? SPIN_BEFORE_YIELD_CROWDED : SPIN_BEFORE_YIELD;
    if (pinned) pin_to(self, cpus[0]);

    gen = go = acks = done = 0;
    worker workers[XT_MAX_THREADS];
    int started = 0;
    int status = 0;
    for (int32_t t = 2; t <= n_threads; t++) {
        workers[started] = (worker){im, ops, n_ops, regs, res, t, pinned ? cpus[t - 1] : -1, 0};
        if (pthread_create(&workers[started].handle, NULL, worker_main, &workers[started]) != 0) {
            status = -1;
            break;
        }
        started++;
    }
    xr_hooks hooks = {NULL, heap_alloc, heap_dealloc, value_dropped};
    uint64_t words[XT_SIG_WORDS];
    char why[XT_MESSAGE];
    int64_t until = batch->max_ns > 0 ? now_ns() + batch->max_ns : INT64_MAX;
    for (uint64_t h = 0; status == 0 && h < batch->histories && (h == 0 || now_ns() < until); h++) {
        memset(regs, 0, n_regs * sizeof *regs);
        for (size_t i = 0; i < n_ops; i++) {
            res[i].status = XT_NOT_RUN;
            res[i].inv = res[i].resp = -1;
            res[i].value = 0;
            res[i].message[0] = '\0';
        }
        scratch.n_drops = scratch.n_errors = scratch.allocations = scratch.deallocations = 0;
        scratch.panicked = 0;
        clock_ = 0;
        panicked = 0;
        current_thread = 0;
        n_blocks = 0;
        im->set_hooks(&hooks);
        run_ops(im, ops, n_ops, XT_PREFIX, 0, regs, res);
        if (!panicked) {
            const uint32_t *base = &sched[(h % schedules) * (XT_MAX_THREADS + 1)];
            for (int32_t t = 1; t <= n_threads; t++) table[t] = base[t] + below(&rng, batch->jitter_spins);
            memcpy(offset, table, sizeof offset);
            __atomic_store_n(&done, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&acks, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&gen, h + 1, __ATOMIC_RELEASE);
            /* The start instant is set only once every worker is seen spinning (on a core): on a
             * loaded machine a worker that was descheduled would otherwise start late, alone. */
            for (unsigned spins = 0; __atomic_load_n(&acks, __ATOMIC_ACQUIRE) < (uint64_t)started; spins++) {
                if (spins < spin_before_yield)
                    cpu_relax();
                else
                    sched_yield();
            }
            __atomic_store_n(&start_at, now_ns() + START_LEAD_NS, __ATOMIC_RELEASE);
            __atomic_store_n(&go, h + 1, __ATOMIC_RELEASE);
            current_thread = 1;
            start_own_ops(1, ops, n_ops, regs, res);
            run_ops(im, ops, n_ops, XT_PARALLEL, 1, regs, res);
            current_thread = 0;
            for (unsigned spins = 0; __atomic_load_n(&done, __ATOMIC_ACQUIRE) < (uint64_t)started; spins++) {
                if (spins < spin_before_yield)
                    cpu_relax();
                else
                    sched_yield();
            }
        }
        if (!panicked) run_ops(im, ops, n_ops, XT_EPILOGUE, 0, regs, res);
        scratch.panicked = panicked;
        /* Every block goes back before the hooks are uninstalled, as the ABI asks. */
        heap_finish(!panicked);
        im->set_hooks(NULL);
        batch->run = h + 1;

        int keep = 0;
        if (plan == NULL) {
            keep = 1;
        } else if (!judge(plan, ops, n_ops, res, &scratch, why)) {
            batch->cheap_failures++;
            if (batch->failing_index < 0) {
                keep = 1;
                batch->failed = 1;
                memcpy(batch->why, why, XT_MESSAGE);
            }
        } else {
            int overlap = 0;
            uint32_t n = signature(plan, ops, n_ops, res, &scratch, h, words, &overlap);
            int32_t slot = -1;
            uint64_t hash = hash_words(words, n);
            for (int32_t s = 0; s < batch->n_sigs && slot < 0; s++)
                if (sigs->len[s] == n && hash_words(&sigs->words[(size_t)s * XT_SIG_WORDS], n) == hash &&
                    memcmp(&sigs->words[(size_t)s * XT_SIG_WORDS], words, n * sizeof *words) == 0)
                    slot = s;
            if (slot < 0) {
                if (batch->n_sigs == batch->capacity) {
                    batch->run = h; /* not counted: a later batch runs it again */
                    break;
                }
                slot = batch->n_sigs++;
                memcpy(&sigs->words[(size_t)slot * XT_SIG_WORDS], words, n * sizeof *words);
                sigs->len[slot] = n;
                sigs->count[slot] = 0;
                sigs->first[slot] = -1;
            }
            batch->overlapped += overlap;
            if (sigs->first[slot] < 0) {
                sigs->first[slot] = (int64_t)h;
                if (slot >= batch->n_known) {
                    memcpy(&sigs->results[(size_t)slot * n_ops], res, n_ops * sizeof *res);
                    for (int32_t v = 0; v < plan->n_values; v++)
                        sigs->drops[(size_t)slot * plan->n_values + v] = scratch.drops[v];
                }
            }
            sigs->count[slot]++;
        }
        if (keep) {
            batch->failing_index = (int64_t)h;
            memcpy(fail_results, res, n_ops * sizeof *res);
            memcpy(out, &scratch, sizeof *out);
            if (plan == NULL || batch->stop_at_failure) break;
        }
    }
    __atomic_store_n(&gen, XT_QUIT, __ATOMIC_RELEASE);
    for (int t = 0; t < started; t++) pthread_join(workers[t].handle, NULL);
    if (pinned) pthread_setaffinity_np(self, sizeof saved, &saved);
    current_thread = 0;
    report = NULL;
    free(sched);
    free(res);
    return status;
}

/* Sizes of the structures, so the Python side can check its ctypes layouts against them. */
EXPORT size_t xt_sizeof(int which) {
    switch (which) {
    case 0: return sizeof(xt_impl);
    case 1: return sizeof(xt_op);
    case 2: return sizeof(xt_result);
    case 3: return sizeof(xt_report);
    case 4: return sizeof(xt_plan);
    case 5: return sizeof(xt_batch);
    case 6: return sizeof(xt_sigs);
    default: return 0;
    }
}

EXPORT int32_t xt_max_threads(void) { return XT_MAX_THREADS; }

EXPORT int32_t xt_signature_words(void) { return XT_SIG_WORDS; }
