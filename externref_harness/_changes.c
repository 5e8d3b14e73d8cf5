/* The C core of `externref_harness.changes`: which positions of two sequences differ, identity
 * first and by value only where the identities differ; which pages of a memory range differ
 * from its shadow copy, and where in a page (the checking heap's write record, `impl/heap.py`); which
 * words of two byte strings differ (a chunk read twice); and a persistent
 * vector's leaves joined into one tuple (`externref_harness.vec`).
 *
 * A step of the lockstep changes a handful of positions of tuples as long as the heap and leaves
 * every other position the very same object (`changes`' docstring says why). Comparing two
 * 4,096-long tuples element by element costs about 20 us in Python or mypyc, which increment and
 * decrement a count per element; the loop below reads the two item arrays in place, a pointer
 * comparison per unchanged position (a few microseconds for 4,096). `setup.py` builds it and
 * `compiled.py` decides, with the mypyc modules, whether this process may use it; without it
 * `changes` runs its own loop, which computes the same result.
 *
 * Invariant relied on: a value comparison (`PyObject_RichCompareBool`) may run Python code that
 * changes a list given here, so both sequences' item arrays and lengths are read again after each
 * one; the two items compared are held while they are compared.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* 1 if `a` and `b` differ (not the same object and not equal), 0 if not, -1 on an error. */
static int
differ(PyObject *a, PyObject *b)
{
    if (a == b) {
        return 0;
    }
    Py_INCREF(a);
    Py_INCREF(b);
    int equal = PyObject_RichCompareBool(a, b, Py_EQ);
    Py_DECREF(a);
    Py_DECREF(b);
    return equal < 0 ? -1 : !equal;
}

/* Append the index `i` to the list `out`: 0, or -1 with an exception set. */
static int
append_index(PyObject *out, Py_ssize_t i)
{
    PyObject *index = PyLong_FromSsize_t(i);
    if (index == NULL) {
        return -1;
    }
    int status = PyList_Append(out, index);
    Py_DECREF(index);
    return status;
}

/* Walk the common prefix of `old` and `new`; add each differing index to `out` (a list), or, if
 * `out` is NULL, stop at the first. Returns the number found (0 or 1 without `out`), -1 on error. */
static Py_ssize_t
walk(PyObject *old, PyObject *new, PyObject *out)
{
    Py_ssize_t found = 0;
    if (old == new) {
        /* One sequence (a tuple a step left alone is the very one): no position differs. */
        return found;
    }
    for (Py_ssize_t i = 0;; i++) {
        Py_ssize_t common = Py_MIN(PySequence_Fast_GET_SIZE(old), PySequence_Fast_GET_SIZE(new));
        PyObject **a = PySequence_Fast_ITEMS(old);
        PyObject **b = PySequence_Fast_ITEMS(new);
        while (i < common && a[i] == b[i]) {
            i++;
        }
        if (i >= common) {
            return found;
        }
        int d = differ(a[i], b[i]);
        if (d < 0) {
            return -1;
        }
        if (d) {
            found++;
            if (out == NULL) {
                return found;
            }
            if (append_index(out, i) < 0) {
                return -1;
            }
        }
    }
}

static int
fast_pair(PyObject *const *args, Py_ssize_t nargs, const char *name, PyObject **old, PyObject **new)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "%s() takes 2 arguments (%zd given)", name, nargs);
        return -1;
    }
    *old = PySequence_Fast(args[0], "old must be a sequence");
    if (*old == NULL) {
        return -1;
    }
    *new = PySequence_Fast(args[1], "new must be a sequence");
    if (*new == NULL) {
        Py_DECREF(*old);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(changed_positions_doc,
"changed_positions(old, new) -> list[int]\n\n"
"The indices i < len(new) where new[i] != old[i] (compared by identity first), or old has no\n"
"index i, ascending.");

static PyObject *
changed_positions(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *old, *new;
    if (fast_pair(args, nargs, "changed_positions", &old, &new) < 0) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL || walk(old, new, out) < 0) {
        goto error;
    }
    Py_ssize_t n_old = PySequence_Fast_GET_SIZE(old);
    Py_ssize_t n_new = PySequence_Fast_GET_SIZE(new);
    for (Py_ssize_t i = n_old; i < n_new; i++) {
        if (append_index(out, i) < 0) {
            goto error;
        }
    }
    Py_DECREF(old);
    Py_DECREF(new);
    return out;
error:
    Py_XDECREF(out);
    Py_DECREF(old);
    Py_DECREF(new);
    return NULL;
}

PyDoc_STRVAR(same_doc,
"same(old, new) -> bool\n\n"
"Whether the two sequences have the same length and equal items (compared by identity first).");

static PyObject *
same(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *old, *new;
    if (fast_pair(args, nargs, "same", &old, &new) < 0) {
        return NULL;
    }
    Py_ssize_t found = 0;
    if (PySequence_Fast_GET_SIZE(old) == PySequence_Fast_GET_SIZE(new)) {
        found = walk(old, new, NULL);
    }
    int equal_length = PySequence_Fast_GET_SIZE(old) == PySequence_Fast_GET_SIZE(new);
    Py_DECREF(old);
    Py_DECREF(new);
    if (found < 0) {
        return NULL;
    }
    return PyBool_FromLong(equal_length && found == 0);
}

