/*
 * pybuf.h -- buffer-protocol arguments of lowbit's CPython bindings (header only, static inline).
 *
 * One helper acquires an argument's buffer and checks it against what the kernel will do with it (element
 * type, dimensions, contiguity, writability, alignment), raising an error that names the argument; a buffer
 * set owns every view a binding acquired and releases them all in one call, so each binding has a single exit
 * path instead of a release ladder:
 *
 *     LB_BUFSET(bs);                 (lb_bufset bs; lb_bufset_init(&bs);)
 *     PyObject *result = NULL;
 *     Py_buffer *a = lb_buf_get(&bs, oa, "a", LB_T_I8, -1, LB_BUF_CONTIG);
 *     Py_buffer *out = a ? lb_buf_get(&bs, oout, "out", LB_T_I32, 2, LB_BUF_WRITABLE | LB_BUF_ROWS) : NULL;
 *     if (!out) goto done;
 *     LB_NOGIL(kernel(a->buf, out->buf));   (the GIL released around the call)
 *     result = lb_none();
 *   done:
 *     return lb_bufset_return(&bs, result); (releases the set)
 *
 * Errors: TypeError for the element type, BufferError for a read-only buffer given as an output (what
 * PyObject_GetBuffer itself raises, now with the argument's name), ValueError for the rest.
 * Views are taken with strides and format but never writable-requested: writability is checked on the
 * view, so a read-only output gets the named error rather than the exporter's anonymous one.
 */
#ifndef LOWBIT_PYBUF_H
#define LOWBIT_PYBUF_H

#ifndef PY_SSIZE_T_CLEAN
#define PY_SSIZE_T_CLEAN
#endif
#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#define LB_BUF_MAX 16 /* views per call: the LSTM layer binding takes 12 */

/* Element types, from the struct-module format and itemsize (native byte order only). */
typedef enum {
    LB_T_ANY = 0, /* anything: raw bytes */
    LB_T_I8, LB_T_I16, LB_T_I32, LB_T_I64,
    LB_T_U8, LB_T_U16, LB_T_U32, LB_T_U64,
    LB_T_F32, LB_T_F64,
    LB_T_KNOWN,  /* (check only) any of the types above */
    LB_T_WORD64, /* (check only) int64 or uint64: packed 64-bit words */
} lb_elem;

#define LB_BUF_WRITABLE 1u /* an output: the buffer must be writable */
#define LB_BUF_CONTIG 2u   /* C-contiguous (any ndim) */
#define LB_BUF_ROWS 4u     /* 2-D with contiguous rows: inner stride = itemsize, row stride a multiple of it */
#define LB_BUF_ALIGN64 8u  /* data 64-byte aligned (panels read with aligned vector loads); empty buffers pass */

typedef struct {
    Py_buffer v[LB_BUF_MAX];
    int n;
} lb_bufset;

static inline void lb_bufset_init(lb_bufset *s) { s->n = 0; }

/* Declares an empty buffer set `name` (a binding's first statement after its argument checks). */
#define LB_BUFSET(name) \
    lb_bufset name;     \
    lb_bufset_init(&name)

/* A binding's buffer set `name` and its result `res` (NULL until it succeeds), declared together: the start of
 * every binding that takes arrays, which leaves through its `done:` label and lb_bufset_return. */
#define LB_BINDING(name, res) \
    LB_BUFSET(name);          \
    PyObject *res = NULL
/* ... and its single exit: the `done:` label every `goto done` of the binding lands on, releasing the set's views
 * and returning res (NULL: the exception set on the way). */
#define LB_BINDING_EXIT(name, res) \
done:                              \
    return lb_bufset_return(&(name), (res))

static inline void lb_bufset_release(lb_bufset *s)
{
    while (s->n > 0)
        PyBuffer_Release(&s->v[--s->n]);
}

static inline const char *lb_elem_name(lb_elem t)
{
    static const char *const names[] = {"any", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                                        "uint64", "float32", "float64", "numbers", "64-bit words"};
    return ((int)t >= 0 && t <= LB_T_WORD64) ? names[t] : "?";
}

