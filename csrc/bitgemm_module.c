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
 *   path_names() / supported_paths() / cpu_features() -> tuple of str; best_path() -> str  (lowbit_cpu_py.h)
 *   qg_*: the k-bit GEMM, registered from qgemm_module.c (same module: bitgemm's dispatch and threads)
 *   conv_*, conv2d: the binary convolution, registered from bitconv_module.c (same module)
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "bitgemm.h"
#include "lowbit_cpu_py.h"
#include "pybuf.h"

extern PyMethodDef qg_methods[]; /* qgemm_module.c */
extern PyMethodDef kc_methods[]; /* kconv_module.c */
extern PyMethodDef bc_methods[]; /* bitconv_module.c */

/* bg_dtype of an element type pybuf.h recognises (the packer reads every one of them). */
static bg_dtype to_bg_dtype(int t)
{
    static const bg_dtype map[] = {BG_T_I8, BG_T_I8, BG_T_I16, BG_T_I32, BG_T_I64, BG_T_U8,
                                   BG_T_U16, BG_T_U32, BG_T_U64, BG_T_F32, BG_T_F64};
    return map[t]; /* index 0 (LB_T_ANY) never comes here: lb_buf_get(LB_T_KNOWN) rejected it */
}

/* A packed operand (rows of 64-bit words) or an int32 matrix: 2-D with contiguous, aligned rows. */
#define WORDS(bs, obj, name) lb_buf_get(bs, obj, name, LB_T_WORD64, 2, LB_BUF_ROWS)
#define I32_OUT(bs, obj, name) lb_buf_get(bs, obj, name, LB_T_I32, 2, LB_BUF_WRITABLE | LB_BUF_ROWS)

/* k bits must fit W words per row and an int32 sum. */
static int check_k(long long k, Py_ssize_t W)
{
    if (k < 0 || k > 64LL * (long long)W || k > 0x7fffffffLL) {
        PyErr_Format(PyExc_ValueError, "k=%lld does not fit %zd words per row (or int32 output)", k, W);
        return -1;
    }
    return 0;
}

/* ---- pack ------------------------------------------------------------------------------------- */
static PyObject *py_pack(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *osrc, *odst;
    int check, nthreads;
    if (!PyArg_ParseTuple(args, "OOpi:pack", &osrc, &odst, &check, &nthreads))
        return NULL;
    LB_BINDING(bs, result);
    Py_buffer *src = lb_buf_get(&bs, osrc, "src", LB_T_KNOWN, 2, 0); /* any strides: the packer walks them */
    Py_buffer *dst = src ? lb_buf_get(&bs, odst, "dst", LB_T_WORD64, 2, LB_BUF_WRITABLE | LB_BUF_ROWS) : NULL;
    if (!dst)
        goto done;
    const size_t rows = (size_t)src->shape[0], k = (size_t)src->shape[1];
    const ptrdiff_t ldd = lb_buf_ld(dst);
    if (lb_buf_expect_rows(dst, "dst", rows, (k + 63) / 64) < 0 ||
        lb_buf_expect_disjoint(dst, "dst", ldd, dst->shape[1]) < 0 || lb_check_nthreads(nthreads) < 0)
        goto done;
    {
        const bg_pack_args p = {.src = (const char *)src->buf, .s0 = (ptrdiff_t)src->strides[0],
                                .s1 = (ptrdiff_t)src->strides[1], .dtype = to_bg_dtype(lb_buf_elem(src)),
                                .rows = rows, .k = k, .dst = (uint64_t *)dst->buf, .ldd = ldd,
                                .dwords = (size_t)dst->shape[1], .check_pm1 = check};
        long long bad = -1;
        if (rows > 0 && p.dwords > 0)
            LB_NOGIL(bad = bg_pack(&p, nthreads));
        result = PyLong_FromLongLong(bad);
    }
    LB_BINDING_EXIT(bs, result);
}

/* ---- gemm ------------------------------------------------------------------------------------- */
/* Acquires and checks a, b and out into bs and fills *g. Returns -1 with an exception set. */
static int gemm_operands(lb_bufset *bs, PyObject *oa, PyObject *ob, long long k, PyObject *oc, bg_gemm_args *g)
{
    Py_buffer *a = WORDS(bs, oa, "a");
    Py_buffer *b = a ? WORDS(bs, ob, "b") : NULL;
    Py_buffer *c = b ? I32_OUT(bs, oc, "out") : NULL;
    if (!c)
        return -1;
    const Py_ssize_t W = a->shape[1];
    if (b->shape[1] != W) {
        PyErr_Format(PyExc_ValueError, "a has %zd words per row, b has %zd", W, b->shape[1]);
        return -1;
    }
    if (check_k(k, W) < 0 || lb_buf_expect_shape(c, "out", a->shape[0], b->shape[0]) < 0)
        return -1;
    *g = (bg_gemm_args){.a = (const uint64_t *)a->buf, .lda = lb_buf_ld(a), .b = (const uint64_t *)b->buf,
                        .ldb = lb_buf_ld(b), .c = (int32_t *)c->buf, .ldc = lb_buf_ld(c), .m = (size_t)a->shape[0],
                        .n = (size_t)b->shape[0], .k = (size_t)k, .bprep = NULL};
    return 0;
}

/* gemm and gemm_naive: the operands, then the kernel (hw < 0: bg_gemm on path, else bg_gemm_naive). */
static PyObject *run_gemm(PyObject *oa, PyObject *ob, long long k, PyObject *oc, int path, int nthreads, int hw)
{
    LB_BUFSET(bs);
    bg_gemm_args g;
    if (gemm_operands(&bs, oa, ob, k, oc, &g) < 0)
        return lb_bufset_return(&bs, NULL);
    if (hw < 0)
        LB_NOGIL(bg_gemm(&g, path, nthreads));
    else
        LB_NOGIL(bg_gemm_naive(&g, hw));
    return lb_bufset_return(&bs, lb_none());
}

static PyObject *py_gemm(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *oa, *ob, *oc;
    long long k;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOLOii:gemm", &oa, &ob, &k, &oc, &path, &nthreads))
        return NULL;
    if ((path != LB_PATH_AUTO && lb_check_path_arg(path) < 0) || lb_check_nthreads(nthreads) < 0)
        return NULL;
    return run_gemm(oa, ob, k, oc, path, nthreads, -1);
}

static PyObject *py_gemm_naive(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *oa, *ob, *oc;
    long long k;
    int hw;
    if (!PyArg_ParseTuple(args, "OOLOp:gemm_naive", &oa, &ob, &k, &oc, &hw))
        return NULL;
    if (hw && !lb_path_supported(LB_PATH_POPCNT))
        return lb_value_error("this CPU has no POPCNT instruction");
    return run_gemm(oa, ob, k, oc, LB_PATH_AUTO, 1, hw);
}

static PyObject *py_plan_threads(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_ssize_t m, n, k;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "nnnii:plan_threads", &m, &n, &k, &path, &nthreads))
        return NULL;
    if (m < 0 || n < 0 || k < 0 || nthreads < 1 || path < LB_PATH_AUTO || path >= LB_NPATHS)
        return lb_value_error("plan_threads: bad argument");
    bg_gemm_args g = {NULL, 0, NULL, 0, NULL, 0, (size_t)m, (size_t)n, (size_t)k, NULL};
    if (path < 0)
        path = lb_best_path();
    return PyLong_FromLong(bg_plan_threads(&g, path, nthreads));
}

