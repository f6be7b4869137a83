/* Python binding of the integer LSTM kernels: lowbit.kernels._intlstm (CPython API + buffer protocol only).
 *
 * Functions (arrays are any C-contiguous buffers; byte lengths are checked, element types are the
 * caller's contract -- lowbit.rnn.int_lstm passes NumPy arrays of the right dtypes):
 *   paths() -> tuple of the dispatch paths this CPU supports ("portable", "avx2")
 *   resolve_path(name) -> the path "auto"/"portable"/"avx2" selects (auto: $LOWBIT_INTLSTM_PATH, else the best)
 *   gemm(a, w, bias, out, M, N, K, path)           out int32 (M, N) = a int8 (M, K) @ w[:, :K].T + bias int32 (N)
 *                                                  (w int8 (N, round_up(K, 16)), zeros beyond K: "packed")
 *   lstm_layer(x, w_ih, w_hh, bias_x,    (w_ih, w_hh packed as for gemm) bias_h, qmul, lut_sig, lut_tanh, lut_cell, h, c, y,
 *              (T, B, I, H), (z_h, cell_frac_bits, hid_m0, hid_shift, cell_clip), path)
 *   lut(table, x, out)                             int16 -> int16 through an interpolated table (for tests)
 *   rescale(x, m0, shift, out)                      int32 -> int32 MultiplyByQuantizedMultiplier (for tests)
 * The GIL is released while the kernels run. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdlib.h>
#include <string.h>

#include "intlstm.h"

int32_t intlstm_lut16(const int32_t *T, int32_t x);
int32_t intlstm_rescale(int64_t x, int32_t m0, int shift);

static const char *ENV_PATH = "LOWBIT_INTLSTM_PATH";

/* Returns the path, or 0 with a Python exception set. */
static intlstm_path resolve(const char *name) {
    const char *src = "path argument";
    if (strcmp(name, "auto") == 0) {
        const char *env = getenv(ENV_PATH);
        if (env && env[0]) {
            name = env;
            src = ENV_PATH;
        } else {
            return intlstm_path_supported(INTLSTM_PATH_AVX2) ? INTLSTM_PATH_AVX2 : INTLSTM_PATH_PORTABLE;
        }
    }
    intlstm_path p;
    if (strcmp(name, "portable") == 0) {
        p = INTLSTM_PATH_PORTABLE;
    } else if (strcmp(name, "avx2") == 0) {
        p = INTLSTM_PATH_AVX2;
    } else {
        PyErr_Format(PyExc_ValueError, "%s=%s is not a kernel path of the integer LSTM; use portable or avx2",
                     src, name);
        return (intlstm_path)0;
    }
    if (!intlstm_path_supported(p)) {
        PyErr_Format(PyExc_RuntimeError, "%s=%s: this CPU (or build) does not support the %s kernel path",
                     src, name, name);
        return (intlstm_path)0;
    }
    return p;
}

static const char *path_name(intlstm_path p) { return p == INTLSTM_PATH_AVX2 ? "avx2" : "portable"; }

static PyObject *py_paths(PyObject *self, PyObject *noargs) {
    (void)self; (void)noargs;
    if (intlstm_path_supported(INTLSTM_PATH_AVX2)) return Py_BuildValue("(ss)", "portable", "avx2");
    return Py_BuildValue("(s)", "portable");
}

static PyObject *py_resolve_path(PyObject *self, PyObject *args) {
    (void)self;
    const char *name = "auto";
    if (!PyArg_ParseTuple(args, "|s", &name)) return NULL;
    intlstm_path p = resolve(name);
    if (!p) return NULL;
    return PyUnicode_FromString(path_name(p));
}

static int check_len(Py_buffer *b, Py_ssize_t want, const char *name) {
    if (b->len != want) {
        PyErr_Format(PyExc_ValueError, "%s has %zd bytes, expected %zd", name, b->len, want);
        return -1;
    }
    return 0;
}

static void release(Py_buffer *bufs, int n) {
    for (int i = 0; i < n; i++)
        if (bufs[i].obj) PyBuffer_Release(&bufs[i]);
}