/* The element type of a view (LB_T_I8 .. LB_T_F64), or -1: unknown format or foreign byte order. */
static inline int lb_buf_elem(const Py_buffer *v)
{
    const uint16_t one = 1;
    const int little = *(const uint8_t *)&one == 1;
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=') {
        f++;
    } else if (*f == '<' || *f == '>' || *f == '!') {
        if ((*f == '<') != little)
            return -1;
        f++;
    }
    if (f[0] == '\0' || f[1] != '\0')
        return -1;
    const Py_ssize_t sz = v->itemsize;
    switch (f[0]) {
    case 'b': case 'h': case 'i': case 'l': case 'q':
        return sz == 1 ? LB_T_I8 : sz == 2 ? LB_T_I16 : sz == 4 ? LB_T_I32 : sz == 8 ? LB_T_I64 : -1;
    case 'B': case 'H': case 'I': case 'L': case 'Q':
        return sz == 1 ? LB_T_U8 : sz == 2 ? LB_T_U16 : sz == 4 ? LB_T_U32 : sz == 8 ? LB_T_U64 : -1;
    case 'f':
        return sz == 4 ? LB_T_F32 : -1;
    case 'd':
        return sz == 8 ? LB_T_F64 : -1;
    default:
        return -1;
    }
}

static inline int lb__elem_ok(int have, lb_elem want)
{
    switch (want) {
    case LB_T_ANY: return 1;
    case LB_T_KNOWN: return have > 0;
    case LB_T_WORD64: return have == LB_T_I64 || have == LB_T_U64;
    default: return have == (int)want;
    }
}

/* Checks of a view against (type, ndim, flags); returns 0, or -1 with an exception set. */
static inline int lb_buf_check(const Py_buffer *v, const char *name, lb_elem type, int ndim, unsigned flags)
{
    if ((flags & LB_BUF_WRITABLE) && v->readonly) {
        PyErr_Format(PyExc_BufferError, "%s is an output and must be writable, got a read-only buffer", name);
        return -1;
    }
    const int have = lb_buf_elem(v);
    if (!lb__elem_ok(have, type)) {
        if (type == LB_T_KNOWN)
            PyErr_Format(PyExc_TypeError, "%s: unsupported element format '%s'", name, v->format ? v->format : "B");
        else
            PyErr_Format(PyExc_TypeError, "%s must hold %s, got format '%s' (itemsize %zd)", name, lb_elem_name(type),
                         v->format ? v->format : "B", v->itemsize);
        return -1;
    }
    if (ndim >= 0 && v->ndim != ndim) {
        PyErr_Format(PyExc_ValueError, "%s must be a %d-D array, got %d dimension(s)", name, ndim, v->ndim);
        return -1;
    }
    if (v->suboffsets != NULL) {
        PyErr_Format(PyExc_ValueError, "%s: indirect (suboffset) buffers are not supported", name);
        return -1;
    }
    if ((flags & LB_BUF_CONTIG) && !PyBuffer_IsContiguous(v, 'C')) {
        PyErr_Format(PyExc_ValueError, "%s must be C-contiguous (got a strided view)", name);
        return -1;
    }
    const Py_ssize_t isz = v->itemsize;
    if (flags & LB_BUF_ROWS) {
        if (v->ndim != 2 || v->shape == NULL || v->strides == NULL) {
            PyErr_Format(PyExc_ValueError, "%s must be a 2-D array, got %d dimension(s)", name, v->ndim);
            return -1;
        }
        if (v->shape[1] > 1 && v->strides[1] != isz) {
            PyErr_Format(PyExc_ValueError, "%s must have contiguous rows (inner stride %zd bytes, need %zd)", name,
                         v->strides[1], isz);
            return -1;
        }
        if (v->shape[0] > 1 && v->strides[0] % isz != 0) {
            PyErr_Format(PyExc_ValueError, "%s row stride %zd is not a multiple of %zd bytes", name, v->strides[0],
                         isz);
            return -1;
        }
    }
    if (type != LB_T_ANY && isz > 1 && ((uintptr_t)v->buf) % (uintptr_t)isz != 0) {
        PyErr_Format(PyExc_ValueError, "%s is not aligned to its element size", name);
        return -1;
    }
    if ((flags & LB_BUF_ALIGN64) && v->len > 0 && ((uintptr_t)v->buf) % 64 != 0) {
        PyErr_Format(PyExc_ValueError, "%s is not 64-byte aligned", name);
        return -1;
    }
    return 0;
}

/* Acquires obj's buffer into the set and checks it; returns the view, or NULL with an exception set (the set
 * keeps only views that passed, so lb_bufset_release is right on every path). ndim -1: any. */
