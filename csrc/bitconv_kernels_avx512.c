/*
 * bitconv_kernels_avx512.c -- the AVX-512 VPOPCNTDQ pixel kernel of the binary convolution.
 *
 * Register tile: 6 output pixels x 32 output channels = 24 zmm accumulators (8 channels per zmm, one per
 * 64-bit lane) + 4 zmm of weights. One step (one K word) loads the 4 weight vectors of the step (the panel's
 * [kk][32] row, 256 contiguous bytes), broadcasts each pixel's activation word to all lanes and does
 * vpxorq + vpopcntq + vpaddq per (pixel, vector): 72 ALU ops per 24 x 512 bits, no horizontal reduction
 * (each lane's sum is its output), no K tail (K is whole words).
 *
 * Epilogue, in registers: the threshold as one vpcmpq of the 64-bit popcounts per 8 channels (pop > T, XOR
 * the sign flips: see bc_work.pop_thr), the four 8-bit masks being the group's 32 output bits; or for the
 * int32 output (and thresholds that could wrap int32) vpmovqd to 32-bit, K - 2 pop, then the store (masked
 * at the last group) or sign * (acc - bias) < thr as a 16-lane compare.
 *
 * AVX-512F + VPOPCNTDQ only (what lb_path_supported(LB_PATH_AVX512) checks): no VL / BW instructions.
 */
#include "bitconv.h"

#if LB_X86
#include <immintrin.h>

#define BC_AVX512_FN __attribute__((target("avx512f,avx512vpopcntdq")))
#define BC_AVX512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512vpopcntdq")))

#define BC512_MR BC_AVX512_MR

/* the 16 int32 results (K - 2 pop) of two accumulators of 8 channels */
BC_AVX512_INLINE __m512i results16(__m512i a, __m512i b, __m512i ksum)
{
    const __m512i pop = _mm512_inserti64x4(_mm512_castsi256_si512(_mm512_cvtepi64_epi32(a)),
                                           _mm512_cvtepi64_epi32(b), 1);
    return _mm512_sub_epi32(ksum, _mm512_add_epi32(pop, pop)); /* wraps like int32: exact mod 2^32 */
}

BC_AVX512_INLINE void tile512(const int MR, const bc_work *wk, size_t g, const uint64_t *panel,
                              const ptrdiff_t *off, size_t p)
{
    __m512i acc[BC512_MR][4];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < 4; v++)
            acc[i][v] = _mm512_setzero_si512();

    const uint64_t *xr[BC512_MR];