/* ---- prepared B ------------------------------------------------------------------------------- */
static PyObject *py_prepared_bytes(PyObject *Py_UNUSED(self), PyObject *args)
{
    return lb_path_size(args, "inn:prepared_bytes", bg_prepared_bytes);
}

static PyObject *py_prepare(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ob, *odst;
    long long k;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OLOii:prepare", &ob, &k, &odst, &path, &nthreads) ||
        lb_check_path_nthreads(path, nthreads) < 0)
        return NULL;
    LB_BINDING(bs, result);
    Py_buffer *b = WORDS(&bs, ob, "b");
    if (!b)
        goto done;
    if (check_k(k, b->shape[1]) < 0)
        goto done;
    const size_t n = (size_t)b->shape[0];
    Py_buffer *dst = lb_buf_get_prep(&bs, odst, "dst", 1, bg_prepared_bytes(path, n, (size_t)k));
    if (!dst)
        goto done;
    LB_NOGIL(bg_prepare(path, (const uint64_t *)b->buf, lb_buf_ld(b), n, (size_t)k, dst->buf, nthreads));
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

static PyObject *py_gemm_prepared(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *oa, *ob, *oprep, *oc;
    long long k;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOOLOii:gemm_prepared", &oa, &ob, &oprep, &k, &oc, &path, &nthreads) ||
        lb_check_path_nthreads(path, nthreads) < 0)
        return NULL;
    LB_BINDING(bs, result);
    bg_gemm_args g;
    if (gemm_operands(&bs, oa, ob, k, oc, &g) < 0)
        goto done;
    /* the size check keeps every read in bounds (a buffer for another path or shape has another
     * size, or none); that it was made for this very k is checked on the Python side, which records it */
    const size_t bytes = bg_prepared_bytes(path, g.n, g.k);
    Py_buffer *prep = lb_buf_get_prep(&bs, oprep, "prep", 0, bytes);
    if (!prep)
        goto done;
    g.bprep = bytes ? prep->buf : NULL;
    LB_NOGIL(bg_gemm(&g, path, nthreads));
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

