/*
 * intlstm_module.c -- CPython bindings of the integer LSTM kernels (module lowbit.kernels._intlstm).
 *
 * Arrays come in through the buffer protocol (pybuf.h): C-contiguous, of the element type named below, sizes
 * checked against the dimensions given; outputs must be writable. lowbit.kernels.intlstm is the Python face
 * (it picks the path through lowbit.kernels.dispatch and passes its id). The GIL is released while the
 * kernels run.
 *
 *   gemm(a, w, bias, out, M, N, K, path)       out int32 (M, N) = a int8 (M, K) @ w[:, :K].T + bias int32 (N)
 *                                              (w int8 (N, round_up(K, 16)), zeros beyond K: "packed")
 *   lstm_layer(x, w_ih, w_hh, bias_x, bias_h, qmul, lut_sig, lut_tanh, lut_cell, h, c, y,
 *              (T, B, I, H), (z_h, cell_frac_bits, hid_m0, hid_shift, cell_clip), path)
 *                                              one layer over a sequence (w_ih, w_hh packed as for gemm)
 *   gru_layer(x, w_ih, w_hh, bias_x, bias_h, qmul, lut_sig, lut_tanh, h, y, (T, B, I, H),
 *             (z_h, hid_m0, hid_shift), path)  one integer GRU layer over a sequence (h int16 Q0.15, intrnn.h)
 *   rnn_layer(x, w_ih, w_hh, bias_x, bias_h, qmul, lut_tanh, h, y, (T, B, I, H), (z_h, hid_m0, hid_shift), path)
 *                                              one integer tanh RNN layer over a sequence (h int8)
 *   prepare(w, bias|None, panels, bias_eff, N, K, ldw)
 *                                              w int8 (N rows of stride ldw >= K) -> panels int8
 *                                              (round_up(N, 16) * round_up(K, 16)), effective bias int32 (N)
 *   gemm_prepared(a, panels, bias_eff, out, M, N, K, path, nthreads)
 *                                              out int32 (M, N) = a int8 (M, K) @ w.T + bias
 *   lstm_layer_prepared(x, p_ih, p_hh, bias_x_eff, bias_h_eff, qmul, lut_sig, lut_tanh, lut_cell, h, c, y,
 *              (T, B, I, H), (z_h, cell_frac_bits, hid_m0, hid_shift, cell_clip), path, nthreads)
 *                                              lstm_layer on prepared weights, threads over the batch rows
 *   plan_threads(T, B, I, H, nthreads)         threads lstm_layer_prepared starts
 *   gemm_threads(M, N, K, nthreads)            threads gemm_prepared starts
 *   lut(table, x, out)                         int16 -> int16 through an interpolated table (for tests)
 *   rescale(x, m0, shift, out)                 int32 -> int32 MultiplyByQuantizedMultiplier (for tests)
 *   path_names() / supported_paths() / cpu_features() / best_path()   (lowbit_cpu_py.h)
 *
 * path: an id of lowbit_cpu.h's enum the CPU supports, or -1 (the best one).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "intlstm.h"
#include "intrnn.h"
#include "lowbit_cpu_py.h"
#include "pybuf.h"

/* A C-contiguous input (or, LB_BUF_WRITABLE, output) of `count` elements of `type`. */
static Py_buffer *get(lb_bufset *bs, PyObject *obj, const char *name, lb_elem type, Py_ssize_t count, unsigned flags)
{
    Py_buffer *v = lb_buf_get(bs, obj, name, type, -1, LB_BUF_CONTIG | flags);
    if (v && lb_buf_expect_bytes(v, count * v->itemsize, name) < 0)
        return NULL;
    return v;
}

