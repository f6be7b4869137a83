/*
 * kconv_epilogue.c -- int32 accumulators -> k-bit codes (or packed bits) in one pass (kconv.h): the
 * driver and the portable row kernel.
 *
 * Per output position: v = acc * mul + border over the pooling window (or the one position), the max of
 * those, the channel's sign applied (int32, wrapping), and the count of thresholds at or below it. The
 * arithmetic is NumPy's int32 arithmetic (wrapping), so the result is bit-identical to the NumPy passes
 * it replaces (lowbit.runtime.graph). Threads split the output image rows.
 */
#include <limits.h>
#include <stdatomic.h>
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
    const kc_epi_args a = *e; /* a local copy: the uint8 stores below alias everything */
    const size_t c = a.c;
    int32_t *v = (int32_t *)malloc((c ? c : 1) * sizeof(int32_t));
    if (!v)
        return; /* the driver checked this size could be allocated; cannot happen in practice */
    for (size_t r = r0; r < r1; r++) {
        const size_t img = r / a.oh, oy = r % a.oh;
        for (size_t ox = 0; ox < a.ow; ox++) {
            if (a.kh == 0) {
                load_v(&a, img, oy, ox, v, 1);
            } else {
                size_t ylo, yhi, xlo, xhi;
                kc_window(oy, a.kh, a.sh, a.ph, a.h, &ylo, &yhi);
                kc_window(ox, a.kw, a.sw, a.pw, a.w, &xlo, &xhi);
                for (size_t ch = 0; ch < c; ch++)
                    v[ch] = INT32_MIN; /* the padded positions' value: never wins */
                for (size_t y = ylo; y < yhi; y++)
                    for (size_t x = xlo; x < xhi; x++)
                        load_v(&a, img, y, x, v, 0);
            }
            const size_t pix = r * a.ow + ox;
            if (a.out_float) { /* float32 product, then float32 sum: NumPy's x.astype(f32) * scale + bias */
                float *o = (float *)a.out + pix * a.ld_out;
                for (size_t ch = 0; ch < c; ch++) {
                    volatile float prod = (float)v[ch] * a.scale[ch]; /* no contraction into an fma */
                    o[ch] = prod + a.bias[ch];
                }
                continue;
            }
            if (a.flip)
                for (size_t ch = 0; ch < c; ch++)
                    v[ch] = (int32_t)((uint32_t)v[ch] * (uint32_t)a.sign[ch]);
            if (a.out_bits) {
                uint64_t *o = (uint64_t *)a.out + pix * a.ld_out;
                for (size_t wd = 0; wd * 64 < c; wd++) {
                    uint64_t word = 0;
                    const size_t end = c - 64 * wd < 64 ? c - 64 * wd : 64;
                    for (size_t q = 0; q < end; q++)
                        word |= (uint64_t)(v[64 * wd + q] < a.thr[64 * wd + q]) << q;
                    o[wd] = word;
                }
            } else {
                uint8_t *o = (uint8_t *)a.out + pix * a.ld_out;
                for (size_t ch = 0; ch < c; ch++) {
                    unsigned cnt = 0;
                    for (int j = 0; j < a.nthr; j++)
                        cnt += v[ch] >= a.thr[(size_t)j * a.ld_thr + ch];
                    o[ch] = (uint8_t)cnt;
                }
            }
        }
    }
    free(v);
}

/* ---- float32 thresholds and decoding ------------------------------------------------------------- */
void kc_fthr_rows_scalar(const kc_fthr_args *f, size_t r0, size_t r1)
{
    const kc_fthr_args a = *f;
    const size_t c = a.c, words = (c + 63) / 64;
    for (size_t r = r0; r < r1; r++) {
        const float *x = a.x + r * a.ld_x;
        if (a.out_bits) {
            uint64_t *o = (uint64_t *)a.out + r * words;
            for (size_t wd = 0; wd < words; wd++) {
                uint64_t word = 0;
                const size_t end = c - 64 * wd < 64 ? c - 64 * wd : 64;
                for (size_t q = 0; q < end; q++) {
                    const size_t ch = 64 * wd + q;
                    const float v = a.sign ? x[ch] * a.sign[ch] : x[ch];
                    word |= (uint64_t)!(v >= a.thr[ch]) << q;
                }
                o[wd] = word;
            }
        } else {
            uint8_t *o = (uint8_t *)a.out + r * c;
            for (size_t ch = 0; ch < c; ch++) {
                const float v = a.sign ? x[ch] * a.sign[ch] : x[ch];
                unsigned cnt = 0;
                for (int j = 0; j < a.nthr; j++)
                    cnt += v >= a.thr[(size_t)j * c + ch];
                o[ch] = (uint8_t)cnt;
            }
        }
    }
}

