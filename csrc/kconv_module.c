/*
 * kconv_module.c -- CPython bindings of the k-bit pack and epilogue (kconv.h), registered in
 * lowbit.kernels._bitgemm next to the k-bit GEMM. The Python layer (lowbit/kernels/codes.py) validates
 * shapes, codes and thresholds and raises ShapeError; these checks only keep the C code inside its buffers.
 *
 *   kc_pack(x, kernel, stride, padding, pad, map, bits, dst, sums, path, nthreads) -> largest input code
 *       x: uint8 (N, H, W, C), pixels contiguous (inner strides 1 and C); kernel/stride/padding: (int, int);
 *       map: 256 uint8 or None; bits 0: dst uint8 (rows, >= qg_a8_stride(K)) or None (sums only);
 *       bits 1..8: dst uint64 (rows, >= qg_plane_words(K, bits)); sums: int32 (rows,) or None
 *   kc_epilogue(acc, mul, border, pool, thr, sign, flip, out, path, nthreads)
 *       acc: int32 (N, H, W, C) contiguous; border: int32 (H, W, C) contiguous or None; pool: None or
 *       (kh, kw, sh, sw, ph, pw); thr: int32 (nthr, C) contiguous; sign: int32 (C,); out: uint8
 *       (N, OH, OW, C) or uint64 (N, OH, OW, ceil(C / 64)) (then nthr must be 1), contiguous
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>

#include "kconv.h"
#include "lowbit_cpu_py.h"
#include "pybuf.h"

#include <string.h>

static int bad(const char *msg)
{
    PyErr_SetString(PyExc_ValueError, msg);
    return -1;
}

/* A 256-entry table (a code map, a decode table): 1-D, contiguous, exactly 256 entries of type; its data, or
 * NULL with an exception set. */
static const void *table256(lb_bufset *bs, PyObject *obj, const char *name, lb_elem type)
{
    Py_buffer *t = lb_buf_get(bs, obj, name, type, 1, LB_BUF_CONTIG);
    if (!t)
        return NULL;
    if (t->shape[0] != 256) {
        PyErr_Format(PyExc_ValueError, "%s must have 256 entries", name);
        return NULL;
    }
    return t->buf;
}

/* The conv input of kc_pack and kc_conv: x (N, H, W, C) uint8 codes, pixels and image rows contiguous, the window
 * fitting the padded input; fills p's input and window fields (the rest zero). 0, or -1 with an exception set. */
static int conv_input(lb_bufset *bs, PyObject *ox, const char *what, int kh, int kw, int sh, int sw, int ph, int pw,
                      int pad, kc_pack_args *p)
{
    Py_buffer *x = lb_buf_get(bs, ox, "x", LB_T_U8, 4, 0);
    if (!x)
        return -1;
    const size_t n = (size_t)x->shape[0], h = (size_t)x->shape[1], w = (size_t)x->shape[2], c = (size_t)x->shape[3];
    if ((c > 1 && x->strides[3] != 1) || (w > 1 && x->strides[2] != (Py_ssize_t)c))
        return bad("x: the codes of a pixel and the pixels of an image row must be contiguous");
    if ((ptrdiff_t)h + 2 * ph < kh || (ptrdiff_t)w + 2 * pw < kw) {
        PyErr_Format(PyExc_ValueError, "%s: the window does not fit the padded input", what);
        return -1;
    }
    *p = (kc_pack_args){.x = (const uint8_t *)x->buf, .xs_n = x->strides[0], .xs_h = x->strides[1], .n = n, .h = h,
                        .w = w, .c = c, .kh = kh, .kw = kw, .sh = sh, .sw = sw, .ph = ph, .pw = pw,
                        .oh = (h + 2 * (size_t)ph - (size_t)kh) / (size_t)sh + 1,
                        .ow = (w + 2 * (size_t)pw - (size_t)kw) / (size_t)sw + 1, .pad = (uint8_t)pad};
    return 0;
}