static PyObject *py_gemm(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *oa, *ow, *obias, *oout;
    Py_ssize_t M, N, K;
    int path;
    if (!PyArg_ParseTuple(args, "OOOOnnni:gemm", &oa, &ow, &obias, &oout, &M, &N, &K, &path))
        return NULL;
    if ((path = lb_resolve_path_arg(path)) < 0)
        return NULL;
    if (M < 0 || N < 0 || K < 0 || K > INTLSTM_MAX_K || M > INT32_MAX / 2 || N > INT32_MAX / 2) {
        PyErr_Format(PyExc_ValueError, "gemm: bad sizes M=%zd N=%zd K=%zd (K <= %d)", M, N, K, INTLSTM_MAX_K);
        return NULL;
    }
    LB_BINDING(bs, ret);
    int16_t *scratch = NULL;
    Py_buffer *a = get(&bs, oa, "a", LB_T_I8, M * K, 0);
    Py_buffer *w = a ? get(&bs, ow, "w (packed: rows of round_up(K, 16))", LB_T_I8, N * INTLSTM_KP(K), 0) : NULL;
    Py_buffer *bias = w ? get(&bs, obias, "bias", LB_T_I32, N, 0) : NULL;
    Py_buffer *out = bias ? get(&bs, oout, "out", LB_T_I32, M * N, LB_BUF_WRITABLE) : NULL;
    if (!out)
        goto done;
    scratch = (int16_t *)malloc(((size_t)M * (size_t)INTLSTM_KP(K) + 1) * sizeof(int16_t));
    if (!scratch) {
        PyErr_NoMemory();
        goto done;
    }
    LB_NOGIL(intlstm_gemm(path, (const int8_t *)a->buf, (const int8_t *)w->buf, (const int32_t *)bias->buf,
                          (int32_t *)out->buf, (int)M, (int)N, (int)K, scratch));
    ret = lb_none();
done:
    free(scratch);
    return lb_bufset_return(&bs, ret);
}

/* The sizes of a layer run are in range (else ValueError naming the function). */
static int layer_sizes_ok(const char *fn, Py_ssize_t T, Py_ssize_t B, Py_ssize_t I, Py_ssize_t H)
{
    if (T < 0 || B < 0 || I < 1 || H < 1 || I > INTLSTM_MAX_K || H > INTLSTM_MAX_K || B > INT32_MAX / 8 / H ||
        T > INT32_MAX / 2 || (double)T * (double)B * (double)(I > H ? I : H) > (double)INT32_MAX * 1024.0) {
        PyErr_Format(PyExc_ValueError, "%s: bad sizes T=%zd B=%zd I=%zd H=%zd", fn, T, B, I, H);
        return 0;
    }
    return 1;
}

/* qmul (4, G) holds multipliers >= 0 and shifts in -31..31 (else ValueError naming the function). */
static int qmul_ok(const char *fn, const int32_t *q, Py_ssize_t G)
{
    for (Py_ssize_t j = 0; j < G; j++) {
        if (q[G + j] < -31 || q[G + j] > 31 || q[3 * G + j] < -31 || q[3 * G + j] > 31 || q[j] < 0 || q[2 * G + j] < 0) {
            PyErr_Format(PyExc_ValueError, "%s: qmul holds a multiplier or shift out of range", fn);
            return 0;
        }
    }
    return 1;
}

