/*
 * intlstm_step_scalar.c -- the integer LSTM's element-wise step in plain C (portable and popcnt paths, and the
 * tails the vector code leaves; see intlstm.h).
 *
 * Per batch row b and hidden unit j:
 *
 *   gate_k = sat16(rescale(acc_h[kH + j]) + sat16(rescale(acc_x[kH + j])))    Q3.12, k = i, f, g, o
 *   i, f, o = sigmoid table(gate), g = tanh table(gate)                         Q0.15
 *   c = sat16(rshr(f c, 15) + rshr(i g, 30 - cs))                               scale 2^-cs
 *   h = clamp8(rescale(o * tanh_cell(c)) + z_h)                                 int8 asymmetric
 *
 * The input part (sat16(rescale(acc_x))) is done for a chunk of time steps at once, ahead of the steps.
 */
#include "intlstm.h"

/* Input contributions of `rows` rows: gx = intlstm_sat16(intlstm_rescale(acc_x)) per gate row (scalar, from index j0). */
void intlstm_rescale_rows_scalar_from(const int32_t *acc, const int32_t *m0, const int32_t *sh, int16_t *out, size_t rows,
                                      int G, int j0)
{
    for (size_t r = 0; r < rows; r++)
        for (int j = j0; j < G; j++) out[r * G + j] = (int16_t)intlstm_sat16(intlstm_rescale(acc[r * G + j], m0[j], sh[j]));
}

void intlstm_rescale_rows_scalar(const int32_t *acc, const int32_t *m0, const int32_t *sh, int16_t *out, size_t rows,
                                 int G)
{
    intlstm_rescale_rows_scalar_from(acc, m0, sh, out, rows, G, 0);
}

/* One time step of one batch row for hidden units j0 .. H-1 (scalar). */
void intlstm_step_row_scalar_from(const intlstm_step_ctx *s, const int32_t *ah, const int16_t *ax, int16_t *c,
                                  int8_t *y, int j0)
{
    const intlstm_layer *L = s->L;
    const int H = s->H, G = 4 * H;
    const int32_t *m0h = L->qmul + 2 * G, *shh = L->qmul + 3 * G;
    for (int j = j0; j < H; j++) {
        int32_t gi = intlstm_sat16(intlstm_rescale(ah[j], m0h[j], shh[j]) + ax[j]);
        int32_t gf = intlstm_sat16(intlstm_rescale(ah[H + j], m0h[H + j], shh[H + j]) + ax[H + j]);
        int32_t gg = intlstm_sat16(intlstm_rescale(ah[2 * H + j], m0h[2 * H + j], shh[2 * H + j]) + ax[2 * H + j]);
        int32_t go = intlstm_sat16(intlstm_rescale(ah[3 * H + j], m0h[3 * H + j], shh[3 * H + j]) + ax[3 * H + j]);
        int32_t i = intlstm_lut16(L->lut_sig, gi);
        int32_t f = intlstm_lut16(L->lut_sig, gf);
        int32_t g = intlstm_lut16(L->lut_tanh, gg);
        int32_t o = intlstm_lut16(L->lut_sig, go);
        /* f c: Q0.15 x 2^-cs -> >> 15 back to 2^-cs; i g: Q0.30 -> >> (30 - cs) to 2^-cs */
        int32_t nc = intlstm_sat16(intlstm_rshift_round((int64_t)f * c[j], 15) + intlstm_rshift_round((int64_t)i * g, s->ig_shift));
        if (L->cell_clip) {
            if (nc > L->cell_clip) nc = L->cell_clip;
            if (nc < -L->cell_clip) nc = -L->cell_clip;
        }
        int32_t tcv = intlstm_lut16(L->lut_cell, intlstm_sat16((int64_t)nc * ((int64_t)1 << s->cell_left)));
        int64_t hv = intlstm_rescale((int64_t)o * tcv, L->hid_m0, L->hid_shift) + L->z_h;
        if (hv > 127) hv = 127;
        if (hv < -128) hv = -128;
        c[j] = (int16_t)nc;
        y[j] = (int8_t)hv;
    }
}

void intlstm_step_rows_scalar(const intlstm_step_ctx *s, const int32_t *acch, const int16_t *gx, int16_t *c, int8_t *y,
                              int B)
{
    const size_t G = 4 * (size_t)s->H;
    for (int b = 0; b < B; b++)
        intlstm_step_row_scalar_from(s, acch + b * G, gx + b * G, c + (size_t)b * s->H, y + (size_t)b * s->H, 0);
}