static PyObject *py_kc_pack(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *omap, *odst, *osums;
    int kh, kw, sh, sw, ph, pw, pad, bits, path, nthreads;
    if (!PyArg_ParseTuple(args, "O(ii)(ii)(ii)iOiOOii:kc_pack", &ox, &kh, &kw, &sh, &sw, &ph, &pw, &pad, &omap,
                          &bits, &odst, &osums, &path, &nthreads))
        return NULL;
    if (lb_check_path_arg(path) < 0 || lb_check_nthreads(nthreads) < 0)
        return NULL;
    if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 || pad < 0 || pad > 255 || bits < 0 || bits > 8) {
        bad("kc_pack: kernel and stride >= 1, padding >= 0, pad code 0..255, bits 0..8");
        return NULL;
    }
    LB_BINDING(bs, result);
    kc_pack_args p;
    if (conv_input(&bs, ox, "kc_pack", kh, kw, sh, sw, ph, pw, pad, &p) < 0)
        goto done;
    p.bits = bits;
    const size_t rows = kc_pack_rows(&p), k = kc_pack_k(&p);
    if (omap != Py_None && !(p.map = (const uint8_t *)table256(&bs, omap, "map", LB_T_U8)))
        goto done;
    if (odst != Py_None) {
        Py_buffer *d;
        if (bits == 0) {
            d = lb_buf_get(&bs, odst, "dst", LB_T_U8, 2, LB_BUF_ROWS | LB_BUF_WRITABLE);
            if (!d || lb_buf_expect_rows(d, "dst", rows, qg_a8_stride(k)) < 0 ||
                lb_buf_expect_disjoint(d, "dst", lb_buf_ld(d), (ptrdiff_t)qg_a8_stride(k)) < 0)
                goto done;
        } else {
            d = lb_buf_get(&bs, odst, "dst", LB_T_WORD64, 2, LB_BUF_ROWS | LB_BUF_WRITABLE);
            if (!d || lb_buf_expect_rows(d, "dst", rows, qg_plane_words(k, bits)) < 0 ||
                lb_buf_expect_disjoint(d, "dst", lb_buf_ld(d), (ptrdiff_t)qg_plane_words(k, bits)) < 0)
                goto done;
        }
        p.dst = d->buf;
        p.ldd = lb_buf_ld(d);
    } else if (bits != 0) {
        bad("kc_pack: bit planes need a dst");
        goto done;
    }
    if (osums != Py_None) {
        Py_buffer *s = lb_buf_get(&bs, osums, "sums", LB_T_I32, 1, LB_BUF_CONTIG | LB_BUF_WRITABLE);
        if (!s)
            goto done;
        if ((size_t)s->shape[0] != rows) {
            bad("sums must have one entry per row");
            goto done;
        }
        p.sums = (int32_t *)s->buf;
    }
    unsigned best;
    Py_BEGIN_ALLOW_THREADS
    best = kc_pack(&p, path, nthreads);
    Py_END_ALLOW_THREADS
    result = PyLong_FromUnsignedLong(best);
    LB_BINDING_EXIT(bs, result);
}

/* The thresholds, sign and output of an epilogue over e->c channels with output (n, e->oh, e->ow): out uint8
 * codes or uint64 bits (thr int32 (nthr, C), sign int32 (C,)), or float32 (thr float32 (2, C): scale and
 * bias; sign ignored). 0, or -1 with an exception set. */
static int epi_outputs(lb_bufset *bs, kc_epi_args *e, PyObject *othr, PyObject *osign, PyObject *oout, size_t n)
{
    Py_buffer *out = lb_buf_get(bs, oout, "out", LB_T_ANY, 4, LB_BUF_CONTIG | LB_BUF_WRITABLE);
    if (!out)
        return -1;
    const int elem = lb_buf_elem(out);
    e->out_float = elem == LB_T_F32;
    e->out_bits = elem == LB_T_U64 || elem == LB_T_I64;
    if (e->out_float) {
        Py_buffer *t = lb_buf_get(bs, othr, "thr", LB_T_F32, 2, LB_BUF_CONTIG);
        if (!t)
            return -1;
        if (t->shape[0] != 2 || (size_t)t->shape[1] != e->c)
            return bad("a float32 out needs thr = float32 (2, C): scale and bias");
        e->scale = (const float *)t->buf;
        e->bias = e->scale + e->c;
        e->nthr = 0;
    } else {
        Py_buffer *t = lb_buf_get(bs, othr, "thr", LB_T_I32, 2, LB_BUF_CONTIG);
        if (!t)
            return -1;
        if ((size_t)t->shape[1] != e->c || t->shape[0] < 1 || t->shape[0] > 255)
            return bad("thr must have shape (1..255, C)");
        e->thr = (const int32_t *)t->buf;
        e->nthr = (int)t->shape[0];
        Py_buffer *sg = lb_buf_get(bs, osign, "sign", LB_T_I32, 1, LB_BUF_CONTIG);
        if (!sg)
            return -1;
        if ((size_t)sg->shape[0] != e->c)
            return bad("sign must have C entries");
        e->sign = (const int32_t *)sg->buf;
    }
    const size_t last = e->out_bits ? (e->c + 63) / 64 : e->c;
    if ((!e->out_bits && !e->out_float && elem != LB_T_U8) || (e->out_bits && e->nthr != 1) ||
        (size_t)out->shape[0] != n || (size_t)out->shape[1] != e->oh || (size_t)out->shape[2] != e->ow ||
        (size_t)out->shape[3] != last)
        return bad("out must be uint8 (N, OH, OW, C), uint64 (N, OH, OW, ceil(C / 64)) with one threshold, or "
                   "float32 (N, OH, OW, C)");
    if ((e->out_bits && ((uintptr_t)out->buf) % 8 != 0) || (e->out_float && ((uintptr_t)out->buf) % 4 != 0))
        return bad("out is not aligned to its element size");
    e->out = out->buf;
    e->ld_thr = e->c;
    e->ld_out = last;
    return 0;
}