static PyObject *py_gemm(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer b[4];
    memset(b, 0, sizeof(b));
    Py_ssize_t M, N, K;
    const char *path = "auto";
    if (!PyArg_ParseTuple(args, "y*y*y*w*nnn|s", &b[0], &b[1], &b[2], &b[3], &M, &N, &K, &path)) return NULL;
    PyObject *ret = NULL;
    int16_t *scratch = NULL;
    intlstm_path p = resolve(path);
    if (!p) goto done;
    if (M < 0 || N < 0 || K < 0 || K > INTLSTM_MAX_K || M > INT32_MAX / 2 || N > INT32_MAX / 2) {
        PyErr_Format(PyExc_ValueError, "gemm: bad sizes M=%zd N=%zd K=%zd (K <= %d)", M, N, K, INTLSTM_MAX_K);
        goto done;
    }
    if (check_len(&b[0], M * K, "a") || check_len(&b[1], N * INTLSTM_KP(K), "w (packed: rows of round_up(K, 16))") || check_len(&b[2], N * 4, "bias") ||
        check_len(&b[3], M * N * 4, "out"))
        goto done;
    scratch = (int16_t *)malloc(((size_t)M * (size_t)((K + 15) & ~15) + 1) * sizeof(int16_t));
    if (!scratch) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    intlstm_gemm(p, (const int8_t *)b[0].buf, (const int8_t *)b[1].buf, (const int32_t *)b[2].buf,
                 (int32_t *)b[3].buf, (int)M, (int)N, (int)K, scratch);
    Py_END_ALLOW_THREADS
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    free(scratch);
    release(b, 4);
    return ret;
}

static PyObject *py_lstm_layer(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer b[12];
    memset(b, 0, sizeof(b));
    Py_ssize_t T, B, I, H;
    int z_h, cs, hid_m0, hid_shift, cell_clip;
    const char *path = "auto";
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*w*w*w*(nnnn)(iiiii)|s", &b[0], &b[1], &b[2], &b[3], &b[4],
                          &b[5], &b[6], &b[7], &b[8], &b[9], &b[10], &b[11], &T, &B, &I, &H, &z_h, &cs, &hid_m0,
                          &hid_shift, &cell_clip, &path))
        return NULL;
    PyObject *ret = NULL;
    intlstm_path p = resolve(path);
    if (!p) goto done;
    if (T < 0 || B < 0 || I < 1 || H < 1 || I > INTLSTM_MAX_K || H > INTLSTM_MAX_K || B > INT32_MAX / 8 / H ||
        T > INT32_MAX / 2) {
        PyErr_Format(PyExc_ValueError, "lstm_layer: bad sizes T=%zd B=%zd I=%zd H=%zd", T, B, I, H);
        goto done;
    }
    if (cs < 0 || cs > 30 || z_h < -128 || z_h > 127 || hid_shift < -31 || hid_shift > 31 || cell_clip < 0 ||
        cell_clip > 32767) {
        PyErr_SetString(PyExc_ValueError, "lstm_layer: integer constants out of range");
        goto done;
    }
    const Py_ssize_t G = 4 * H, LUT = (INTLSTM_LUT_SEGMENTS + 1) * 4;
    if (check_len(&b[0], T * B * I, "x") || check_len(&b[1], G * INTLSTM_KP(I), "w_ih (packed)") || check_len(&b[2], G * INTLSTM_KP(H), "w_hh (packed)") ||
        check_len(&b[3], G * 4, "bias_x") || check_len(&b[4], G * 4, "bias_h") || check_len(&b[5], 4 * G * 4, "qmul") ||
        check_len(&b[6], LUT, "lut_sig") || check_len(&b[7], LUT, "lut_tanh") || check_len(&b[8], LUT, "lut_cell") ||
        check_len(&b[9], B * H, "h") || check_len(&b[10], B * H * 2, "c") || check_len(&b[11], T * B * H, "y"))
        goto done;
    {
        const int32_t *q = (const int32_t *)b[5].buf;
        for (Py_ssize_t j = 0; j < G; j++) {
            if (q[G + j] < -31 || q[G + j] > 31 || q[3 * G + j] < -31 || q[3 * G + j] > 31 || q[j] < 0 || q[2 * G + j] < 0) {
                PyErr_SetString(PyExc_ValueError, "lstm_layer: qmul holds a multiplier or shift out of range");
                goto done;
            }
        }
    }
    intlstm_layer L;
    L.w_ih = (const int8_t *)b[1].buf;
    L.w_hh = (const int8_t *)b[2].buf;
    L.bias_x = (const int32_t *)b[3].buf;
    L.bias_h = (const int32_t *)b[4].buf;
    L.qmul = (const int32_t *)b[5].buf;
    L.lut_sig = (const int32_t *)b[6].buf;
    L.lut_tanh = (const int32_t *)b[7].buf;
    L.lut_cell = (const int32_t *)b[8].buf;
    L.I = (int)I;
    L.H = (int)H;
    L.z_h = z_h;
    L.cell_frac_bits = cs;
    L.hid_m0 = hid_m0;
    L.hid_shift = hid_shift;
    L.cell_clip = cell_clip;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = intlstm_layer_run(p, &L, (const int8_t *)b[0].buf, (int)T, (int)B, (int8_t *)b[9].buf, (int16_t *)b[10].buf,
                           (int8_t *)b[11].buf);
    Py_END_ALLOW_THREADS
    if (rc != 0) {
        PyErr_NoMemory();
        goto done;
    }
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    release(b, 12);
    return ret;
}

