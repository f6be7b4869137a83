/*
 * bitgemm_kernels_scalar.c -- the scalar macro-kernels (portable, popcnt) and the naive reference.
 *
 * portable: __builtin_popcountll compiled for the baseline ISA. On x86-64 without -mpopcnt GCC turns
 *           it into a call to libgcc's table-driven __popcountdi2; on AArch64 and most others it
 *           becomes the native count instruction. This is the path any CPU can run.
 * popcnt:   the same code compiled with target("popcnt"), so the builtin is one POPCNT instruction.
 *
 * Both share one always-inline body (a 2 x 4 register tile: 2 rows of A against 4 rows of B, 8
 * scalar accumulators, 6 loads per 8 popcounts); GCC expands the builtin according to the target of
 * the function it is inlined into.
 */
#include "bitgemm.h"

#define BG_SCALAR_MR 2
#define BG_SCALAR_NR 4

static inline __attribute__((always_inline)) int32_t bg_finish(int32_t old, int first, int32_t k, uint64_t pop)
{
    /* k - 2*pop in 64-bit: the true result fits int32 (|result| <= K < 2^31), 2*pop may not */
    return (int32_t)((int64_t)(first ? k : old) - 2 * (int64_t)pop);
}

/* One register tile: rows a0, a1 (a1 may alias a0 when the tile has one row) against b0..b3 (the
 * trailing ones may alias when the tile is narrower); only mr x nr results are stored. */
static inline __attribute__((always_inline)) void scalar_tile(const uint64_t *a0, const uint64_t *a1,
                                                              const uint64_t *b0, const uint64_t *b1,
                                                              const uint64_t *b2, const uint64_t *b3,
                                                              size_t nw, uint64_t tailmask, int32_t *c,
                                                              ptrdiff_t ldc, int mr, int nr, int first,
                                                              int32_t k)
{
    uint64_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
    const size_t last = nw - 1;
    for (size_t w = 0; w <= last; w++) {
        /* only the last word of the block carries pad bits */
        const uint64_t m = (w == last) ? tailmask : ~(uint64_t)0;
        const uint64_t x0 = a0[w] & m, x1 = a1[w] & m;
        uint64_t y;
        y = b0[w] & m; s00 += (uint64_t)__builtin_popcountll(x0 ^ y); s10 += (uint64_t)__builtin_popcountll(x1 ^ y);
        y = b1[w] & m; s01 += (uint64_t)__builtin_popcountll(x0 ^ y); s11 += (uint64_t)__builtin_popcountll(x1 ^ y);
        y = b2[w] & m; s02 += (uint64_t)__builtin_popcountll(x0 ^ y); s12 += (uint64_t)__builtin_popcountll(x1 ^ y);
        y = b3[w] & m; s03 += (uint64_t)__builtin_popcountll(x0 ^ y); s13 += (uint64_t)__builtin_popcountll(x1 ^ y);
    }
    const uint64_t s[2][4] = {{s00, s01, s02, s03}, {s10, s11, s12, s13}};
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++)
            c[i * ldc + j] = bg_finish(c[i * ldc + j], first, k, s[i][j]);
}

/* all tiles of a block, in the order of the AVX2 kernel: groups of BG_C_GROUP rows of B, all rows
 * of A inside (see bitgemm_kernels_avx2.c) */
static inline __attribute__((always_inline)) void scalar_macro(const bg_block *blk)
{
    for (size_t jg = 0; jg < blk->n; jg += BG_C_GROUP) {
        const size_t jend = (blk->n - jg > BG_C_GROUP) ? jg + BG_C_GROUP : blk->n;
        for (size_t i = 0; i < blk->m; i += BG_SCALAR_MR) {
            const int mr = (blk->m - i >= BG_SCALAR_MR) ? BG_SCALAR_MR : (int)(blk->m - i);
            const uint64_t *a0 = blk->a + (ptrdiff_t)i * blk->lda;
            const uint64_t *a1 = mr > 1 ? a0 + blk->lda : a0;
            for (size_t j = jg; j < jend; j += BG_SCALAR_NR) {
                const int nr = (jend - j >= BG_SCALAR_NR) ? BG_SCALAR_NR : (int)(jend - j);
                const uint64_t *b0 = blk->b + (ptrdiff_t)j * blk->ldb;
                const uint64_t *b1 = nr > 1 ? b0 + blk->ldb : b0;
                const uint64_t *b2 = nr > 2 ? b1 + blk->ldb : b1;
                const uint64_t *b3 = nr > 3 ? b2 + blk->ldb : b2;
                scalar_tile(a0, a1, b0, b1, b2, b3, blk->nw, blk->tailmask,
                            blk->c + (ptrdiff_t)i * blk->ldc + (ptrdiff_t)j, blk->ldc, mr, nr, blk->first, blk->k);
            }
        }
    }
}