static PyObject *py_kc_epilogue(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *oacc, *oborder, *opool, *othr, *osign, *oout;
    int mul, flip, path, nthreads;
    if (!PyArg_ParseTuple(args, "OiOOOOpOii:kc_epilogue", &oacc, &mul, &oborder, &opool, &othr, &osign, &flip, &oout,
                          &path, &nthreads))
        return NULL;
    if (lb_check_path_arg(path) < 0 || lb_check_nthreads(nthreads) < 0)
        return NULL;
    kc_epi_args e = {.mul = mul, .flip = flip};
    if (opool != Py_None &&
        !PyArg_ParseTuple(opool, "iiiiii:pool", &e.kh, &e.kw, &e.sh, &e.sw, &e.ph, &e.pw))
        return NULL;
    if (opool != Py_None && (e.kh < 1 || e.kw < 1 || e.sh < 1 || e.sw < 1 || e.ph < 0 || e.pw < 0)) {
        bad("pool: kernel and stride >= 1, padding >= 0");
        return NULL;
    }
    LB_BINDING(bs, result);
    Py_buffer *acc = lb_buf_get(&bs, oacc, "acc", LB_T_I32, 4, LB_BUF_CONTIG);
    if (!acc)
        goto done;
    e.acc = (const int32_t *)acc->buf;
    e.n = (size_t)acc->shape[0], e.h = (size_t)acc->shape[1], e.w = (size_t)acc->shape[2], e.c = (size_t)acc->shape[3];
    if (e.kh) {
        if ((ptrdiff_t)e.h + 2 * e.ph < e.kh || (ptrdiff_t)e.w + 2 * e.pw < e.kw) {
            bad("pool: the window does not fit the padded input");
            goto done;
        }
        e.oh = (e.h + 2 * (size_t)e.ph - (size_t)e.kh) / (size_t)e.sh + 1;
        e.ow = (e.w + 2 * (size_t)e.pw - (size_t)e.kw) / (size_t)e.sw + 1;
    } else {
        e.oh = e.h, e.ow = e.w;
    }
    if (oborder != Py_None) {
        Py_buffer *b = lb_buf_get(&bs, oborder, "border", LB_T_I32, 3, LB_BUF_CONTIG);
        if (!b)
            goto done;
        if ((size_t)b->shape[0] != e.h || (size_t)b->shape[1] != e.w || (size_t)b->shape[2] != e.c) {
            bad("border must have shape (H, W, C) of acc");
            goto done;
        }
        e.border = (const int32_t *)b->buf;
    }
    if (epi_outputs(&bs, &e, othr, osign, oout, e.n) < 0)
        goto done;
    e.ld_acc = e.ld_border = e.c;
    LB_NOGIL(kc_epilogue(&e, path, nthreads));
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

/* kc_conv(x, kernel, stride, padding, pad, map, kind, b, abits, bbits, bstore, n, sa, oa, sb, ob, zb, sumb,
 *         mul, border, pool, thr, sign, flip, out, path, nthreads) -> largest input code */
static PyObject *py_kc_conv(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *omap, *ob, *osumb, *oborder, *opool, *othr, *osign, *oout;
    int kh, kw, sh, sw, ph, pw, pad, kind, abits, bbits, bstore, sa, oa, sb, ob_, zb, mul, flip, path, nthreads;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "O(ii)(ii)(ii)iOiOiiiniiiiiOiOOOOpOii:kc_conv", &ox, &kh, &kw, &sh, &sw, &ph, &pw,
                          &pad, &omap, &kind, &ob, &abits, &bbits, &bstore, &n, &sa, &oa, &sb, &ob_, &zb, &osumb, &mul,
                          &oborder, &opool, &othr, &osign, &flip, &oout, &path, &nthreads))
        return NULL;
    if (lb_check_path_arg(path) < 0 || lb_check_nthreads(nthreads) < 0)
        return NULL;
    if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 || pad < 0 || pad > 255 || n < 1) {
        bad("kc_conv: kernel and stride >= 1, padding >= 0, pad code 0..255, n >= 1");
        return NULL;
    }
    const int ok_kind = (kind == QG_BITSERIAL && abits >= 1 && abits <= 4 && bbits >= 1 && bbits <= 4) ||
                        (kind == QG_INT8 && abits >= 1 && abits <= 8 && bbits >= 1 && bbits <= 8 &&
                         (bstore == 8 || (bstore == 4 && bbits <= 4) || (bstore == 2 && bbits <= 2)));
    if (!ok_kind) {
        bad("kc_conv: bad kernel kind / bits / store");
        return NULL;
    }
    kc_conv_args a;
    memset(&a, 0, sizeof a);
    if (opool != Py_None) {
        if (!PyArg_ParseTuple(opool, "iiiiii:pool", &a.epi.kh, &a.epi.kw, &a.epi.sh, &a.epi.sw, &a.epi.ph, &a.epi.pw))
            return NULL;
        if (a.epi.kh < 1 || a.epi.kw < 1 || a.epi.sh < 1 || a.epi.sw < 1 || a.epi.ph < 0 || a.epi.pw < 0) {
            bad("pool: kernel and stride >= 1, padding >= 0");
            return NULL;
        }
        a.pooled = 1;
    }
    LB_BINDING(bs, result);
    if (conv_input(&bs, ox, "kc_conv", kh, kw, sh, sw, ph, pw, pad, &a.pack) < 0)
        goto done;
    a.pack.bits = kind == QG_INT8 ? 0 : abits;
    const size_t k = kc_pack_k(&a.pack), rows = kc_pack_rows(&a.pack);
    if (k == 0 || k > 0x7fffffffL) {
        bad("kc_conv: K must be 1 .. 2^31 - 1");
        goto done;
    }
    if (omap != Py_None && !(a.pack.map = (const uint8_t *)table256(&bs, omap, "map", LB_T_U8)))
        goto done;
    {
        qg_args *g = &a.gemm;
        g->kind = kind, g->n = (size_t)n, g->k = k, g->abits = abits, g->bbits = bbits, g->bstore = bstore;
        g->sa = sa, g->oa = oa, g->sb = sb, g->ob = ob_, g->zb = zb;
        Py_buffer *b;
        if (kind == QG_INT8) {
            if (!(b = lb_buf_get_prep(&bs, ob, "b", 0, qg_panel_bytes((size_t)n, k, bstore))))
                goto done;
        } else {
            if (!(b = lb_buf_get(&bs, ob, "b", LB_T_WORD64, 2, LB_BUF_ROWS)))
                goto done;
            if (lb_buf_expect_rows(b, "b", (size_t)n, qg_plane_words(k, bbits)) < 0)
                goto done;
            g->ldb = lb_buf_ld(b);
        }
        g->b = b->buf;
        if (osumb != Py_None) {
            Py_buffer *sbuf = lb_buf_get(&bs, osumb, "sumb", LB_T_I32, 1, LB_BUF_CONTIG);
            if (!sbuf)
                goto done;
            if (sbuf->shape[0] != n) {
                bad("sumb must have n entries");
                goto done;
            }
            g->sumb = (const int32_t *)sbuf->buf;
        }
    }
    const size_t oh = a.pack.oh, ow = a.pack.ow;
    Py_buffer *out = lb_buf_get(&bs, oout, "out", LB_T_ANY, -1, LB_BUF_CONTIG | LB_BUF_WRITABLE);
    if (!out)
        goto done;
    const int elem = lb_buf_elem(out);
    if (elem == LB_T_I32) { /* the int32 product, no epilogue */
        if (out->ndim != 2 || (size_t)out->shape[0] != rows || out->shape[1] != n || a.pooled ||
            ((uintptr_t)out->buf) % 4 != 0) {
            bad("an int32 out must be (rows, n), contiguous, with no pool");
            goto done;
        }
        a.out_acc = (int32_t *)out->buf;
        a.ld_out_acc = (ptrdiff_t)n;
    } else {
        kc_epi_args *e = &a.epi;
        e->mul = mul;
        e->flip = flip;
        e->c = (size_t)n;
        if (a.pooled) {
            if ((ptrdiff_t)oh + 2 * e->ph < e->kh || (ptrdiff_t)ow + 2 * e->pw < e->kw) {
                bad("pool: the window does not fit the padded input");
                goto done;
            }
            e->oh = (oh + 2 * (size_t)e->ph - (size_t)e->kh) / (size_t)e->sh + 1;
            e->ow = (ow + 2 * (size_t)e->pw - (size_t)e->kw) / (size_t)e->sw + 1;
        } else {
            e->oh = oh, e->ow = ow;
        }
        if (oborder != Py_None) {
            Py_buffer *bb = lb_buf_get(&bs, oborder, "border", LB_T_I32, 3, LB_BUF_CONTIG);
            if (!bb)
                goto done;
            if ((size_t)bb->shape[0] != oh || (size_t)bb->shape[1] != ow || bb->shape[2] != n) {
                bad("border must have shape (OH, OW, n) of the conv output");
                goto done;
            }
            e->border = (const int32_t *)bb->buf;
        }
        if (epi_outputs(&bs, e, othr, osign, oout, a.pack.n) < 0)
            goto done;
    }
    unsigned best;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = kc_conv(&a, path, nthreads, &best);
    Py_END_ALLOW_THREADS
    if (rc < 0) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyLong_FromUnsignedLong(best);
    LB_BINDING_EXIT(bs, result);
}

