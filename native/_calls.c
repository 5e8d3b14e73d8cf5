/* The hot calls of `native.backend.NativeRuntime` into a library under test, without ctypes.
 *
 *     NativeRuntime ──Calls.ref_clone(r)──▶ xr_ref_clone(r, &out) ──▶ (status, out)
 *
 * A step of the lockstep makes two or three calls into the library (`xr_table_stack_canary` at
 * nearly every one). Through ctypes each costs about a microsecond (its arguments converted by
 * their `argtypes`, an out-parameter cell zeroed and read back); here it is a method call of a
 * C object that holds the library's function pointers, typed as `externref_abi.h` declares them.
 * `setup.py` builds it (`compiled.C_MODULES`); without it `native.backend` makes the same calls
 * through ctypes (`CtypesCalls`), with the same answers.
 *
 * What both keep (relied on by `NativeRuntime`):
 * - An out-parameter starts at 0: a library that answers without writing it is read as 0, never
 *   as an earlier call's answer.
 * - The GIL is released during the call, as ctypes releases it: the harness's hooks (ctypes
 *   callbacks) take it back, from whichever thread the library calls them.
 * - Integer arguments are taken modulo 2**64, as ctypes converts them for unsigned and pointer
 *   types; an `int` argument is truncated to C `int` as ctypes truncates it.
 * - A function the object was not given (absent: not exported, or left to ctypes) raises
 *   `RuntimeError` and calls nothing; `NativeRuntime` never calls one of those.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#include "externref_abi.h"

typedef struct {
    PyObject_HEAD
    int (*ref_new)(size_t, size_t, uint8_t, xr_ref *);
    int (*ref_clone)(xr_ref, xr_ref *);
    int (*ref_drop)(xr_ref);
    int (*ref_as_raw)(xr_ref, void **);
    int (*ref_into_raw)(xr_ref, void **);
    int (*ref_from_raw)(void *, xr_ref *);
    int (*ref_clone_from_raw)(void *, xr_ref *);
    int (*ref_strong_count)(xr_ref, size_t *);
    int (*ref_eq)(xr_ref, xr_ref, int *);
    int (*ref_hash)(xr_ref, uint64_t *);
    int (*ref_cmp)(xr_ref, xr_ref, int *);
    int (*ref_deref)(xr_ref, void **);
    int (*table_drop)(xr_table *);
    int (*table_bump_capacity_remaining)(xr_table *, size_t *);
    int (*table_try_insert)(xr_table *, xr_ref);
    int (*table_insert_with_gc)(xr_table *, xr_ref, const xr_stack *);
    int (*table_insert_without_gc)(xr_table *, xr_ref);
    int (*table_stack_canary)(xr_table *, int *, uintptr_t *);
    int (*table_set_stack_canary)(xr_table *, int, uintptr_t);
    int (*table_set_gc_okay)(xr_table *, int, int *);
    int (*gc)(const xr_stack *, xr_table *);
    int (*table_enter_wasm)(xr_table *, uintptr_t);
    int (*table_leave_wasm)(xr_table *);
    int (*table_num_filled_in_bump_chunk)(xr_table *, size_t *);
} Calls;

/* The fields above by the library's symbol names, in one table: `Calls(addresses)` fills each
 * from `addresses[name]`. */
#define FIELD(name, field) {name, offsetof(Calls, field)}
static const struct {
    const char *symbol;
    size_t offset;
} SYMBOLS[] = {
    FIELD("xr_ref_new", ref_new),
    FIELD("xr_ref_clone", ref_clone),
    FIELD("xr_ref_drop", ref_drop),
    FIELD("xr_ref_as_raw", ref_as_raw),
    FIELD("xr_ref_into_raw", ref_into_raw),
    FIELD("xr_ref_from_raw", ref_from_raw),
    FIELD("xr_ref_clone_from_raw", ref_clone_from_raw),
    FIELD("xr_ref_strong_count", ref_strong_count),
    FIELD("xr_ref_eq", ref_eq),
    FIELD("xr_ref_hash", ref_hash),
    FIELD("xr_ref_cmp", ref_cmp),
    FIELD("xr_ref_deref", ref_deref),
    FIELD("xr_table_drop", table_drop),
    FIELD("xr_table_bump_capacity_remaining", table_bump_capacity_remaining),
    FIELD("xr_table_try_insert", table_try_insert),
    FIELD("xr_table_insert_with_gc", table_insert_with_gc),
    FIELD("xr_table_insert_without_gc", table_insert_without_gc),
    FIELD("xr_table_stack_canary", table_stack_canary),
    FIELD("xr_table_set_stack_canary", table_set_stack_canary),
    FIELD("xr_table_set_gc_okay", table_set_gc_okay),
    FIELD("xr_gc", gc),
    FIELD("xr_table_enter_wasm", table_enter_wasm),
    FIELD("xr_table_leave_wasm", table_leave_wasm),
    FIELD("xr_table_num_filled_in_bump_chunk", table_num_filled_in_bump_chunk),
};
#define N_SYMBOLS (sizeof(SYMBOLS) / sizeof(SYMBOLS[0]))

