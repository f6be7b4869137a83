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
#include "bitgemm_py.h"
#include "qgemm.h"

/* a 2-D uint8 buffer with unit inner stride */
static int get_codes(PyObject *obj, Py_buffer *v, int writable, ptrdiff_t *ld, const char *what)
{
    if (get_2d(obj, v, writable, what) < 0)
        return -1;
    bg_dtype t;
    if (parse_dtype(v, &t) < 0 || t != BG_T_U8 || (v->shape[1] > 1 && v->strides[1] != 1)) {
        PyErr_Format(PyExc_ValueError, "%s must be a 2-D uint8 array with contiguous rows", what);
        PyBuffer_Release(v);
        return -1;
    }
    *ld = v->shape[0] > 1 ? (ptrdiff_t)v->strides[0] : 0;
    return 0;
}

/* an optional int32 vector: None -> *have = 0, ptr NULL */
static int get_sums(PyObject *obj, Py_buffer *v, Py_ssize_t n, int *have, const char *what)
{
    *have = 0;
    if (obj == Py_None)
        return 0;
    if (get_vec_i32(obj, v, n, what) < 0)
        return -1;
    *have = 1;
    return 0;
}

static PyObject *py_plane_words(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t k;
    int bits;
    if (!PyArg_ParseTuple(args, "ni:qg_plane_words", &k, &bits) || k < 0 || bits < 1 || bits > 8)
        return PyErr_Occurred() ? NULL : (PyErr_SetString(PyExc_ValueError, "bad argument"), NULL);
    return PyLong_FromSize_t(qg_plane_words((size_t)k, bits));
}

static PyObject *py_a8_stride(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t k;
    if (!PyArg_ParseTuple(args, "n:qg_a8_stride", &k) || k < 0)
        return PyErr_Occurred() ? NULL : (PyErr_SetString(PyExc_ValueError, "bad argument"), NULL);
    return PyLong_FromSize_t(qg_a8_stride((size_t)k));
}

static PyObject *py_panel_bytes(PyObject *self, PyObject *args)
{
    (void)self;
    Py_ssize_t n, k;
    int store;
    if (!PyArg_ParseTuple(args, "nni:qg_panel_bytes", &n, &k, &store) || n < 0 || k < 0 ||
        (store != 2 && store != 4 && store != 8))
        return PyErr_Occurred() ? NULL : (PyErr_SetString(PyExc_ValueError, "bad argument"), NULL);
    return PyLong_FromSize_t(qg_panel_bytes((size_t)n, (size_t)k, store));
}

