/*
 * intlstm_gemm_scalar.c -- the integer LSTM's GEMM in plain C (portable and popcnt paths; see intlstm.h).
 *
 * One dot product per output, straight along K (the packed zeros past K are not read). Compilers vectorise
 * the inner loop for the baseline ISA; the paths with AVX2 have their own kernel.
 */
#include <stdlib.h>

#include "intlstm.h"

/* the loop for one weight width; wsz is a constant in each instance */
static inline __attribute__((always_inline)) void gemm_rows(const intlstm_gemm_args *g, int wsz)
{
    const int M = g->m, N = g->n, K = g->k, Kp = INTLSTM_KP(K);
    for (int m = 0; m < M; m++) {
        const int8_t *a = g->a + (size_t)m * K;
        for (int n = 0; n < N; n++) {
            int32_t acc = 0;
            if (wsz == 1) {
                const int8_t *w = (const int8_t *)g->w + (size_t)n * Kp;
                for (int k = 0; k < K; k++) acc += (int32_t)a[k] * (int32_t)w[k];
            } else {
                const int16_t *w = (const int16_t *)g->w + (size_t)n * Kp;
                for (int k = 0; k < K; k++) acc += (int32_t)a[k] * (int32_t)w[k];
            }
            g->c[(size_t)m * N + n] = acc + (g->bias ? g->bias[n] : 0);
        }
    }
}

void intlstm_gemm_scalar(const intlstm_gemm_args *g)
{
    intlstm_gemm_by_width(g, gemm_rows);
}

/* ---- prepared (panel) weights, see intlstm.h -------------------------------------------------------------
 * Per row of A, its bytes are first laid out like a panel (rep[64 s + 4 l + q] = u[4 s + q], int16); then for
 * each panel 64 running sums, lane e = 4 l + q summing rep[64 s + e] * panel[64 s + e] over the steps s: a
 * plain element-wise multiply-add of contiguous arrays, which compilers vectorise for the baseline ISA (each
 * product, <= 255 * 128, fits int16). The 4 sums of a row are added at the end, in uint32 (wrapping, like the
 * SIMD kernels' lanes). */
static void pgemm_row(const uint8_t *a, const int16_t *rep, const intlstm_pgemm_args *g, int32_t *c)
{
    const int S = g->kp / 4;
    const size_t pbytes = (size_t)S * 64;
    for (int j0 = 0; j0 < g->n; j0 += INTLSTM_NR) {
        const int8_t *P = g->p + (size_t)(j0 / INTLSTM_NR) * pbytes;
        const int nc = g->n - j0 < INTLSTM_NR ? g->n - j0 : INTLSTM_NR;
        int32_t acc[64] = {0};
        for (int s = 0; s < S; s++) {
            const int8_t *ps = P + (size_t)s * 64;
            if (rep) {
                const int16_t *rs = rep + (size_t)s * 64;
                for (int e = 0; e < 64; e++) acc[e] += (int16_t)(rs[e] * ps[e]); /* |sum| < 2^31: K <= 65536 */
            } else { /* no memory for rep */
                for (int e = 0; e < 64; e++) acc[e] += a[4 * s + (e & 3)] * ps[e];
            }
        }
        for (int l = 0; l < nc; l++) {
            const uint32_t v = (uint32_t)acc[4 * l] + (uint32_t)acc[4 * l + 1] + (uint32_t)acc[4 * l + 2] +
                               (uint32_t)acc[4 * l + 3];
            c[j0 + l] = (int32_t)(v + (g->bias ? (uint32_t)g->bias[j0 + l] : 0u));
        }
    }
}

void intlstm_pgemm_scalar(const intlstm_pgemm_args *g)
{
    const int S = g->kp / 4;
    int16_t *rep = (int16_t *)malloc(((size_t)S * 64 + 1) * sizeof(int16_t));
    for (int m = 0; m < g->m; m++) {
        const uint8_t *a = g->a + (size_t)m * g->lda;
        if (rep)
            for (int s = 0; s < S; s++)
                for (int e = 0; e < 64; e++) rep[(size_t)s * 64 + e] = a[4 * s + (e & 3)];
        pgemm_row(a, rep, g, g->c + (size_t)m * g->ldc);
    }
    free(rep);
}
