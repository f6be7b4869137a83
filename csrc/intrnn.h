/*
 * intrnn.h -- internal interface of lowbit's integer-only GRU and tanh RNN (built the way the integer LSTM is).
 *
 * The number formats and the arithmetic are documented in src/lowbit/runtime/int_rnn.py, whose NumPy references
 * compute exactly the same integers. The pieces are the integer LSTM's (intlstm.h): its int8 GEMM on the
 * requested path (intlstm_gemm), its fixed-point rescale, saturation and interpolated tables. The element-wise
 * step is plain C on every path (intrnn_cells.c): the recurrent GEMM dominates a step.
 */
#ifndef LOWBIT_INTRNN_H
#define LOWBIT_INTRNN_H

#include "intlstm.h"

typedef struct {
    const int8_t *w_ih;    /* (G H, Ip) packed (intlstm.h), G = 3 (GRU: r, z, n) or 1 (RNN) */
    const int8_t *w_hh;    /* (G H, Hp) packed */
    const int32_t *bias_x; /* (G H) effective input bias */
    const int32_t *bias_h; /* (G H) effective recurrent bias (GRU: b_hn in the n rows) */
    const int32_t *qmul;   /* (4, G H): m0_x, shift_x, m0_h, shift_h */
    const int32_t *lut_sig, *lut_tanh; /* (LUT_SEGMENTS + 1) Q0.23 on Q3.12; lut_sig: GRU only */
    int I, H;
    int z_h;           /* hidden zero point */
    int32_t hid_m0;    /* Q0.15 -> int8 hidden multiplier (2^-15 / s_h) */
    int hid_shift;
} intrnn_layer;

/* One GRU layer over a sequence. x (T, B, I) int8; h (B, H) int16 Q0.15 is the initial state and receives the
 * final one; y (T, B, H) int8. Returns 0, or -1 if out of memory. */
int intgru_layer_run(int path, const intrnn_layer *L, const int8_t *x, int T, int B, int16_t *h, int8_t *y);

/* One tanh RNN layer over a sequence. h (B, H) int8 is the initial state and receives the final one. */
int intrnn_layer_run(int path, const intrnn_layer *L, const int8_t *x, int T, int B, int8_t *h, int8_t *y);

#endif /* LOWBIT_INTRNN_H */