static int
Calls_init(Calls *self, PyObject *args, PyObject *kwds)
{
    PyObject *addresses;
    static char *kwlist[] = {"addresses", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!:Calls", kwlist, &PyDict_Type, &addresses)) {
        return -1;
    }
    for (size_t i = 0; i < N_SYMBOLS; i++) {
        void **slot = (void **)((char *)self + SYMBOLS[i].offset);
        *slot = NULL;
        PyObject *address = PyDict_GetItemString(addresses, SYMBOLS[i].symbol); /* borrowed */
        if (address == NULL) {
            continue;
        }
        unsigned long long value = PyLong_AsUnsignedLongLong(address);
        if (value == (unsigned long long)-1 && PyErr_Occurred()) {
            return -1;
        }
        *slot = (void *)(uintptr_t)value;
    }
    return 0;
}

/* Argument i of a call as a 64-bit word (modulo 2**64, as ctypes converts it), or -1 with an
 * error set (only for a non-integer). */
static int
word_arg(PyObject *const *args, Py_ssize_t i, uint64_t *out)
{
    unsigned long long value = PyLong_AsUnsignedLongLongMask(args[i]);
    if (value == (unsigned long long)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (uint64_t)value;
    return 0;
}

static int
arity(const char *name, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs != expected) {
        PyErr_Format(PyExc_TypeError, "%s takes %zd arguments, not %zd", name, expected, nargs);
        return -1;
    }
    return 0;
}

static int
present(const void *function, const char *name)
{
    if (function == NULL) {
        PyErr_Format(PyExc_RuntimeError, "%s was not given to these calls", name);
        return -1;
    }
    return 0;
}

/* The prologue of every method: its arity, its function, and its arguments as words a0..a2. */
#define ARGS(name, field, n)                                                                      \
    uint64_t a[3] = {0, 0, 0};                                                                    \
    __typeof__(self->field) fn = self->field; /* read once: the call runs without the GIL */    \
    if (arity(name, nargs, n) < 0 || present((const void *)fn, name) < 0) {                      \
        return NULL;                                                                              \
    }                                                                                             \
    for (Py_ssize_t i = 0; i < n; i++) {                                                          \
        if (word_arg(args, i, &a[i]) < 0) {                                                       \
            return NULL;                                                                          \
        }                                                                                         \
    }

#define CALL(expr)                                                                                \
    int status;                                                                                   \
    Py_BEGIN_ALLOW_THREADS status = (expr);                                                       \
    Py_END_ALLOW_THREADS

/* status only */
#define STATUS_METHOD(method, field, symbol, n, expr)                                             \
    static PyObject *method(Calls *self, PyObject *const *args, Py_ssize_t nargs)                 \
    {                                                                                             \
        ARGS(symbol, field, n)                                                                    \
        CALL(expr)                                                                                \
        return PyLong_FromLong(status);                                                           \
    }

/* (status, the out-parameter as an unsigned word) */
#define OUT_METHOD(method, field, symbol, n, type, expr)                                          \
    static PyObject *method(Calls *self, PyObject *const *args, Py_ssize_t nargs)                 \
    {                                                                                             \
        ARGS(symbol, field, n)                                                                    \
        type out = 0;                                                                             \
        CALL(expr)                                                                                \
        return Py_BuildValue("(iK)", status, (unsigned long long)(uintptr_t)out);                 \
    }

