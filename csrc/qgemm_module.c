/*
 * qgemm_module.c -- CPython bindings of the k-bit GEMM, registered in lowbit.kernels._bitgemm (so they
 * share bitgemm's dispatch and threads). The Python layer (lowbit/kernels/quant.py) validates values
 * and shapes and raises ShapeError; these checks only keep the C code inside its buffers.
 *
 *   qg_plane_words(k, bits) / qg_a8_stride(k) / qg_panel_bytes(n, k, store) -> int
 *   qg_pack_planes(codes, bits, dst, sums, nthreads)     codes (rows, K) uint8 -> bit planes
 *   qg_pack_a8(codes, dst, sums, nthreads)               -> zero-padded u8 rows
 *   qg_pack_panels(codes, store, zb, dst, sums)          -> int8 panels (64-byte aligned bytes)
 *   qg_gemm(kind, a, abits, b, bbits, bstore, n, k, sa, oa, sb, ob, zb, suma, sumb, out, path, nthreads)
 *   qg_plan_threads(kind, m, n, k, abits, bbits, path, nthreads) -> int
 *   qg_probe(kind, iters) -> (seconds, operations)
 * sums: an int32 vector of one entry per row, or None.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "lowbit_cpu_py.h"
#include "pybuf.h"
#include "qgemm.h"

/* a 2-D uint8 buffer with contiguous rows (codes, or padded u8 rows) */
#define CODES(bs, obj, name, flags) lb_buf_get(bs, obj, name, LB_T_U8, 2, LB_BUF_ROWS | (flags))

/* An optional int32 vector of n entries: None -> NULL with *ok = 1; else the view, or NULL with *ok = 0 and
 * an exception set. */
static int32_t *get_sums(lb_bufset *bs, PyObject *obj, Py_ssize_t n, unsigned flags, const char *what, int *ok)
{
    *ok = 1;
    if (obj == Py_None)
        return NULL;
    Py_buffer *v = lb_buf_get(bs, obj, what, LB_T_I32, 1, LB_BUF_CONTIG | flags);
    if (v && v->shape[0] != n) {
        PyErr_Format(PyExc_ValueError, "%s has %zd entries, need %zd", what, v->shape[0], n);
        v = NULL;
    }
    *ok = v != NULL;
    return v ? (int32_t *)v->buf : NULL;
}

static PyObject *py_plane_words(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_ssize_t k;
    int bits;
    if (!PyArg_ParseTuple(args, "ni:qg_plane_words", &k, &bits) || k < 0 || bits < 1 || bits > 8)
        return PyErr_Occurred() ? NULL : (PyErr_SetString(PyExc_ValueError, "bad argument"), NULL);
    return PyLong_FromSize_t(qg_plane_words((size_t)k, bits));
}

static PyObject *py_a8_stride(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "n:qg_a8_stride", &k) || k < 0)
        return PyErr_Occurred() ? NULL : (PyErr_SetString(PyExc_ValueError, "bad argument"), NULL);
    return PyLong_FromSize_t(qg_a8_stride((size_t)k));
}

static PyObject *py_panel_bytes(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_ssize_t n, k;
    int store;
    if (!PyArg_ParseTuple(args, "nni:qg_panel_bytes", &n, &k, &store) || n < 0 || k < 0 ||
        (store != 2 && store != 4 && store != 8))
        return PyErr_Occurred() ? NULL : (PyErr_SetString(PyExc_ValueError, "bad argument"), NULL);
    return PyLong_FromSize_t(qg_panel_bytes((size_t)n, (size_t)k, store));
}

/* The three packers share one body: codes in, dst (its layout by `what`) and the optional row sums out. */
enum { PACK_PLANES, PACK_A8, PACK_PANELS };

typedef struct {
    int what;
    int bits;  /* PACK_PLANES */
    int store; /* PACK_PANELS, with zb */
    int zb;
    int nthreads;
} pack_spec;

