/*
 * qgemm_pack.c -- codes (uint8, one per value) -> the k-bit GEMM's layouts (see qgemm.h).
 *
 * Activations are packed on every call, so the plane packer is the one that must be quick: it gathers
 * 8 codes at a time as one uint64 and moves bit p of each byte into place with a multiply-free
 * shift/mask ladder (x86 has pext for it, but this stays portable and runs at memory speed anyway).
 * Weights are packed once; the panel packer is a plain loop.
 */
#include <string.h>

#include "qgemm.h"

size_t qg_plane_words(size_t k, int bits)
{
    return (k + 511) / 512 * (size_t)bits * 8;
}

typedef struct {
    const uint8_t *x;
    ptrdiff_t ldx;
    size_t rows, k;
    int bits;
    uint64_t *dst;
    ptrdiff_t ldd;
    int32_t *sums;
} planes_ctx;

static void planes_rows(const planes_ctx *p, size_t r0, size_t r1)
{
    const size_t nw = qg_plane_words(p->k, p->bits);
    for (size_t r = r0; r < r1; r++) {
        const uint8_t *x = p->x + (ptrdiff_t)r * p->ldx;
        uint64_t *d = p->dst + (ptrdiff_t)r * p->ldd;
        memset(d, 0, nw * sizeof(uint64_t));
        uint32_t sum = 0;
        for (size_t w = 0; w * 64 < p->k; w++) { /* word w of K: slice w / 8, word w % 8 */
            uint64_t *dw = d + (w / 8) * (size_t)p->bits * 8 + w % 8;
            const size_t len = (p->k - 64 * w < 64) ? p->k - 64 * w : 64;
            uint8_t buf[64];
            const uint8_t *src = x + 64 * w;
            if (len < 64) { /* zero codes past K */
                memset(buf, 0, sizeof buf);
                memcpy(buf, src, len);
                src = buf;
            }
            for (int g = 0; g < 8; g++) {
                uint64_t v;
                memcpy(&v, src + 8 * g, 8);
                for (int t = 0; t < 8; t++)
                    sum += (uint32_t)((v >> (8 * t)) & 0xff);
                for (int b = 0; b < p->bits; b++)
                    dw[8 * b] |= (uint64_t)qg_gather_bit(v, b) << (8 * g);
            }
        }
        if (p->sums)
            p->sums[r] = (int32_t)sum;
    }
}

static void planes_task(void *ctx, int t, int nthreads)
{
    const planes_ctx *p = (const planes_ctx *)ctx;
    planes_rows(p, bg_share(p->rows, t, nthreads), bg_share(p->rows, t + 1, nthreads));
}

void qg_pack_planes(const uint8_t *x, ptrdiff_t ldx, size_t rows, size_t k, int bits, uint64_t *dst,
                    ptrdiff_t ldd, int32_t *sums, int nthreads)
{
    planes_ctx p = {x, ldx, rows, k, bits, dst, ldd, sums};
    /* ~1 ns per code: a thread per 256 K codes */
    int nt = (int)((double)rows * (double)k / (double)(1 << 18));
    if (nt > nthreads) nt = nthreads;
    if ((size_t)nt > rows) nt = (int)rows;
    bg_parallel(nt < 1 ? 1 : nt, planes_task, &p);
}

size_t qg_a8_stride(size_t k)
{
    return (k + QG_KALIGN - 1) / QG_KALIGN * QG_KALIGN;
}

typedef struct {
    const uint8_t *x;
    ptrdiff_t ldx;
    size_t rows, k;
    uint8_t *dst;
    ptrdiff_t ldd;
    int32_t *sums;
} a8_ctx;

static void a8_task(void *ctx, int t, int nthreads)
{
    const a8_ctx *p = (const a8_ctx *)ctx;
    const size_t r0 = bg_share(p->rows, t, nthreads), r1 = bg_share(p->rows, t + 1, nthreads);
    const size_t kp = qg_a8_stride(p->k);
    for (size_t r = r0; r < r1; r++) {
        const uint8_t *x = p->x + (ptrdiff_t)r * p->ldx;
        uint8_t *d = p->dst + (ptrdiff_t)r * p->ldd;
        memcpy(d, x, p->k);
        memset(d + p->k, 0, kp - p->k);
        uint32_t sum = 0;
        for (size_t i = 0; i < p->k; i++)
            sum += x[i];
        if (p->sums)
            p->sums[r] = (int32_t)sum;
    }
}

void qg_pack_a8(const uint8_t *x, ptrdiff_t ldx, size_t rows, size_t k, uint8_t *dst, ptrdiff_t ldd,
                int32_t *sums, int nthreads)
{
    a8_ctx p = {x, ldx, rows, k, dst, ldd, sums};
    int nt = (int)((double)rows * (double)k / (double)(1 << 20));
    if (nt > nthreads) nt = nthreads;
    if ((size_t)nt > rows) nt = (int)rows;
    bg_parallel(nt < 1 ? 1 : nt, a8_task, &p);
}

size_t qg_panel_bytes(size_t n, size_t k, int store)
{
    const size_t steps = qg_a8_stride(k) / 4; /* k4 steps, a multiple of 4 */
    return (n + QG_NR - 1) / QG_NR * (steps * (size_t)store / 8) * 64;
}

void qg_pack_panels(const uint8_t *x, ptrdiff_t ldx, size_t rows, size_t k, int store, int zb, uint8_t *dst,
                    int32_t *sums)
{
    const size_t steps = qg_a8_stride(k) / 4;
    const size_t panel_bytes = steps * (size_t)store / 8 * 64;
    const int per = 8 / store; /* steps per 64-byte vector */
    memset(dst, 0, qg_panel_bytes(rows, k, store)); /* pad rows and pad K: code 0 */
    for (size_t j = 0; j < rows; j++) {
        const uint8_t *xr = x + (ptrdiff_t)j * ldx;
        uint8_t *panel = dst + (j / QG_NR) * panel_bytes + 4 * (j % QG_NR);
        uint32_t sum = 0;
        for (size_t kk = 0; kk < k; kk++) {
            const unsigned c = xr[kk];
            const size_t step = kk / 4, q = kk % 4;
            sum += c;
            uint8_t *byte = panel + (step / (size_t)per) * 64 + q;
            if (store == 8)
                *byte = (uint8_t)(int8_t)((int)c - zb);
            else
                *byte |= (uint8_t)(c << (store * (int)(step % (size_t)per)));
        }
        if (sums)
            sums[j] = (int32_t)sum;
    }
}