/* (status, the out-parameter as a C int) */
#define INT_OUT_METHOD(method, field, symbol, n, expr)                                            \
    static PyObject *method(Calls *self, PyObject *const *args, Py_ssize_t nargs)                 \
    {                                                                                             \
        ARGS(symbol, field, n)                                                                    \
        int out = 0;                                                                              \
        CALL(expr)                                                                                \
        return Py_BuildValue("(ii)", status, out);                                                \
    }

#define REF(i) ((xr_ref)a[i])
#define TABLE(i) ((xr_table *)(uintptr_t)a[i])
#define PTR(i) ((void *)(uintptr_t)a[i])
#define STACK(i) ((const xr_stack *)(uintptr_t)a[i])

OUT_METHOD(ref_new, ref_new, "xr_ref_new", 3, xr_ref,
           fn((size_t)a[0], (size_t)a[1], (uint8_t)a[2], &out))
OUT_METHOD(ref_clone, ref_clone, "xr_ref_clone", 1, xr_ref, fn(REF(0), &out))
STATUS_METHOD(ref_drop, ref_drop, "xr_ref_drop", 1, fn(REF(0)))
OUT_METHOD(ref_as_raw, ref_as_raw, "xr_ref_as_raw", 1, void *, fn(REF(0), &out))
OUT_METHOD(ref_into_raw, ref_into_raw, "xr_ref_into_raw", 1, void *,
           fn(REF(0), &out))
OUT_METHOD(ref_from_raw, ref_from_raw, "xr_ref_from_raw", 1, xr_ref,
           fn(PTR(0), &out))
OUT_METHOD(ref_clone_from_raw, ref_clone_from_raw, "xr_ref_clone_from_raw", 1, xr_ref,
           fn(PTR(0), &out))
OUT_METHOD(ref_strong_count, ref_strong_count, "xr_ref_strong_count", 1, size_t,
           fn(REF(0), &out))
INT_OUT_METHOD(ref_eq, ref_eq, "xr_ref_eq", 2, fn(REF(0), REF(1), &out))
OUT_METHOD(ref_hash, ref_hash, "xr_ref_hash", 1, uint64_t, fn(REF(0), &out))
INT_OUT_METHOD(ref_cmp, ref_cmp, "xr_ref_cmp", 2, fn(REF(0), REF(1), &out))
OUT_METHOD(ref_deref, ref_deref, "xr_ref_deref", 1, void *, fn(REF(0), &out))
STATUS_METHOD(table_drop, table_drop, "xr_table_drop", 1, fn(TABLE(0)))
OUT_METHOD(table_bump_capacity_remaining, table_bump_capacity_remaining,
           "xr_table_bump_capacity_remaining", 1, size_t,
           fn(TABLE(0), &out))
STATUS_METHOD(table_try_insert, table_try_insert, "xr_table_try_insert", 2,
              fn(TABLE(0), REF(1)))
STATUS_METHOD(table_insert_with_gc, table_insert_with_gc, "xr_table_insert_with_gc", 3,
              fn(TABLE(0), REF(1), STACK(2)))
STATUS_METHOD(table_insert_without_gc, table_insert_without_gc, "xr_table_insert_without_gc", 2,
              fn(TABLE(0), REF(1)))
STATUS_METHOD(table_set_stack_canary, table_set_stack_canary, "xr_table_set_stack_canary", 3,
              fn(TABLE(0), (int)a[1], (uintptr_t)a[2]))
INT_OUT_METHOD(table_set_gc_okay, table_set_gc_okay, "xr_table_set_gc_okay", 2,
               fn(TABLE(0), (int)a[1], &out))
STATUS_METHOD(gc, gc, "xr_gc", 2, fn(STACK(0), TABLE(1)))
STATUS_METHOD(table_enter_wasm, table_enter_wasm, "xr_table_enter_wasm", 2,
              fn(TABLE(0), (uintptr_t)a[1]))
STATUS_METHOD(table_leave_wasm, table_leave_wasm, "xr_table_leave_wasm", 1,
              fn(TABLE(0)))