static PyObject *py_kc_fthreshold(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *othr, *osign, *oout, *oadd = Py_None, *otable = Py_None;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOOOii|OO:kc_fthreshold", &ox, &othr, &osign, &oout, &path, &nthreads, &oadd,
                          &otable))
        return NULL;
    if (lb_check_path_arg(path) < 0 || lb_check_nthreads(nthreads) < 0)
        return NULL;
    LB_BINDING(bs, result);
    kc_fthr_args f;
    memset(&f, 0, sizeof f);
    Py_buffer *x = lb_buf_get(&bs, ox, "x", LB_T_F32, 2, LB_BUF_ROWS);
    if (!x)
        goto done;
    f.x = (const float *)x->buf, f.rows = (size_t)x->shape[0], f.c = (size_t)x->shape[1], f.ld_x = (size_t)lb_buf_ld(x);
    Py_buffer *t = lb_buf_get(&bs, othr, "thr", LB_T_F32, 2, LB_BUF_CONTIG);
    if (!t)
        goto done;
    if ((size_t)t->shape[1] != f.c || t->shape[0] < 1 || t->shape[0] > 255) {
        bad("thr must have shape (1..255, C)");
        goto done;
    }
    f.thr = (const float *)t->buf, f.nthr = (int)t->shape[0];
    if (osign != Py_None) {
        Py_buffer *sg = lb_buf_get(&bs, osign, "sign", LB_T_F32, 1, LB_BUF_CONTIG);
        if (!sg)
            goto done;
        if ((size_t)sg->shape[0] != f.c) {
            bad("sign must have C entries");
            goto done;
        }
        f.sign = (const float *)sg->buf;
    }
    Py_buffer *out = lb_buf_get(&bs, oout, "out", LB_T_ANY, 2, LB_BUF_CONTIG | LB_BUF_WRITABLE);
    if (!out)
        goto done;
    const int elem = lb_buf_elem(out);
    f.out_bits = elem == LB_T_U64 || elem == LB_T_I64;
    if ((!f.out_bits && elem != LB_T_U8) || (f.out_bits && f.nthr != 1) || (size_t)out->shape[0] != f.rows ||
        (size_t)out->shape[1] != (f.out_bits ? (f.c + 63) / 64 : f.c) ||
        (f.out_bits && ((uintptr_t)out->buf) % 8 != 0)) {
        bad("out must be uint8 (rows, C), or uint64 (rows, ceil(C / 64)) with one threshold");
        goto done;
    }
    f.out = out->buf;
    if (oadd != Py_None) { /* the addend: float32 (rows, C), or uint8 codes (rows, C) with a 256-entry table */
        Py_buffer *ad = lb_buf_get(&bs, oadd, "add", otable == Py_None ? LB_T_F32 : LB_T_U8, 2, LB_BUF_ROWS);
        if (!ad)
            goto done;
        if ((size_t)ad->shape[0] != f.rows || (size_t)ad->shape[1] != f.c) {
            bad("add must have x's shape (rows, C)");
            goto done;
        }
        f.ld_add = (size_t)lb_buf_ld(ad);
        if (otable == Py_None) {
            f.add = (const float *)ad->buf;
        } else {
            f.add_codes = (const uint8_t *)ad->buf;
            if (!(f.add_table = (const float *)table256(&bs, otable, "add_table", LB_T_F32)))
                goto done;
        }
    }
    unsigned m;
    LB_NOGIL(m = kc_fthreshold(&f, path, nthreads));
    result = PyLong_FromUnsignedLong(m);
    LB_BINDING_EXIT(bs, result);
}

