/*
 * bitconv_kernels_scalar.c -- the scalar pixel kernels of the binary convolution (portable, popcnt).
 *
 * One always-inline body compiled twice, as in bitgemm_kernels_scalar.c: for the baseline ISA (portable:
 * __builtin_popcountll is libgcc's table code on x86-64 without -mpopcnt) and with target("popcnt").
 * Register tile: 2 output pixels x 4 output channels (8 scalar accumulators, 6 loads per 8 popcounts),
 * swept over the 8 channel quads of each 32-channel group.
 */
#include "bitconv.h"


/* wrapping int32 arithmetic without signed-overflow UB */
static inline __attribute__((always_inline)) int32_t bc_result(int32_t ksum, uint64_t pop)
{
    return (int32_t)((uint32_t)ksum - 2u * (uint32_t)pop);
}

static inline __attribute__((always_inline)) uint32_t bc_bit(const bc_work *wk, size_t j, int32_t r)
{
    const uint32_t x = (uint32_t)r - (uint32_t)wk->bias;
    const int32_t sx = (int32_t)(wk->sign[j] < 0 ? 0u - x : x);
    return sx < wk->thr[j];
}

/* mr (1 or 2) pixels with patch offsets off0, off1 against group g. */
static inline __attribute__((always_inline)) void scalar_tile(const bc_work *wk, size_t g, const uint64_t *panel,
                                                              ptrdiff_t off0, ptrdiff_t off1, size_t p, int mr)
{
    const size_t rowlen = wk->kw * wk->cw, channels = bc_group_channels(wk, g);
    const ptrdiff_t rstride = (ptrdiff_t)(wk->wp * wk->cw);
    uint32_t bits0 = 0, bits1 = 0;
    for (size_t q = 0; q < channels; q += 4) {
        uint64_t s00 = 0, s01 = 0, s02 = 0, s03 = 0, s10 = 0, s11 = 0, s12 = 0, s13 = 0;
        const uint64_t *w = panel + q;
        for (size_t dy = 0; dy < wk->kh; dy++) {
            const uint64_t *x0 = wk->x0 + off0 + (ptrdiff_t)dy * rstride;
            const uint64_t *x1 = wk->x0 + off1 + (ptrdiff_t)dy * rstride;
            for (size_t j = 0; j < rowlen; j++, w += BC_G) {
                const uint64_t a0 = x0[j], a1 = x1[j];
                s00 += (uint64_t)__builtin_popcountll(a0 ^ w[0]);
                s01 += (uint64_t)__builtin_popcountll(a0 ^ w[1]);
                s02 += (uint64_t)__builtin_popcountll(a0 ^ w[2]);
                s03 += (uint64_t)__builtin_popcountll(a0 ^ w[3]);
                s10 += (uint64_t)__builtin_popcountll(a1 ^ w[0]);
                s11 += (uint64_t)__builtin_popcountll(a1 ^ w[1]);
                s12 += (uint64_t)__builtin_popcountll(a1 ^ w[2]);
                s13 += (uint64_t)__builtin_popcountll(a1 ^ w[3]);
            }
        }
        const uint64_t s[2][4] = {{s00, s01, s02, s03}, {s10, s11, s12, s13}};
        const size_t nq = channels - q < 4 ? channels - q : 4;
        for (int i = 0; i < mr; i++) {
            const size_t pi = p + (size_t)i;
            for (size_t c = 0; c < nq; c++) {
                const size_t j = g * BC_G + q + c;
                const int32_t r = bc_result(wk->ksum, s[i][c]);
                if (wk->pop_thr) {
                    const uint32_t b = (uint32_t)((int64_t)s[i][c] > wk->pop_thr[j]) << (q + c);
                    if (i == 0)
                        bits0 |= b;
                    else
                        bits1 |= b;
                } else if (wk->sign) {
                    const uint32_t b = bc_bit(wk, j, r) << (q + c);
                    if (i == 0)
                        bits0 |= b;
                    else
                        bits1 |= b;
                } else {
                    wk->acc[pi * wk->nout + j] = r;
                }
            }
        }
    }
    if (wk->sign) {
        const uint32_t flip = wk->pop_thr ? wk->neg[g] & bc_group_mask(channels) : 0u;
        bc_put_bits(wk, p, g, bits0 ^ flip);
        if (mr > 1)
            bc_put_bits(wk, p + 1, g, bits1 ^ flip);
    }
}

/* a tile of the sweep: 2 pixels, or the last 1 (its offset passed twice); each height its own inlined body */
static inline __attribute__((always_inline)) void tile_any(const bc_work *wk, size_t g, const uint64_t *panel,
                                                           const ptrdiff_t *o, size_t p, size_t mr)
{
    if (mr > 1)
        scalar_tile(wk, g, panel, o[0], o[1], p, 2);
    else
        scalar_tile(wk, g, panel, o[0], o[0], p, 1);
}

static inline __attribute__((always_inline)) void tile_portable(const bc_work *wk, size_t g, const uint64_t *panel,
                                                                const ptrdiff_t *o, size_t p, size_t mr)
{
    tile_any(wk, g, panel, o, p, mr);
}

void bc_pixels_portable(const bc_work *wk, size_t p0, size_t p1)
{
    bc_sweep(wk, p0, p1, BC_SCALAR_MR, tile_portable);
}

#if LB_X86
static inline __attribute__((always_inline, target("popcnt"))) void tile_popcnt(const bc_work *wk, size_t g,
                                                                              const uint64_t *panel, const ptrdiff_t *o,
                                                                              size_t p, size_t mr)
{
    tile_any(wk, g, panel, o, p, mr);
}

__attribute__((target("popcnt"))) void bc_pixels_popcnt(const bc_work *wk, size_t p0, size_t p1)
{
    bc_sweep(wk, p0, p1, BC_SCALAR_MR, tile_popcnt);
}
#endif