OUT_METHOD(table_num_filled_in_bump_chunk, table_num_filled_in_bump_chunk,
           "xr_table_num_filled_in_bump_chunk", 1, size_t,
           fn(TABLE(0), &out))

/* (status, is_some, canary): the one call with two out-parameters. */
static PyObject *
table_stack_canary(Calls *self, PyObject *const *args, Py_ssize_t nargs)
{
    ARGS("xr_table_stack_canary", table_stack_canary, 1)
    int is_some = 0;
    uintptr_t canary = 0;
    CALL(fn(TABLE(0), &is_some, &canary))
    return Py_BuildValue("(iiK)", status, is_some, (unsigned long long)canary);
}

#define METHOD(name) {#name, (PyCFunction)(void (*)(void))name, METH_FASTCALL, NULL}
static PyMethodDef Calls_methods[] = {
    METHOD(ref_new),
    METHOD(ref_clone),
    METHOD(ref_drop),
    METHOD(ref_as_raw),
    METHOD(ref_into_raw),
    METHOD(ref_from_raw),
    METHOD(ref_clone_from_raw),
    METHOD(ref_strong_count),
    METHOD(ref_eq),
    METHOD(ref_hash),
    METHOD(ref_cmp),
    METHOD(ref_deref),
    METHOD(table_drop),
    METHOD(table_bump_capacity_remaining),
    METHOD(table_try_insert),
    METHOD(table_insert_with_gc),
    METHOD(table_insert_without_gc),
    METHOD(table_stack_canary),
    METHOD(table_set_stack_canary),
    METHOD(table_set_gc_okay),
    METHOD(gc),
    METHOD(table_enter_wasm),
    METHOD(table_leave_wasm),
    METHOD(table_num_filled_in_bump_chunk),
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CallsType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "externref_harness.native._calls.Calls",
    .tp_doc = PyDoc_STR("A library's xr_* functions, called without ctypes (see _calls.c)."),
    .tp_basicsize = sizeof(Calls),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Calls_init,
    .tp_methods = Calls_methods,
};


/* ---- the harness's stack, walked in C ----------------------------------------------------------
 *
 *     xr_gc(&walker.stack, table) ──▶ trace(ctx = walker) ──▶ visit(pc, sp) for each frame
 *                                                            └─▶ lookup(pc): cached, or classify(view, pc)
 *
 * `Walker` is the `xr_stack` the harness hands `xr_gc` and `xr_table_insert_with_gc`: its trace
 * follows the saved frame pointers in the stack region from the youngest frame, as
 * `impl.stack.NativeStack.walk` does (stop after a frame suspended at `opaque_pc`, whose code has
 * no unwind info, or at a return address of 0), without a callback into Python per frame. Its
 * lookup asks Python (`classify(view, pc)`, the code registry) once per pc and per view, and keeps
 * the answer: the registry of a run is fixed, and the bits it points at stay where they are.
 * Reading a word outside the region ends the walk and is kept (`take`), as the Python walk's
 * `IndexError` is; so is anything `classify` raised, and a trace or lookup outside a call. */

#define WALK_CACHE 64

typedef struct {
    uintptr_t pc;
    int kind;
    size_t mapped_words;
    const uint64_t *bits;
} CachedPc;

typedef struct {
    PyObject_HEAD
    xr_stack stack;
    PyObject *classify; /* classify(view, pc) -> (kind, mapped_words, bits address) */
    PyObject *view;     /* the view walked last: the cache is its answers */
    uintptr_t opaque_pc;
    uintptr_t base, top; /* the stack region of the walk under way */
    int active;         /* between `walk_from` and `take` */
    uintptr_t fault;    /* the first word outside the region the walk had to read (0: none) */
    PyObject *error;    /* the first exception a hook met (NULL: none) */
    int cached;
    CachedPc cache[WALK_CACHE];
} Walker;

/* Keep `error` (an exception instance) if it is the first; takes the reference. */
static void
walker_keep(Walker *w, PyObject *error)
{
    if (w->error == NULL) {
        w->error = error;
    } else {
        Py_XDECREF(error);
    }
}

/* With the GIL: keep the exception being raised. */
static void
walker_keep_raised(Walker *w)
{
    PyObject *type, *value, *tb;
    PyErr_Fetch(&type, &value, &tb);
    PyErr_NormalizeException(&type, &value, &tb);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    walker_keep(w, value);
}