unsigned kc_lookup_scalar(const float *x, const uint8_t *q, const float *table, size_t n, float *v)
{
    unsigned m = 0;
    for (size_t i = 0; i < n; i++) {
        const unsigned code = q[i];
        m = code > m ? code : m;
        v[i] = x ? x[i] + table[code] : table[code];
    }
    return m;
}

kc_lookup_fn kc_lookup_for(int path)
{
    path = lb_path_or_best(path);
#if LB_X86
    if (path >= LB_PATH_AVX512)
        return kc_lookup_avx512;
    if (path >= LB_PATH_AVX2)
        return kc_lookup_avx2;
#endif
    return kc_lookup_scalar;
}

/* A row pass (the int32 epilogue, or float thresholds: e or f set) over `rows` rows cut into units. */
typedef struct {
    const kc_epi_args *e;
    kc_epi_rows_fn epi;
    const kc_fthr_args *f;
    kc_fthr_rows_fn fthr;
    kc_lookup_fn lookup;
    size_t rows, units;
    size_t add_rows;  /* rows of x + addend a thread makes at a time (its scratch) */
    atomic_uint max;  /* the largest addend code */
} rows_ctx;

/* The row kernels of both passes on path (a pass calls its own). */
static void kernels_for(int path, rows_ctx *ctx)
{
    path = lb_path_or_best(path);
    ctx->epi = kc_epi_rows_scalar;
    ctx->fthr = kc_fthr_rows_scalar;
#if LB_X86
    if (path >= LB_PATH_AVX512) {
        ctx->epi = kc_epi_rows_avx512;
        ctx->fthr = kc_fthr_rows_avx512;
    } else if (path >= LB_PATH_AVX2) {
        ctx->epi = kc_epi_rows_avx2;
        ctx->fthr = kc_fthr_rows_avx2;
    }
#endif
}

/* float thresholds of x + addend over rows [r0, r1): the sums of add_rows rows at a time into scratch, then the
 * row kernel on them (it reads no addend) */
static void fthr_add_rows(rows_ctx *ctx, size_t r0, size_t r1, float *scratch)
{
    const kc_fthr_args *f = ctx->f;
    const size_t c = f->c, out_row = f->out_bits ? (c + 63) / 64 * 8 : c;
    unsigned m = 0;
    for (size_t b0 = r0; b0 < r1; b0 += ctx->add_rows) {
        const size_t b1 = b0 + ctx->add_rows < r1 ? b0 + ctx->add_rows : r1;
        for (size_t r = b0; r < b1; r++) {
            const float *restrict x = f->x + r * f->ld_x;
            float *restrict v = scratch + (r - b0) * c;
            if (f->add) {
                const float *restrict y = f->add + r * f->ld_add;
                for (size_t ch = 0; ch < c; ch++)
                    v[ch] = x[ch] + y[ch];
            } else {
                const unsigned mr = ctx->lookup(x, f->add_codes + r * f->ld_add, f->add_table, c, v);
                m = mr > m ? mr : m;
            }
        }
        kc_fthr_args g = *f;
        g.x = scratch, g.ld_x = c, g.rows = b1 - b0;
        g.out = (uint8_t *)f->out + b0 * out_row;
        g.add = NULL, g.add_codes = NULL;
        ctx->fthr(&g, 0, b1 - b0);
    }
    kc_atomic_max(&ctx->max, m);
}

static void rows_unit(void *vctx, size_t u, void *scratch)
{
    rows_ctx *ctx = (rows_ctx *)vctx;
    const size_t r0 = ctx->rows * u / ctx->units, r1 = ctx->rows * (u + 1) / ctx->units;
    if (r0 >= r1)
        return;
    if (ctx->e)
        ctx->epi(ctx->e, r0, r1);
    else if (ctx->f->add || ctx->f->add_codes)
        fthr_add_rows(ctx, r0, r1, (float *)scratch);
    else
        ctx->fthr(ctx->f, r0, r1);
}