/* Acquires and checks dst for the packer; returns it, or NULL with an exception set. */
static Py_buffer *pack_dst(lb_bufset *bs, PyObject *odst, const pack_spec *ps, size_t rows, size_t k)
{
    Py_buffer *dst;
    switch (ps->what) {
    case PACK_PLANES: {
        const size_t words = qg_plane_words(k, ps->bits);
        dst = lb_buf_get(bs, odst, "dst", LB_T_WORD64, 2, LB_BUF_WRITABLE | LB_BUF_ROWS);
        if (!dst || lb_buf_expect_rows(dst, "dst", rows, words) < 0)
            return NULL;
        if (rows > 1 && lb_buf_ld(dst) < (ptrdiff_t)words) {
            PyErr_SetString(PyExc_ValueError, "dst rows overlap");
            return NULL;
        }
        return dst;
    }
    case PACK_A8: {
        const size_t stride = qg_a8_stride(k);
        dst = CODES(bs, odst, "dst", LB_BUF_WRITABLE);
        if (dst && ((size_t)dst->shape[0] != rows || (size_t)dst->shape[1] < stride ||
                    (rows > 1 && lb_buf_ld(dst) < (ptrdiff_t)stride))) {
            PyErr_Format(PyExc_ValueError, "dst must have shape (%zu, >= %zu) and disjoint rows", rows, stride);
            return NULL;
        }
        return dst;
    }
    default:
        return lb_buf_get_prep(bs, odst, "dst", 1, qg_panel_bytes(rows, k, ps->store));
    }
}