/* ---- threshold epilogue ----------------------------------------------------------------------- */
/* A contiguous 1-D int32 vector of length n (one message for every way to miss it: these come from the
 * runtime's folded BN, never from a user). */
static Py_buffer *get_vec_i32(lb_bufset *bs, PyObject *obj, Py_ssize_t n, const char *what)
{
    Py_buffer *v = lb_buf_get(bs, obj, what, LB_T_ANY, -1, 0);
    if (!v)
        return NULL;
    if (lb_buf_elem(v) != LB_T_I32 || v->ndim != 1 || v->shape[0] != n || !PyBuffer_IsContiguous(v, 'C')) {
        PyErr_Format(PyExc_ValueError, "%s must be a contiguous 1-D int32 array of length %zd, got format '%s', "
                     "%d-D, %zd bytes", what, n, v->format ? v->format : "B", v->ndim, v->len);
        return NULL;
    }
    return lb_buf_check(v, what, LB_T_I32, 1, LB_BUF_CONTIG) < 0 ? NULL : v; /* (alignment) */
}

static PyObject *py_threshold_pack(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *oacc, *osign, *othr, *oout;
    long long bias;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOOLOii:threshold_pack", &oacc, &osign, &othr, &bias, &oout, &path, &nthreads) ||
        lb_check_path_nthreads(path, nthreads) < 0)
        return NULL;
    if (bias < -0x80000000LL || bias > 0x7fffffffLL)
        return lb_value_error("bias must fit int32");
    LB_BINDING(bs, result);
    Py_buffer *acc = lb_buf_get(&bs, oacc, "acc", LB_T_I32, 2, LB_BUF_ROWS);
    if (!acc)
        goto done;
    const Py_ssize_t m = acc->shape[0], n = acc->shape[1];
    Py_buffer *sign = get_vec_i32(&bs, osign, n, "sign");
    Py_buffer *thr = sign ? get_vec_i32(&bs, othr, n, "thr") : NULL;
    Py_buffer *out = thr ? lb_buf_get(&bs, oout, "out", LB_T_WORD64, 2, LB_BUF_WRITABLE | LB_BUF_ROWS) : NULL;
    if (!out)
        goto done;
    const ptrdiff_t ldo = lb_buf_ld(out);
    if (lb_buf_expect_shape(out, "out", m, (n + 63) / 64) < 0 ||
        lb_buf_expect_disjoint(out, "out", ldo, out->shape[1]) < 0)
        goto done;
    {
        const bg_threshold_args t = {.acc = (const int32_t *)acc->buf, .ldacc = lb_buf_ld(acc), .m = (size_t)m,
                                     .n = (size_t)n, .sign = (const int32_t *)sign->buf,
                                     .thr = (const int32_t *)thr->buf, .bias = (int32_t)bias,
                                     .out = (uint64_t *)out->buf, .ldo = ldo};
        LB_NOGIL(bg_threshold_pack(&t, path, nthreads));
    }
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