/* The arguments of both layer bindings: 12 arrays, the sizes, the integer constants, the path (and threads). */
static PyObject *lstm_layer_common(PyObject *args, int prepared)
{
    PyObject *o[12];
    Py_ssize_t T, B, I, H;
    int z_h, cs, hid_m0, hid_shift, cell_clip, path, nthreads = 1;
    const char *fmt = prepared ? "OOOOOOOOOOOO(nnnn)(iiiii)ii:lstm_layer_prepared"
                               : "OOOOOOOOOOOO(nnnn)(iiiii)i:lstm_layer";
    if (!PyArg_ParseTuple(args, fmt, &o[0], &o[1], &o[2], &o[3], &o[4], &o[5], &o[6], &o[7], &o[8], &o[9], &o[10],
                          &o[11], &T, &B, &I, &H, &z_h, &cs, &hid_m0, &hid_shift, &cell_clip, &path, &nthreads))
        return NULL;
    if ((path = lb_resolve_path_arg(path)) < 0)
        return NULL;
    if (!layer_sizes_ok("lstm_layer", T, B, I, H))
        return NULL;
    if (cs < 0 || cs > 30 || z_h < -128 || z_h > 127 || hid_shift < -31 || hid_shift > 31 || cell_clip < 0 ||
        cell_clip > 32767)
        return lb_value_error("lstm_layer: integer constants out of range");
    if (nthreads < 1)
        return lb_value_error("lstm_layer: nthreads must be >= 1");
    const Py_ssize_t G = 4 * H, LUT = INTLSTM_LUT_SEGMENTS + 1;
    static const char *const names[12] = {"x", "w_ih (packed)", "w_hh (packed)", "bias_x", "bias_h", "qmul",
                                          "lut_sig", "lut_tanh", "lut_cell", "h", "c", "y"};
    static const char *const pnames[3] = {"x", "w_ih (prepared panels)", "w_hh (prepared panels)"};
    const lb_elem types[12] = {LB_T_I8, LB_T_I8, LB_T_I8, LB_T_I32, LB_T_I32, LB_T_I32,
                               LB_T_I32, LB_T_I32, LB_T_I32, LB_T_I8, LB_T_I16, LB_T_I8};
    const Py_ssize_t wi = prepared ? INTLSTM_NP(G) * INTLSTM_KP(I) : G * INTLSTM_KP(I);
    const Py_ssize_t wh = prepared ? INTLSTM_NP(G) * INTLSTM_KP(H) : G * INTLSTM_KP(H);
    const Py_ssize_t counts[12] = {T * B * I, wi, wh, G, G, 4 * G, LUT, LUT, LUT, B * H, B * H, T * B * H};
    LB_BINDING(bs, ret);
    void *p[12];
    for (int i = 0; i < 12; i++) { /* h, c (the state, updated in place) and y are written */
        Py_buffer *v = get(&bs, o[i], prepared && i < 3 ? pnames[i] : names[i], types[i], counts[i],
                           i >= 9 ? LB_BUF_WRITABLE : 0);
        if (!v)
            goto done;
        p[i] = v->buf;
    }
    if (!qmul_ok("lstm_layer", (const int32_t *)p[5], G))
        goto done;
    intlstm_layer L = {.qmul = (const int32_t *)p[5], .lut_sig = (const int32_t *)p[6],
                       .lut_tanh = (const int32_t *)p[7], .lut_cell = (const int32_t *)p[8], .I = (int)I,
                       .H = (int)H, .z_h = z_h, .cell_frac_bits = cs, .hid_m0 = hid_m0, .hid_shift = hid_shift,
                       .cell_clip = cell_clip, .bias_x = (const int32_t *)p[3], .bias_h = (const int32_t *)p[4]};
    if (prepared) {
        L.p_ih = (const int8_t *)p[1];
        L.p_hh = (const int8_t *)p[2];
    } else {
        L.w_ih = (const int8_t *)p[1];
        L.w_hh = (const int8_t *)p[2];
    }
    int rc;
    if (prepared)
        LB_NOGIL(rc = intlstm_layer_run_prepared(path, &L, (const int8_t *)p[0], (int)T, (int)B, (int8_t *)p[9],
                                                 (int16_t *)p[10], (int8_t *)p[11], nthreads));
    else
        LB_NOGIL(rc = intlstm_layer_run(path, &L, (const int8_t *)p[0], (int)T, (int)B, (int8_t *)p[9],
                                        (int16_t *)p[10], (int8_t *)p[11]));
    ret = rc != 0 ? PyErr_NoMemory() : lb_none();
    LB_BINDING_EXIT(bs, ret);
}

static PyObject *py_lstm_layer(PyObject *Py_UNUSED(self), PyObject *args) { return lstm_layer_common(args, 0); }

static PyObject *py_lstm_layer_prepared(PyObject *Py_UNUSED(self), PyObject *args)
{
    return lstm_layer_common(args, 1);
}