static PyObject *py_kc_decode(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ocodes, *otable, *oout;
    int path, nthreads;
    if (!PyArg_ParseTuple(args, "OOOii:kc_decode", &ocodes, &otable, &oout, &path, &nthreads) ||
        lb_check_path_arg(path) < 0 || lb_check_nthreads(nthreads) < 0)
        return NULL;
    LB_BINDING(bs, result);
    Py_buffer *codes = lb_buf_get(&bs, ocodes, "codes", LB_T_U8, -1, LB_BUF_CONTIG);
    if (!codes)
        goto done;
    const float *table = (const float *)table256(&bs, otable, "table", LB_T_F32);
    if (!table)
        goto done;
    Py_buffer *out = lb_buf_get(&bs, oout, "out", LB_T_F32, -1, LB_BUF_CONTIG | LB_BUF_WRITABLE);
    if (!out)
        goto done;
    if (out->len / 4 != codes->len) {
        bad("out must hold one float32 per code");
        goto done;
    }
    unsigned m;
    Py_BEGIN_ALLOW_THREADS
    m = kc_decode((const uint8_t *)codes->buf, (size_t)codes->len, table, (float *)out->buf, path, nthreads);
    Py_END_ALLOW_THREADS
    result = PyLong_FromUnsignedLong(m);
    LB_BINDING_EXIT(bs, result);
}

