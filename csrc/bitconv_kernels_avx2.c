/*
 * bitconv_kernels_avx2.c -- the AVX2 pixel kernel of the binary convolution (vpshufb popcount).
 *
 * 4 output channels per ymm (one per 64-bit lane). Both operands come split into nibbles -- the weights at
 * preparation, the input in the driver's padding copy -- so a (pixel, 4 channels, word) step is vpxor +
 * vpshufb for each nibble and two vpaddb into per-byte counters (6 ops per 256 bits, the "nibble panels" of
 * bitgemm_kernels_avx2.c; XOR commutes with the split). The byte counters take at most 31 steps (8 per step)
 * before vpsadbw widens them: its four 64-bit sums are exactly the four channels' popcounts.
 *
 * Register tile: 3 pixels x 8 channels (6 byte counters, 4 weight vectors, the table, two broadcasts: 4 pixels
 * spilled), swept over the 4 channel octets of each 32-channel group; the group's 32 output bits are
 * assembled from the four octets' vmovmskps masks. The K loop runs over the driver's table of patch-word
 * offsets (koff), cut into runs of at most 31 words with the widening between runs, outside the inner loop.
 */
#include "bitconv.h"

#if LB_X86
#include <immintrin.h>

#define BC_AVX2_FN __attribute__((target("avx2,popcnt")))
#define BC_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,popcnt")))

#define BC_AVX2_RUN 31 /* steps per byte-counter run: 31 * 8 = 248 <= 255 */

#define BC_LUT                                                                                          \
    _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, \
                     2, 3, 3, 4)

#define LOADA(p) _mm256_load_si256((const __m256i *)(const void *)(p))

BC_AVX2_INLINE __m256i nib_count(__m256i lut, __m256i bl, __m256i bh, __m256i wl, __m256i wh)
{
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, _mm256_xor_si256(bl, wl)),
                           _mm256_shuffle_epi8(lut, _mm256_xor_si256(bh, wh)));
}

/* 8 int32 results K - 2 pop from two vectors of four 64-bit popcounts (channels 0-3, 4-7) */
BC_AVX2_INLINE __m256i results8(__m256i t0, __m256i t1, __m256i ksum)
{
    const __m256i mixed = _mm256_or_si256(t0, _mm256_slli_epi64(t1, 32)); /* c0 c4 c1 c5 c2 c6 c3 c7 */
    const __m256i pop = _mm256_permutevar8x32_epi32(mixed, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7));
    return _mm256_sub_epi32(ksum, _mm256_add_epi32(pop, pop));
}

