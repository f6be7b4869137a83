/*
 * bitconv_module.c -- CPython bindings of the binary convolution, registered into lowbit.kernels._bitgemm
 * (bitgemm_module.c adds bc_methods), so it shares the GEMM's dispatch and threads.
 *
 * lowbit/kernels/binconv.py validates every argument first and raises ShapeError with a readable message; the
 * checks here are the second line of defence that keeps any call in bounds (ValueError / TypeError).
 *
 *   conv_prepared_bytes(path, nout, kwords) -> int
 *   conv_prepare(w, kh, kw, cw, in_bits, dst, path) -> None      w: (nout, kh * kw * cw) words
 *   conv2d(x, wprep, nout, kh, kw, sh, sw, ph, pw, in_bits, sign, thr, bias, out, path, nthreads) -> None
 *        x (n, h, w, cw) words; out int32 (n, oh, ow, nout) when sign is None, else words (n, oh, ow,
 *        ceil(nout / 64)) of threshold bits
 *   conv_plan_threads(pixels, nout, kwords, path, nthreads) -> int
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "bitconv.h"
#include "lowbit_cpu_py.h"
#include "pybuf.h"

static PyObject *py_conv_prepared_bytes(PyObject *Py_UNUSED(self), PyObject *args)
{
    return lb_path_size(args, "inn:conv_prepared_bytes", bc_prepared_bytes);
}

static int check_geometry(Py_ssize_t kh, Py_ssize_t kw, Py_ssize_t cw, Py_ssize_t in_bits)
{
    if (kh < 1 || kw < 1 || cw < 1 || in_bits < 64 * cw - 63 || in_bits > 64 * cw ||
        (double)kh * (double)kw * (double)in_bits > 2147483647.0) {
        PyErr_SetString(PyExc_ValueError, "bad kernel geometry (kh, kw, cw >= 1; 64 cw - 63 <= in_bits <= 64 cw; "
                                          "kh kw in_bits < 2^31)");
        return -1;
    }
    return 0;
}

static PyObject *py_conv_prepare(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ow, *odst;
    Py_ssize_t kh, kw, cw, in_bits;
    int path;
    if (!PyArg_ParseTuple(args, "OnnnnOi:conv_prepare", &ow, &kh, &kw, &cw, &in_bits, &odst, &path) ||
        lb_check_path_arg(path) < 0 || check_geometry(kh, kw, cw, in_bits) < 0)
        return NULL;
    LB_BINDING(bs, result);
    Py_buffer *w = lb_buf_get(&bs, ow, "w", LB_T_WORD64, 2, LB_BUF_ROWS);
    if (!w)
        goto done;
    if (w->shape[1] != kh * kw * cw) {
        PyErr_Format(PyExc_ValueError, "w has %zd words per row, need kh * kw * cw = %zd", w->shape[1], kh * kw * cw);
        goto done;
    }
    const size_t nout = (size_t)w->shape[0];
    Py_buffer *dst = lb_buf_get_prep(&bs, odst, "dst", 1, bc_prepared_bytes(path, nout, (size_t)(kh * kw * cw)));
    if (!dst)
        goto done;
    LB_NOGIL(bc_prepare(path, (const uint64_t *)w->buf, lb_buf_ld(w), nout, (size_t)kh, (size_t)kw, (size_t)cw,
                        (size_t)in_bits, dst->buf));
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

static int expect_4d(const Py_buffer *v, const char *name, Py_ssize_t a, Py_ssize_t b, Py_ssize_t c, Py_ssize_t d)
{
    if (v->shape[0] != a || v->shape[1] != b || v->shape[2] != c || v->shape[3] != d) {
        PyErr_Format(PyExc_ValueError, "%s has shape (%zd, %zd, %zd, %zd), need (%zd, %zd, %zd, %zd)", name,
                     v->shape[0], v->shape[1], v->shape[2], v->shape[3], a, b, c, d);
        return -1;
    }
    return 0;
}

static Py_buffer *get_vec(lb_bufset *bs, PyObject *obj, Py_ssize_t n, const char *name)
{
    Py_buffer *v = lb_buf_get(bs, obj, name, LB_T_I32, 1, LB_BUF_CONTIG);
    if (v && v->shape[0] != n) {
        PyErr_Format(PyExc_ValueError, "%s has %zd values, need %zd", name, v->shape[0], n);
        return NULL;
    }
    return v;
}

static PyObject *py_conv2d(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *owp, *osign, *othr, *oout;
    Py_ssize_t nout, kh, kw, sh, sw, ph, pw, in_bits;
    long long bias;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOnnnnnnnnOOLOii:conv2d", &ox, &owp, &nout, &kh, &kw, &sh, &sw, &ph, &pw, &in_bits,
                          &osign, &othr, &bias, &oout, &path, &nthreads) ||
        lb_check_path_nthreads(path, nthreads) < 0)
        return NULL;
    if (nout < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 || bias < -0x80000000LL || bias > 0x7fffffffLL ||
        (osign == Py_None) != (othr == Py_None))
        return lb_value_error("conv2d: bad argument (nout, stride, padding, bias or thresholds)");
    LB_BINDING(bs, result);
    Py_buffer *x = lb_buf_get(&bs, ox, "x", LB_T_WORD64, 4, LB_BUF_CONTIG);
    if (!x)
        goto done;
    const Py_ssize_t n = x->shape[0], h = x->shape[1], w = x->shape[2], cw = x->shape[3];
    if (check_geometry(kh, kw, cw, in_bits) < 0)
        goto done;
    if (h + 2 * ph < kh || w + 2 * pw < kw) {
        PyErr_SetString(PyExc_ValueError, "conv2d: the padded input is smaller than the kernel");
        goto done;
    }
    const Py_ssize_t oh = (h + 2 * ph - kh) / sh + 1, ow = (w + 2 * pw - kw) / sw + 1;
    Py_buffer *wp = lb_buf_get_prep(&bs, owp, "wprep", 0, bc_prepared_bytes(path, (size_t)nout,
                                                                                (size_t)(kh * kw * cw)));
    if (!wp)
        goto done;
    Py_buffer *sign = NULL, *thr = NULL, *out;
    if (osign != Py_None) {
        sign = get_vec(&bs, osign, nout, "sign");
        thr = sign ? get_vec(&bs, othr, nout, "thr") : NULL;
        if (!thr)
            goto done;
        out = lb_buf_get(&bs, oout, "out", LB_T_WORD64, 4, LB_BUF_CONTIG | LB_BUF_WRITABLE);
        if (!out || expect_4d(out, "out", n, oh, ow, (nout + 63) / 64) < 0)
            goto done;
    } else {
        out = lb_buf_get(&bs, oout, "out", LB_T_I32, 4, LB_BUF_CONTIG | LB_BUF_WRITABLE);
        if (!out || expect_4d(out, "out", n, oh, ow, nout) < 0)
            goto done;
    }
    {
        const bc_conv_args a = {.x = (const uint64_t *)x->buf, .n = (size_t)n, .h = (size_t)h, .w = (size_t)w,
                                .cw = (size_t)cw, .in_bits = (size_t)in_bits, .kh = (size_t)kh, .kw = (size_t)kw,
                                .sh = (size_t)sh, .sw = (size_t)sw, .ph = (size_t)ph, .pw = (size_t)pw,
                                .oh = (size_t)oh, .ow = (size_t)ow, .wprep = wp->buf, .nout = (size_t)nout,
                                .acc = sign ? NULL : (int32_t *)out->buf, .bits = sign ? (uint64_t *)out->buf : NULL,
                                .sign = sign ? (const int32_t *)sign->buf : NULL,
                                .thr = thr ? (const int32_t *)thr->buf : NULL, .bias = (int32_t)bias};
        int rc = 0;
        LB_NOGIL(rc = bc_conv2d(&a, path, nthreads));
        if (rc < 0) {
            PyErr_NoMemory();
            goto done;
        }
    }
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

static PyObject *py_conv_plan_threads(PyObject *Py_UNUSED(self), PyObject *args)
{
    Py_ssize_t pixels, nout, kwords;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "nnnii:conv_plan_threads", &pixels, &nout, &kwords, &path, &nthreads) ||
        lb_check_path_nthreads(path, nthreads) < 0)
        return NULL;
    if (pixels < 0 || nout < 0 || kwords < 0)
        return lb_value_error("conv_plan_threads: bad argument");
    return PyLong_FromLong(bc_plan_threads((size_t)pixels, (size_t)nout, (size_t)kwords, path, nthreads));
}

PyMethodDef bc_methods[] = {
    {"conv_prepared_bytes", py_conv_prepared_bytes, METH_VARARGS,
     "conv_prepared_bytes(path, nout, kwords) -> int\n\nBytes of conv weights prepared for path."},
    {"conv_prepare", py_conv_prepare, METH_VARARGS,
     "conv_prepare(w, kh, kw, cw, in_bits, dst, path)\n\nPacked conv weights (nout, kh*kw*cw) -> path's panels in "
     "dst (64-byte aligned)."},
    {"conv2d", py_conv2d, METH_VARARGS,
     "conv2d(x, wprep, nout, kh, kw, sh, sw, ph, pw, in_bits, sign, thr, bias, out, path, nthreads)\n\nBinary "
     "convolution of packed NHWC words x; int32 out, or threshold bits when sign/thr are given."},
    {"conv_plan_threads", py_conv_plan_threads, METH_VARARGS,
     "conv_plan_threads(pixels, nout, kwords, path, nthreads) -> int\n\nThreads conv2d would use."},
    {NULL, NULL, 0, NULL},
};