static PyObject *pack_codes(PyObject *ox, PyObject *odst, PyObject *osums, const pack_spec *ps)
{
    LB_BINDING(bs, result);
    int ok;
    Py_buffer *x = CODES(&bs, ox, "codes", 0);
    if (!x)
        goto done;
    const size_t rows = (size_t)x->shape[0], k = (size_t)x->shape[1];
    const uint8_t *src = (const uint8_t *)x->buf;
    const ptrdiff_t lds = lb_buf_ld(x);
    Py_buffer *dst = pack_dst(&bs, odst, ps, rows, k);
    if (!dst)
        goto done;
    int32_t *sums = get_sums(&bs, osums, (Py_ssize_t)rows, LB_BUF_WRITABLE, "sums", &ok);
    if (!ok)
        goto done;
    const ptrdiff_t ldd = ps->what == PACK_PANELS ? 0 : lb_buf_ld(dst);
    void *d = dst->buf;
    switch (ps->what) {
    case PACK_PLANES:
        LB_NOGIL(qg_pack_planes(src, lds, rows, k, ps->bits, (uint64_t *)d, ldd, sums, ps->nthreads));
        break;
    case PACK_A8:
        LB_NOGIL(qg_pack_a8(src, lds, rows, k, (uint8_t *)d, ldd, sums, ps->nthreads));
        break;
    default:
        LB_NOGIL(qg_pack_panels(src, lds, rows, k, ps->store, ps->zb, (uint8_t *)d, sums));
    }
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

static PyObject *py_pack_planes(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *odst, *osums;
    pack_spec ps = {PACK_PLANES, 0, 0, 0, 0};
    if (!PyArg_ParseTuple(args, "OiOOi:qg_pack_planes", &ox, &ps.bits, &odst, &osums, &ps.nthreads))
        return NULL;
    if (ps.bits < 1 || ps.bits > 8 || ps.nthreads < 1)
        return lb_value_error("qg_pack_planes: bits must be 1..8, nthreads >= 1");
    return pack_codes(ox, odst, osums, &ps);
}

static PyObject *py_pack_a8(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *odst, *osums;
    pack_spec ps = {PACK_A8, 0, 0, 0, 0};
    if (!PyArg_ParseTuple(args, "OOOi:qg_pack_a8", &ox, &odst, &osums, &ps.nthreads) ||
        lb_check_nthreads(ps.nthreads) < 0)
        return NULL;
    return pack_codes(ox, odst, osums, &ps);
}

static PyObject *py_pack_panels(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *odst, *osums;
    pack_spec ps = {PACK_PANELS, 0, 0, 0, 1};
    if (!PyArg_ParseTuple(args, "OiiOO:qg_pack_panels", &ox, &ps.store, &ps.zb, &odst, &osums))
        return NULL;
    if ((ps.store != 2 && ps.store != 4 && ps.store != 8) || ps.zb < 0 || ps.zb > 255 ||
        (ps.store != 8 && ps.zb != 0)) {
        PyErr_SetString(PyExc_ValueError, "qg_pack_panels: store must be 2, 4 or 8; zb 0..255 (0 below 8)");
        return NULL;
    }
    return pack_codes(ox, odst, osums, &ps);
}

static int check_kind_bits(int kind, int abits, int bbits, int bstore)
{
    const int ok = (kind == QG_XNOR && abits == 1 && bbits == 1) ||
                   (kind == QG_BITSERIAL && abits >= 1 && abits <= 4 && bbits >= 1 && bbits <= 4) ||
                   (kind == QG_INT8 && abits >= 1 && abits <= 8 && bbits >= 1 && bbits <= 8 &&
                    (bstore == 8 || (bstore == 4 && bbits <= 4) || (bstore == 2 && bbits <= 2)));
    if (!ok)
        PyErr_Format(PyExc_ValueError, "qg: bad kernel kind %d for %d x %d bits (store %d)", kind, abits, bbits,
                     bstore);
    return ok ? 0 : -1;
}

static PyObject *py_qg_gemm(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *oa, *ob, *osa, *osb, *oc;
    int kind, abits, bbits, bstore, sa, oa_, sb, ob_, zb, path, nthreads;
    Py_ssize_t n, k;
    if (!PyArg_ParseTuple(args, "iOiOiinniiiiiOOOii:qg_gemm", &kind, &oa, &abits, &ob, &bbits, &bstore, &n, &k, &sa,
                          &oa_, &sb, &ob_, &zb, &osa, &osb, &oc, &path, &nthreads))
        return NULL;
    if (lb_check_path_arg(path) < 0 || check_kind_bits(kind, abits, bbits, bstore) < 0)
        return NULL;
    if (nthreads < 1 || n < 0 || k < 0 || k > 0x7fffffffL)
        return lb_value_error("qg_gemm: nthreads >= 1, 0 <= n, 0 <= k < 2^31");
    LB_BINDING(bs, result);
    int ok;
    ptrdiff_t ldb = 0;
    Py_buffer *a = kind == QG_INT8 ? CODES(&bs, oa, "a", 0)
                                   : lb_buf_get(&bs, oa, "a", LB_T_WORD64, 2, LB_BUF_ROWS);
    if (!a)
        goto done;
    const size_t m = (size_t)a->shape[0];
    Py_buffer *b;
    if (kind == QG_INT8) {
        if ((size_t)a->shape[1] < qg_a8_stride((size_t)k)) {
            PyErr_Format(PyExc_ValueError, "a has %zd bytes per row, need >= %zu", a->shape[1], qg_a8_stride((size_t)k));
            goto done;
        }
        if (!(b = lb_buf_get_prep(&bs, ob, "b", 0, qg_panel_bytes((size_t)n, (size_t)k, bstore))))
            goto done;
    } else {
        if ((size_t)a->shape[1] < qg_plane_words((size_t)k, abits)) {
            PyErr_Format(PyExc_ValueError, "a has %zd words per row, need >= %zu", a->shape[1],
                         qg_plane_words((size_t)k, abits));
            goto done;
        }
        if (!(b = lb_buf_get(&bs, ob, "b", LB_T_WORD64, 2, LB_BUF_ROWS)))
            goto done;
        ldb = lb_buf_ld(b);
        if (b->shape[0] != n || (size_t)b->shape[1] < qg_plane_words((size_t)k, bbits)) {
            PyErr_Format(PyExc_ValueError, "b has shape (%zd, %zd), need (%zd, >= %zu)", b->shape[0], b->shape[1], n,
                         qg_plane_words((size_t)k, bbits));
            goto done;
        }
    }
    const int32_t *suma = get_sums(&bs, osa, (Py_ssize_t)m, 0, "suma", &ok);
    if (!ok)
        goto done;
    const int32_t *sumb = get_sums(&bs, osb, n, 0, "sumb", &ok);
    if (!ok)
        goto done;
    Py_buffer *c = lb_buf_get(&bs, oc, "out", LB_T_I32, 2, LB_BUF_WRITABLE | LB_BUF_ROWS);
    if (!c)
        goto done;
    if (lb_buf_expect_shape(c, "out", (Py_ssize_t)m, n) < 0)
        goto done;
    {
        const qg_args g = {.kind = kind, .m = m, .n = (size_t)n, .k = (size_t)k, .a = a->buf, .lda = lb_buf_ld(a),
                           .abits = abits, .b = b->buf, .ldb = ldb, .bbits = bbits, .bstore = bstore, .sa = sa,
                           .oa = oa_, .sb = sb, .ob = ob_, .zb = zb, .suma = suma, .sumb = sumb,
                           .c = (int32_t *)c->buf, .ldc = lb_buf_ld(c)};
        LB_NOGIL(qg_gemm(&g, path, nthreads));
    }
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

static PyObject *py_qg_plan_threads(PyObject *Py_UNUSED(self), PyObject *args)
{
    int kind, abits, bbits, path, nthreads;
    Py_ssize_t m, n, k;
    if (!PyArg_ParseTuple(args, "innniiii:qg_plan_threads", &kind, &m, &n, &k, &abits, &bbits, &path, &nthreads))
        return NULL;
    if (lb_check_path_arg(path) < 0 || m < 0 || n < 0 || k < 0 || nthreads < 1 || abits < 1 || abits > 8 ||
        bbits < 1 || bbits > 8) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "qg_plan_threads: bad argument");
        return NULL;
    }
    const qg_args g = {.kind = kind, .m = (size_t)m, .n = (size_t)n, .k = (size_t)k, .abits = abits, .bbits = bbits};
    return PyLong_FromLong(qg_plan_threads(&g, path, nthreads));
}

