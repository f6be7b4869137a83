/*
 * kconv_pack.c -- fused im2col + pack of k-bit codes (kconv.h): the driver, the gather and the portable
 * row finishers.
 *
 * A row (one output position of the conv) is gathered window row by window row: in NHWC the kw taps of
 * one window row are kw*C contiguous input bytes, so an interior row is kh copies; taps outside the image
 * take the pad code. a8 rows are gathered straight into the destination (then mapped in place when a code
 * map is given, zero padded to the kernel's K alignment, summed); bit planes are gathered into a per-thread
 * buffer of whole 64-code chunks (zero past K) and each chunk turned into its plane words. The row sums and
 * the largest input code come out of the same pass.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kconv.h"

size_t kc_pack_rows(const kc_pack_args *p)
{
    return p->n * p->oh * p->ow;
}

size_t kc_pack_k(const kc_pack_args *p)
{
    return (size_t)p->kh * (size_t)p->kw * p->c;
}

/* ---- portable finishers --------------------------------------------------------------------------- */
void kc_sum_max_scalar(const uint8_t *x, size_t len, uint32_t *sum, uint8_t *vmax)
{
    uint32_t s = 0;
    unsigned m = vmax[0];
    for (size_t i = 0; i < len; i++) {
        s += x[i];
        m = x[i] > m ? x[i] : m;
    }
    *sum = s;
    vmax[0] = (uint8_t)m;
}

void kc_planes_scalar(const uint8_t *buf, size_t nchunks, int bits, uint64_t *d, uint32_t *sum, uint8_t *vmax)
{
    uint32_t s = 0;
    unsigned m = vmax[0];
    for (size_t v = 0; v < nchunks; v++) {
        const uint8_t *src = buf + 64 * v;
        uint64_t *dw = d + (v / 8) * (size_t)bits * 8 + v % 8;
        uint64_t words[8] = {0};
        for (int g = 0; g < 8; g++) {
            uint64_t x;
            memcpy(&x, src + 8 * g, 8);
            for (int t = 0; t < 8; t++) {
                const unsigned b = (unsigned)((x >> (8 * t)) & 0xff);
                s += b;
                m = b > m ? b : m;
            }
            for (int b = 0; b < bits; b++)
                words[b] |= (uint64_t)qg_gather_bit(x, b) << (8 * g);
        }
        for (int b = 0; b < bits; b++)
            dw[8 * b] = words[b];
    }
    *sum = s;
    vmax[0] = (uint8_t)m;
}

/* ---- the pass ------------------------------------------------------------------------------------- */
kc_row_fns kc_row_fns_for(int path)
{
    kc_row_fns f = {kc_sum_max_scalar, kc_planes_scalar};
    path = lb_path_or_best(path);
#if LB_X86
    if (path >= LB_PATH_AVX512 && lb_cpu_has(LB_CPU_AVX512BW)) {
        f.sum_max = kc_sum_max_avx512;
        f.planes = kc_planes_avx512;
    } else if (path >= LB_PATH_AVX2) {
        f.sum_max = kc_sum_max_avx2;
        f.planes = kc_planes_avx2;
    }
#endif
    return f;
}

size_t kc_pack_buf_bytes(const kc_pack_args *p)
{
    return ((kc_pack_k(p) + 63) / 64) * 64 + 64;
}

/* the k codes of row (img, oy, ox) into d */
static inline void gather_row(const kc_pack_args *p, size_t img, size_t oy, size_t ox, uint8_t *d)
{
    const size_t c = p->c, kwc = (size_t)p->kw * c;
    const ptrdiff_t y0 = (ptrdiff_t)oy * p->sh - p->ph, x0 = (ptrdiff_t)ox * p->sw - p->pw;
    const uint8_t *base = p->x + (ptrdiff_t)img * p->xs_n;
    const int inside_x = x0 >= 0 && x0 + p->kw <= (ptrdiff_t)p->w;
    for (int i = 0; i < p->kh; i++, d += kwc) {
        const ptrdiff_t y = y0 + i;
        if (y < 0 || y >= (ptrdiff_t)p->h) {
            memset(d, p->pad, kwc);
            continue;
        }
        const uint8_t *src = base + y * p->xs_h;
        if (inside_x) {
            memcpy(d, src + x0 * (ptrdiff_t)c, kwc);
            continue;
        }
        for (int j = 0; j < p->kw; j++) {
            const ptrdiff_t xx = x0 + j;
            if (xx < 0 || xx >= (ptrdiff_t)p->w)
                memset(d + (size_t)j * c, p->pad, c);
            else
                memcpy(d + (size_t)j * c, src + xx * (ptrdiff_t)c, c);
        }
    }
}

/* raw max of d[0, k), then d mapped in place */
static inline unsigned map_row(uint8_t *d, size_t k, const uint8_t *map)
{
    unsigned m = 0;
    for (size_t i = 0; i < k; i++) {
        const unsigned b = d[i];
        m = b > m ? b : m;
        d[i] = map[b];
    }
    return m;
}

