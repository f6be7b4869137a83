/*
 * intlstm_gemm_scalar.c -- the integer LSTM's GEMM in plain C (portable and popcnt paths; see intlstm.h).
 *
 * One dot product per output, straight along K (the packed zeros past K are not read). Compilers vectorise
 * the inner loop for the baseline ISA; the paths with AVX2 have their own kernel.
 */
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
    if (g->wsz == 2)
        gemm_rows(g, 2);
    else
        gemm_rows(g, 1);
}