BC_AVX2_INLINE void tile_avx2(const int MR, const bc_work *wk, size_t g, const uint64_t *panel,
                              const ptrdiff_t *off, size_t p)
{
    const __m256i lut = BC_LUT, zero = _mm256_setzero_si256();
    const size_t channels = bc_group_channels(wk, g);
    const ptrdiff_t hi = wk->hi;
    const ptrdiff_t whi = (ptrdiff_t)(wk->kwords * BC_G);
    const __m256i ksum = _mm256_set1_epi32(wk->ksum);
    uint32_t bits[4] = {0};
    const uint64_t *xr[4];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
        xr[i] = wk->x0 + off[i];
    for (size_t q = 0; q < channels; q += 8) {
        __m256i cnt[4][2], tot[4][2];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++)
            cnt[i][0] = cnt[i][1] = tot[i][0] = tot[i][1] = zero;
        /* runs of at most 31 steps (words of K), then the byte counters are widened into the totals */
        for (size_t k0 = 0; k0 < wk->kwords; k0 += BC_AVX2_RUN) {
            const size_t k1 = (wk->kwords - k0 < BC_AVX2_RUN) ? wk->kwords : k0 + BC_AVX2_RUN;
            const uint64_t *w = panel + q + k0 * BC_G;
            for (size_t kk = k0; kk < k1; kk++, w += BC_G) {
                const __m256i L0 = LOADA(w), L1 = LOADA(w + 4), H0 = LOADA(w + whi), H1 = LOADA(w + whi + 4);
                const ptrdiff_t o = wk->koff[kk];
#pragma GCC unroll 4
                for (int i = 0; i < MR; i++) {
                    const __m256i bl = _mm256_set1_epi64x((long long)xr[i][o]);
                    const __m256i bh = _mm256_set1_epi64x((long long)xr[i][o + hi]);
                    cnt[i][0] = _mm256_add_epi8(cnt[i][0], nib_count(lut, bl, bh, L0, H0));
                    cnt[i][1] = _mm256_add_epi8(cnt[i][1], nib_count(lut, bl, bh, L1, H1));
                }
            }
            if (k1 < wk->kwords) {
#pragma GCC unroll 4
                for (int i = 0; i < MR; i++) {
                    tot[i][0] = _mm256_add_epi64(tot[i][0], _mm256_sad_epu8(cnt[i][0], zero));
                    tot[i][1] = _mm256_add_epi64(tot[i][1], _mm256_sad_epu8(cnt[i][1], zero));
                    cnt[i][0] = cnt[i][1] = zero;
                }
            }
        }
        const size_t nq = channels - q < 8 ? channels - q : 8;
        if (wk->pop_thr) { /* the threshold on the 64-bit popcounts (bc_work.pop_thr) */
            const __m256i T0 = _mm256_loadu_si256((const __m256i *)(const void *)(wk->pop_thr + g * BC_G + q));
            const __m256i T1 = _mm256_loadu_si256((const __m256i *)(const void *)(wk->pop_thr + g * BC_G + q + 4));
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                const __m256i t0 = _mm256_add_epi64(tot[i][0], _mm256_sad_epu8(cnt[i][0], zero));
                const __m256i t1 = _mm256_add_epi64(tot[i][1], _mm256_sad_epu8(cnt[i][1], zero));
                const uint32_t m = (uint32_t)_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(t0, T0))) |
                                   ((uint32_t)_mm256_movemask_pd(_mm256_castsi256_pd(_mm256_cmpgt_epi64(t1, T1))) << 4);
                bits[i] |= m << q; /* missing channels are cleared below */
            }
        } else if (wk->sign) {
            const __m256i bias = _mm256_set1_epi32(wk->bias);
            const __m256i s = _mm256_loadu_si256((const __m256i *)(const void *)(wk->sign + g * BC_G + q));
            const __m256i t = _mm256_loadu_si256((const __m256i *)(const void *)(wk->thr + g * BC_G + q));
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                const __m256i t0 = _mm256_add_epi64(tot[i][0], _mm256_sad_epu8(cnt[i][0], zero));
                const __m256i t1 = _mm256_add_epi64(tot[i][1], _mm256_sad_epu8(cnt[i][1], zero));
                const __m256i x = _mm256_sign_epi32(_mm256_sub_epi32(results8(t0, t1, ksum), bias), s);
                const uint32_t m = (uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(_mm256_cmpgt_epi32(t, x)));
                bits[i] |= (m & ((1u << nq) - 1u)) << q;
            }
        } else {
            const __m256i lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
            const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32((int)nq), lanes);
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                const __m256i t0 = _mm256_add_epi64(tot[i][0], _mm256_sad_epu8(cnt[i][0], zero));
                const __m256i t1 = _mm256_add_epi64(tot[i][1], _mm256_sad_epu8(cnt[i][1], zero));
                int32_t *c = wk->acc + (p + (size_t)i) * wk->nout + g * BC_G + q;
                const __m256i r = results8(t0, t1, ksum);
                if (nq == 8)
                    _mm256_storeu_si256((__m256i *)(void *)c, r);
                else
                    _mm256_maskstore_epi32((int *)c, keep, r);
            }
        }
    }
    if (wk->sign) {
        const uint32_t flip = wk->pop_thr ? wk->neg[g] : 0u, keep = bc_group_mask(channels);
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++)
            bc_put_bits(wk, p + (size_t)i, g, (bits[i] ^ flip) & keep);
    }
}

/* the sweep's tile: MR pixels, or the last 1..MR-1 */
BC_AVX2_INLINE void tile(const bc_work *wk, size_t g, const uint64_t *panel, const ptrdiff_t *o, size_t p, size_t mr)
{
    switch (mr) {
#if BC_AVX2_MR >= 4
    case 4: tile_avx2(4, wk, g, panel, o, p); break;
#endif
#if BC_AVX2_MR >= 3
    case 3: tile_avx2(3, wk, g, panel, o, p); break;
#endif
    case 2: tile_avx2(2, wk, g, panel, o, p); break;
    default: tile_avx2(1, wk, g, panel, o, p); break;
    }
}

BC_AVX2_FN void bc_pixels_avx2(const bc_work *wk, size_t p0, size_t p1)
{
    bc_sweep(wk, p0, p1, BC_AVX2_MR, tile);
}

#endif /* LB_X86 */