/* The input of kc_im2col_decode / kc_decode_map: x (N, H, W, C) uint8 codes and tables (C, 256) float32 into
 * a's codes, shape and tables (the rest zero). 0, or -1 with an exception set. */
static int codes_and_tables(lb_bufset *bs, PyObject *ox, PyObject *otables, const char *what, kc_decode_args *a)
{
    memset(a, 0, sizeof *a);
    Py_buffer *x = lb_buf_get(bs, ox, "x", LB_T_U8, 4, LB_BUF_CONTIG);
    if (!x)
        return -1;
    Py_buffer *tables = lb_buf_get(bs, otables, "tables", LB_T_F32, 2, LB_BUF_CONTIG);
    if (!tables)
        return -1;
    a->codes = (const uint8_t *)x->buf;
    a->n = (size_t)x->shape[0], a->h = (size_t)x->shape[1], a->w = (size_t)x->shape[2], a->c = (size_t)x->shape[3];
    if (tables->shape[0] != (Py_ssize_t)a->c || tables->shape[1] != 256) {
        PyErr_Format(PyExc_ValueError, "%s: tables must be (C, 256) float32 for the input's C channels", what);
        return -1;
    }
    a->tables = (const float *)tables->buf;
    return 0;
}

static PyObject *py_kc_im2col_decode(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *otables, *oout;
    int kh, kw, sh, sw, ph, pw, nthreads;
    float fill;
    if (!PyArg_ParseTuple(args, "O(ii)(ii)(ii)OfOi:kc_im2col_decode", &ox, &kh, &kw, &sh, &sw, &ph, &pw, &otables,
                          &fill, &oout, &nthreads) ||
        lb_check_nthreads(nthreads) < 0)
        return NULL;
    LB_BINDING(bs, result);
    kc_decode_args a;
    if (codes_and_tables(&bs, ox, otables, "kc_im2col_decode", &a) < 0)
        goto done;
    Py_buffer *out = lb_buf_get(&bs, oout, "out", LB_T_F32, 2, LB_BUF_CONTIG | LB_BUF_WRITABLE);
    if (!out)
        goto done;
    a.kh = kh, a.kw = kw, a.sh = sh, a.sw = sw, a.ph = ph, a.pw = pw;
    if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 || (Py_ssize_t)a.h + 2 * ph < kh ||
        (Py_ssize_t)a.w + 2 * pw < kw) {
        bad("kc_im2col_decode: kernel, stride >= 1, padding >= 0, and the padded input at least the kernel");
        goto done;
    }
    a.oh = (a.h + 2 * (size_t)ph - (size_t)kh) / (size_t)sh + 1;
    a.ow = (a.w + 2 * (size_t)pw - (size_t)kw) / (size_t)sw + 1;
    if (out->shape[0] != (Py_ssize_t)(a.n * a.oh * a.ow) || out->shape[1] != (Py_ssize_t)((size_t)kh * kw * a.c)) {
        bad("kc_im2col_decode: out must be (N * OH * OW, kh * kw * C) float32");
        goto done;
    }
    a.fill = fill;
    a.out = (float *)out->buf;
    unsigned m;
    Py_BEGIN_ALLOW_THREADS
    m = kc_im2col_decode(&a, nthreads);
    Py_END_ALLOW_THREADS
    result = m == UINT_MAX ? PyErr_NoMemory() : PyLong_FromUnsignedLong(m);
    LB_BINDING_EXIT(bs, result);
}

