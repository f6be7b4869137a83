/*
 * bitgemm_module.c -- CPython bindings of the binary GEMM (module lowbit.kernels._bitgemm).
 *
 * Arrays come in through the buffer protocol (Py_buffer with strides and format), so NumPy arrays
 * are used in place, without NumPy headers and without copies. The Python layer
 * (lowbit/kernels/binary.py) validates everything first and raises lowbit.errors.ShapeError with a
 * readable message; the checks here are a second line of defence so that no input, however it
 * arrives, can make the C code read or write out of bounds: they raise ValueError / TypeError.
 *
 * Long computations release the GIL (the Py_buffer views keep the memory alive).
 *
 *   pack(src, dst, check_pm1, nthreads) -> int        -1, or flat index of the first non-+-1 value
 *   gemm(pa, pb, k, out, path, nthreads) -> None      out[M,N] = K - 2 popcount(pa[i] ^ pb[j])
 *   gemm_naive(pa, pb, k, out, hw_popcount) -> None   the naive reference, one thread
 *   plan_threads(m, n, k, path, nthreads) -> int      threads gemm would use
 *   prepared_bytes(path, n, k) -> int                 size of B prepared for path (0: nothing to do)
 *   prepare(pb, k, dst, path, nthreads) -> None       B -> the path's native layout, into dst
 *   gemm_prepared(pa, pb, prep, k, out, path, nthreads) -> None   gemm with B also given prepared
 *   threshold_pack(acc, sign, thr, bias, out, path, nthreads) -> None
 *                                                     out bits = sign[j] * (acc[i,j] - bias) < thr[j]
 *   u8_prepared_bytes(n, k) -> int; u8_prepare(w, dst) -> None
 *   u8_gemm(x, wp, n, out, path, nthreads) -> None    out[M,N] = x (uint8, K = its width) . w^T, w prepared
 *   path_names() / supported_paths() -> tuple of str; best_path() -> str
 *   qg_*: the k-bit GEMM, see qgemm_module.c
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "bitgemm.h"
#include "bitgemm_py.h"

static int host_is_little_endian(void)
{
    const uint16_t one = 1;
    return *(const uint8_t *)&one == 1;
}

/* Element type of a buffer from its struct-module format and itemsize; -1 if unsupported. */
int parse_dtype(const Py_buffer *v, bg_dtype *out)
{
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=') {
        f++;
    } else if (*f == '<' || *f == '>' || *f == '!') {
        const int little = *f == '<';
        if (little != host_is_little_endian())
            return -1; /* foreign byte order */
        f++;
    }
    if (f[0] == '\0' || f[1] != '\0')
        return -1;
    const Py_ssize_t sz = v->itemsize;
    switch (f[0]) {
    case 'b': case 'h': case 'i': case 'l': case 'q':
        if (sz == 1) *out = BG_T_I8;
        else if (sz == 2) *out = BG_T_I16;
        else if (sz == 4) *out = BG_T_I32;
        else if (sz == 8) *out = BG_T_I64;
        else return -1;
        return 0;
    case 'B': case 'H': case 'I': case 'L': case 'Q':
        if (sz == 1) *out = BG_T_U8;
        else if (sz == 2) *out = BG_T_U16;
        else if (sz == 4) *out = BG_T_U32;
        else if (sz == 8) *out = BG_T_U64;
        else return -1;
        return 0;
    case 'f':
        if (sz != 4) return -1;
        *out = BG_T_F32;
        return 0;
    case 'd':
        if (sz != 8) return -1;
        *out = BG_T_F64;
        return 0;
    default:
        return -1;
    }
}

