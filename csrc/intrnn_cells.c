/*
 * intrnn_cells.c -- the integer GRU and tanh RNN over a sequence (see intrnn.h; the arithmetic is written out in
 * src/lowbit/runtime/int_rnn.py).
 *
 * A layer run, for T steps of B batch rows, as the integer LSTM's (intlstm_driver.c):
 *
 *   for each chunk of time steps (intlstm_buffers_alloc: about 2^18 accumulators)
 *     input GEMM of the whole chunk (x does not depend on h), rescale to Q3.12      once per chunk
 *     for each step
 *       recurrent GEMM (B rows of the int8 hidden output hq)                         the serial part
 *       element-wise step of the B rows -> state, y; hq = y
 */
#include <stdlib.h>
#include <string.h>

#include "intrnn.h"

enum { CELL_GRU = 0, CELL_RNN = 1 };

/* Q0.15 -> int8 hidden output: clamp8(rescale(v, M_o) + z_h) */
static inline int8_t requant8(const intrnn_layer *L, int32_t v)
{
    int64_t q = (int64_t)intlstm_rescale(v, L->hid_m0, L->hid_shift) + L->z_h;
    return (int8_t)(q > 127 ? 127 : (q < -128 ? -128 : q));
}

/* rescale of the recurrent accumulator of gate row j (M_h), as int64 to add an int16 without overflow */
static inline int64_t rec(const intrnn_layer *L, int G, const int32_t *ah, int j)
{
    return intlstm_rescale(ah[j], L->qmul[2 * G + j], L->qmul[3 * G + j]);
}

/* One GRU step of one batch row: ah (3H) recurrent accumulators, ax (3H) input parts (Q3.12); h (H) Q0.15 is
 * updated, y (H) receives the int8 output. */
static void gru_row(const intrnn_layer *L, const int32_t *ah, const int16_t *ax, int16_t *h, int8_t *y)
{
    const int H = L->H, G = 3 * H;
    for (int j = 0; j < H; j++) {
        int32_t r = intlstm_lut16(L->lut_sig, intlstm_sat16(rec(L, G, ah, j) + ax[j]));
        int32_t z = intlstm_lut16(L->lut_sig, intlstm_sat16(rec(L, G, ah, H + j) + ax[H + j]));
        int32_t hn = intlstm_sat16(rec(L, G, ah, 2 * H + j));
        /* r (Q0.15) x hn (Q3.12) = Q3.27 -> >> 15 to Q3.12 */
        int32_t n = intlstm_lut16(L->lut_tanh, intlstm_sat16(ax[2 * H + j] + intlstm_rshift_round((int64_t)r * hn, 15)));
        /* h' = n + z (h - n): Q0.15 x Q0.15 -> >> 15 */
        int32_t nh = intlstm_sat16(n + intlstm_rshift_round((int64_t)z * ((int32_t)h[j] - n), 15));
        h[j] = (int16_t)nh;
        y[j] = requant8(L, nh);
    }
}

/* One tanh RNN step of one batch row. */
static void rnn_row(const intrnn_layer *L, const int32_t *ah, const int16_t *ax, int8_t *y)
{
    const int H = L->H;
    for (int j = 0; j < H; j++)
        y[j] = requant8(L, intlstm_lut16(L->lut_tanh, intlstm_sat16(rec(L, H, ah, j) + ax[j])));
}

/* The layer over a sequence; state: int16 h (GRU) or int8 h (RNN), (B, H). */
static int layer_run(int cell, int path, const intrnn_layer *L, const int8_t *x, int T, int B, void *state, int8_t *y)
{
    const int H = L->H, I = L->I, G = (cell == CELL_GRU ? 3 : 1) * H;
    if (T <= 0 || B <= 0)
        return 0;
    intlstm_buffers buf;
    int8_t *hq = (int8_t *)malloc((size_t)B * H); /* the int8 hidden output the recurrent GEMM reads */
    if (!hq || intlstm_buffers_alloc(&buf, T, B, I, H, G) < 0) {
        free(hq);
        return -1;
    }
    int16_t *h16 = cell == CELL_GRU ? (int16_t *)state : NULL;
    if (h16)
        for (size_t e = 0; e < (size_t)B * H; e++) hq[e] = requant8(L, h16[e]);
    else
        memcpy(hq, state, (size_t)B * H);

    for (int t0 = 0; t0 < T; t0 += buf.tc) {
        const int nt = T - t0 < buf.tc ? T - t0 : buf.tc;
        /* input parts of nt steps at once: one GEMM, then rescale to Q3.12 */
        intlstm_gemm(path, x + (size_t)t0 * B * I, L->w_ih, L->bias_x, buf.accx, nt * B, G, I, buf.scratch);
        intlstm_rescale_rows_scalar(buf.accx, L->qmul, L->qmul + G, buf.gx, (size_t)nt * B, G);
        for (int tt = 0; tt < nt; tt++) {
            intlstm_gemm(path, hq, L->w_hh, L->bias_h, buf.acch, B, G, H, buf.scratch); /* reads the old hq */
            int8_t *yt = y + ((size_t)(t0 + tt) * B) * H;
            for (int b = 0; b < B; b++) {
                const int32_t *ah = buf.acch + (size_t)b * G;
                const int16_t *ax = buf.gx + ((size_t)tt * B + b) * G;
                if (h16)
                    gru_row(L, ah, ax, h16 + (size_t)b * H, yt + (size_t)b * H);
                else
                    rnn_row(L, ah, ax, yt + (size_t)b * H);
            }
            memcpy(hq, yt, (size_t)B * H);
        }
    }
    if (!h16)
        memcpy(state, hq, (size_t)B * H);
    intlstm_buffers_free(&buf);
    free(hq);
    return 0;
}

int intgru_layer_run(int path, const intrnn_layer *L, const int8_t *x, int T, int B, int16_t *h, int8_t *y)
{
    return layer_run(CELL_GRU, path, L, x, T, B, h, y);
}

int intrnn_layer_run(int path, const intrnn_layer *L, const int8_t *x, int T, int B, int8_t *h, int8_t *y)
{
    return layer_run(CELL_RNN, path, L, x, T, B, h, y);
}
