/*
 * kconv_float.c -- the float32 layers a quantized network keeps (first conv on pixels, real-valued shortcut
 * convs, float dense layers) as lowbit's own implicit-GEMM convolution (kconv.h, "float32 conv"): the
 * driver, the weight packer, the decode-and-pad pass and the portable tile.
 *
 * Why not im2col + BLAS: for a first layer the patch matrix is kh*kw/(sh*sw) times the input (12x for a
 * 7x7/2 conv) and writing it cost as much as the GEMM; and a BLAS with threads of its own fights lowbit's
 * threads for the cores between layers. Here each tile reads its windows straight from the padded input
 * map: in NHWC, the kw*C values of one window row are consecutive floats, so a window is kh runs.
 *
 * Pieces:
 *   pack      weights (K, N) -> panels of 64 output channels, (K, 64) each, zero past N;
 *   map       NHWC uint8 codes -> the padded float map tables[c][code] (fill outside the image);
 *   tile      R <= 6 consecutive output pixels of one output row x one panel's channels: acc[r][j] +=
 *             map[window(r) + i] * panel[i][j] over the kh runs of kw*C (kconv_kernels_avx*.c: 6 x 4 zmm
 *             or 6 x 2 ymm accumulators, the map value broadcast);
 *   driver    work items = (output row segment of <= 96 pixels, panel), segment-major, split over threads.
 * Each output is a float32 sum of K products in (ky, kx, c) order (fused multiply-adds on the vector
 * paths): float32 rounding of the exact sum, as any float32 GEMM -- what the exporter promises for float
 * layers.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kconv.h"

#define SEG_PIXELS 96 /* output pixels of a work item: 16 tiles of 6 */

size_t kc_fconv_packed_floats(size_t k, size_t n)
{
    return ((n + KC_FPANEL - 1) / KC_FPANEL) * k * KC_FPANEL;
}

void kc_fconv_pack(const float *w, size_t k, size_t n, float *dst)
{
    const size_t panels = (n + KC_FPANEL - 1) / KC_FPANEL;
    for (size_t p = 0; p < panels; p++) {
        const size_t j0 = p * KC_FPANEL, width = n - j0 < KC_FPANEL ? n - j0 : KC_FPANEL;
        float *d = dst + p * k * KC_FPANEL;
        for (size_t i = 0; i < k; i++, d += KC_FPANEL) {
            memcpy(d, w + i * n + j0, width * sizeof(float));
            memset(d + width, 0, (KC_FPANEL - width) * sizeof(float));
        }
    }
}

/* the portable tile: same contract as the vector ones (kconv.h, kc_ftile_k) */
void kc_ftile_scalar(const kc_ftile_args *t, const float *a, const float *panel, float *out, int rows, int cols)
{
    float acc[KC_FTILE_ROWS][KC_FPANEL];
    for (int r = 0; r < rows; r++)
        for (int j = 0; j < cols; j++)
            acc[r][j] = 0.0f;
    for (int ky = 0; ky < t->kh; ky++) {
        const float *ar = a + ky * t->arow, *w = panel + (size_t)ky * t->kwc * KC_FPANEL;
        for (int i = 0; i < t->kwc; i++, w += KC_FPANEL)
            for (int r = 0; r < rows; r++) {
                const float x = ar[r * t->as + i];
                for (int j = 0; j < cols; j++)
                    acc[r][j] += x * w[j];
            }
    }
    for (int r = 0; r < rows; r++)
        memcpy(out + r * t->ldo, acc[r], (size_t)cols * sizeof(float));
}

static kc_ftile_fn ftile_for(int path)
{
    path = lb_path_or_best(path);
#if LB_X86
    if (path >= LB_PATH_AVX512)
        return kc_ftile_avx512;
    if (path >= LB_PATH_AVX2 && lb_cpu_has(LB_CPU_FMA))
        return kc_ftile_avx2;
#endif
    return kc_ftile_scalar;
}

typedef struct {
    const kc_fconv_args *a;
    kc_ftile_fn tile;
    kc_ftile_args t;
    size_t segs_per_row, segs, panels, items, units;
} fconv_ctx;

static void fconv_unit(void *vctx, size_t u, void *scratch)
{
    (void)scratch;
    const fconv_ctx *ctx = (const fconv_ctx *)vctx;
    const kc_fconv_args *a = ctx->a;
    const size_t i0 = ctx->items * u / ctx->units, i1 = ctx->items * (u + 1) / ctx->units;
    const size_t k = (size_t)a->kh * a->kw * a->c;
    for (size_t it = i0; it < i1; it++) {
        const size_t seg = it / ctx->panels, p = it % ctx->panels;
        const size_t row = seg / ctx->segs_per_row, img = row / a->oh, oy = row % a->oh;
        const size_t x0 = (seg % ctx->segs_per_row) * SEG_PIXELS;
        const size_t x1 = x0 + SEG_PIXELS < a->ow ? x0 + SEG_PIXELS : a->ow;
        const size_t j0 = p * KC_FPANEL;
        const int cols = (int)(a->nout - j0 < KC_FPANEL ? a->nout - j0 : KC_FPANEL);
        const float *panel = a->w + p * k * KC_FPANEL;
        const float *arow = a->map + ((img * a->hp + oy * (size_t)a->sh) * a->wp) * a->c;
        float *orow = a->out + ((img * a->oh + oy) * a->ow) * a->ldo + j0;
        for (size_t ox = x0; ox < x1; ox += KC_FTILE_ROWS) {
            const int rows = (int)(x1 - ox < KC_FTILE_ROWS ? x1 - ox : KC_FTILE_ROWS);
            ctx->tile(&ctx->t, arow + ox * (size_t)a->sw * a->c, panel, orow + ox * a->ldo, rows, cols);
        }
    }
}

