/*
 * bitconv_driver.c -- weight preparation, the zero-bordered input, threading and dispatch of the binary
 * convolution (see bitconv.h for the layouts and the kernel design).
 *
 * One call:
 *   1. the input gets a zero border of ph rows / pw columns (the +1 pad of a binary conv) and its pixel pad
 *      bits cleared, in one copy (~1% of the convolution's time at 56 x 56 x 256); skipped when there is
 *      nothing to add or clear, except on AVX2, which splits it into low / high nibble planes here;
 *   2. the output pixels are cut into blocks that the threads take from a shared counter (the caller and the
 *      pool's workers, bitconv_pool.c); every thread runs every channel group over its pixels (it reads all
 *      the weights, ~74 KB for 256 x 3 x 3 x 256, from L2).
 */
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "bitconv.h"

#define NIB 0x0f0f0f0f0f0f0f0fULL

/* a thread per 512 K (pixel, output, word) products: ~150 us of one core, several times a thread's start */
#define BC_MIN_WORK_PER_THREAD ((double)(1 << 19))

static int bc_split_nibbles(int path)
{
    return path == LB_PATH_AVX2;
}

static size_t bc_tile_rows(int path)
{
    switch (path) {
    case LB_PATH_AVX512:
    case LB_PATH_AVX512VNNI:
    case LB_PATH_AMX: return BC_AVX512_MR;
    case LB_PATH_AVX2: return BC_AVX2_MR;
    default: return BC_SCALAR_MR;
    }
}

static bc_pixels_fn bc_kernel_for(int path)
{
#if LB_X86
    switch (path) {
    case LB_PATH_POPCNT: return bc_pixels_popcnt;
    case LB_PATH_AVX2: return bc_pixels_avx2;
    case LB_PATH_AVX512:
    case LB_PATH_AVX512VNNI:
    case LB_PATH_AMX: return bc_pixels_avx512;
    default: return bc_pixels_portable;
    }
#else
    (void)path;
    return bc_pixels_portable;
#endif
}

/* ---- prepared weights ------------------------------------------------------------------------------------ */
size_t bc_prepared_bytes(int path, size_t nout, size_t kwords)
{
    const size_t groups = (nout + BC_G - 1) / BC_G;
    return groups * kwords * BC_G * sizeof(uint64_t) * (bc_split_nibbles(path) ? 2 : 1);
}

void bc_prepare(int path, const uint64_t *w, ptrdiff_t ldw, size_t nout, size_t kh, size_t kw, size_t cw,
                size_t in_bits, void *dst)
{
    const size_t kwords = kh * kw * cw, groups = (nout + BC_G - 1) / BC_G;
    const int split = bc_split_nibbles(path);
    const size_t panel = kwords * BC_G * (split ? 2 : 1);
    const uint64_t lastmask = bg_last_word_mask(in_bits);
    uint64_t *out = (uint64_t *)dst;
    memset(out, 0, bc_prepared_bytes(path, nout, kwords));
    for (size_t j = 0; j < nout; j++) {
        uint64_t *p = out + (j / BC_G) * panel + j % BC_G;
        const uint64_t *row = w + (ptrdiff_t)j * ldw;
        for (size_t kk = 0; kk < kwords; kk++) {
            const uint64_t v = row[kk] & ((kk % cw == cw - 1) ? lastmask : ~(uint64_t)0);
            if (split) {
                p[kk * BC_G] = v & NIB;
                p[(kwords + kk) * BC_G] = (v >> 4) & NIB;
            } else {
                p[kk * BC_G] = v;
            }
        }
    }
    (void)groups;
}

/* ---- the input ------------------------------------------------------------------------------------------- */
/* x (n, h, w, cw) -> zero-bordered (n, hp, wp, cw) with pad bits cleared; with hi != NULL the low nibbles go to
 * lo and the high ones to hi. */