unsigned kc_fthreshold(const kc_fthr_args *f, int path, int nthreads)
{
    if (f->rows == 0 || f->c == 0)
        return 0;
    rows_ctx ctx = {.f = f, .rows = f->rows, .lookup = kc_lookup_for(path)};
    kernels_for(path, &ctx);
    atomic_init(&ctx.max, 0);
    const int adds = f->add || f->add_codes;
    ctx.add_rows = adds ? (4096 + f->c - 1) / f->c : 0; /* ~16 KB of sums: L1 */
    const int nt = kc_threads_for((double)f->rows * (double)f->c * (1.0 + 0.3 * f->nthr + adds) * 0.3, nthreads);
    ctx.units = kc_units_for(nt, f->rows);
    qg_run_units(ctx.units, nt, rows_unit, &ctx, adds ? ctx.add_rows * f->c * sizeof(float) : 0);
    return atomic_load(&ctx.max);
}

/* ---- kc_maxpool: the max-pool of a float32 or code map, one output image row a unit step ------------------ */
typedef struct {
    const kc_pool_args *p;
    size_t rows, units;
} pool_ctx;

#define POOL_ROWS(T, MAXOP)                                                                                       \
    for (size_t r = r0; r < r1; r++) {                                                                            \
        const size_t img = r / p->oh, oy = r % p->oh;                                                             \
        size_t ylo, yhi;                                                                                          \
        kc_window(oy, p->kh, p->sh, p->ph, p->h, &ylo, &yhi);                                                     \
        for (size_t ox = 0; ox < p->ow; ox++) {                                                                   \
            size_t xlo, xhi;                                                                                      \
            kc_window(ox, p->kw, p->sw, p->pw, p->w, &xlo, &xhi);                                                 \
            T *restrict o = (T *)p->out + (r * p->ow + ox) * c;                                                   \
            const T *first = (const T *)p->x + ((img * p->h + ylo) * p->w + xlo) * c;                             \
            memcpy(o, first, c * sizeof(T));                                                                      \
            for (size_t y = ylo; y < yhi; y++)                                                                    \
                for (size_t x = xlo; x < xhi; x++) {                                                              \
                    const T *restrict v = (const T *)p->x + ((img * p->h + y) * p->w + x) * c;                    \
                    for (size_t ch = 0; ch < c; ch++)                                                             \
                        o[ch] = MAXOP(o[ch], v[ch]);                                                              \
                }                                                                                                 \
        }                                                                                                         \
    }
#define MAX_U8(a, b) ((b) > (a) ? (b) : (a))
#define MAX_F32(a, b) (((b) > (a) || (b) != (b)) ? (b) : (a)) /* a NaN wins and stays */

static void pool_unit(void *vctx, size_t u, void *scratch)
{
    (void)scratch;
    const pool_ctx *ctx = (const pool_ctx *)vctx;
    const kc_pool_args *p = ctx->p;
    const size_t c = p->c, r0 = ctx->rows * u / ctx->units, r1 = ctx->rows * (u + 1) / ctx->units;
    if (p->u8) {
        POOL_ROWS(uint8_t, MAX_U8)
    } else {
        POOL_ROWS(float, MAX_F32)
    }
}

void kc_maxpool(const kc_pool_args *p, int nthreads)
{
    pool_ctx ctx = {.p = p, .rows = p->n * p->oh};
    if (ctx.rows == 0 || p->ow == 0 || p->c == 0)
        return;
    const double reads = (double)ctx.rows * (double)p->ow * (double)p->c * (double)(p->kh * p->kw);
    const int nt = kc_threads_for(reads * (p->u8 ? 0.05 : 0.2), nthreads);
    ctx.units = kc_units_for(nt, ctx.rows);
    qg_run_units(ctx.units, nt, pool_unit, &ctx, 0);
}

typedef struct {
    const uint8_t *codes;
    size_t n, units;
    const float *table;
    float *out;
    kc_lookup_fn lookup;
    atomic_uint max;
} decode_ctx;

static void decode_unit(void *vctx, size_t u, void *scratch)
{
    (void)scratch;
    decode_ctx *ctx = (decode_ctx *)vctx;
    const size_t i0 = ctx->n * u / ctx->units, i1 = ctx->n * (u + 1) / ctx->units;
    kc_atomic_max(&ctx->max, ctx->lookup(NULL, ctx->codes + i0, ctx->table, i1 - i0, ctx->out + i0));
}