static PyObject *py_prepare(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ow, *obias, *op, *ob;
    Py_ssize_t N, K, ldw;
    if (!PyArg_ParseTuple(args, "OOOOnnn:prepare", &ow, &obias, &op, &ob, &N, &K, &ldw))
        return NULL;
    if (N < 0 || K < 1 || K > INTLSTM_MAX_K || N > INT32_MAX / 2 || ldw < K) {
        PyErr_Format(PyExc_ValueError, "prepare: bad sizes N=%zd K=%zd ldw=%zd (K <= %d)", N, K, ldw, INTLSTM_MAX_K);
        return NULL;
    }
    LB_BINDING(bs, ret);
    Py_buffer *w = get(&bs, ow, "w", LB_T_I8, N * ldw, 0);
    Py_buffer *bias = w && obias != Py_None ? get(&bs, obias, "bias", LB_T_I32, N, 0) : NULL;
    if (!w || (obias != Py_None && !bias))
        goto done;
    Py_buffer *p = get(&bs, op, "panels", LB_T_I8, INTLSTM_NP(N) * INTLSTM_KP(K), LB_BUF_WRITABLE);
    Py_buffer *b = p ? get(&bs, ob, "bias_eff", LB_T_I32, N, LB_BUF_WRITABLE) : NULL;
    if (!b)
        goto done;
    LB_NOGIL(intlstm_prepare((const int8_t *)w->buf, (size_t)ldw, (int)N, (int)K,
                             bias ? (const int32_t *)bias->buf : NULL, (int8_t *)p->buf, (int32_t *)b->buf));
    ret = lb_none();
    LB_BINDING_EXIT(bs, ret);
}

static PyObject *py_gemm_prepared(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *oa, *op, *obias, *oout;
    Py_ssize_t M, N, K;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOOOnnnii:gemm_prepared", &oa, &op, &obias, &oout, &M, &N, &K, &path, &nthreads))
        return NULL;
    if ((path = lb_resolve_path_arg(path)) < 0)
        return NULL;
    if (M < 0 || N < 0 || K < 1 || K > INTLSTM_MAX_K || M > INT32_MAX / 2 || N > INT32_MAX / 2 || nthreads < 1) {
        PyErr_Format(PyExc_ValueError, "gemm_prepared: bad sizes M=%zd N=%zd K=%zd (K <= %d) or threads", M, N, K,
                     INTLSTM_MAX_K);
        return NULL;
    }
    LB_BINDING(bs, ret);
    Py_buffer *a = get(&bs, oa, "a", LB_T_I8, M * K, 0);
    Py_buffer *p = a ? get(&bs, op, "panels", LB_T_I8, INTLSTM_NP(N) * INTLSTM_KP(K), 0) : NULL;
    Py_buffer *bias = p ? get(&bs, obias, "bias_eff", LB_T_I32, N, 0) : NULL;
    Py_buffer *out = bias ? get(&bs, oout, "out", LB_T_I32, M * N, LB_BUF_WRITABLE) : NULL;
    if (!out)
        goto done;
    int rc;
    LB_NOGIL(rc = intlstm_gemm_prepared(path, (const int8_t *)a->buf, (const int8_t *)p->buf,
                                        (const int32_t *)bias->buf, (int32_t *)out->buf, (int)M, (int)N, (int)K,
                                        nthreads));
    ret = rc != 0 ? PyErr_NoMemory() : lb_none();
    LB_BINDING_EXIT(bs, ret);
}