static PyObject *py_qg_probe(PyObject *Py_UNUSED(self), PyObject *args)
{
    int kind;
    long iters;
    if (!PyArg_ParseTuple(args, "il:qg_probe", &kind, &iters))
        return NULL;
    if (iters < 1)
        return lb_value_error("iters must be >= 1");
    double t;
    Py_BEGIN_ALLOW_THREADS
    t = qg_probe(kind, iters);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(dd)", t, qg_probe_ops(kind) * (double)iters);
}

PyMethodDef qg_methods[] = {
    {"qg_probe", py_qg_probe, METH_VARARGS,
     "qg_probe(kind, iters) -> (seconds, operations): instruction-rate probe (qgemm_probe.c); seconds < 0: "
     "not on this CPU"},
    {"qg_plane_words", py_plane_words, METH_VARARGS, "qg_plane_words(k, bits) -> words per bit-plane row"},
    {"qg_a8_stride", py_a8_stride, METH_VARARGS, "qg_a8_stride(k) -> bytes per padded u8 row"},
    {"qg_panel_bytes", py_panel_bytes, METH_VARARGS, "qg_panel_bytes(n, k, store) -> bytes of the int8 panels"},
    {"qg_pack_planes", py_pack_planes, METH_VARARGS, "qg_pack_planes(codes, bits, dst, sums, nthreads)"},
    {"qg_pack_a8", py_pack_a8, METH_VARARGS, "qg_pack_a8(codes, dst, sums, nthreads)"},
    {"qg_pack_panels", py_pack_panels, METH_VARARGS, "qg_pack_panels(codes, store, zb, dst, sums)"},
    {"qg_gemm", py_qg_gemm, METH_VARARGS,
     "qg_gemm(kind, a, abits, b, bbits, bstore, n, k, sa, oa, sb, ob, zb, suma, sumb, out, path, nthreads)"},
    {"qg_plan_threads", py_qg_plan_threads, METH_VARARGS,
     "qg_plan_threads(kind, m, n, k, abits, bbits, path, nthreads) -> threads qg_gemm would use"},
    {NULL, NULL, 0, NULL},
};