#pragma GCC unroll 6
    for (int i = 0; i < MR; i++)
        xr[i] = wk->x0 + off[i];
    const uint64_t *w = panel;
    for (size_t kk = 0; kk < wk->kwords; kk++, w += BC_G) { /* one flat loop over the patch's words */
        const ptrdiff_t o = wk->koff[kk];
        const __m512i W0 = _mm512_load_si512((const void *)w);
        const __m512i W1 = _mm512_load_si512((const void *)(w + 8));
        const __m512i W2 = _mm512_load_si512((const void *)(w + 16));
        const __m512i W3 = _mm512_load_si512((const void *)(w + 24));
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const __m512i b = _mm512_set1_epi64((long long)xr[i][o]);
            acc[i][0] = _mm512_add_epi64(acc[i][0], _mm512_popcnt_epi64(_mm512_xor_si512(b, W0)));
            acc[i][1] = _mm512_add_epi64(acc[i][1], _mm512_popcnt_epi64(_mm512_xor_si512(b, W1)));
            acc[i][2] = _mm512_add_epi64(acc[i][2], _mm512_popcnt_epi64(_mm512_xor_si512(b, W2)));
            acc[i][3] = _mm512_add_epi64(acc[i][3], _mm512_popcnt_epi64(_mm512_xor_si512(b, W3)));
        }
    }

    const __m512i ksum = _mm512_set1_epi32(wk->ksum);
    const size_t channels = bc_group_channels(wk, g);
    if (wk->pop_thr) { /* the threshold on the 64-bit popcounts: one compare per 8 channels */
        const int64_t *tp = wk->pop_thr + g * BC_G;
        const __m512i T0 = _mm512_loadu_si512((const void *)tp), T1 = _mm512_loadu_si512((const void *)(tp + 8));
        const __m512i T2 = _mm512_loadu_si512((const void *)(tp + 16)), T3 = _mm512_loadu_si512((const void *)(tp + 24));
        const uint32_t flip = wk->neg[g], keep = bc_group_mask(channels);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const uint32_t bits = (uint32_t)_mm512_cmpgt_epi64_mask(acc[i][0], T0) |
                                  ((uint32_t)_mm512_cmpgt_epi64_mask(acc[i][1], T1) << 8) |
                                  ((uint32_t)_mm512_cmpgt_epi64_mask(acc[i][2], T2) << 16) |
                                  ((uint32_t)_mm512_cmpgt_epi64_mask(acc[i][3], T3) << 24);
            bc_put_bits(wk, p + (size_t)i, g, (bits ^ flip) & keep);
        }
    } else if (wk->sign) { /* int32 values, wrapping (extreme bias / thresholds) */
        const __m512i bias = _mm512_set1_epi32(wk->bias), zero = _mm512_setzero_si512();
        /* lanes whose BN scale is negative: x -> -x (wrapping), by a masked subtract */
        const __mmask16 n0 = _mm512_cmplt_epi32_mask(_mm512_loadu_si512((const void *)(wk->sign + g * BC_G)), zero);
        const __mmask16 n1 = _mm512_cmplt_epi32_mask(_mm512_loadu_si512((const void *)(wk->sign + g * BC_G + 16)), zero);
        const __m512i t0 = _mm512_loadu_si512((const void *)(wk->thr + g * BC_G));
        const __m512i t1 = _mm512_loadu_si512((const void *)(wk->thr + g * BC_G + 16));
        const uint32_t keep = bc_group_mask(channels);
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            const __m512i x0 = _mm512_sub_epi32(results16(acc[i][0], acc[i][1], ksum), bias);
            const __m512i x1 = _mm512_sub_epi32(results16(acc[i][2], acc[i][3], ksum), bias);
            const __m512i r0 = _mm512_mask_sub_epi32(x0, n0, zero, x0);
            const __m512i r1 = _mm512_mask_sub_epi32(x1, n1, zero, x1);
            const uint32_t bits = ((uint32_t)_mm512_cmplt_epi32_mask(r0, t0) |
                                   ((uint32_t)_mm512_cmplt_epi32_mask(r1, t1) << 16)) & keep;
            bc_put_bits(wk, p + (size_t)i, g, bits);
        }
    } else {
        const __mmask16 m0 = (__mmask16)(channels >= 16 ? 0xffffu : ((1u << channels) - 1u));
        const __mmask16 m1 = (__mmask16)(channels >= 32 ? 0xffffu : channels <= 16 ? 0u : ((1u << (channels - 16)) - 1u));
#pragma GCC unroll 6
        for (int i = 0; i < MR; i++) {
            int32_t *c = wk->acc + (p + (size_t)i) * wk->nout + g * BC_G;
            const __m512i r0 = results16(acc[i][0], acc[i][1], ksum);
            const __m512i r1 = results16(acc[i][2], acc[i][3], ksum);
            if (channels == BC_G) {
                _mm512_storeu_si512((void *)c, r0);
                _mm512_storeu_si512((void *)(c + 16), r1);
            } else {
                _mm512_mask_storeu_epi32((void *)c, m0, r0);
                _mm512_mask_storeu_epi32((void *)(c + 16), m1, r1);
            }
        }
    }
}

/* the sweep's tile: 6 pixels, or the last 1..5 */
BC_AVX512_INLINE void tile(const bc_work *wk, size_t g, const uint64_t *panel, const ptrdiff_t *o, size_t p,
                              size_t mr)
{
    switch (mr) {
    case 6: tile512(6, wk, g, panel, o, p); break;
    case 5: tile512(5, wk, g, panel, o, p); break;
    case 4: tile512(4, wk, g, panel, o, p); break;
    case 3: tile512(3, wk, g, panel, o, p); break;
    case 2: tile512(2, wk, g, panel, o, p); break;
    default: tile512(1, wk, g, panel, o, p); break;
    }
}

BC_AVX512_FN void bc_pixels_avx512(const bc_work *wk, size_t p0, size_t p1)
{
    bc_sweep(wk, p0, p1, BC512_MR, tile);
}

#endif /* LB_X86 */