/* gru_layer (gru = 1) and rnn_layer (gru = 0): the same arguments but the sigmoid table, which the RNN lacks. */
static PyObject *cell_layer(PyObject *args, int gru)
{
    const char *fn = gru ? "gru_layer" : "rnn_layer";
    PyObject *o[10] = {NULL};
    Py_ssize_t T, B, I, H;
    int z_h, hid_m0, hid_shift, path;
    int ok = gru ? PyArg_ParseTuple(args, "OOOOOOOOOO(nnnn)(iii)i:gru_layer", &o[0], &o[1], &o[2], &o[3], &o[4],
                                    &o[5], &o[6], &o[7], &o[8], &o[9], &T, &B, &I, &H, &z_h, &hid_m0, &hid_shift, &path)
                 : PyArg_ParseTuple(args, "OOOOOOOOO(nnnn)(iii)i:rnn_layer", &o[0], &o[1], &o[2], &o[3], &o[4],
                                    &o[5], &o[7], &o[8], &o[9], &T, &B, &I, &H, &z_h, &hid_m0, &hid_shift, &path);
    if (!ok)
        return NULL;
    if ((path = lb_resolve_path_arg(path)) < 0)
        return NULL;
    if (!layer_sizes_ok(fn, T, B, I, H))
        return NULL;
    if (z_h < -128 || z_h > 127 || hid_m0 < 0 || hid_shift < -31 || hid_shift > 31) {
        PyErr_Format(PyExc_ValueError, "%s: integer constants out of range", fn);
        return NULL;
    }
    const Py_ssize_t G = (gru ? 3 : 1) * H, LUT = INTLSTM_LUT_SEGMENTS + 1;
    static const char *const names[10] = {"x", "w_ih (packed)", "w_hh (packed)", "bias_x", "bias_h", "qmul",
                                          "lut_sig", "lut_tanh", "h", "y"};
    const lb_elem types[10] = {LB_T_I8, LB_T_I8, LB_T_I8, LB_T_I32, LB_T_I32, LB_T_I32,
                               LB_T_I32, LB_T_I32, gru ? LB_T_I16 : LB_T_I8, LB_T_I8};
    const Py_ssize_t counts[10] = {T * B * I, G * INTLSTM_KP(I), G * INTLSTM_KP(H), G, G, 4 * G,
                                   LUT, LUT, B * H, T * B * H};
    LB_BINDING(bs, ret);
    void *p[10] = {NULL};
    for (int i = 0; i < 10; i++) { /* h (the state, updated in place) and y are written */
        if (!o[i])
            continue; /* the RNN's absent sigmoid table */
        Py_buffer *v = get(&bs, o[i], names[i], types[i], counts[i], i >= 8 ? LB_BUF_WRITABLE : 0);
        if (!v)
            goto done;
        p[i] = v->buf;
    }
    if (!qmul_ok(fn, (const int32_t *)p[5], G))
        goto done;
    const intrnn_layer L = {.w_ih = (const int8_t *)p[1], .w_hh = (const int8_t *)p[2],
                            .bias_x = (const int32_t *)p[3], .bias_h = (const int32_t *)p[4],
                            .qmul = (const int32_t *)p[5], .lut_sig = (const int32_t *)p[6],
                            .lut_tanh = (const int32_t *)p[7], .I = (int)I, .H = (int)H, .z_h = z_h,
                            .hid_m0 = hid_m0, .hid_shift = hid_shift};
    int rc;
    if (gru)
        LB_NOGIL(rc = intgru_layer_run(path, &L, (const int8_t *)p[0], (int)T, (int)B, (int16_t *)p[8], (int8_t *)p[9]));
    else
        LB_NOGIL(rc = intrnn_layer_run(path, &L, (const int8_t *)p[0], (int)T, (int)B, (int8_t *)p[8], (int8_t *)p[9]));
    ret = rc != 0 ? PyErr_NoMemory() : lb_none();
    LB_BINDING_EXIT(bs, ret);
}

static PyObject *py_gru_layer(PyObject *Py_UNUSED(self), PyObject *args) { return cell_layer(args, 1); }

static PyObject *py_rnn_layer(PyObject *Py_UNUSED(self), PyObject *args) { return cell_layer(args, 0); }

static PyObject *py_plan_threads(PyObject *Py_UNUSED(self), PyObject *args)
{
    int T, B, I, H, n;
    if (!PyArg_ParseTuple(args, "iiiii:plan_threads", &T, &B, &I, &H, &n))
        return NULL;
    return PyLong_FromLong(intlstm_plan_threads(T, B, I, H, n < 1 ? 1 : n));
}

static PyObject *py_gemm_threads(PyObject *Py_UNUSED(self), PyObject *args)
{
    int M, N, K, n;
    if (!PyArg_ParseTuple(args, "iiii:gemm_threads", &M, &N, &K, &n))
        return NULL;
    return PyLong_FromLong(intlstm_gemm_plan_threads(M, N, K, n < 1 ? 1 : n));
}