/* ---- first layer: uint8 x +-1 ----------------------------------------------------------------- */
static PyObject *py_u8_prepared_bytes(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_ssize_t n, k;
    if (!PyArg_ParseTuple(args, "nn:u8_prepared_bytes", &n, &k))
        return NULL;
    if (n < 0 || k < 0)
        return lb_value_error("u8_prepared_bytes: bad argument");
    return PyLong_FromSize_t(bg_u8_prepared_bytes((size_t)n, (size_t)k));
}

static PyObject *py_u8_prepare(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ow, *odst;
    if (!PyArg_ParseTuple(args, "OO:u8_prepare", &ow, &odst))
        return NULL;
    LB_BINDING(bs, result);
    Py_buffer *w = lb_buf_get(&bs, ow, "w", LB_T_I8, 2, 0); /* any strides */
    if (!w)
        goto done;
    const size_t n = (size_t)w->shape[0], k = (size_t)w->shape[1];
    Py_buffer *dst = lb_buf_get_prep(&bs, odst, "dst", 1, bg_u8_prepared_bytes(n, k));
    if (!dst)
        goto done;
    LB_NOGIL(bg_u8_prepare((const int8_t *)w->buf, (ptrdiff_t)w->strides[0], (ptrdiff_t)w->strides[1], n, k,
                           (int8_t *)dst->buf));
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

static PyObject *py_u8_gemm(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *owp, *oc;
    Py_ssize_t n;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOnOii:u8_gemm", &ox, &owp, &n, &oc, &path, &nthreads))
        return NULL;
    if (lb_check_path_arg(path) < 0)
        return NULL;
    if (nthreads < 1 || n < 0)
        return lb_value_error("nthreads must be >= 1 and n >= 0");
    LB_BINDING(bs, result);
    Py_buffer *x = lb_buf_get(&bs, ox, "x", LB_T_U8, 2, LB_BUF_ROWS);
    if (!x)
        goto done;
    const size_t m = (size_t)x->shape[0], k = (size_t)x->shape[1];
    Py_buffer *wp = lb_buf_get_prep(&bs, owp, "wp", 0, bg_u8_prepared_bytes((size_t)n, k));
    Py_buffer *c = wp ? I32_OUT(&bs, oc, "out") : NULL;
    if (!c)
        goto done;
    if (lb_buf_expect_shape(c, "out", (Py_ssize_t)m, n) < 0)
        goto done;
    if (k > 0 && (double)k * 255.0 > 2147483647.0) {
        PyErr_SetString(PyExc_ValueError, "k too large for int32 sums");
        goto done;
    }
    {
        const bg_u8_args g = {.x = (const uint8_t *)x->buf, .ldx = lb_buf_ld(x), .wp = (const int8_t *)wp->buf,
                              .c = (int32_t *)c->buf, .ldc = lb_buf_ld(c), .m = m, .n = (size_t)n, .k = k};
        LB_NOGIL(bg_u8_gemm(&g, path, nthreads));
    }
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
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
    LB_CPU_PY_METHODS,
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef bitgemm_module = {
    PyModuleDef_HEAD_INIT, "_bitgemm",
    "Binary (XNOR + popcount) GEMM and bit packing; use lowbit.kernels, not this module.", -1, bitgemm_methods,
    NULL, NULL, NULL, NULL,
};

/* ABI_VERSION changes whenever a function's arguments change (lowbit.kernels.native checks it). */
PyMODINIT_FUNC PyInit__bitgemm(void)
{
    PyObject *m = PyModule_Create(&bitgemm_module);
    if (m && (PyModule_AddFunctions(m, qg_methods) < 0 || PyModule_AddFunctions(m, kc_methods) < 0 ||
              PyModule_AddFunctions(m, bc_methods) < 0 ||
              PyModule_AddIntConstant(m, "ABI_VERSION", 5) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