unsigned kc_pack_range(const kc_pack_args *p, const kc_row_fns *f, size_t r0, size_t r1, void *dst, ptrdiff_t ldd,
                       int32_t *sums, uint8_t *buf)
{
    const size_t k = kc_pack_k(p);
    const int planes = p->bits > 0;
    /* a 1 x 1 window over a 1 x 1 image with no map: the row is the input row itself */
    const int direct = !p->map && p->kh == 1 && p->kw == 1 && p->h == 1 && p->w == 1 && p->ph == 0 && p->pw == 0;
    const size_t nchunks = (k + 63) / 64, kp = qg_a8_stride(k), nv = (k + 511) / 512;
    unsigned best = 0;
    uint8_t vmax[64] __attribute__((aligned(64))) = {0};
    size_t img = r0 / (p->oh * p->ow), oy = r0 / p->ow % p->oh, ox = r0 % p->ow;
    for (size_t r = r0; r < r1; r++) {
        const size_t i = r - r0;
        uint32_t sum = 0;
        unsigned raw = 0;
        uint8_t *d;
        if (planes || !dst)
            d = buf;
        else
            d = (uint8_t *)dst + (ptrdiff_t)i * ldd;
        if (direct) {
            const uint8_t *src = p->x + (ptrdiff_t)r * p->xs_n;
            if (!dst) {
                f->sum_max(src, k, &sum, vmax);
                d = NULL;
            } else {
                memcpy(d, src, k);
            }
        } else {
            gather_row(p, img, oy, ox, d);
            if (p->map)
                raw = map_row(d, k, p->map);
            if (++ox == p->ow) {
                ox = 0;
                if (++oy == p->oh) {
                    oy = 0;
                    img++;
                }
            }
        }
        if (d && planes) {
            uint64_t *dw = (uint64_t *)dst + (ptrdiff_t)i * ldd;
            f->planes(buf, nchunks, p->bits, dw, &sum, vmax);
            for (size_t v = nchunks; v < nv * 8; v++) /* whole 512-code slices: words past K are 0 */
                for (int b = 0; b < p->bits; b++)
                    dw[(v / 8) * (size_t)p->bits * 8 + (size_t)b * 8 + v % 8] = 0;
        } else if (d) {
            if (dst)
                memset(d + k, 0, kp - k);
            f->sum_max(d, dst ? kp : k, &sum, vmax);
        }
        if (sums)
            sums[i] = (int32_t)sum;
        best = raw > best ? raw : best;
    }
    if (!p->map) /* the codes read are the input codes (and zero padding) */
        for (int b = 0; b < 64; b++)
            best = vmax[b] > best ? vmax[b] : best;
    return best;
}

typedef struct {
    const kc_pack_args *p;
    kc_row_fns f;
    size_t units;
    atomic_uint max;
} pack_ctx;

static void pack_unit(void *vctx, size_t u, void *buf)
{
    pack_ctx *ctx = (pack_ctx *)vctx;
    const kc_pack_args *p = ctx->p;
    const size_t rows = kc_pack_rows(p);
    const size_t r0 = rows * u / ctx->units, r1 = rows * (u + 1) / ctx->units;
    if (r0 >= r1)
        return;
    void *dst = NULL;
    if (p->dst)
        dst = p->bits ? (void *)((uint64_t *)p->dst + (ptrdiff_t)r0 * p->ldd)
                      : (void *)((uint8_t *)p->dst + (ptrdiff_t)r0 * p->ldd);
    const unsigned m = kc_pack_range(p, &ctx->f, r0, r1, dst, p->ldd, p->sums ? p->sums + r0 : NULL, (uint8_t *)buf);
    kc_atomic_max(&ctx->max, m);
}

unsigned kc_pack(const kc_pack_args *p, int path, int nthreads)
{
    const size_t rows = kc_pack_rows(p), k = kc_pack_k(p);
    if (rows == 0)
        return 0;
    pack_ctx ctx;
    ctx.p = p;
    ctx.f = kc_row_fns_for(path);
    atomic_init(&ctx.max, 0);
    /* ~1 ns per code and ~20 ns per row: a thread per ~100 us of that, ~4 units a thread */
    int nt = (int)(((double)rows * (double)k + 20.0 * (double)rows) / 1e5);
    if (nt > nthreads) nt = nthreads;
    if (nt > KC_MAX_THREADS) nt = KC_MAX_THREADS;
    if (nt < 1) nt = 1;
    ctx.units = nt > 1 ? 4 * (size_t)nt : 1;
    if (ctx.units > rows) ctx.units = rows;
    if (qg_run_units(ctx.units, nt, pack_unit, &ctx, kc_pack_buf_bytes(p)) < 0)
        return 0x100; /* no memory for a row buffer: an impossible code, the caller raises */
    return atomic_load(&ctx.max);
}