/* Gets a 2-D strided buffer; on failure sets an exception and returns -1 (nothing to release). */
int get_2d(PyObject *obj, Py_buffer *v, int writable, const char *what)
{
    if (PyObject_GetBuffer(obj, v, writable ? PyBUF_RECORDS : PyBUF_RECORDS_RO) < 0)
        return -1;
    if (v->ndim != 2 || v->shape == NULL || v->strides == NULL) {
        PyErr_Format(PyExc_ValueError, "%s must be a 2-D array, got %d dimension(s)", what, v->ndim);
        PyBuffer_Release(v);
        return -1;
    }
    if (v->suboffsets != NULL) {
        PyErr_Format(PyExc_ValueError, "%s: indirect (suboffset) buffers are not supported", what);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

/* A 2-D buffer of `itemsize`-byte integers usable as a row-major matrix with unit inner stride and
 * an aligned row stride; sets *ld to the row stride in elements. */
int check_matrix(const Py_buffer *v, Py_ssize_t itemsize, int want_signed_or_any, ptrdiff_t *ld,
                        const char *what)
{
    bg_dtype t;
    if (parse_dtype(v, &t) < 0 || v->itemsize != itemsize ||
        (want_signed_or_any == 1 && t != BG_T_I32) ||
        (want_signed_or_any == 0 && t != BG_T_U64 && t != BG_T_I64)) {
        PyErr_Format(PyExc_TypeError, "%s must hold %s, got format '%s' (itemsize %zd)", what,
                     itemsize == 8 ? "64-bit words" : "int32", v->format ? v->format : "B", v->itemsize);
        return -1;
    }
    if (((uintptr_t)v->buf) % (uintptr_t)itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s is not aligned to its element size", what);
        return -1;
    }
    if (v->shape[1] > 1 && v->strides[1] != itemsize) {
        PyErr_Format(PyExc_ValueError, "%s must have contiguous rows (inner stride %zd bytes, need %zd)", what,
                     v->strides[1], itemsize);
        return -1;
    }
    if (v->shape[0] > 1 && v->strides[0] % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "%s row stride %zd is not a multiple of %zd bytes", what, v->strides[0],
                     itemsize);
        return -1;
    }
    *ld = (v->shape[0] > 1) ? (ptrdiff_t)(v->strides[0] / itemsize) : 0;
    return 0;
}

/* ---- pack ------------------------------------------------------------------------------------- */
static PyObject *py_pack(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *osrc, *odst;
    int check, nthreads;
    if (!PyArg_ParseTuple(args, "OOpi:pack", &osrc, &odst, &check, &nthreads))
        return NULL;
    Py_buffer src, dst;
    if (get_2d(osrc, &src, 0, "src") < 0)
        return NULL;
    if (get_2d(odst, &dst, 1, "dst") < 0) {
        PyBuffer_Release(&src);
        return NULL;
    }
    PyObject *result = NULL;
    bg_dtype t;
    ptrdiff_t ldd;
    if (parse_dtype(&src, &t) < 0) {
        PyErr_Format(PyExc_TypeError, "src: unsupported element format '%s'", src.format ? src.format : "B");
        goto done;
    }
    if (check_matrix(&dst, 8, 0, &ldd, "dst") < 0)
        goto done;
    const size_t rows = (size_t)src.shape[0], k = (size_t)src.shape[1];
    if ((size_t)dst.shape[0] != rows || (size_t)dst.shape[1] < (k + 63) / 64) {
        PyErr_Format(PyExc_ValueError, "dst has shape (%zd, %zd), need (%zu, >= %zu)", dst.shape[0], dst.shape[1],
                     rows, (k + 63) / 64);
        goto done;
    }
    if (rows > 1 && dst.shape[1] > 0 && (ldd < dst.shape[1] && ldd > -dst.shape[1])) {
        PyErr_SetString(PyExc_ValueError, "dst rows overlap");
        goto done;
    }
    if (nthreads < 1) {
        PyErr_SetString(PyExc_ValueError, "nthreads must be >= 1");
        goto done;
    }
    {
        bg_pack_args p;
        p.src = (const char *)src.buf;
        p.s0 = (ptrdiff_t)src.strides[0];
        p.s1 = (ptrdiff_t)src.strides[1];
        p.dtype = t;
        p.rows = rows;
        p.k = k;
        p.dst = (uint64_t *)dst.buf;
        p.ldd = ldd;
        p.dwords = (size_t)dst.shape[1];
        p.check_pm1 = check;
        long long bad = -1;
        if (rows > 0 && p.dwords > 0) {
            Py_BEGIN_ALLOW_THREADS
            bad = bg_pack(&p, nthreads);
            Py_END_ALLOW_THREADS
        }
        result = PyLong_FromLongLong(bad);
    }
done:
    PyBuffer_Release(&dst);
    PyBuffer_Release(&src);
    return result;
}

/* ---- gemm ------------------------------------------------------------------------------------- */
typedef struct {
    Py_buffer a, b, c;
    int have_a, have_b, have_c;
    bg_gemm_args g;
} gemm_call;

static void gemm_release(gemm_call *gc)
{
    if (gc->have_c) PyBuffer_Release(&gc->c);
    if (gc->have_b) PyBuffer_Release(&gc->b);
    if (gc->have_a) PyBuffer_Release(&gc->a);
}

/* Gets and checks the three buffers; fills gc->g. Returns -1 with an exception set. */
static int gemm_prepare(gemm_call *gc, PyObject *oa, PyObject *ob, long long k, PyObject *oc)
{
    gc->have_a = gc->have_b = gc->have_c = 0;
    if (get_2d(oa, &gc->a, 0, "a") < 0) return -1;
    gc->have_a = 1;
    if (get_2d(ob, &gc->b, 0, "b") < 0) return -1;
    gc->have_b = 1;
    if (get_2d(oc, &gc->c, 1, "out") < 0) return -1;
    gc->have_c = 1;
    ptrdiff_t lda, ldb, ldc;
    if (check_matrix(&gc->a, 8, 0, &lda, "a") < 0 || check_matrix(&gc->b, 8, 0, &ldb, "b") < 0 ||
        check_matrix(&gc->c, 4, 1, &ldc, "out") < 0)
        return -1;
    const Py_ssize_t W = gc->a.shape[1];
    if (gc->b.shape[1] != W) {
        PyErr_Format(PyExc_ValueError, "a has %zd words per row, b has %zd", W, gc->b.shape[1]);
        return -1;
    }
    if (k < 0 || k > 64LL * (long long)W || k > 0x7fffffffLL) {
        PyErr_Format(PyExc_ValueError, "k=%lld does not fit %zd words per row (or int32 output)", k, W);
        return -1;
    }
    if (gc->c.shape[0] != gc->a.shape[0] || gc->c.shape[1] != gc->b.shape[0]) {
        PyErr_Format(PyExc_ValueError, "out has shape (%zd, %zd), need (%zd, %zd)", gc->c.shape[0], gc->c.shape[1],
                     gc->a.shape[0], gc->b.shape[0]);
        return -1;
    }
    gc->g.a = (const uint64_t *)gc->a.buf;
    gc->g.lda = lda;
    gc->g.b = (const uint64_t *)gc->b.buf;
    gc->g.ldb = ldb;
    gc->g.c = (int32_t *)gc->c.buf;
    gc->g.ldc = ldc;
    gc->g.m = (size_t)gc->a.shape[0];
    gc->g.n = (size_t)gc->b.shape[0];
    gc->g.k = (size_t)k;
    gc->g.bprep = NULL;
    return 0;
}

static PyObject *py_gemm(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *oa, *ob, *oc;
    long long k;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOLOii:gemm", &oa, &ob, &k, &oc, &path, &nthreads))
        return NULL;
    if (path < BG_PATH_AUTO || path >= BG_NPATHS || (path >= 0 && !bg_path_supported(path))) {
        PyErr_Format(PyExc_ValueError, "kernel path %d is not available on this CPU", path);
        return NULL;
    }
    if (nthreads < 1) {
        PyErr_SetString(PyExc_ValueError, "nthreads must be >= 1");
        return NULL;
    }
    gemm_call gc;
    if (gemm_prepare(&gc, oa, ob, k, oc) < 0) {
        gemm_release(&gc);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    bg_gemm(&gc.g, path, nthreads);
    Py_END_ALLOW_THREADS
    gemm_release(&gc);
    Py_RETURN_NONE;
}

static PyObject *py_gemm_naive(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *oa, *ob, *oc;
    long long k;
    int hw;
    if (!PyArg_ParseTuple(args, "OOLOp:gemm_naive", &oa, &ob, &k, &oc, &hw))
        return NULL;
    if (hw && !bg_path_supported(BG_PATH_POPCNT)) {
        PyErr_SetString(PyExc_ValueError, "this CPU has no POPCNT instruction");
        return NULL;
    }
    gemm_call gc;
    if (gemm_prepare(&gc, oa, ob, k, oc) < 0) {
        gemm_release(&gc);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    bg_gemm_naive(&gc.g, hw);
    Py_END_ALLOW_THREADS
    gemm_release(&gc);
    Py_RETURN_NONE;
}

static PyObject *py_plan_threads(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t m, n, k;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "nnnii:plan_threads", &m, &n, &k, &path, &nthreads))
        return NULL;
    if (m < 0 || n < 0 || k < 0 || nthreads < 1 || path < BG_PATH_AUTO || path >= BG_NPATHS) {
        PyErr_SetString(PyExc_ValueError, "plan_threads: bad argument");
        return NULL;
    }
    bg_gemm_args g = {NULL, 0, NULL, 0, NULL, 0, (size_t)m, (size_t)n, (size_t)k, NULL};
    if (path < 0)
        path = bg_best_path();
    return PyLong_FromLong(bg_plan_threads(&g, path, nthreads));
}

/* ---- prepared B ------------------------------------------------------------------------------- */
/* A 1-D, C-contiguous byte buffer of exactly `bytes` bytes, 64-byte aligned (the panels are read with
 * aligned vector loads). */
int get_prep(PyObject *obj, Py_buffer *v, int writable, size_t bytes, const char *what)
{
    if (PyObject_GetBuffer(obj, v, writable ? PyBUF_CONTIG : PyBUF_CONTIG_RO) < 0)
        return -1;
    if ((size_t)v->len != bytes) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, the prepared matrix needs %zu (prepared for another "
                     "path or shape?)", what, v->len, bytes);
        PyBuffer_Release(v);
        return -1;
    }
    if (bytes > 0 && ((uintptr_t)v->buf) % 64 != 0) { /* (an empty buffer's pointer is never read) */
        PyErr_Format(PyExc_ValueError, "%s is not 64-byte aligned", what);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

int check_path_arg(int path)
{
    if (path < 0 || path >= BG_NPATHS || !bg_path_supported(path)) {
        PyErr_Format(PyExc_ValueError, "kernel path %d is not available on this CPU", path);
        return -1;
    }
    return 0;
}

static PyObject *py_prepared_bytes(PyObject *self, PyObject *args)
{
    (void)self;
    int path;
    Py_ssize_t n, k;
    if (!PyArg_ParseTuple(args, "inn:prepared_bytes", &path, &n, &k))
        return NULL;
    if (path < 0 || path >= BG_NPATHS || n < 0 || k < 0) {
        PyErr_SetString(PyExc_ValueError, "prepared_bytes: bad argument");
        return NULL;
    }
    return PyLong_FromSize_t(bg_prepared_bytes(path, (size_t)n, (size_t)k));
}

static PyObject *py_prepare(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ob, *odst;
    long long k;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OLOii:prepare", &ob, &k, &odst, &path, &nthreads))
        return NULL;
    if (check_path_arg(path) < 0)
        return NULL;
    if (nthreads < 1) {
        PyErr_SetString(PyExc_ValueError, "nthreads must be >= 1");
        return NULL;
    }
    Py_buffer b, dst;
    ptrdiff_t ldb;
    if (get_2d(ob, &b, 0, "b") < 0)
        return NULL;
    if (check_matrix(&b, 8, 0, &ldb, "b") < 0) {
        PyBuffer_Release(&b);
        return NULL;
    }
    if (k < 0 || k > 64LL * (long long)b.shape[1] || k > 0x7fffffffLL) {
        PyErr_Format(PyExc_ValueError, "k=%lld does not fit %zd words per row (or int32 output)", k, b.shape[1]);
        PyBuffer_Release(&b);
        return NULL;
    }
    const size_t n = (size_t)b.shape[0];
    if (get_prep(odst, &dst, 1, bg_prepared_bytes(path, n, (size_t)k), "dst") < 0) {
        PyBuffer_Release(&b);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    bg_prepare(path, (const uint64_t *)b.buf, ldb, n, (size_t)k, dst.buf, nthreads);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&dst);
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

static PyObject *py_gemm_prepared(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *oa, *ob, *oprep, *oc;
    long long k;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOOLOii:gemm_prepared", &oa, &ob, &oprep, &k, &oc, &path, &nthreads))
        return NULL;
    if (check_path_arg(path) < 0)
        return NULL;
    if (nthreads < 1) {
        PyErr_SetString(PyExc_ValueError, "nthreads must be >= 1");
        return NULL;
    }
    gemm_call gc;
    if (gemm_prepare(&gc, oa, ob, k, oc) < 0) {
        gemm_release(&gc);
        return NULL;
    }
    /* the size check keeps every read in bounds (a buffer for another path or shape has another
     * size, or none); that it was made for this very k is checked on the Python side, which records it */
    Py_buffer prep;
    const size_t bytes = bg_prepared_bytes(path, gc.g.n, gc.g.k);
    if (get_prep(oprep, &prep, 0, bytes, "prep") < 0) {
        gemm_release(&gc);
        return NULL;
    }
    gc.g.bprep = bytes ? prep.buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    bg_gemm(&gc.g, path, nthreads);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&prep);
    gemm_release(&gc);
    Py_RETURN_NONE;
}

/* ---- threshold epilogue ----------------------------------------------------------------------- */
/* A 1-D contiguous int32 vector of length n. */
int get_vec_i32(PyObject *obj, Py_buffer *v, Py_ssize_t n, const char *what)
{
    if (PyObject_GetBuffer(obj, v, PyBUF_RECORDS_RO) < 0)
        return -1;
    bg_dtype t;
    if (v->ndim != 1 || v->shape == NULL || v->shape[0] != n || parse_dtype(v, &t) < 0 || t != BG_T_I32 ||
        (n > 1 && v->strides && v->strides[0] != 4) || ((uintptr_t)v->buf) % 4 != 0 || v->suboffsets) {
        PyErr_Format(PyExc_ValueError, "%s must be a contiguous 1-D int32 array of length %zd", what, n);
        PyBuffer_Release(v);
        return -1;
    }
    return 0;
}

static PyObject *py_threshold_pack(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *oacc, *osign, *othr, *oout;
    long long bias;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOOLOii:threshold_pack", &oacc, &osign, &othr, &bias, &oout, &path, &nthreads))
        return NULL;
    if (check_path_arg(path) < 0)
        return NULL;
    if (nthreads < 1) {
        PyErr_SetString(PyExc_ValueError, "nthreads must be >= 1");
        return NULL;
    }
    if (bias < -0x80000000LL || bias > 0x7fffffffLL) {
        PyErr_SetString(PyExc_ValueError, "bias must fit int32");
        return NULL;
    }
    Py_buffer acc, sign, thr, out;
    int have_sign = 0, have_thr = 0, have_out = 0;
    PyObject *result = NULL;
    ptrdiff_t ldacc, ldo;
    if (get_2d(oacc, &acc, 0, "acc") < 0)
        return NULL;
    if (check_matrix(&acc, 4, 1, &ldacc, "acc") < 0)
        goto done;
    const Py_ssize_t m = acc.shape[0], n = acc.shape[1];
    if (get_vec_i32(osign, &sign, n, "sign") < 0)
        goto done;
    have_sign = 1;
    if (get_vec_i32(othr, &thr, n, "thr") < 0)
        goto done;
    have_thr = 1;
    if (get_2d(oout, &out, 1, "out") < 0)
        goto done;
    have_out = 1;
    if (check_matrix(&out, 8, 0, &ldo, "out") < 0)
        goto done;
    if (out.shape[0] != m || out.shape[1] != (n + 63) / 64) {
        PyErr_Format(PyExc_ValueError, "out has shape (%zd, %zd), need (%zd, %zd)", out.shape[0], out.shape[1], m,
                     (n + 63) / 64);
        goto done;
    }
    if (m > 1 && out.shape[1] > 0 && ldo < out.shape[1] && ldo > -out.shape[1]) {
        PyErr_SetString(PyExc_ValueError, "out rows overlap");
        goto done;
    }
    {
        bg_threshold_args t;
        t.acc = (const int32_t *)acc.buf;
        t.ldacc = ldacc;
        t.m = (size_t)m;
        t.n = (size_t)n;
        t.sign = (const int32_t *)sign.buf;
        t.thr = (const int32_t *)thr.buf;
        t.bias = (int32_t)bias;
        t.out = (uint64_t *)out.buf;
        t.ldo = ldo;
        Py_BEGIN_ALLOW_THREADS
        bg_threshold_pack(&t, path, nthreads);
        Py_END_ALLOW_THREADS
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (have_out) PyBuffer_Release(&out);
    if (have_thr) PyBuffer_Release(&thr);
    if (have_sign) PyBuffer_Release(&sign);
    PyBuffer_Release(&acc);
    return result;
}

/* ---- first layer: uint8 x +-1 ----------------------------------------------------------------- */
static PyObject *py_u8_prepared_bytes(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t n, k;
    if (!PyArg_ParseTuple(args, "nn:u8_prepared_bytes", &n, &k))
        return NULL;
    if (n < 0 || k < 0) {
        PyErr_SetString(PyExc_ValueError, "u8_prepared_bytes: bad argument");
        return NULL;
    }
    return PyLong_FromSize_t(bg_u8_prepared_bytes((size_t)n, (size_t)k));
}

static PyObject *py_u8_prepare(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ow, *odst;
    if (!PyArg_ParseTuple(args, "OO:u8_prepare", &ow, &odst))
        return NULL;
    Py_buffer w, dst;
    if (get_2d(ow, &w, 0, "w") < 0)
        return NULL;
    bg_dtype t;
    if (parse_dtype(&w, &t) < 0 || t != BG_T_I8) {
        PyErr_SetString(PyExc_TypeError, "w must hold int8 values");
        PyBuffer_Release(&w);
        return NULL;
    }
    const size_t n = (size_t)w.shape[0], k = (size_t)w.shape[1];
    if (get_prep(odst, &dst, 1, bg_u8_prepared_bytes(n, k), "dst") < 0) {
        PyBuffer_Release(&w);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    bg_u8_prepare((const int8_t *)w.buf, (ptrdiff_t)w.strides[0], (ptrdiff_t)w.strides[1], n, k, (int8_t *)dst.buf);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&dst);
    PyBuffer_Release(&w);
    Py_RETURN_NONE;
}

static PyObject *py_u8_gemm(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ox, *owp, *oc;
    Py_ssize_t n;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOnOii:u8_gemm", &ox, &owp, &n, &oc, &path, &nthreads))
        return NULL;
    if (check_path_arg(path) < 0)
        return NULL;
    if (nthreads < 1 || n < 0) {
        PyErr_SetString(PyExc_ValueError, "nthreads must be >= 1 and n >= 0");
        return NULL;
    }
    Py_buffer x, wp, c;
    PyObject *result = NULL;
    int have_wp = 0, have_c = 0;
    ptrdiff_t ldc;
    bg_dtype t;
    if (get_2d(ox, &x, 0, "x") < 0)
        return NULL;
    if (parse_dtype(&x, &t) < 0 || t != BG_T_U8) {
        PyErr_SetString(PyExc_TypeError, "x must hold uint8 values");
        goto done;
    }
    if (x.shape[1] > 1 && x.strides[1] != 1) {
        PyErr_SetString(PyExc_ValueError, "x must have contiguous rows");
        goto done;
    }
    const size_t m = (size_t)x.shape[0], k = (size_t)x.shape[1];
    if (get_prep(owp, &wp, 0, bg_u8_prepared_bytes((size_t)n, k), "wp") < 0)
        goto done;
    have_wp = 1;
    if (get_2d(oc, &c, 1, "out") < 0)
        goto done;
    have_c = 1;
    if (check_matrix(&c, 4, 1, &ldc, "out") < 0)
        goto done;
    if ((size_t)c.shape[0] != m || c.shape[1] != n) {
        PyErr_Format(PyExc_ValueError, "out has shape (%zd, %zd), need (%zu, %zd)", c.shape[0], c.shape[1], m, n);
        goto done;
    }
    if (k > 0 && (double)k * 255.0 > 2147483647.0) {
        PyErr_SetString(PyExc_ValueError, "k too large for int32 sums");
        goto done;
    }
    {
        bg_u8_args g;
        g.x = (const uint8_t *)x.buf;
        g.ldx = x.shape[0] > 1 ? (ptrdiff_t)x.strides[0] : 0;
        g.wp = (const int8_t *)wp.buf;
        g.c = (int32_t *)c.buf;
        g.ldc = ldc;
        g.m = m;
        g.n = (size_t)n;
        g.k = k;
        Py_BEGIN_ALLOW_THREADS
        bg_u8_gemm(&g, path, nthreads);
        Py_END_ALLOW_THREADS
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (have_c) PyBuffer_Release(&c);
    if (have_wp) PyBuffer_Release(&wp);
    PyBuffer_Release(&x);
    return result;
}

static PyObject *py_path_names(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    PyObject *t = PyTuple_New(BG_NPATHS);
    if (!t)
        return NULL;
    for (int p = 0; p < BG_NPATHS; p++) {
        PyObject *s = PyUnicode_FromString(bg_path_name(p));
        if (!s) {
            Py_DECREF(t);
            return NULL;
        }
        PyTuple_SET_ITEM(t, p, s);
    }
    return t;
}

static PyObject *py_supported_paths(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    PyObject *l = PyList_New(0);
    if (!l)
        return NULL;
    for (int p = 0; p < BG_NPATHS; p++) {
        if (!bg_path_supported(p))
            continue;
        PyObject *s = PyUnicode_FromString(bg_path_name(p));
        if (!s || PyList_Append(l, s) < 0) {
            Py_XDECREF(s);
            Py_DECREF(l);
            return NULL;
        }
        Py_DECREF(s);
    }
    PyObject *t = PyList_AsTuple(l);
    Py_DECREF(l);
    return t;
}

static PyObject *py_best_path(PyObject *self, PyObject *noargs)
{
    (void)self;
    (void)noargs;
    return PyUnicode_FromString(bg_path_name(bg_best_path()));
}

static PyMethodDef bitgemm_methods[] = {
    {"pack", py_pack, METH_VARARGS,
     "pack(src, dst, check_pm1, nthreads) -> int\n\nPack 2-D src (bit = value < 0) into uint64 dst; returns -1 or "
     "the flat index of the first value that is not +-1 when check_pm1."},
    {"gemm", py_gemm, METH_VARARGS,
     "gemm(pa, pb, k, out, path, nthreads)\n\nout[i, j] = k - 2 * popcount(pa[i] ^ pb[j]) over the first k bits."},
    {"gemm_naive", py_gemm_naive, METH_VARARGS,
     "gemm_naive(pa, pb, k, out, hw_popcount)\n\nThe naive reference kernel (one thread, no blocking)."},
    {"plan_threads", py_plan_threads, METH_VARARGS,
     "plan_threads(m, n, k, path, nthreads) -> int\n\nThreads gemm would use for an m x n x k problem."},
    {"prepared_bytes", py_prepared_bytes, METH_VARARGS,
     "prepared_bytes(path, n, k) -> int\n\nBytes of n packed rows of k bits prepared for path (0: nothing to prepare)."},
    {"prepare", py_prepare, METH_VARARGS,
     "prepare(pb, k, dst, path, nthreads)\n\nWrite packed B in path's native layout into dst (64-byte aligned)."},
    {"gemm_prepared", py_gemm_prepared, METH_VARARGS,
     "gemm_prepared(pa, pb, prep, k, out, path, nthreads)\n\ngemm with B also given as prepared for path."},
    {"threshold_pack", py_threshold_pack, METH_VARARGS,
     "threshold_pack(acc, sign, thr, bias, out, path, nthreads)\n\nout bit (i, j) = sign[j] * (acc[i, j] - bias) < "
     "thr[j], packed little-endian into uint64 words; pad bits 0."},
    {"u8_prepared_bytes", py_u8_prepared_bytes, METH_VARARGS,
     "u8_prepared_bytes(n, k) -> int\n\nBytes of n rows of k +-1 weights prepared for u8_gemm."},
    {"u8_prepare", py_u8_prepare, METH_VARARGS,
     "u8_prepare(w, dst)\n\nint8 weights (N, K) -> u8_gemm's panels in dst (64-byte aligned)."},
    {"u8_gemm", py_u8_gemm, METH_VARARGS,
     "u8_gemm(x, wp, n, out, path, nthreads)\n\nout[M, N] = uint8 x (M, K) times the prepared weights, exact."},
    {"path_names", py_path_names, METH_NOARGS, "path_names() -> tuple of all path names, by id"},
    {"supported_paths", py_supported_paths, METH_NOARGS, "supported_paths() -> names of the paths this CPU runs"},
    {"best_path", py_best_path, METH_NOARGS, "best_path() -> name of the fastest path this CPU runs"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef bitgemm_module = {
    PyModuleDef_HEAD_INIT, "_bitgemm",
    "Binary (XNOR + popcount) GEMM and bit packing; use lowbit.kernels, not this module.", -1, bitgemm_methods,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__bitgemm(void)
{
    PyObject *m = PyModule_Create(&bitgemm_module);
    if (m && PyModule_AddFunctions(m, qg_methods) < 0) { /* the k-bit GEMM (qgemm_module.c) */
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