static PyObject *py_kc_fconv_pack(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ow, *oout;
    if (!PyArg_ParseTuple(args, "OO:kc_fconv_pack", &ow, &oout))
        return NULL;
    LB_BINDING(bs, result);
    Py_buffer *w = lb_buf_get(&bs, ow, "w", LB_T_F32, 2, LB_BUF_CONTIG);
    if (!w)
        goto done;
    Py_buffer *out = lb_buf_get(&bs, oout, "out", LB_T_F32, 1, LB_BUF_CONTIG | LB_BUF_WRITABLE);
    if (!out)
        goto done;
    const size_t k = (size_t)w->shape[0], n = (size_t)w->shape[1];
    if (out->shape[0] != (Py_ssize_t)kc_fconv_packed_floats(k, n)) {
        bad("kc_fconv_pack: out must hold kc_fconv_packed_floats(K, N) float32");
        goto done;
    }
    kc_fconv_pack((const float *)w->buf, k, n, (float *)out->buf);
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

static PyObject *py_kc_fconv(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *omap, *ow, *oout;
    int kh, kw, sh, sw, path, nthreads;
    Py_ssize_t nout;
    if (!PyArg_ParseTuple(args, "O(ii)(ii)OnOii:kc_fconv", &omap, &kh, &kw, &sh, &sw, &ow, &nout, &oout, &path,
                          &nthreads) ||
        lb_check_nthreads(nthreads) < 0)
        return NULL;
    LB_BINDING(bs, result);
    Py_buffer *map = lb_buf_get(&bs, omap, "map", LB_T_F32, 4, LB_BUF_CONTIG);
    if (!map)
        goto done;
    Py_buffer *w = lb_buf_get(&bs, ow, "w", LB_T_F32, 1, LB_BUF_CONTIG);
    if (!w)
        goto done;
    Py_buffer *out = lb_buf_get(&bs, oout, "out", LB_T_F32, 2, LB_BUF_CONTIG | LB_BUF_WRITABLE);
    if (!out)
        goto done;
    kc_fconv_args a;
    a.map = (const float *)map->buf;
    a.n = (size_t)map->shape[0], a.hp = (size_t)map->shape[1], a.wp = (size_t)map->shape[2];
    a.c = (size_t)map->shape[3];
    a.kh = kh, a.kw = kw, a.sh = sh, a.sw = sw;
    if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || (size_t)kh > a.hp || (size_t)kw > a.wp || nout < 1) {
        bad("kc_fconv: kernel and stride >= 1, the map at least the kernel, nout >= 1");
        goto done;
    }
    a.oh = (a.hp - (size_t)kh) / (size_t)sh + 1;
    a.ow = (a.wp - (size_t)kw) / (size_t)sw + 1;
    a.nout = (size_t)nout;
    const size_t k = (size_t)kh * (size_t)kw * a.c;
    if (w->shape[0] != (Py_ssize_t)kc_fconv_packed_floats(k, a.nout)) {
        bad("kc_fconv: w must be kc_fconv_pack's panels of the (kh * kw * C, nout) weights");
        goto done;
    }
    if (out->shape[0] != (Py_ssize_t)(a.n * a.oh * a.ow) || out->shape[1] != nout) {
        bad("kc_fconv: out must be (N * OH * OW, nout) float32");
        goto done;
    }
    a.w = (const float *)w->buf;
    a.out = (float *)out->buf;
    a.ldo = a.nout;
    Py_BEGIN_ALLOW_THREADS
    kc_fconv(&a, path, nthreads);
    Py_END_ALLOW_THREADS
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

static PyObject *py_kc_decode_map(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *otables, *oout;
    int ph, pw, nthreads;
    float fill;
    if (!PyArg_ParseTuple(args, "O(ii)OfOi:kc_decode_map", &ox, &ph, &pw, &otables, &fill, &oout, &nthreads) ||
        lb_check_nthreads(nthreads) < 0)
        return NULL;
    LB_BINDING(bs, result);
    kc_decode_args a;
    if (codes_and_tables(&bs, ox, otables, "kc_decode_map", &a) < 0)
        goto done;
    Py_buffer *out = lb_buf_get(&bs, oout, "out", LB_T_F32, 4, LB_BUF_CONTIG | LB_BUF_WRITABLE);
    if (!out)
        goto done;
    if (ph < 0 || pw < 0) {
        bad("kc_decode_map: padding >= 0");
        goto done;
    }
    a.ph = ph, a.pw = pw;
    if (out->shape[0] != (Py_ssize_t)a.n || out->shape[1] != (Py_ssize_t)(a.h + 2 * (size_t)ph) ||
        out->shape[2] != (Py_ssize_t)(a.w + 2 * (size_t)pw) || out->shape[3] != (Py_ssize_t)a.c) {
        bad("kc_decode_map: out must be (N, H + 2 ph, W + 2 pw, C) float32");
        goto done;
    }
    a.fill = fill;
    a.out = (float *)out->buf;
    unsigned m;
    Py_BEGIN_ALLOW_THREADS
    m = kc_decode_map(&a, nthreads);
    Py_END_ALLOW_THREADS
    result = PyLong_FromUnsignedLong(m);
    LB_BINDING_EXIT(bs, result);
}

static PyObject *py_kc_maxpool(PyObject *Py_UNUSED(self), PyObject *args)
{
    PyObject *ox, *oout;
    int kh, kw, sh, sw, ph, pw, nthreads;
    if (!PyArg_ParseTuple(args, "O(ii)(ii)(ii)Oi:kc_maxpool", &ox, &kh, &kw, &sh, &sw, &ph, &pw, &oout, &nthreads) ||
        lb_check_nthreads(nthreads) < 0)
        return NULL;
    LB_BINDING(bs, result);
    Py_buffer *x = lb_buf_get(&bs, ox, "x", LB_T_ANY, 4, LB_BUF_CONTIG);
    if (!x)
        goto done;
    kc_pool_args p;
    const int elem = lb_buf_elem(x);
    if (elem != LB_T_U8 && elem != LB_T_F32) {
        bad("kc_maxpool: x must be uint8 or float32");
        goto done;
    }
    p.u8 = elem == LB_T_U8;
    Py_buffer *out = lb_buf_get(&bs, oout, "out", p.u8 ? LB_T_U8 : LB_T_F32, 4, LB_BUF_CONTIG | LB_BUF_WRITABLE);
    if (!out)
        goto done;
    p.x = x->buf, p.out = out->buf;
    p.n = (size_t)x->shape[0], p.h = (size_t)x->shape[1], p.w = (size_t)x->shape[2], p.c = (size_t)x->shape[3];
    p.kh = kh, p.kw = kw, p.sh = sh, p.sw = sw, p.ph = ph, p.pw = pw;
    if (kh < 1 || kw < 1 || sh < 1 || sw < 1 || ph < 0 || pw < 0 || ph >= kh || pw >= kw ||
        (Py_ssize_t)p.h + 2 * ph < kh || (Py_ssize_t)p.w + 2 * pw < kw) {
        bad("kc_maxpool: kernel, stride >= 1, 0 <= padding < kernel, and the padded input at least the kernel");
        goto done;
    }
    p.oh = (p.h + 2 * (size_t)ph - (size_t)kh) / (size_t)sh + 1;
    p.ow = (p.w + 2 * (size_t)pw - (size_t)kw) / (size_t)sw + 1;
    if ((size_t)out->shape[0] != p.n || (size_t)out->shape[1] != p.oh || (size_t)out->shape[2] != p.ow ||
        (size_t)out->shape[3] != p.c) {
        bad("kc_maxpool: out must be (N, OH, OW, C)");
        goto done;
    }
    LB_NOGIL(kc_maxpool(&p, nthreads));
    result = lb_none();
    LB_BINDING_EXIT(bs, result);
}

PyMethodDef kc_methods[] = {
    {"kc_maxpool", py_kc_maxpool, METH_VARARGS,
     "kc_maxpool(x, kernel, stride, padding, out, nthreads)\n\nmax-pool of an NHWC float32 or uint8 map."},
    {"kc_fconv_pack", py_kc_fconv_pack, METH_VARARGS,
     "kc_fconv_pack(w, out)\n\nfloat32 (K, N) weights -> panels of 64 output channels for kc_fconv."},
    {"kc_fconv", py_kc_fconv, METH_VARARGS,
     "kc_fconv(map, kernel, stride, w, nout, out, path, nthreads)\n\nfloat32 conv of a padded NHWC map "
     "(implicit GEMM) into out (N * OH * OW, nout)."},
    {"kc_decode_map", py_kc_decode_map, METH_VARARGS,
     "kc_decode_map(x, padding, tables, fill, out, nthreads) -> largest code\n\nout = tables[c][x] of NHWC "
     "uint8 codes, padded with fill."},
    {"kc_fthreshold", py_kc_fthreshold, METH_VARARGS,
     "kc_fthreshold(x, thr, sign, out, path, nthreads, add=None, add_table=None) -> largest addend code\n\n"
     "float32 (rows, C) [+ add, float32, or add_table[add], codes] -> per-channel multi-threshold codes (uint8) "
     "or bits (uint64, one threshold)."},
    {"kc_decode", py_kc_decode, METH_VARARGS,
     "kc_decode(codes, table, out, path, nthreads) -> largest code\n\nout = table[codes] (table: 256 float32)."},
    {"kc_im2col_decode", py_kc_im2col_decode, METH_VARARGS,
     "kc_im2col_decode(x, kernel, stride, padding, tables, fill, out, nthreads) -> largest code\n\n"
     "out = im2col of tables[c][x] (NHWC uint8 codes, tables (C, 256) float32), padded with fill."},
    {"kc_conv", py_kc_conv, METH_VARARGS,
     "kc_conv(x, kernel, stride, padding, pad, map, kind, b, abits, bbits, bstore, n, sa, oa, sb, ob, zb, sumb, "
     "mul, border, pool, thr, sign, flip, out, path, nthreads) -> largest input code\n\n"
     "A k-bit conv layer in one pass over bands of its output: pack + GEMM + [border, pool, thresholds]."},
    {"kc_pack", py_kc_pack, METH_VARARGS,
     "kc_pack(x, kernel, stride, padding, pad, map, bits, dst, sums, path, nthreads) -> largest input code\n\n"
     "NHWC uint8 codes -> im2col rows packed for the k-bit GEMM (a8 rows or bit planes) + row sums."},
    {"kc_epilogue", py_kc_epilogue, METH_VARARGS,
     "kc_epilogue(acc, mul, border, pool, thr, sign, flip, out, path, nthreads)\n\n"
     "int32 accumulators -> [acc * mul + border] -> [max-pool] -> multi-threshold codes or packed bits."},
    {NULL, NULL, 0, NULL},
};
