/* Integer-only LSTM kernels (TensorFlow Lite "8x8_16" design); see src/lowbit/rnn/int_lstm.py for the
 * number formats and the arithmetic, which the NumPy reference there reproduces bit for bit. */
#ifndef LOWBIT_INTLSTM_H
#define LOWBIT_INTLSTM_H

#include <stdint.h>
#include <stddef.h>

#define INTLSTM_GATE_FRAC_BITS 12
#define INTLSTM_LUT_SEGMENTS 4096
#define INTLSTM_LUT_STEP_BITS 4
#define INTLSTM_LUT_FRAC_BITS 23
#define INTLSTM_MAX_K 65536

typedef enum { INTLSTM_PATH_PORTABLE = 1, INTLSTM_PATH_AVX2 = 2 } intlstm_path;

/* 1 if the CPU (and this build) can run the path. */
int intlstm_path_supported(intlstm_path p);

#define INTLSTM_KP(K) (((K) + 15) & ~15)

/* C[m*N + n] = bias[n] + sum_k A[m*K + k] * W[n*Kp + k]   (int8 x int8 -> int32, exact for K <= 65536).
 * W is "packed": rows of Kp = INTLSTM_KP(K) columns, zeros beyond K. bias may be NULL.
 * scratch: at least M * Kp int16 (used by the AVX2 path). */
void intlstm_gemm(intlstm_path p, const int8_t *A, const int8_t *W, const int32_t *bias, int32_t *C,
                  int M, int N, int K, int16_t *scratch);

typedef struct {
    const int8_t *w_ih;     /* (4H, Ip) packed, Ip = INTLSTM_KP(I) */
    const int8_t *w_hh;     /* (4H, Hp) packed */
    const int32_t *bias_x;  /* (4H) effective input bias (zero point folded in) */
    const int32_t *bias_h;  /* (4H) effective recurrent bias */
    const int32_t *qmul;    /* (4, 4H): m0_x, shift_x, m0_h, shift_h */
    const int32_t *lut_sig, *lut_tanh, *lut_cell;  /* (LUT_SEGMENTS + 1) Q0.23 */
    int I, H;
    int z_h;                /* hidden zero point */
    int cell_frac_bits;     /* cs: cell scale 2^-cs */
    int32_t hid_m0;         /* Q0.30 -> int8 hidden multiplier */
    int hid_shift;
    int cell_clip;          /* 0: none */
} intlstm_layer;

/* Run one layer over a sequence. x (T, B, I) int8; h (B, H) int8 and c (B, H) int16 are read as the initial
 * state and overwritten with the final one; y (T, B, H) int8. Returns 0, or -1 if out of memory. */
int intlstm_layer_run(intlstm_path p, const intlstm_layer *L, const int8_t *x, int T, int B, int8_t *h,
                      int16_t *c, int8_t *y);

#endif
