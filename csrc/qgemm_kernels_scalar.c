/*
 * qgemm_kernels_scalar.c -- portable k-bit GEMM kernels (any CPU), and the bit-serial one again with
 * the POPCNT instruction for the "popcnt" path. Plain loops over the packed layouts of qgemm.h: the
 * reference the SIMD kernels are tested against, and the fallback where they cannot run.
 */
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

/* the code of B (row j, K index kk) as the int8 kernels see it: cb - zb, or cb from 2-/4-bit storage */
static inline int panel_code(const qg_args *g, size_t j, size_t kk)
{
    const size_t steps = qg_a8_stride(g->k) / 4;
    const size_t panel_bytes = steps * (size_t)g->bstore / 8 * 64;
    const int per = 8 / g->bstore;
    const size_t step = kk / 4;
    const uint8_t byte = ((const uint8_t *)g->b)[(j / QG_NR) * panel_bytes + (step / (size_t)per) * 64 +
                                                 4 * (j % QG_NR) + kk % 4];
    if (g->bstore == 8)
        return (int8_t)byte;
    return (byte >> (g->bstore * (int)(step % (size_t)per))) & ((1 << g->bstore) - 1);
}

void qg_int8_scalar(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1)
{
    const uint8_t *A = (const uint8_t *)g->a;
    if (g->bstore == 8) { /* the common case without the per-element index arithmetic */
        const size_t steps = qg_a8_stride(g->k) / 4, panel_bytes = steps * 64;
        for (size_t j = j0; j < j1; j++) {
            const int8_t *bp = (const int8_t *)g->b + (j / QG_NR) * panel_bytes + 4 * (j % QG_NR);
            for (size_t i = i0; i < i1; i++) {
                const uint8_t *a = A + (ptrdiff_t)i * g->lda;
                uint32_t acc = 0;
                for (size_t s = 0; s < steps; s++)
                    for (int q = 0; q < 4; q++)
                        acc += (uint32_t)((int32_t)a[4 * s + q] * (int32_t)bp[64 * s + q]);
                g->c[(ptrdiff_t)i * g->ldc + (ptrdiff_t)j] = (int32_t)acc;
            }
        }
        return;
    }
    for (size_t j = j0; j < j1; j++)
        for (size_t i = i0; i < i1; i++) {
            const uint8_t *a = A + (ptrdiff_t)i * g->lda;
            uint32_t acc = 0;
            for (size_t kk = 0; kk < g->k; kk++)
                acc += (uint32_t)((int32_t)a[kk] * panel_code(g, j, kk));
            g->c[(ptrdiff_t)i * g->ldc + (ptrdiff_t)j] = (int32_t)acc;
        }
}