void kc_fconv(const kc_fconv_args *a, int path, int nthreads)
{
    if (a->n == 0 || a->oh == 0 || a->ow == 0 || a->nout == 0)
        return;
    fconv_ctx ctx;
    ctx.a = a;
    ctx.tile = ftile_for(path);
    ctx.t.kh = a->kh;
    ctx.t.kwc = (int)((size_t)a->kw * a->c);
    ctx.t.as = (ptrdiff_t)a->sw * (ptrdiff_t)a->c;
    ctx.t.arow = (ptrdiff_t)(a->wp * a->c);
    ctx.t.ldo = (ptrdiff_t)a->ldo;
    ctx.segs_per_row = (a->ow + SEG_PIXELS - 1) / SEG_PIXELS;
    ctx.segs = a->n * a->oh * ctx.segs_per_row;
    ctx.panels = (a->nout + KC_FPANEL - 1) / KC_FPANEL;
    ctx.items = ctx.segs * ctx.panels;
    const size_t k = (size_t)a->kh * a->kw * a->c;
    const double macs = (double)(a->n * a->oh * a->ow) * (double)ctx.panels * KC_FPANEL * (double)k;
    /* a core does ~20 multiply-adds a ns, and streams the weight panels from memory at ~8 bytes a ns (a batch-1
     * dense layer is that stream) */
    const double wbytes = (double)ctx.panels * KC_FPANEL * (double)k * sizeof(float);
    const int nt = kc_threads_for(macs / 20.0 > wbytes / 8.0 ? macs / 20.0 : wbytes / 8.0, nthreads);
    ctx.units = kc_units_for(nt, ctx.items);
    qg_run_units(ctx.units, nt, fconv_unit, &ctx, 0);
}

/* ---- the padded float map of a float conv on codes ------------------------------------------------------ */
typedef struct {
    const kc_decode_args *a;
    size_t rows, units;
    atomic_uint max;
} map_ctx;

static void map_unit(void *vctx, size_t u, void *scratch)
{
    (void)scratch;
    map_ctx *ctx = (map_ctx *)vctx;
    const kc_decode_args *a = ctx->a;
    const size_t c = a->c, ph = (size_t)a->ph, pw = (size_t)a->pw, hp = a->h + 2 * ph, wp = a->w + 2 * pw;
    const size_t run = a->w * c;
    const size_t r0 = ctx->rows * u / ctx->units, r1 = ctx->rows * (u + 1) / ctx->units;
    const float *restrict tables = a->tables;
    const float fill = a->fill;
    unsigned m = 0;
    for (size_t r = r0; r < r1; r++) { /* r = img * hp + padded row */
        const size_t img = r / hp, y = r % hp;
        float *restrict o = a->out + r * wp * c;
        if (y < ph || y >= ph + a->h) {
            for (size_t i = 0; i < wp * c; i++)
                o[i] = fill;
            continue;
        }
        for (size_t i = 0; i < pw * c; i++)
            o[i] = fill;
        o += pw * c;
        const uint8_t *restrict x = a->codes + (img * a->h + (y - ph)) * run;
        for (size_t i = 0, ch = 0; i < run; i++, ch = ch + 1 == c ? 0 : ch + 1) {
            const unsigned code = x[i];
            m = code > m ? code : m;
            o[i] = tables[ch * 256 + code];
        }
        o += run;
        for (size_t i = 0; i < pw * c; i++)
            o[i] = fill;
    }
    kc_atomic_max(&ctx->max, m);
}

unsigned kc_decode_map(const kc_decode_args *a, int nthreads)
{
    map_ctx ctx;
    ctx.a = a;
    ctx.rows = a->n * (a->h + 2 * (size_t)a->ph);
    if (ctx.rows == 0)
        return 0;
    atomic_init(&ctx.max, 0);
    const double values = (double)ctx.rows * (double)(a->w + 2 * (size_t)a->pw) * (double)a->c;
    const int nt = kc_threads_for(values * 0.5, nthreads); /* ~0.5 ns a value */
    ctx.units = kc_units_for(nt, ctx.rows);
    qg_run_units(ctx.units, nt, map_unit, &ctx, 0);
    return atomic_load(&ctx.max);
}
