/*
 * intlstm_step_avx2.c -- the integer LSTM's element-wise step, 8 lanes of AVX2 (avx2 and avx512 paths; see
 * intlstm.h and intlstm_step_scalar.c for the arithmetic).
 *
 * Same integers as the scalar code. rescale() needs 64-bit products: vpmuldq multiplies the even 32-bit lanes
 * (the odd ones after a 32-bit shift), and the arithmetic right shift by a per-lane count, which AVX2 lacks
 * for 64-bit lanes, is a logical one on the product offset by 2^62 (|x m0| < 2^62 keeps it non-negative):
 * floor((p + 2^(e-1) + 2^62) / 2^e) - 2^(62-e) = floor((p + 2^(e-1)) / 2^e). The result is clamped to
 * [lo, hi] before it returns to 32-bit lanes; with the bounds used (+-2^16 before a sat16 of a sum with an
 * int16, +-2^20 before an int8 clamp) this gives the same value as the scalar sat32 followed by the clamp.
 *
 * Compiled without -mavx2: every function carries target("avx2") (see intlstm_gemm_avx2.c).
 */
#include "intlstm.h"

#if LB_X86
#include <immintrin.h>
#include <string.h>

__attribute__((target("avx2"))) static inline __m256i clamp64(__m256i v, __m256i lo, __m256i hi) {
    v = _mm256_blendv_epi8(v, hi, _mm256_cmpgt_epi64(v, hi));
    return _mm256_blendv_epi8(v, lo, _mm256_cmpgt_epi64(lo, v));
}

__attribute__((target("avx2"))) static inline __m256i clamp32(__m256i v, int lo, int hi) {
    return _mm256_min_epi32(_mm256_max_epi32(v, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi));
}

/* 8 x rescale(x, m0, shift) clamped to [lo, hi]; e = 31 - shift (1..62) per lane. */
__attribute__((target("avx2"))) static inline __m256i rescale8(__m256i x, __m256i m0, __m256i e, __m256i lo,
                                                               __m256i hi) {
    const __m256i one = _mm256_set1_epi64x(1), big = _mm256_set1_epi64x((int64_t)1 << 62);
    const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFFLL);
    __m256i e_ev = _mm256_and_si256(e, low32), e_od = _mm256_srli_epi64(e, 32);
    __m256i p_ev = _mm256_mul_epi32(x, m0);
    __m256i p_od = _mm256_mul_epi32(_mm256_srli_epi64(x, 32), _mm256_srli_epi64(m0, 32));
    __m256i r_ev = _mm256_add_epi64(_mm256_sllv_epi64(one, _mm256_sub_epi64(e_ev, one)), big);
    __m256i r_od = _mm256_add_epi64(_mm256_sllv_epi64(one, _mm256_sub_epi64(e_od, one)), big);
    __m256i v_ev = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_add_epi64(p_ev, r_ev), e_ev), _mm256_srlv_epi64(big, e_ev));
    __m256i v_od = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_add_epi64(p_od, r_od), e_od), _mm256_srlv_epi64(big, e_od));
    v_ev = clamp64(v_ev, lo, hi);
    v_od = clamp64(v_od, lo, hi);
    return _mm256_blend_epi32(v_ev, _mm256_slli_epi64(v_od, 32), 0xAA);
}

__attribute__((target("avx2"))) static inline __m256i shift_count(const int32_t *sh) {
    return _mm256_sub_epi32(_mm256_set1_epi32(31), _mm256_loadu_si256((const __m256i *)sh));
}

/* 8 table lookups (vpgatherdd) with the interpolation of lut16 */
__attribute__((target("avx2"))) static inline __m256i lut8(const int32_t *T, __m256i x) {
    __m256i u = _mm256_add_epi32(x, _mm256_set1_epi32(32768));
    __m256i i = _mm256_srli_epi32(u, INTLSTM_LUT_STEP_BITS);
    __m256i t = _mm256_and_si256(u, _mm256_set1_epi32((1 << INTLSTM_LUT_STEP_BITS) - 1));
    __m256i a = _mm256_i32gather_epi32((const int *)T, i, 4);
    __m256i b = _mm256_i32gather_epi32((const int *)(T + 1), i, 4);
    __m256i d = _mm256_mullo_epi32(_mm256_sub_epi32(b, a), t);
    d = _mm256_srai_epi32(_mm256_add_epi32(d, _mm256_set1_epi32(1 << (INTLSTM_LUT_STEP_BITS - 1))), INTLSTM_LUT_STEP_BITS);
    __m256i v = _mm256_add_epi32(a, d);
    const int sh = INTLSTM_LUT_FRAC_BITS - 15;
    return clamp32(_mm256_srai_epi32(_mm256_add_epi32(v, _mm256_set1_epi32(1 << (sh - 1))), sh), -32768, 32767);
}