static PyObject *py_lut(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ot, *ox, *oout;
    if (!PyArg_ParseTuple(args, "OOO:lut", &ot, &ox, &oout))
        return NULL;
    LB_BINDING(bs, ret);
    Py_buffer *t = get(&bs, ot, "table", LB_T_I32, INTLSTM_LUT_SEGMENTS + 1, 0);
    Py_buffer *x = t ? lb_buf_get(&bs, ox, "x", LB_T_I16, -1, LB_BUF_CONTIG) : NULL;
    Py_buffer *out = x ? get(&bs, oout, "out", LB_T_I16, x->len / 2, LB_BUF_WRITABLE) : NULL;
    if (!out)
        goto done;
    {
        const int32_t *tab = (const int32_t *)t->buf;
        const int16_t *xv = (const int16_t *)x->buf;
        int16_t *o = (int16_t *)out->buf;
        for (Py_ssize_t i = 0; i < x->len / 2; i++) o[i] = (int16_t)intlstm_lut16(tab, xv[i]);
    }
    ret = lb_none();
    LB_BINDING_EXIT(bs, ret);
}

static PyObject *py_rescale(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *oout;
    int m0, shift;
    if (!PyArg_ParseTuple(args, "OiiO:rescale", &ox, &m0, &shift, &oout))
        return NULL;
    if (shift < -31 || shift > 31 || m0 < 0)
        return lb_value_error("rescale: multiplier or shift out of range");
    LB_BINDING(bs, ret);
    Py_buffer *x = lb_buf_get(&bs, ox, "x", LB_T_I32, -1, LB_BUF_CONTIG);
    Py_buffer *out = x ? get(&bs, oout, "out", LB_T_I32, x->len / 4, LB_BUF_WRITABLE) : NULL;
    if (!out)
        goto done;
    {
        const int32_t *xv = (const int32_t *)x->buf;
        int32_t *o = (int32_t *)out->buf;
        for (Py_ssize_t i = 0; i < x->len / 4; i++) o[i] = intlstm_rescale(xv[i], m0, shift);
    }
    ret = lb_none();
    LB_BINDING_EXIT(bs, ret);
}

static PyMethodDef methods[] = {
    {"gemm", py_gemm, METH_VARARGS, "gemm(a, w, bias, out, M, N, K, path): out = a @ w.T + bias (int8 -> int32)"},
    {"lstm_layer", py_lstm_layer, METH_VARARGS, "run one integer LSTM layer over a sequence (see lowbit.rnn.int_lstm)"},
    {"gru_layer", py_gru_layer, METH_VARARGS, "run one integer GRU layer over a sequence (see lowbit.runtime.int_rnn)"},
    {"rnn_layer", py_rnn_layer, METH_VARARGS, "run one integer tanh RNN layer over a sequence (see lowbit.runtime.int_rnn)"},
    {"lstm_layer_prepared", py_lstm_layer_prepared, METH_VARARGS,
     "lstm_layer with prepared weights (panels, effective biases) and a thread count"},
    {"prepare", py_prepare, METH_VARARGS,
     "prepare(w, bias|None, panels, bias_eff, N, K, ldw): weights -> int8 panels and effective bias"},
    {"gemm_prepared", py_gemm_prepared, METH_VARARGS,
     "gemm_prepared(a, panels, bias_eff, out, M, N, K, path, nthreads): out = a @ w.T + bias (int8 -> int32)"},
    {"plan_threads", py_plan_threads, METH_VARARGS, "plan_threads(T, B, I, H, n): threads a layer run uses"},
    {"gemm_threads", py_gemm_threads, METH_VARARGS, "gemm_threads(M, N, K, n): threads gemm_prepared uses"},
    {"lut", py_lut, METH_VARARGS, "lut(table, x, out): int16 -> int16 through an interpolated table"},
    {"rescale", py_rescale, METH_VARARGS, "rescale(x, m0, shift, out): int32 MultiplyByQuantizedMultiplier"},
    LB_CPU_PY_METHODS,
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_intlstm",
    "Integer-only LSTM, GRU and RNN kernels (int8 GEMM and the TFLite 8x8_16 LSTM step); use lowbit.kernels.intlstm.", -1,
    methods, NULL, NULL, NULL, NULL,
};

/* ABI_VERSION changes whenever a function's arguments change (lowbit.kernels.native checks it). */
PyMODINIT_FUNC PyInit__intlstm(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "ABI_VERSION", 6) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