static inline Py_buffer *lb_buf_get(lb_bufset *s, PyObject *obj, const char *name, lb_elem type, int ndim,
                                    unsigned flags)
{
    if (s->n >= LB_BUF_MAX) {
        PyErr_SetString(PyExc_SystemError, "lb_buf_get: more buffer arguments than LB_BUF_MAX");
        return NULL;
    }
    Py_buffer *v = &s->v[s->n];
    if (PyObject_GetBuffer(obj, v, PyBUF_RECORDS_RO) < 0) {
        if (PyErr_ExceptionMatches(PyExc_TypeError)) { /* not a buffer at all: say which argument */
            PyErr_Clear();
            PyErr_Format(PyExc_TypeError, "%s must be an array (buffer protocol), got %.100s", name,
                         Py_TYPE(obj)->tp_name);
        }
        return NULL;
    }
    if (lb_buf_check(v, name, type, ndim, flags) < 0) {
        PyBuffer_Release(v);
        return NULL;
    }
    s->n++;
    return v;
}

/* A prepared operand (a kernel's own panel layout): a contiguous, 64-byte aligned buffer of exactly `bytes`
 * bytes (the panels are read with aligned vector loads; the size keeps every read in bounds). */
static inline Py_buffer *lb_buf_get_prep(lb_bufset *s, PyObject *obj, const char *name, int writable, size_t bytes)
{
    Py_buffer *v = lb_buf_get(s, obj, name, LB_T_ANY, -1,
                              LB_BUF_CONTIG | LB_BUF_ALIGN64 | (writable ? LB_BUF_WRITABLE : 0));
    if (v && (size_t)v->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, the prepared matrix needs %zu (prepared for another "
                     "path or shape?)", name, v->len, bytes);
        return NULL;
    }
    return v;
}

/* Row stride of a LB_BUF_ROWS view, in elements (0 for a single row: it is never stepped over). */
static inline ptrdiff_t lb_buf_ld(const Py_buffer *v)
{
    return v->shape[0] > 1 ? (ptrdiff_t)(v->strides[0] / v->itemsize) : 0;
}

/* Shape checks of a 2-D view (ValueError naming it): exactly (rows, cols), or rows rows of at least min_cols. */
static inline int lb_buf_expect_shape(const Py_buffer *v, const char *name, Py_ssize_t rows, Py_ssize_t cols)
{
    if (v->shape[0] != rows || v->shape[1] != cols) {
        PyErr_Format(PyExc_ValueError, "%s has shape (%zd, %zd), need (%zd, %zd)", name, v->shape[0], v->shape[1],
                     rows, cols);
        return -1;
    }
    return 0;
}

static inline int lb_buf_expect_rows(const Py_buffer *v, const char *name, size_t rows, size_t min_cols)
{
    if ((size_t)v->shape[0] != rows || (size_t)v->shape[1] < min_cols) {
        PyErr_Format(PyExc_ValueError, "%s has shape (%zd, %zd), need (%zu, >= %zu)", name, v->shape[0], v->shape[1],
                     rows, min_cols);
        return -1;
    }
    return 0;
}

/* An output's rows must be disjoint: a row stride (in elements, lb_buf_ld) of at least min_ld in magnitude
 * when there is more than one row. */
static inline int lb_buf_expect_disjoint(const Py_buffer *v, const char *name, ptrdiff_t ld, ptrdiff_t min_ld)
{
    if (v->shape[0] > 1 && min_ld > 0 && ld < min_ld && ld > -min_ld) {
        PyErr_Format(PyExc_ValueError, "%s rows overlap", name);
        return -1;
    }
    return 0;
}

/* A binding's single exit (after the `done:` label): releases every view of the set and returns result (NULL:
 * an exception is set). lb_none() is the result of a binding that returns None. */
static inline PyObject *lb_bufset_return(lb_bufset *s, PyObject *result)
{
    lb_bufset_release(s);
    return result;
}

static inline PyObject *lb_none(void)
{
    Py_INCREF(Py_None);
    return Py_None;
}

/* Runs a statement (a kernel call) with the GIL released; the views in the set keep its memory alive. */
#define LB_NOGIL(...)                                                                                          \
    do {                                                                                                       \
        Py_BEGIN_ALLOW_THREADS __VA_ARGS__;                                                                    \
        Py_END_ALLOW_THREADS                                                                                   \
    } while (0)

/* Total size check: the view must hold exactly `bytes` bytes. */
static inline int lb_buf_expect_bytes(const Py_buffer *v, Py_ssize_t bytes, const char *name)
{
    if (v->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", name, v->len, bytes);
        return -1;
    }
    return 0;
}

#endif /* LOWBIT_PYBUF_H */