__attribute__((target("avx2"))) static inline __m256i gate8(const int32_t *ah, const int16_t *ax, const int32_t *m0,
                                                            const int32_t *sh) {
    const __m256i lo = _mm256_set1_epi64x(-65536), hi = _mm256_set1_epi64x(65536);
    __m256i v = rescale8(_mm256_loadu_si256((const __m256i *)ah), _mm256_loadu_si256((const __m256i *)m0),
                         shift_count(sh), lo, hi);
    v = _mm256_add_epi32(v, _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)ax)));
    return clamp32(v, -32768, 32767);
}

__attribute__((target("avx2"))) void intlstm_rescale_rows_avx2(const int32_t *acc, const int32_t *m0,
                                                               const int32_t *sh, int16_t *out, size_t rows, int G)
{
    const __m256i lo = _mm256_set1_epi64x(-32768), hi = _mm256_set1_epi64x(32767);
    const int G8 = G & ~7;
    for (size_t r = 0; r < rows; r++) {
        for (int j = 0; j < G8; j += 8) {
            __m256i v = rescale8(_mm256_loadu_si256((const __m256i *)(acc + r * G + j)),
                                 _mm256_loadu_si256((const __m256i *)(m0 + j)), shift_count(sh + j), lo, hi);
            __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(v, v), 0x08);
            _mm_storeu_si128((__m128i *)(out + r * G + j), _mm256_castsi256_si128(p));
        }
    }
    if (G8 < G) intlstm_rescale_rows_scalar_from(acc, m0, sh, out, rows, G, G8);
}

__attribute__((target("avx2"))) static void step_row(const intlstm_step_ctx *s, const int32_t *ah, const int16_t *ax,
                                                    int16_t *c, int8_t *y)
{
    const intlstm_layer *L = s->L;
    const int H = s->H, G = 4 * H, H8 = H & ~7;
    const int32_t *m0h = L->qmul + 2 * G, *shh = L->qmul + 3 * G;
    const __m128i ig_cnt = _mm_cvtsi32_si128(s->ig_shift), left_cnt = _mm_cvtsi32_si128(s->cell_left);
    const __m256i ig_rnd = _mm256_set1_epi32(s->ig_shift > 0 ? 1 << (s->ig_shift - 1) : 0);
    const __m256i hid_m0 = _mm256_set1_epi32(L->hid_m0), hid_e = _mm256_set1_epi32(31 - L->hid_shift);
    const __m256i hlo = _mm256_set1_epi64x(-(1 << 20)), hhi = _mm256_set1_epi64x(1 << 20);
    const __m256i zh = _mm256_set1_epi32(L->z_h);
    for (int j = 0; j < H8; j += 8) {
        __m256i i = lut8(L->lut_sig, gate8(ah + j, ax + j, m0h + j, shh + j));
        __m256i f = lut8(L->lut_sig, gate8(ah + H + j, ax + H + j, m0h + H + j, shh + H + j));
        __m256i g = lut8(L->lut_tanh, gate8(ah + 2 * H + j, ax + 2 * H + j, m0h + 2 * H + j, shh + 2 * H + j));
        __m256i o = lut8(L->lut_sig, gate8(ah + 3 * H + j, ax + 3 * H + j, m0h + 3 * H + j, shh + 3 * H + j));
        __m256i c32 = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(c + j)));
        /* |f c|, |i g| <= 2^30: the products fit int32 */
        __m256i fc = _mm256_srai_epi32(_mm256_add_epi32(_mm256_mullo_epi32(f, c32), _mm256_set1_epi32(1 << 14)), 15);
        __m256i ig = _mm256_sra_epi32(_mm256_add_epi32(_mm256_mullo_epi32(i, g), ig_rnd), ig_cnt);
        __m256i nc = clamp32(_mm256_add_epi32(fc, ig), -32768, 32767);
        if (L->cell_clip) nc = clamp32(nc, -L->cell_clip, L->cell_clip);
        __m256i tin = clamp32(_mm256_sll_epi32(nc, left_cnt), -32768, 32767);
        __m256i tcv = lut8(L->lut_cell, tin);
        __m256i hv = rescale8(_mm256_mullo_epi32(o, tcv), hid_m0, hid_e, hlo, hhi);
        hv = clamp32(_mm256_add_epi32(hv, zh), -128, 127);
        __m256i c16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(nc, nc), 0x08);
        _mm_storeu_si128((__m128i *)(c + j), _mm256_castsi256_si128(c16));
        __m256i h16 = _mm256_packs_epi32(hv, hv);
        __m256i h8 = _mm256_packs_epi16(h16, h16);
        int32_t lo4 = _mm256_cvtsi256_si32(h8), hi4 = _mm256_extract_epi32(h8, 4);
        memcpy(y + j, &lo4, 4);
        memcpy(y + j + 4, &hi4, 4);
    }
    if (H8 < H) intlstm_step_row_scalar_from(s, ah, ax, c, y, H8);
}

__attribute__((target("avx2"))) void intlstm_step_rows_avx2(const intlstm_step_ctx *s, const int32_t *acch,
                                                            const int16_t *gx, int16_t *c, int8_t *y, int B)
{
    intlstm_step_each_row(s, acch, gx, c, y, B, step_row);
}
#endif /* LB_X86 */
