/*
 * kconv_epilogue.c -- int32 accumulators -> k-bit codes (or packed bits) in one pass (kconv.h): the
 * driver and the portable row kernel.
 *
 * Per output position: v = acc * mul + border over the pooling window (or the one position), the max of
 * those, the channel's sign applied (int32, wrapping), and the count of thresholds at or below it. The
 * arithmetic is NumPy's int32 arithmetic (wrapping), so the result is bit-identical to the NumPy passes
 * it replaces (lowbit.runtime.graph). Threads split the output image rows.
 */
#include <stdlib.h>
#include <string.h>

#include "kconv.h"

/* v of channels [0, c) at input position (img, y, x) into dst (first) or maxed into it */
static inline void load_v(const kc_epi_args *e, size_t img, size_t y, size_t x, int32_t *dst, int first)
{
    const size_t c = e->c;
    const int32_t *a = e->acc + ((img * e->h + y) * e->w + x) * e->ld_acc;
    const int32_t *b = e->border ? e->border + (y * e->w + x) * e->ld_border : NULL;
    const uint32_t mul = (uint32_t)e->mul;
    for (size_t ch = 0; ch < c; ch++) {
        const int32_t v = (int32_t)((uint32_t)a[ch] * mul + (b ? (uint32_t)b[ch] : 0u));
        dst[ch] = first || v > dst[ch] ? v : dst[ch];
    }
}

void kc_epi_rows_scalar(const kc_epi_args *e, size_t r0, size_t r1)
{
    const size_t c = e->c, words = (c + 63) / 64;
    int32_t *v = (int32_t *)malloc((c ? c : 1) * sizeof(int32_t));
    if (!v)
        return; /* the driver checked this size could be allocated; cannot happen in practice */
    for (size_t r = r0; r < r1; r++) {
        const size_t img = r / e->oh, oy = r % e->oh;
        for (size_t ox = 0; ox < e->ow; ox++) {
            if (e->kh == 0) {
                load_v(e, img, oy, ox, v, 1);
            } else {
                size_t ylo, yhi, xlo, xhi;
                kc_window(oy, e->kh, e->sh, e->ph, e->h, &ylo, &yhi);
                kc_window(ox, e->kw, e->sw, e->pw, e->w, &xlo, &xhi);
                for (size_t ch = 0; ch < c; ch++)
                    v[ch] = INT32_MIN; /* the padded positions' value: never wins */
                for (size_t y = ylo; y < yhi; y++)
                    for (size_t x = xlo; x < xhi; x++)
                        load_v(e, img, y, x, v, 0);
            }
            if (e->flip)
                for (size_t ch = 0; ch < c; ch++)
                    v[ch] = (int32_t)((uint32_t)v[ch] * (uint32_t)e->sign[ch]);
            const size_t pix = r * e->ow + ox;
            if (e->out_bits) {
                uint64_t *o = (uint64_t *)e->out + pix * e->ld_out;
                for (size_t wd = 0; wd < words; wd++) {
                    uint64_t word = 0;
                    const size_t end = c - 64 * wd < 64 ? c - 64 * wd : 64;
                    for (size_t q = 0; q < end; q++)
                        word |= (uint64_t)(v[64 * wd + q] < e->thr[64 * wd + q]) << q;
                    o[wd] = word;
                }
            } else {
                uint8_t *o = (uint8_t *)e->out + pix * e->ld_out;
                for (size_t ch = 0; ch < c; ch++) {
                    unsigned cnt = 0;
                    for (int j = 0; j < e->nthr; j++)
                        cnt += v[ch] >= e->thr[(size_t)j * e->ld_thr + ch];
                    o[ch] = (uint8_t)cnt;
                }
            }
        }
    }
    free(v);
}

kc_epi_rows_fn kc_epi_fn_for(int path)
{
    if (path < 0 || path >= LB_NPATHS || !lb_path_supported(path))
        path = lb_best_path();
#if LB_X86
    if (path >= LB_PATH_AVX512)
        return kc_epi_rows_avx512;
    if (path >= LB_PATH_AVX2)
        return kc_epi_rows_avx2;
#else
    (void)path;
#endif
    return kc_epi_rows_scalar;
}

typedef struct {
    const kc_epi_args *e;
    kc_epi_rows_fn fn;
} epi_ctx;

static void epi_task(void *vctx, int t, int nthreads)
{
    const epi_ctx *ctx = (const epi_ctx *)vctx;
    const size_t rows = ctx->e->n * ctx->e->oh;
    const size_t r0 = bg_share(rows, t, nthreads), r1 = bg_share(rows, t + 1, nthreads);
    if (r0 < r1)
        ctx->fn(ctx->e, r0, r1);
}

void kc_epilogue(const kc_epi_args *e, int path, int nthreads)
{
    const size_t rows = e->n * e->oh;
    if (rows == 0 || e->ow == 0)
        return;
    if (path < 0 || path >= LB_NPATHS || !lb_path_supported(path))
        path = lb_best_path();
    epi_ctx ctx = {e, kc_epi_fn_for(path)};
    /* ~0.3 ns per accumulator read and threshold: a thread per ~100 us of that */
    const double win = e->kh ? (double)e->kh * (double)e->kw : 1.0;
    const double work = (double)rows * (double)e->ow * (double)e->c * (win + 0.3 * e->nthr) * 0.3;
    int nt = (int)(work / 1e5);
    if (nt > nthreads) nt = nthreads;
    if (nt > KC_MAX_THREADS) nt = KC_MAX_THREADS;
    if ((size_t)nt > rows) nt = (int)rows;
    if (nt < 1) nt = 1;
    bg_parallel(nt, epi_task, &ctx);
}