unsigned kc_decode(const uint8_t *codes, size_t n, const float *table, float *out, int path, int nthreads)
{
    if (n == 0)
        return 0;
    decode_ctx ctx;
    ctx.codes = codes, ctx.n = n, ctx.table = table, ctx.out = out, ctx.lookup = kc_lookup_for(path);
    atomic_init(&ctx.max, 0);
    const int nt = kc_threads_for((double)n * 0.2, nthreads); /* ~0.2 ns a code */
    ctx.units = kc_units_for(nt, n);
    qg_run_units(ctx.units, nt, decode_unit, &ctx, 0);
    return atomic_load(&ctx.max);
}

/* ---- kc_im2col_decode: the patches of a float conv on codes, each value looked up in the tables ----------
 * For windows that read each pixel less than once (a 1x1 stride-2 shortcut conv), where a decoded map
 * (kc_decode_map, kconv_float.c) would decode pixels no window reads. */
typedef struct {
    const kc_decode_args *a;
    size_t units;
} im2col_ctx;

static void im2col_direct_unit(void *vctx, size_t u, void *scratch)
{
    (void)scratch;
    im2col_ctx *ctx = (im2col_ctx *)vctx;
    const kc_decode_args *a = ctx->a;
    const uint8_t *restrict codes = a->codes;
    const float *restrict tables = a->tables;
    float *restrict o;
    const size_t h = a->h, w = a->w, c = a->c, oh = a->oh, ow = a->ow;
    const ptrdiff_t kh = a->kh, kw = a->kw, sh = a->sh, sw = a->sw, ph = a->ph, pw = a->pw;
    const float fill = a->fill;
    const size_t rows = a->n * oh;
    const size_t r0 = rows * u / ctx->units, r1 = rows * (u + 1) / ctx->units;
    for (size_t r = r0; r < r1; r++) {
        const size_t img = r / oh, oy = r % oh;
        o = a->out + r * ow * (size_t)(kh * kw) * c;
        for (size_t ox = 0; ox < ow; ox++)
            for (ptrdiff_t ky = 0; ky < kh; ky++)
                for (ptrdiff_t kx = 0; kx < kw; kx++, o += c) {
                    const ptrdiff_t iy = (ptrdiff_t)oy * sh - ph + ky, ix = (ptrdiff_t)ox * sw - pw + kx;
                    if (iy < 0 || iy >= (ptrdiff_t)h || ix < 0 || ix >= (ptrdiff_t)w) {
                        for (size_t ch = 0; ch < c; ch++)
                            o[ch] = fill;
                        continue;
                    }
                    const uint8_t *px = codes + ((img * h + (size_t)iy) * w + (size_t)ix) * c;
                    for (size_t ch = 0; ch < c; ch++)
                        o[ch] = tables[ch * 256 + px[ch]];
                }
    }
}

unsigned kc_im2col_decode(const kc_decode_args *a, int nthreads)
{
    const size_t rows = a->n * a->oh, pixels = a->n * a->h * a->w;
    if (rows == 0 || a->ow == 0 || pixels == 0)
        return 0;
    im2col_ctx ctx;
    ctx.a = a;
    const double values = (double)rows * (double)a->ow * (double)a->kh * (double)a->kw * (double)a->c;
    const int nt = kc_threads_for(values * 0.5, nthreads);
    ctx.units = kc_units_for(nt, rows);
    qg_run_units(ctx.units, nt, im2col_direct_unit, &ctx, 0);
    /* the largest code of the whole input, as a decode of it would read */
    unsigned m = 0;
    for (size_t i = 0; i < pixels * a->c; i++)
        m = a->codes[i] > m ? a->codes[i] : m;
    return m;
}

kc_epi_rows_fn kc_epi_fn_for(int path)
{
    rows_ctx ctx;
    kernels_for(path, &ctx);
    return ctx.epi;
}

void kc_epilogue(const kc_epi_args *e, int path, int nthreads)
{
    const size_t rows = e->n * e->oh;
    if (rows == 0 || e->ow == 0)
        return;
    rows_ctx ctx = {.e = e, .rows = rows};
    kernels_for(path, &ctx);
    /* ~0.3 ns per accumulator read and threshold: a thread per ~100 us of that */
    const double win = e->kh ? (double)e->kh * (double)e->kw : 1.0;
    const int nt = kc_threads_for((double)rows * (double)e->ow * (double)e->c * (win + 0.3 * e->nthr) * 0.3, nthreads);
    ctx.units = kc_units_for(nt, rows);
    qg_run_units(ctx.units, nt, rows_unit, &ctx, 0);
}