static PyObject *py_pack_planes(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ox, *odst, *osums;
    int bits, nthreads;
    if (!PyArg_ParseTuple(args, "OiOOi:qg_pack_planes", &ox, &bits, &odst, &osums, &nthreads))
        return NULL;
    if (bits < 1 || bits > 8 || nthreads < 1) {
        PyErr_SetString(PyExc_ValueError, "qg_pack_planes: bits must be 1..8, nthreads >= 1");
        return NULL;
    }
    Py_buffer x, dst, sums;
    ptrdiff_t ldx, ldd;
    int have_sums = 0;
    PyObject *result = NULL;
    if (get_codes(ox, &x, 0, &ldx, "codes") < 0)
        return NULL;
    if (get_2d(odst, &dst, 1, "dst") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    const size_t rows = (size_t)x.shape[0], k = (size_t)x.shape[1];
    if (check_matrix(&dst, 8, 0, &ldd, "dst") < 0)
        goto done;
    if ((size_t)dst.shape[0] != rows || (size_t)dst.shape[1] < qg_plane_words(k, bits)) {
        PyErr_Format(PyExc_ValueError, "dst has shape (%zd, %zd), need (%zu, >= %zu)", dst.shape[0], dst.shape[1],
                     rows, qg_plane_words(k, bits));
        goto done;
    }
    if (rows > 1 && (ldd < (ptrdiff_t)qg_plane_words(k, bits))) {
        PyErr_SetString(PyExc_ValueError, "dst rows overlap");
        goto done;
    }
    if (get_sums(osums, &sums, (Py_ssize_t)rows, &have_sums, "sums") < 0)
        goto done;
    if (have_sums && sums.readonly) {
        PyErr_SetString(PyExc_ValueError, "sums is read-only");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    qg_pack_planes((const uint8_t *)x.buf, ldx, rows, k, bits, (uint64_t *)dst.buf, ldd,
                   have_sums ? (int32_t *)sums.buf : NULL, nthreads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    if (have_sums) PyBuffer_Release(&sums);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&x);
    return result;
}

static PyObject *py_pack_a8(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ox, *odst, *osums;
    int nthreads;
    if (!PyArg_ParseTuple(args, "OOOi:qg_pack_a8", &ox, &odst, &osums, &nthreads))
        return NULL;
    if (nthreads < 1) {
        PyErr_SetString(PyExc_ValueError, "nthreads must be >= 1");
        return NULL;
    }
    Py_buffer x, dst, sums;
    ptrdiff_t ldx, ldd;
    int have_sums = 0;
    PyObject *result = NULL;
    if (get_codes(ox, &x, 0, &ldx, "codes") < 0)
        return NULL;
    if (get_codes(odst, &dst, 1, &ldd, "dst") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    const size_t rows = (size_t)x.shape[0], k = (size_t)x.shape[1];
    if ((size_t)dst.shape[0] != rows || (size_t)dst.shape[1] < qg_a8_stride(k) ||
        (rows > 1 && ldd < (ptrdiff_t)qg_a8_stride(k))) {
        PyErr_Format(PyExc_ValueError, "dst must have shape (%zu, >= %zu) and disjoint rows", rows, qg_a8_stride(k));
        goto done;
    }
    if (get_sums(osums, &sums, (Py_ssize_t)rows, &have_sums, "sums") < 0)
        goto done;
    if (have_sums && sums.readonly) {
        PyErr_SetString(PyExc_ValueError, "sums is read-only");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    qg_pack_a8((const uint8_t *)x.buf, ldx, rows, k, (uint8_t *)dst.buf, ldd, have_sums ? (int32_t *)sums.buf : NULL,
               nthreads);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    if (have_sums) PyBuffer_Release(&sums);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&x);
    return result;
}

static PyObject *py_pack_panels(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ox, *odst, *osums;
    int store, zb;
    if (!PyArg_ParseTuple(args, "OiiOO:qg_pack_panels", &ox, &store, &zb, &odst, &osums))
        return NULL;
    if ((store != 2 && store != 4 && store != 8) || zb < 0 || zb > 255 || (store != 8 && zb != 0)) {
        PyErr_SetString(PyExc_ValueError, "qg_pack_panels: store must be 2, 4 or 8; zb 0..255 (0 below 8)");
        return NULL;
    }
    Py_buffer x, dst, sums;
    ptrdiff_t ldx;
    int have_sums = 0;
    PyObject *result = NULL;
    if (get_codes(ox, &x, 0, &ldx, "codes") < 0)
        return NULL;
    const size_t rows = (size_t)x.shape[0], k = (size_t)x.shape[1];
    if (get_prep(odst, &dst, 1, qg_panel_bytes(rows, k, store), "dst") < 0) {
        PyBuffer_Release(&x);
        return NULL;
    }
    if (get_sums(osums, &sums, (Py_ssize_t)rows, &have_sums, "sums") < 0)
        goto done;
    if (have_sums && sums.readonly) {
        PyErr_SetString(PyExc_ValueError, "sums is read-only");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    qg_pack_panels((const uint8_t *)x.buf, ldx, rows, k, store, zb, (uint8_t *)dst.buf,
                   have_sums ? (int32_t *)sums.buf : NULL);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    if (have_sums) PyBuffer_Release(&sums);
    PyBuffer_Release(&dst);
    PyBuffer_Release(&x);
    return result;
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

static PyObject *py_qg_gemm(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *oa, *ob, *osa, *osb, *oc;
    int kind, abits, bbits, bstore, sa, oa_, sb, ob_, zb, path, nthreads;
    Py_ssize_t n, k;
    if (!PyArg_ParseTuple(args, "iOiOiinniiiiiOOOii:qg_gemm", &kind, &oa, &abits, &ob, &bbits, &bstore, &n, &k, &sa,
                          &oa_, &sb, &ob_, &zb, &osa, &osb, &oc, &path, &nthreads))
        return NULL;
    if (check_path_arg(path) < 0 || check_kind_bits(kind, abits, bbits, bstore) < 0)
        return NULL;
    if (nthreads < 1 || n < 0 || k < 0 || k > 0x7fffffffL) {
        PyErr_SetString(PyExc_ValueError, "qg_gemm: nthreads >= 1, 0 <= n, 0 <= k < 2^31");
        return NULL;
    }
    Py_buffer a, b, suma, sumb, c;
    int have_b = 0, have_suma = 0, have_sumb = 0, have_c = 0;
    PyObject *result = NULL;
    ptrdiff_t lda, ldb = 0, ldc;
    if (kind == QG_INT8 ? get_codes(oa, &a, 0, &lda, "a") < 0 : get_2d(oa, &a, 0, "a") < 0)
        return NULL;
    const size_t m = (size_t)a.shape[0];
    if (kind == QG_INT8) {
        if ((size_t)a.shape[1] < qg_a8_stride((size_t)k)) {
            PyErr_Format(PyExc_ValueError, "a has %zd bytes per row, need >= %zu", a.shape[1], qg_a8_stride((size_t)k));
            goto done;
        }
        if (get_prep(ob, &b, 0, qg_panel_bytes((size_t)n, (size_t)k, bstore), "b") < 0)
            goto done;
        have_b = 1;
    } else {
        if (check_matrix(&a, 8, 0, &lda, "a") < 0)
            goto done;
        if ((size_t)a.shape[1] < qg_plane_words((size_t)k, abits)) {
            PyErr_Format(PyExc_ValueError, "a has %zd words per row, need >= %zu", a.shape[1],
                         qg_plane_words((size_t)k, abits));
            goto done;
        }
        if (get_2d(ob, &b, 0, "b") < 0)
            goto done;
        have_b = 1;
        if (check_matrix(&b, 8, 0, &ldb, "b") < 0)
            goto done;
        if (b.shape[0] != n || (size_t)b.shape[1] < qg_plane_words((size_t)k, bbits)) {
            PyErr_Format(PyExc_ValueError, "b has shape (%zd, %zd), need (%zd, >= %zu)", b.shape[0], b.shape[1], n,
                         qg_plane_words((size_t)k, bbits));
            goto done;
        }
    }
    if (get_sums(osa, &suma, (Py_ssize_t)m, &have_suma, "suma") < 0 ||
        get_sums(osb, &sumb, n, &have_sumb, "sumb") < 0)
        goto done;
    if (get_2d(oc, &c, 1, "out") < 0)
        goto done;
    have_c = 1;
    if (check_matrix(&c, 4, 1, &ldc, "out") < 0)
        goto done;
    if ((size_t)c.shape[0] != m || c.shape[1] != n) {
        PyErr_Format(PyExc_ValueError, "out has shape (%zd, %zd), need (%zu, %zd)", c.shape[0], c.shape[1], m, n);
        goto done;
    }
    {
        qg_args g;
        g.kind = kind;
        g.m = m;
        g.n = (size_t)n;
        g.k = (size_t)k;
        g.a = a.buf;
        g.lda = lda;
        g.abits = abits;
        g.b = b.buf;
        g.ldb = ldb;
        g.bbits = bbits;
        g.bstore = bstore;
        g.sa = sa;
        g.oa = oa_;
        g.sb = sb;
        g.ob = ob_;
        g.zb = zb;
        g.suma = have_suma ? (const int32_t *)suma.buf : NULL;
        g.sumb = have_sumb ? (const int32_t *)sumb.buf : NULL;
        g.c = (int32_t *)c.buf;
        g.ldc = ldc;
        Py_BEGIN_ALLOW_THREADS
        qg_gemm(&g, path, nthreads);
        Py_END_ALLOW_THREADS
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (have_c) PyBuffer_Release(&c);
    if (have_sumb) PyBuffer_Release(&sumb);
    if (have_suma) PyBuffer_Release(&suma);
    if (have_b) PyBuffer_Release(&b);
    PyBuffer_Release(&a);
    return result;
}

static PyObject *py_qg_plan_threads(PyObject *self, PyObject *args)
{
    (void)self;
    int kind, abits, bbits, path, nthreads;
    Py_ssize_t m, n, k;
    if (!PyArg_ParseTuple(args, "innniiii:qg_plan_threads", &kind, &m, &n, &k, &abits, &bbits, &path, &nthreads))
        return NULL;
    if (check_path_arg(path) < 0 || m < 0 || n < 0 || k < 0 || nthreads < 1 || abits < 1 || abits > 8 ||
        bbits < 1 || bbits > 8) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "qg_plan_threads: bad argument");
        return NULL;
    }
    qg_args g = {0};
    g.kind = kind;
    g.m = (size_t)m;
    g.n = (size_t)n;
    g.k = (size_t)k;
    g.abits = abits;
    g.bbits = bbits;
    return PyLong_FromLong(qg_plan_threads(&g, path, nthreads));
}

static PyObject *py_qg_probe(PyObject *self, PyObject *args)
{
    (void)self;
    int kind;
    long iters;
    if (!PyArg_ParseTuple(args, "il:qg_probe", &kind, &iters))
        return NULL;
    if (iters < 1) {
        PyErr_SetString(PyExc_ValueError, "iters must be >= 1");
        return NULL;
    }
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