PyDoc_STRVAR(changed_pages_doc,
"changed_pages(now, then, length, page) -> list[int]\n\n"
"The offsets (multiples of page, below length) of the pages whose bytes differ between the\n"
"memory at address now and at address then, ascending. Both ranges must be mapped.");

/* The two memory ranges' addresses and two sizes of `changed_pages` and `first_difference` (the
 * sizes >= 0, the second > 0 if `positive`); 0, or -1 with an exception set. */
static int
memory_args(const char *name, PyObject *const *args, Py_ssize_t nargs, const unsigned char **now,
            const unsigned char **then, Py_ssize_t *length, Py_ssize_t *second, int positive)
{
    const unsigned char **memory[2] = {now, then};
    Py_ssize_t *sizes[2] = {length, second};
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "%s() takes 4 arguments (%zd given)", name, nargs);
        return -1;
    }
    for (int k = 0; k < 2; k++) {
        size_t address = PyLong_AsSize_t(args[k]);
        if (address == (size_t)-1 && PyErr_Occurred()) {
            return -1;
        }
        *memory[k] = (const unsigned char *)address;
        *sizes[k] = PyLong_AsSsize_t(args[2 + k]);
        if (*sizes[k] == -1 && PyErr_Occurred()) {
            return -1;
        }
    }
    if (*length < 0 || *second < (positive ? 1 : 0)) {
        PyErr_Format(PyExc_ValueError, "%s: %s", name,
                     positive ? "length must be >= 0 and page > 0" : "length and start must be >= 0");
        return -1;
    }
    return 0;
}