/* A hook called outside gc / insert_with_gc (the library kept the stack and used it later). */
static void
walker_outside(Walker *w, const char *hook)
{
    PyGILState_STATE gil = PyGILState_Ensure();
    PyErr_Format(PyExc_AssertionError, "%s called outside gc / insert_with_gc", hook);
    walker_keep_raised(w);
    PyGILState_Release(gil);
}

static int
walker_readable(const Walker *w, uintptr_t address)
{
    return address >= w->base && w->top >= 8 && address <= w->top - 8 && address % 8 == 0;
}

static void
walker_trace(void *ctx, xr_frame_fn visit, void *walk_ctx)
{
    Walker *w = (Walker *)ctx;
    if (!w->active) {
        walker_outside(w, "trace");
        return;
    }
    /* The youngest frame and the region, asked of the view only when the runtime walks (a gc
     * with no Wasm frame on the stack, or no canary, does not). */
    unsigned long long frame[5];
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *top = PyObject_CallMethod(w->view, "top_frame", NULL);
    int ok = top != NULL && PyArg_ParseTuple(top, "KKKKK", &frame[0], &frame[1], &frame[2], &frame[3],
                                             &frame[4]);
    Py_XDECREF(top);
    if (!ok) {
        walker_keep_raised(w);
    }
    PyGILState_Release(gil);
    if (!ok) {
        return;
    }
    uintptr_t pc = (uintptr_t)frame[0], sp = (uintptr_t)frame[1], fp = (uintptr_t)frame[2];
    w->base = (uintptr_t)frame[3];
    w->top = (uintptr_t)frame[4];
    for (;;) {
        if (!visit(walk_ctx, pc, sp)) {
            return;
        }
        if (pc == w->opaque_pc) {
            return; /* no unwind info: the walk cannot step past this frame */
        }
        if (!walker_readable(w, fp + 8)) {
            w->fault = fp + 8;
            return;
        }
        uintptr_t ret = (uintptr_t) * (const uint64_t *)(fp + 8);
        if (ret == 0) {
            return;
        }
        if (!walker_readable(w, fp)) {
            w->fault = fp;
            return;
        }
        uintptr_t caller_fp = (uintptr_t) * (const uint64_t *)fp;
        pc = ret;
        sp = fp + 16;
        fp = caller_fp;
    }
}

static int
walker_answer(const CachedPc *c, xr_stack_map *map)
{
    if (c->kind == XR_PC_WASM_MAPPED) {
        map->mapped_words = c->mapped_words;
        map->bits = c->bits;
    }
    return c->kind;
}

static int
walker_lookup(void *ctx, uintptr_t pc, xr_stack_map *map)
{
    Walker *w = (Walker *)ctx;
    if (!w->active) {
        walker_outside(w, "lookup");
        return XR_PC_HOST;
    }
    for (int i = 0; i < w->cached; i++) {
        if (w->cache[i].pc == pc) {
            return walker_answer(&w->cache[i], map);
        }
    }
    CachedPc got = {pc, XR_PC_HOST, 0, NULL};
    int ok = 0;
    PyGILState_STATE gil = PyGILState_Ensure();
    PyObject *result = PyObject_CallFunction(w->classify, "OK", w->view, (unsigned long long)pc);
    if (result != NULL) {
        int kind;
        unsigned long long words, bits;
        if (PyArg_ParseTuple(result, "iKK", &kind, &words, &bits)) {
            got.kind = kind;
            got.mapped_words = (size_t)words;
            got.bits = (const uint64_t *)(uintptr_t)bits;
            ok = 1;
        }
        Py_DECREF(result);
    }
    if (!ok) {
        walker_keep_raised(w);
    }
    PyGILState_Release(gil);
    if (!ok) {
        return XR_PC_HOST;
    }
    if (w->cached < WALK_CACHE) {
        w->cache[w->cached++] = got;
    }
    return walker_answer(&got, map);
}

