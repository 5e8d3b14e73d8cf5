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

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "externref_harness.native._calls",
    .m_doc = "The hot calls of native.backend into a library, without ctypes.",
    .m_size = -1,
};

PyMODINIT_FUNC
PyInit__calls(void)
{
    if (PyType_Ready(&CallsType) < 0) {
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