static PyObject *
changed_pages(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *now, *then;
    Py_ssize_t length, page;
    if (memory_args("changed_pages", args, nargs, &now, &then, &length, &page, 1) < 0) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t offset = 0; offset < length; offset += page) {
        Py_ssize_t size = Py_MIN(page, length - offset);
        if (memcmp(now + offset, then + offset, (size_t)size) == 0) {
            continue;
        }
        if (append_index(out, offset) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

PyDoc_STRVAR(first_difference_doc,
"first_difference(now, then, length, start) -> int\n\n"
"The first offset at or after start, below length, at which the bytes at address now and at\n"
"address then differ; -1 if there is none. Both ranges must be mapped.");

static PyObject *
first_difference(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const unsigned char *now, *then;
    Py_ssize_t length, at;
    if (memory_args("first_difference", args, nargs, &now, &then, &length, &at, 0) < 0) {
        return NULL;
    }
    /* A word at a time, then the bytes of the word that differs (or of the tail). */
    while (at + 8 <= length) {
        uint64_t a, b;
        memcpy(&a, now + at, 8);
        memcpy(&b, then + at, 8);
        if (a != b) {
            break;
        }
        at += 8;
    }
    for (; at < length; at++) {
        if (now[at] != then[at]) {
            return PyLong_FromSsize_t(at);
        }
    }
    return PyLong_FromSsize_t(-1);
}

/* An address argument (a mapped range's start): 0, or -1 with an exception set. */
static int
address_arg(PyObject *arg, unsigned char **out)
{
    size_t address = PyLong_AsSize_t(arg);
    if (address == (size_t)-1 && PyErr_Occurred()) {
        return -1;
    }
    *out = (unsigned char *)address;
    return 0;
}

/* A size argument, >= 0: 0, or -1 with an exception set. */
static int
size_arg(const char *name, PyObject *arg, Py_ssize_t *out)
{
    *out = PyLong_AsSsize_t(arg);
    if (*out == -1 && PyErr_Occurred()) {
        return -1;
    }
    if (*out < 0) {
        PyErr_Format(PyExc_ValueError, "%s: length must be >= 0", name);
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(filled_doc,
"filled(address, length, byte) -> bool\n\n"
"Whether each of the length bytes at address is byte (0-255). The range must be mapped.");

static PyObject *
filled(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char *at;
    Py_ssize_t length;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "filled() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (address_arg(args[0], &at) < 0 || size_arg("filled", args[1], &length) < 0) {
        return NULL;
    }
    long byte = PyLong_AsLong(args[2]);
    if (byte == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (byte < 0 || byte > 255) {
        PyErr_SetString(PyExc_ValueError, "filled: byte must be between 0 and 255");
        return NULL;
    }
    for (Py_ssize_t i = 0; i < length; i++) {
        if (at[i] != (unsigned char)byte) {
            Py_RETURN_FALSE;
        }
    }
    Py_RETURN_TRUE;
}

PyDoc_STRVAR(holds_doc,
"holds(address, data) -> bool\n\n"
"Whether the len(data) bytes at address are the bytes data. The range must be mapped.");

static PyObject *
holds(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char *at;
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "holds() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (address_arg(args[0], &at) < 0) {
        return NULL;
    }
    if (!PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "holds: data must be bytes");
        return NULL;
    }
    Py_ssize_t length = PyBytes_GET_SIZE(args[1]);
    return PyBool_FromLong(memcmp(at, PyBytes_AS_STRING(args[1]), (size_t)length) == 0);
}

PyDoc_STRVAR(copy_doc,
"copy(to, from, length) -> None\n\n"
"Copy the length bytes at address from to address to (memmove: the ranges may overlap). Both\n"
"ranges must be mapped.");

static PyObject *
copy(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    unsigned char *to, *from;
    Py_ssize_t length;
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "copy() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    if (address_arg(args[0], &to) < 0 || address_arg(args[1], &from) < 0
        || size_arg("copy", args[2], &length) < 0) {
        return NULL;
    }
    memmove(to, from, (size_t)length);
    Py_RETURN_NONE;
}

PyDoc_STRVAR(changed_words_doc,
"changed_words(old, new) -> list\n\n"
"The indices i of the 8-byte words of the bytes new that differ from old's word i, or that old\n"
"has no word i, ascending (a chunk's slots, read twice: `lockstep.memory_checks`).");

static PyObject *
changed_words(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "changed_words() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    if (!PyBytes_Check(args[0]) || !PyBytes_Check(args[1])) {
        PyErr_SetString(PyExc_TypeError, "changed_words: old and new must be bytes");
        return NULL;
    }
    /* Bytes are immutable, and nothing below runs Python code that could free them. */
    const char *old = PyBytes_AS_STRING(args[0]), *new = PyBytes_AS_STRING(args[1]);
    Py_ssize_t n_old = PyBytes_GET_SIZE(args[0]) / 8, n_new = PyBytes_GET_SIZE(args[1]) / 8;
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n_new; i++) {
        if (i < n_old && memcmp(old + 8 * i, new + 8 * i, 8) == 0) {
            continue;
        }
        if (append_index(out, i) < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

PyDoc_STRVAR(joined_doc,
"joined(parts) -> tuple\n\n"
"The items of the tuples in the tuple parts, in order, as one tuple (a persistent vector's\n"
"leaves, `externref_harness.vec`): one allocation and one pass over the items.");

static PyObject *
joined(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 1) {
        PyErr_Format(PyExc_TypeError, "joined() takes 1 argument (%zd given)", nargs);
        return NULL;
    }
    PyObject *parts = args[0];
    if (!PyTuple_Check(parts)) {
        PyErr_SetString(PyExc_TypeError, "joined: parts must be a tuple of tuples");
        return NULL;
    }
    Py_ssize_t n_parts = PyTuple_GET_SIZE(parts), total = 0;
    for (Py_ssize_t k = 0; k < n_parts; k++) {
        PyObject *part = PyTuple_GET_ITEM(parts, k);
        if (!PyTuple_Check(part)) {
            PyErr_SetString(PyExc_TypeError, "joined: parts must be a tuple of tuples");
            return NULL;
        }
        total += PyTuple_GET_SIZE(part);
    }
    /* Tuples are immutable, so the sizes counted above are the sizes copied below. */
    PyObject *out = PyTuple_New(total);
    if (out == NULL) {
        return NULL;
    }
    Py_ssize_t at = 0;
    for (Py_ssize_t k = 0; k < n_parts; k++) {
        PyObject *part = PyTuple_GET_ITEM(parts, k);
        Py_ssize_t size = PyTuple_GET_SIZE(part);
        for (Py_ssize_t j = 0; j < size; j++) {
            PyObject *item = PyTuple_GET_ITEM(part, j);
            Py_INCREF(item);
            PyTuple_SET_ITEM(out, at + j, item);
        }
        at += size;
    }
    return out;
}

static PyMethodDef methods[] = {
    {"joined", (PyCFunction)(void (*)(void))joined, METH_FASTCALL, joined_doc},
    {"changed_pages", (PyCFunction)(void (*)(void))changed_pages, METH_FASTCALL, changed_pages_doc},
    {"first_difference", (PyCFunction)(void (*)(void))first_difference, METH_FASTCALL,
     first_difference_doc},
    {"changed_positions", (PyCFunction)(void (*)(void))changed_positions, METH_FASTCALL,
     changed_positions_doc},
    {"same", (PyCFunction)(void (*)(void))same, METH_FASTCALL, same_doc},
    {"filled", (PyCFunction)(void (*)(void))filled, METH_FASTCALL, filled_doc},
    {"holds", (PyCFunction)(void (*)(void))holds, METH_FASTCALL, holds_doc},
    {"copy", (PyCFunction)(void (*)(void))copy, METH_FASTCALL, copy_doc},
    {"changed_words", (PyCFunction)(void (*)(void))changed_words, METH_FASTCALL, changed_words_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "externref_harness._changes",
    "The C core of externref_harness.changes (identity-first sequence comparison).",
    0,
    methods,
};

PyMODINIT_FUNC
PyInit__changes(void)
{
    return PyModule_Create(&module);
}