static void bc_pad_input(const bc_conv_args *a, size_t hp, size_t wp, uint64_t *lo, uint64_t *hi)
{
    const size_t cw = a->cw;
    const uint64_t lastmask = bg_last_word_mask(a->in_bits);
    const size_t total = a->n * hp * wp * cw;
    memset(lo, 0, total * sizeof(uint64_t));
    if (hi)
        memset(hi, 0, total * sizeof(uint64_t));
    for (size_t img = 0; img < a->n; img++)
        for (size_t y = 0; y < a->h; y++) {
            const uint64_t *src = a->x + ((img * a->h + y) * a->w) * cw;
            const size_t o = ((img * hp + y + a->ph) * wp + a->pw) * cw;
            uint64_t *d0 = lo + o;
            if (hi) {
                uint64_t *d1 = hi + o;
                for (size_t i = 0; i < a->w * cw; i++) {
                    const uint64_t v = src[i] & ((i % cw == cw - 1) ? lastmask : ~(uint64_t)0);
                    d0[i] = v & NIB;
                    d1[i] = (v >> 4) & NIB;
                }
            } else if (lastmask == ~(uint64_t)0) {
                memcpy(d0, src, a->w * cw * sizeof(uint64_t));
            } else {
                for (size_t i = 0; i < a->w * cw; i++)
                    d0[i] = src[i] & ((i % cw == cw - 1) ? lastmask : ~(uint64_t)0);
            }
        }
}

/* ---- threads ---------------------------------------------------------------------------------------------
 * Threads take blocks of output pixels from a shared counter rather than a fixed share each: on a machine
 * shared with other work a thread whose core is busy then does fewer blocks instead of holding everyone up
 * (with fixed halves on 2 cores and one other busy process, a call took 3x its one-thread time). */
typedef struct {
    const bc_work *wk;
    bc_pixels_fn fn;
    size_t pixels, block, nblocks;
    atomic_size_t next;
} bc_ctx;

static void bc_job(void *vctx)
{
    bc_ctx *c = (bc_ctx *)vctx;
    for (;;) {
        const size_t b = atomic_fetch_add_explicit(&c->next, 1, memory_order_relaxed);
        if (b >= c->nblocks)
            return;
        const size_t p0 = b * c->block, p1 = (p0 + c->block < c->pixels) ? p0 + c->block : c->pixels;
        c->fn(c->wk, p0, p1);
    }
}

static void bc_task(void *vctx, int t, int nthreads) /* the same job for bg_parallel */
{
    (void)t, (void)nthreads;
    bc_job(vctx);
}

int bc_plan_threads(size_t pixels, size_t nout, size_t kwords, int path, int nthreads)
{
    path = lb_resolve_path(path);
    if (path < 0)
        path = lb_best_path();
    const double work = (double)pixels * (double)nout * (double)(kwords ? kwords : 1);
    double t = work / BC_MIN_WORK_PER_THREAD;
    if (t > (double)nthreads)
        t = (double)nthreads;
    int nt = t < 1.0 ? 1 : (int)t;
    const size_t mr = bc_tile_rows(path), tiles = (pixels + mr - 1) / mr;
    if ((size_t)nt > tiles)
        nt = tiles ? (int)tiles : 1;
    return nt;
}

static void *bc_alloc(size_t bytes)
{
    return aligned_alloc(64, (bytes + 63) / 64 * 64 + 64); /* + a line: no vector read can leave the block */
}