static int
Walker_init(Walker *self, PyObject *args, PyObject *kwds)
{
    PyObject *classify;
    unsigned long long opaque_pc;
    int with_lookup;
    static char *kwlist[] = {"classify", "opaque_pc", "with_lookup", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OKp:Walker", kwlist, &classify, &opaque_pc,
                                     &with_lookup)) {
        return -1;
    }
    Py_INCREF(classify);
    Py_XSETREF(self->classify, classify);
    Py_CLEAR(self->view);
    Py_CLEAR(self->error);
    self->opaque_pc = (uintptr_t)opaque_pc;
    self->stack.ctx = self;
    self->stack.trace = walker_trace;
    self->stack.lookup = with_lookup ? walker_lookup : NULL;
    self->active = 0;
    self->fault = 0;
    self->cached = 0;
    return 0;
}

static void
Walker_dealloc(Walker *self)
{
    Py_CLEAR(self->classify);
    Py_CLEAR(self->view);
    Py_CLEAR(self->error);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* walk_from(view): the next call's stack (`view.top_frame()` is asked if the runtime walks it,
 * `classify(view, pc)` for a pc not yet classified for this view). */
static PyObject *
Walker_walk_from(Walker *self, PyObject *view)
{
    if (view != self->view) {
        Py_INCREF(view);
        Py_XSETREF(self->view, view);
        self->cached = 0;
    }
    self->active = 1;
    Py_RETURN_NONE;
}

/* take() -> None, or (fault address or 0, the first exception or None); cleared, and the walk is
 * over. */
static PyObject *
Walker_take(Walker *self, PyObject *Py_UNUSED(ignored))
{
    self->active = 0;
    if (self->fault == 0 && self->error == NULL) {
        Py_RETURN_NONE;
    }
    PyObject *error = self->error != NULL ? self->error : Py_None;
    PyObject *out = Py_BuildValue("(KO)", (unsigned long long)self->fault, error);
    if (out == NULL) {
        return NULL;
    }
    Py_CLEAR(self->error);
    self->fault = 0;
    return out;
}

static PyObject *
Walker_address(Walker *self, void *Py_UNUSED(closure))
{
    return PyLong_FromUnsignedLongLong((unsigned long long)(uintptr_t)&self->stack);
}

static PyMethodDef Walker_methods[] = {
    {"walk_from", (PyCFunction)Walker_walk_from, METH_O, NULL},
    {"take", (PyCFunction)Walker_take, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Walker_getset[] = {
    {"address", (getter)Walker_address, NULL, "the address of its xr_stack", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject WalkerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "externref_harness.native._calls.Walker",
    .tp_doc = PyDoc_STR("The harness's stack as an xr_stack walked in C (see _calls.c)."),
    .tp_basicsize = sizeof(Walker),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Walker_init,
    .tp_dealloc = (destructor)Walker_dealloc,
    .tp_methods = Walker_methods,
    .tp_getset = Walker_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "externref_harness.native._calls",
    .m_doc = "The hot calls of native.backend into a library, without ctypes.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__calls(void)
{
    if (PyType_Ready(&CallsType) < 0 || PyType_Ready(&WalkerType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
    Py_INCREF(&CallsType);
    if (PyModule_AddObject(m, "Calls", (PyObject *)&CallsType) < 0) {
        Py_DECREF(&CallsType);
        Py_DECREF(m);
        return NULL;
    }
    Py_INCREF(&WalkerType);
    if (PyModule_AddObject(m, "Walker", (PyObject *)&WalkerType) < 0) {
        Py_DECREF(&WalkerType);
        Py_DECREF(m);
        return NULL;
    }
    /* The symbol names of the table above: `calls.addresses` looks each up in a library. */
    PyObject *symbols = PyTuple_New((Py_ssize_t)N_SYMBOLS);
    if (symbols == NULL) {
        Py_DECREF(m);
        return NULL;
    }
    for (size_t i = 0; i < N_SYMBOLS; i++) {
        PyObject *name = PyUnicode_FromString(SYMBOLS[i].symbol);
        if (name == NULL) {
            Py_DECREF(symbols);
            Py_DECREF(m);
            return NULL;
        }
        PyTuple_SET_ITEM(symbols, (Py_ssize_t)i, name);
    }
    if (PyModule_AddObject(m, "SYMBOLS", symbols) < 0) {
        Py_DECREF(symbols);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