static PyObject *py_lut(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer b[3];
    memset(b, 0, sizeof(b));
    if (!PyArg_ParseTuple(args, "y*y*w*", &b[0], &b[1], &b[2])) return NULL;
    PyObject *ret = NULL;
    if (check_len(&b[0], (INTLSTM_LUT_SEGMENTS + 1) * 4, "table") || check_len(&b[2], b[1].len, "out") ||
        b[1].len % 2)
        goto done;
    {
        const int32_t *t = (const int32_t *)b[0].buf;
        const int16_t *x = (const int16_t *)b[1].buf;
        int16_t *o = (int16_t *)b[2].buf;
        for (Py_ssize_t i = 0; i < b[1].len / 2; i++) o[i] = (int16_t)intlstm_lut16(t, x[i]);
    }
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    release(b, 3);
    return ret;
}

static PyObject *py_rescale(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer b[2];
    memset(b, 0, sizeof(b));
    int m0, shift;
    if (!PyArg_ParseTuple(args, "y*iiw*", &b[0], &m0, &shift, &b[1])) return NULL;
    PyObject *ret = NULL;
    if (shift < -31 || shift > 31 || m0 < 0) {
        PyErr_SetString(PyExc_ValueError, "rescale: multiplier or shift out of range");
        goto done;
    }
    if (check_len(&b[1], b[0].len, "out") || b[0].len % 4) goto done;
    {
        const int32_t *x = (const int32_t *)b[0].buf;
        int32_t *o = (int32_t *)b[1].buf;
        for (Py_ssize_t i = 0; i < b[0].len / 4; i++) o[i] = intlstm_rescale(x[i], m0, shift);
    }
    Py_INCREF(Py_None);
    ret = Py_None;
done:
    release(b, 2);
    return ret;
}

static PyMethodDef methods[] = {
    {"paths", py_paths, METH_NOARGS, "paths() -> the kernel paths this CPU supports"},
    {"resolve_path", py_resolve_path, METH_VARARGS,
     "resolve_path(name='auto') -> the path used (auto: $LOWBIT_INTLSTM_PATH, else the best supported)"},
    {"gemm", py_gemm, METH_VARARGS, "gemm(a, w, bias, out, M, N, K, path='auto'): out = a @ w.T + bias (int8 -> int32)"},
    {"lstm_layer", py_lstm_layer, METH_VARARGS, "run one integer LSTM layer over a sequence (see lowbit.rnn.int_lstm)"},
    {"lut", py_lut, METH_VARARGS, "lut(table, x, out): int16 -> int16 through an interpolated table"},
    {"rescale", py_rescale, METH_VARARGS, "rescale(x, m0, shift, out): int32 MultiplyByQuantizedMultiplier"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_intlstm",
    "Integer-only LSTM kernels (int8 GEMM: portable and AVX2; the TFLite 8x8_16 LSTM step). "
    "Use lowbit.rnn.int_lstm.", -1, methods, NULL, NULL, NULL, NULL,
};

/* ABI_VERSION changes whenever a function's arguments change (the Python wrapper checks it). */
PyMODINIT_FUNC PyInit__intlstm(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddIntConstant(m, "ABI_VERSION", 3) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
