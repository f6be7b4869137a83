/*
 * intlstm_driver.c -- per-path kernel table and the integer LSTM layer over a sequence.
 *
 * A layer run, for T steps of B batch rows:
 *
 *   for each chunk of time steps (CHUNK_ELEMS accumulators)
 *     input GEMM of the whole chunk (x does not depend on h), rescale to Q3.12      once per chunk
 *     for each step
 *       recurrent GEMM (B rows of h)                                                the serial part
 *       element-wise step of the B rows -> c, y; h = y
 *
 * The arithmetic of each piece is in intlstm_step_scalar.c; which code runs on which path is the table in
 * intlstm.h, made here by kernel_for().
 */
#include <stdlib.h>
#include <string.h>

#include "intlstm.h"

typedef struct {
    intlstm_gemm_fn gemm;
    intlstm_rescale_rows_fn rescale_rows;
    intlstm_step_rows_fn step_rows;
    /* With several batch rows every weight row is read B/2 times per step: the AVX2 GEMM then runs faster on
     * weights widened to int16 once per layer run than sign-extending them on each read (twice the bytes, no
     * shuffle per load). The scalar loops gain nothing from it. */
    int widen_weights;
} intlstm_kernel;

static intlstm_kernel kernel_for(int path)
{
    intlstm_kernel k = {intlstm_gemm_scalar, intlstm_rescale_rows_scalar, intlstm_step_rows_scalar, 0};
#if LB_X86
    if (path >= LB_PATH_AVX2) { /* avx2 and every path above it (the paths are nested) */
        k.gemm = intlstm_gemm_avx2;
        k.rescale_rows = intlstm_rescale_rows_avx2;
        k.step_rows = intlstm_step_rows_avx2;
        k.widen_weights = 1;
    }
    if (path >= LB_PATH_AVX512 && lb_cpu_has(LB_CPU_AVX512BW) && lb_cpu_has(LB_CPU_AVX512VL) &&
        lb_cpu_has(LB_CPU_AVX512VNNI))
        k.gemm = intlstm_gemm_avx512; /* the step stays AVX2: its table gathers, not its width, bound it */
#else
    (void)path;
#endif
    return k;
}

void intlstm_gemm(int path, const int8_t *A, const int8_t *W, const int32_t *bias, int32_t *C, int M, int N, int K,
                  int16_t *scratch)
{
    const intlstm_gemm_args g = {A, W, 1, bias, C, M, N, K, scratch};
    kernel_for(path).gemm(&g);
}

#define CHUNK_ELEMS (1 << 18) /* input-projection rows are computed this many int32 at a time */

int intlstm_buffers_alloc(intlstm_buffers *b, int T, int B, int I, int H, int G)
{
    int tc = CHUNK_ELEMS / ((size_t)B * G);
    if (tc < 1) tc = 1;
    if (tc > T) tc = T;
    size_t scratch_n = (size_t)tc * B * INTLSTM_KP(I);
    if ((size_t)B * INTLSTM_KP(H) > scratch_n) scratch_n = (size_t)B * INTLSTM_KP(H);
    b->tc = tc;
    b->accx = (int32_t *)malloc((size_t)tc * B * G * sizeof(int32_t));
    b->gx = (int16_t *)malloc((size_t)tc * B * G * sizeof(int16_t));
    b->acch = (int32_t *)malloc((size_t)B * G * sizeof(int32_t));
    b->scratch = (int16_t *)malloc(scratch_n * sizeof(int16_t));
    if (!b->accx || !b->gx || !b->acch || !b->scratch) {
        intlstm_buffers_free(b);
        return -1;
    }
    return 0;
}

void intlstm_buffers_free(intlstm_buffers *b)
{
    free(b->accx); free(b->gx); free(b->acch); free(b->scratch);
    b->accx = b->acch = NULL;
    b->gx = b->scratch = NULL;
}

int intlstm_layer_run(int path, const intlstm_layer *L, const int8_t *x, int T, int B, int8_t *h, int16_t *c,
                      int8_t *y)
{
    const int H = L->H, G = 4 * H, I = L->I;
    if (T <= 0 || B <= 0)
        return 0;
    const intlstm_kernel kern = kernel_for(path);
    intlstm_buffers buf;
    if (intlstm_buffers_alloc(&buf, T, B, I, H, G) < 0)
        return -1;
    const int tc = buf.tc, Ip = INTLSTM_KP(I), Hp = INTLSTM_KP(H);
    int32_t *accx = buf.accx, *acch = buf.acch;
    int16_t *gx = buf.gx, *scratch = buf.scratch;
    intlstm_step_ctx s;
    s.L = L;
    s.H = H;
    s.ig_shift = 30 - L->cell_frac_bits;
    s.cell_left = L->cell_frac_bits < INTLSTM_GATE_FRAC_BITS ? INTLSTM_GATE_FRAC_BITS - L->cell_frac_bits : 0;

    /* the weights as the GEMM reads them: packed int8 rows, or their int16 copy (if the allocation fails the
     * int8 rows serve: same results, a little slower) */
    intlstm_gemm_args gih = {NULL, L->w_ih, 1, L->bias_x, accx, 0, G, I, scratch};
    intlstm_gemm_args ghh = {h, L->w_hh, 1, L->bias_h, acch, B, G, H, scratch};
    int16_t *w16 = NULL;
    if (kern.widen_weights && B >= 2)
        w16 = (int16_t *)malloc((size_t)G * (Ip + Hp) * sizeof(int16_t));
    if (w16) {
        for (size_t e = 0; e < (size_t)G * Ip; e++) w16[e] = L->w_ih[e];
        for (size_t e = 0; e < (size_t)G * Hp; e++) w16[(size_t)G * Ip + e] = L->w_hh[e];
        gih.w = w16;
        ghh.w = w16 + (size_t)G * Ip;
        gih.wsz = ghh.wsz = 2;
    }

    const int32_t *m0x = L->qmul, *shx = L->qmul + G;
    for (int t0 = 0; t0 < T; t0 += tc) {
        const int nt = T - t0 < tc ? T - t0 : tc;
        /* input contributions of nt steps at once: one GEMM, then rescale to Q3.12 */
        gih.a = x + (size_t)t0 * B * I;
        gih.m = nt * B;
        kern.gemm(&gih);
        kern.rescale_rows(accx, m0x, shx, gx, (size_t)nt * B, G);
        for (int tt = 0; tt < nt; tt++) {
            kern.gemm(&ghh); /* reads h */
            int8_t *yt = y + ((size_t)(t0 + tt) * B) * H;
            kern.step_rows(&s, acch, gx + (size_t)tt * B * G, c, yt, B);
            memcpy(h, yt, (size_t)B * H); /* h_t = y_t (after the whole step: the GEMM read the old h) */
        }
    }
    free(w16);
    intlstm_buffers_free(&buf);
    return 0;
}
