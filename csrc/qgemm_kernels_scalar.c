/*
 * qgemm_kernels_scalar.c -- portable k-bit GEMM kernels (any CPU), and the bit-serial one again with
 * the POPCNT instruction for the "popcnt" path. Plain loops over the packed layouts of qgemm.h: the
 * reference the SIMD kernels are tested against, and the fallback where they cannot run.
 */
#include <stdlib.h>

#include "qgemm.h"

/* D[i][j] = sum_{p,q} 2^(p+q) popcount(A_p & B_q): all plane pairs of one 64-bit word together, so a
 * row pair is one pass over its planes. Accumulates in uint32: wraps like every D (see qgemm.h). */
static inline __attribute__((always_inline)) void bits_body(const qg_args *g, size_t i0, size_t i1, size_t j0,
                                                            size_t j1)
{
    const uint64_t *A = (const uint64_t *)g->a, *B = (const uint64_t *)g->b;
    const int ka = g->abits, kb = g->bbits;
    const size_t nv = (g->k + 511) / 512;
    for (size_t i = i0; i < i1; i++) {
        const uint64_t *a = A + (ptrdiff_t)i * g->lda;
        for (size_t j = j0; j < j1; j++) {
            const uint64_t *b = B + (ptrdiff_t)j * g->ldb;
            uint32_t acc = 0;
            for (size_t v = 0; v < nv; v++) {
                const uint64_t *av = a + v * (size_t)ka * 8, *bv = b + v * (size_t)kb * 8;
                for (int w = 0; w < 8; w++)
                    for (int p = 0; p < ka; p++) {
                        const uint64_t x = av[8 * p + w];
                        for (int q = 0; q < kb; q++)
                            acc += (uint32_t)__builtin_popcountll(x & bv[8 * q + w]) << (p + q);
                    }
            }
            g->c[(ptrdiff_t)i * g->ldc + (ptrdiff_t)j] = (int32_t)acc;
        }
    }
}

void qg_bits_scalar(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1)
{
    bits_body(g, i0, i1, j0, j1);
}

#if BG_X86
__attribute__((target("popcnt"))) void qg_bits_popcnt(const qg_args *g, size_t i0, size_t i1, size_t j0,
                                                      size_t j1)
{
    bits_body(g, i0, i1, j0, j1);
}
#endif

/* row j of B as the int8 kernels see it (cb - zb, or cb from 2-/4-bit storage) -> dst[0, kp) */
static void panel_row(const qg_args *g, size_t j, int8_t *dst)
{
    const size_t steps = qg_a8_stride(g->k) / 4;
    const size_t panel_bytes = steps * (size_t)g->bstore / 8 * 64;
    const int per = 8 / g->bstore, mask = (1 << g->bstore) - 1;
    const uint8_t *p = (const uint8_t *)g->b + (j / QG_NR) * panel_bytes + 4 * (j % QG_NR);
    for (size_t s = 0; s < steps; s++)
        for (int q = 0; q < 4; q++) {
            const uint8_t byte = p[(s / (size_t)per) * 64 + (size_t)q];
            dst[4 * s + (size_t)q] = g->bstore == 8 ? (int8_t)byte
                                                    : (int8_t)((byte >> (g->bstore * (int)(s % (size_t)per))) & mask);
        }
}

void qg_int8_scalar(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1)
{
    const uint8_t *A = (const uint8_t *)g->a;
    const size_t kp = qg_a8_stride(g->k);
    int8_t *row = (int8_t *)malloc(kp ? kp : 1);
    if (!row) { /* out of memory for a row of K bytes: nothing sensible to compute with */
        for (size_t i = i0; i < i1; i++)
            for (size_t j = j0; j < j1; j++)
                g->c[(ptrdiff_t)i * g->ldc + (ptrdiff_t)j] = 0;
        return;
    }
    for (size_t j = j0; j < j1; j++) {
        panel_row(g, j, row);
        for (size_t i = i0; i < i1; i++) {
            const uint8_t *a = A + (ptrdiff_t)i * g->lda;
            uint32_t acc = 0;
            for (size_t kk = 0; kk < kp; kk++)
                acc += (uint32_t)((int32_t)a[kk] * (int32_t)row[kk]);
            g->c[(ptrdiff_t)i * g->ldc + (ptrdiff_t)j] = (int32_t)acc;
        }
    }
    free(row);
}