void bg_macro_portable(const bg_block *blk)
{
    scalar_macro(blk);
}

#if LB_X86
__attribute__((target("popcnt"))) void bg_macro_popcnt(const bg_block *blk)
{
    scalar_macro(blk);
}
#endif

/* ------------------------------------------------------------------------------------------------
 * The naive reference kernel, kept deliberately plain: no blocking, no register tile, one thread,
 * one popcount per (row of A, row of B, word). It is the "unoptimized XNOR kernel" the optimized
 * paths are measured against, and a second, independent implementation for the tests.
 * ---------------------------------------------------------------------------------------------- */
static inline __attribute__((always_inline)) void naive_body(const bg_gemm_args *g)
{
    const size_t W = (g->k + 63) / 64;
    const uint64_t lastmask = bg_last_word_mask(g->k);
    for (size_t i = 0; i < g->m; i++) {
        const uint64_t *a = g->a + (ptrdiff_t)i * g->lda;
        for (size_t j = 0; j < g->n; j++) {
            const uint64_t *b = g->b + (ptrdiff_t)j * g->ldb;
            uint64_t acc = 0;
            for (size_t w = 0; w < W; w++) {
                const uint64_t x = a[w] ^ b[w];
                acc += (uint64_t)__builtin_popcountll(w + 1 == W ? (x & lastmask) : x);
            }
            g->c[(ptrdiff_t)i * g->ldc + (ptrdiff_t)j] = bg_finish(0, 1, (int32_t)g->k, acc);
        }
    }
}

static void naive_portable(const bg_gemm_args *g)
{
    naive_body(g);
}

#if LB_X86
__attribute__((target("popcnt"))) static void naive_popcnt(const bg_gemm_args *g)
{
    naive_body(g);
}
#endif

void bg_gemm_naive(const bg_gemm_args *g, int hw_popcount)
{
#if LB_X86
    if (hw_popcount) {
        naive_popcnt(g);
        return;
    }
#else
    (void)hw_popcount;
#endif
    naive_portable(g);
}

/* ---- threshold epilogue, any CPU (see bg_threshold_args in bitgemm.h) -------------------------- */
void bg_threshold_rows_scalar(const bg_threshold_args *t, size_t r0, size_t r1)
{
    const size_t words = (t->n + 63) / 64;
    for (size_t i = r0; i < r1; i++) {
        const int32_t *acc = t->acc + (ptrdiff_t)i * t->ldacc;
        uint64_t *out = t->out + (ptrdiff_t)i * t->ldo;
        for (size_t w = 0; w < words; w++) {
            const size_t j0 = 64 * w, j1 = (t->n - j0 < 64) ? t->n : j0 + 64;
            uint64_t bits = 0;
            for (size_t j = j0; j < j1; j++) {
                /* wrapping int32 arithmetic without signed-overflow UB */
                const uint32_t x = (uint32_t)acc[j] - (uint32_t)t->bias;
                const int32_t sx = (int32_t)(t->sign[j] < 0 ? 0u - x : x);
                bits |= (uint64_t)(sx < t->thr[j]) << (j - j0);
            }
            out[w] = bits;
        }
    }
}

/* ---- first layer, any CPU: uint8 x {-1, 0, +1} on the prepared panels (see bitgemm.h) ---------- */
void bg_u8_panels_scalar(const bg_u8_args *g, size_t p0, size_t p1)
{
    const size_t steps = (g->k + 1) / 2;
    for (size_t p = p0; p < p1; p++) {
        const int8_t *wp = g->wp + p * steps * 64;
        const size_t n0 = p * BG_U8_NR, ncols = (g->n - n0 < BG_U8_NR) ? g->n - n0 : BG_U8_NR;
        for (size_t i = 0; i < g->m; i++) {
            const uint8_t *x = g->x + (ptrdiff_t)i * g->ldx;
            int32_t *c = g->c + (ptrdiff_t)i * g->ldc + (ptrdiff_t)n0;
            for (size_t j = 0; j < ncols; j++) {
                const int8_t *w = wp + 32 * (j / 16) + 2 * (j % 16);
                int32_t sum = 0;
                for (size_t kk = 0; kk < g->k; kk++)
                    sum += (int32_t)x[kk] * (int32_t)w[64 * (kk / 2) + kk % 2];
                c[j] = sum;
            }
        }
    }
}