int bc_conv2d(const bc_conv_args *a, int path, int nthreads)
{
    const size_t pixels = a->n * a->oh * a->ow;
    if (pixels == 0 || a->nout == 0)
        return 0;
    path = lb_path_or_best(path);
    bc_work wk;
    memset(&wk, 0, sizeof wk);
    const int split = bc_split_nibbles(path);
    const size_t hp = a->h + 2 * a->ph, wp = a->w + 2 * a->pw;
    uint64_t *lo = NULL;
    int32_t *sign = NULL, *thr = NULL;
    ptrdiff_t *koff = NULL;
    int64_t *pop_thr = NULL;
    uint32_t *neg = NULL;
    int rc = 0;
    if (split || a->ph || a->pw || a->in_bits != 64 * a->cw) {
        const size_t words = a->n * hp * wp * a->cw; /* per plane; avx2: low then high nibbles, one block */
        lo = (uint64_t *)bc_alloc(words * sizeof(uint64_t) * (split ? 2 : 1));
        if (!lo) {
            rc = -1;
            goto done;
        }
        bc_pad_input(a, hp, wp, lo, split ? lo + words : NULL);
        wk.x0 = lo;
        wk.hi = split ? (ptrdiff_t)words : 0;
    } else {
        wk.x0 = a->x;
    }
    wk.hp = hp;
    wk.wp = wp;
    wk.cw = a->cw;
    wk.kh = a->kh;
    wk.kw = a->kw;
    wk.sh = a->sh;
    wk.sw = a->sw;
    wk.oh = a->oh;
    wk.ow = a->ow;
    wk.kwords = a->kh * a->kw * a->cw;
    koff = (ptrdiff_t *)bc_alloc(wk.kwords * sizeof(ptrdiff_t));
    if (!koff) {
        rc = -1;
        goto done;
    }
    for (size_t kk = 0; kk < wk.kwords; kk++) /* kk = (dy * kw + dx) * cw + c = dy * (kw * cw) + j */
        koff[kk] = (ptrdiff_t)((kk / (a->kw * a->cw)) * wp * a->cw + kk % (a->kw * a->cw));
    wk.koff = koff;
    wk.w = (const uint64_t *)a->wprep;
    wk.panel_words = wk.kwords * BC_G * (split ? 2 : 1);
    wk.nout = a->nout;
    wk.ngroups = (a->nout + BC_G - 1) / BC_G;
    wk.ksum = (int32_t)(a->kh * a->kw * a->in_bits);
    wk.acc = a->acc;
    wk.bits = a->bits;
    wk.owords = (a->nout + 63) / 64;
    wk.bias = a->bias;
    if (a->sign) { /* padded to whole groups, so that the epilogues load full vectors */
        const size_t n = wk.ngroups * BC_G;
        sign = (int32_t *)bc_alloc(n * sizeof(int32_t));
        thr = (int32_t *)bc_alloc(n * sizeof(int32_t));
        if (!sign || !thr) {
            rc = -1;
            goto done;
        }
        for (size_t j = 0; j < n; j++) {
            sign[j] = j < a->nout ? (a->sign[j] < 0 ? -1 : 1) : 1;
            thr[j] = j < a->nout ? a->thr[j] : 0;
        }
        wk.sign = sign;
        wk.thr = thr;
        /* The comparison moved onto the popcount, where it needs no conversion to int32: exact when
         * u = ksum - 2 pop - bias stays in int32 for every pop in 0..ksum (and -u too where sign < 0); then
         *   sign > 0:  u < thr   <=>  2 pop > ksum - bias - thr    <=>  pop > floor((ksum - bias - thr) / 2)
         *   sign < 0:  -u < thr  <=>  2 pop < thr + ksum - bias    <=>  !(pop > ceil((thr + ksum - bias) / 2) - 1) */
        const int64_t K = wk.ksum, b = a->bias;
        const int exact = K - b <= INT32_MAX && -K - b > INT32_MIN; /* (strict: -INT32_MIN wraps) */
        if (exact) {
            pop_thr = (int64_t *)bc_alloc(n * sizeof(int64_t));
            neg = (uint32_t *)bc_alloc(wk.ngroups * sizeof(uint32_t));
            if (!pop_thr || !neg) {
                rc = -1;
                goto done;
            }
            memset(neg, 0, wk.ngroups * sizeof(uint32_t));
            for (size_t j = 0; j < n; j++) {
                const int64_t t = thr[j];
                if (sign[j] > 0) {
                    const int64_t d = K - b - t; /* floor(d / 2) */
                    pop_thr[j] = d >= 0 ? d / 2 : -((-d + 1) / 2);
                } else {
                    const int64_t d = t + K - b; /* ceil(d / 2) - 1 */
                    pop_thr[j] = (d >= 0 ? (d + 1) / 2 : -((-d) / 2)) - 1;
                    neg[j / BC_G] |= 1u << (j % BC_G);
                }
            }
            wk.pop_thr = pop_thr;
            wk.neg = neg;
        }
    }
    {
        const int nt = bc_plan_threads(pixels, a->nout, wk.kwords, path, nthreads);
        /* blocks of BC_PB pixels (a multiple of every tile height), smaller when that leaves a thread
         * fewer than ~4 of them */
        const size_t mr = bc_tile_rows(path);
        size_t block = (pixels + 4 * (size_t)nt - 1) / (4 * (size_t)nt);
        block = (block + mr - 1) / mr * mr;
        if (block > BC_PB)
            block = BC_PB;
        bc_ctx c;
        c.wk = &wk;
        c.fn = bc_kernel_for(path);
        c.pixels = pixels;
        c.block = block;
        c.nblocks = (pixels + block - 1) / block;
        atomic_init(&c.next, 0);
        bc_pool_run(nt, bc_job, &c, bc_task);
    }
done:
    free(lo);
    free(koff);
    free(pop_thr);
    free(neg);
    free(sign);
    free(thr);
    return rc;
}
