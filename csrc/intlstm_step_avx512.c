/*
 * intlstm_step_avx512.c -- the integer LSTM's element-wise step, 16 lanes of AVX-512 (avx512 and avx512vnni
 * paths; see intlstm.h and intlstm_step_scalar.c for the arithmetic).
 *
 * Same integers as the scalar code. What AVX-512 F adds over the AVX2 version (intlstm_step_avx2.c): an
 * arithmetic right shift of 64-bit lanes by a per-lane count (vpsravq), 64-bit min/max (the clamps before
 * the return to 32-bit lanes), saturating down-conversions (vpmovsdw, vpmovsdb: the int16 cell state and the
 * int8 hidden state in one instruction each), masked loads and stores (the last, partial group of hidden
 * units runs the same code), 32 registers and twice the lanes per table gather.
 *
 * rescale: the 64-bit products of the even 32-bit lanes (vpmuldq) and of the odd ones (shuffled down), the
 * rounding shift (see rescale16), clamped to [lo, hi] (|bounds| < 2^31: the clamp of the scalar sat32
 * followed by the caller's clamp), the odd results shuffled back in.
 *
 * Needs AVX-512 F, BW and VL (16-bit and 8-bit masked loads and stores): compiled without -mavx512*, with
 * target attributes; the driver calls in only on the avx512 paths of CPUs with BW and VL (all but Knights
 * Mill, which keeps the AVX2 step).
 */
#include "intlstm.h"

#if LB_X86
#include <immintrin.h>

#define T512F "avx512f,avx512bw,avx512vl"
#define S512_INLINE static inline __attribute__((always_inline, target(T512F)))

/* 16 x clamp(rescale(x, m0, shift), lo, hi), e1 = 30 - shift = (31 - shift) - 1 per lane (0..61).
 * round(p / 2^e) (ties up) = ((p >> (e - 1)) + 1) >> 1 (arithmetic shifts): with p = q 2^(e-1) + r, both are
 * floor((q + 1) / 2). The odd lanes move to the even positions by a shuffle (port 5, not the shifts' port 0)
 * and back by a masked shuffle. */
S512_INLINE __m512i rescale16(__m512i x, __m512i m0, __m512i e1, __m512i lo, __m512i hi)
{
    const __m512i one = _mm512_set1_epi64(1), low32 = _mm512_set1_epi64(0xFFFFFFFFLL);
    const __m512i e_ev = _mm512_and_si512(e1, low32);
    const __m512i e_od = _mm512_and_si512(_mm512_shuffle_epi32(e1, _MM_PERM_CDAB), low32);
    __m512i p_ev = _mm512_mul_epi32(x, m0);
    __m512i p_od = _mm512_mul_epi32(_mm512_shuffle_epi32(x, _MM_PERM_CDAB), _mm512_shuffle_epi32(m0, _MM_PERM_CDAB));
    p_ev = _mm512_srai_epi64(_mm512_add_epi64(_mm512_srav_epi64(p_ev, e_ev), one), 1);
    p_od = _mm512_srai_epi64(_mm512_add_epi64(_mm512_srav_epi64(p_od, e_od), one), 1);
    p_ev = _mm512_min_epi64(_mm512_max_epi64(p_ev, lo), hi);
    p_od = _mm512_min_epi64(_mm512_max_epi64(p_od, lo), hi);
    return _mm512_mask_shuffle_epi32(p_ev, (__mmask16)0xAAAA, p_od, _MM_PERM_CDAB);
}

S512_INLINE __m512i clamp16(__m512i v, int lo, int hi)
{
    return _mm512_min_epi32(_mm512_max_epi32(v, _mm512_set1_epi32(lo)), _mm512_set1_epi32(hi));
}

S512_INLINE __m512i shift_count(__mmask16 m, const int32_t *sh) /* e - 1 = 30 - shift */
{
    return _mm512_sub_epi32(_mm512_set1_epi32(30), _mm512_maskz_loadu_epi32(m, sh));
}

/* 16 table lookups with the interpolation of intlstm_lut16 */
S512_INLINE __m512i lut16(const int32_t *T, __m512i x)
{
    const __m512i u = _mm512_add_epi32(x, _mm512_set1_epi32(32768));
    const __m512i i = _mm512_srli_epi32(u, INTLSTM_LUT_STEP_BITS);
    const __m512i t = _mm512_and_si512(u, _mm512_set1_epi32((1 << INTLSTM_LUT_STEP_BITS) - 1));
    const __m512i a = _mm512_i32gather_epi32(i, (const void *)T, 4);
    const __m512i b = _mm512_i32gather_epi32(i, (const void *)(T + 1), 4);
    __m512i d = _mm512_mullo_epi32(_mm512_sub_epi32(b, a), t);
    d = _mm512_srai_epi32(_mm512_add_epi32(d, _mm512_set1_epi32(1 << (INTLSTM_LUT_STEP_BITS - 1))),
                          INTLSTM_LUT_STEP_BITS);
    const int sh = INTLSTM_LUT_FRAC_BITS - 15;
    const __m512i v = _mm512_add_epi32(_mm512_add_epi32(a, d), _mm512_set1_epi32(1 << (sh - 1)));
    return clamp16(_mm512_srai_epi32(v, sh), -32768, 32767);
}

/* gate pre-activation: sat16(rescale(acc_h) + gx), 16 lanes under mask m */
S512_INLINE __m512i gate16(__mmask16 m, const int32_t *ah, const int16_t *ax, const int32_t *m0, const int32_t *sh)
{
    const __m512i lo = _mm512_set1_epi64(-65536), hi = _mm512_set1_epi64(65536);
    __m512i v = rescale16(_mm512_maskz_loadu_epi32(m, ah), _mm512_maskz_loadu_epi32(m, m0), shift_count(m, sh), lo, hi);
    v = _mm512_add_epi32(v, _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, ax)));
    return clamp16(v, -32768, 32767);
}

__attribute__((target(T512F))) void intlstm_rescale_rows_avx512(const int32_t *acc, const int32_t *m0,
                                                                const int32_t *sh, int16_t *out, size_t rows, int G)
{
    const __m512i lo = _mm512_set1_epi64(-32768), hi = _mm512_set1_epi64(32767);
    for (size_t r = 0; r < rows; r++) {
        for (int j = 0; j < G; j += 16) {
            const __mmask16 m = G - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (G - j)) - 1u);
            const __m512i v = rescale16(_mm512_maskz_loadu_epi32(m, acc + r * G + j), _mm512_maskz_loadu_epi32(m, m0 + j),
                                        shift_count(m, sh + j), lo, hi);
            _mm256_mask_storeu_epi16(out + r * G + j, m, _mm512_cvtsepi32_epi16(v));
        }
    }
}

/* one time step of one batch row */
__attribute__((target(T512F))) static void step_row(const intlstm_step_ctx *s, const int32_t *ah, const int16_t *ax, int16_t *c,
                          int8_t *y)
{
    const intlstm_layer *L = s->L;
    const int H = s->H, G = 4 * H;
    const int32_t *m0h = L->qmul + 2 * G, *shh = L->qmul + 3 * G;
    const __m128i ig_cnt = _mm_cvtsi32_si128(s->ig_shift), left_cnt = _mm_cvtsi32_si128(s->cell_left);
    const __m512i ig_rnd = _mm512_set1_epi32(s->ig_shift > 0 ? 1 << (s->ig_shift - 1) : 0);
    const __m512i hid_m0 = _mm512_set1_epi32(L->hid_m0), hid_e = _mm512_set1_epi32(30 - L->hid_shift);
    const __m512i hlo = _mm512_set1_epi64(-(1 << 20)), hhi = _mm512_set1_epi64(1 << 20);
    const __m512i zh = _mm512_set1_epi32(L->z_h), r15 = _mm512_set1_epi32(1 << 14);
    for (int j = 0; j < H; j += 16) {
        const __mmask16 m = H - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (H - j)) - 1u);
        const __m512i i = lut16(L->lut_sig, gate16(m, ah + j, ax + j, m0h + j, shh + j));
        const __m512i f = lut16(L->lut_sig, gate16(m, ah + H + j, ax + H + j, m0h + H + j, shh + H + j));
        const __m512i g = lut16(L->lut_tanh, gate16(m, ah + 2 * H + j, ax + 2 * H + j, m0h + 2 * H + j, shh + 2 * H + j));
        const __m512i o = lut16(L->lut_sig, gate16(m, ah + 3 * H + j, ax + 3 * H + j, m0h + 3 * H + j, shh + 3 * H + j));
        const __m512i c32 = _mm512_cvtepi16_epi32(_mm256_maskz_loadu_epi16(m, c + j));
        /* |f c|, |i g| <= 2^30: the products fit int32 */
        const __m512i fc = _mm512_srai_epi32(_mm512_add_epi32(_mm512_mullo_epi32(f, c32), r15), 15);
        const __m512i ig = _mm512_sra_epi32(_mm512_add_epi32(_mm512_mullo_epi32(i, g), ig_rnd), ig_cnt);
        __m512i nc = clamp16(_mm512_add_epi32(fc, ig), -32768, 32767);
        if (L->cell_clip) nc = clamp16(nc, -L->cell_clip, L->cell_clip);
        const __m512i tin = clamp16(_mm512_sll_epi32(nc, left_cnt), -32768, 32767);
        const __m512i tcv = lut16(L->lut_cell, tin);
        const __m512i hv = _mm512_add_epi32(rescale16(_mm512_mullo_epi32(o, tcv), hid_m0, hid_e, hlo, hhi), zh);
        _mm256_mask_storeu_epi16(c + j, m, _mm512_cvtsepi32_epi16(nc));
        _mm_mask_storeu_epi8(y + j, m, _mm512_cvtsepi32_epi8(hv)); /* saturating: the int8 clamp */
    }
}

__attribute__((target(T512F))) void intlstm_step_rows_avx512(const intlstm_step_ctx *s, const int32_t *acch,
                                                             const int16_t *gx, int16_t *c, int8_t *y, int B)
{
    intlstm_step_each_row(s, acch, gx, c, y, B, step_row);
}
#endif /* LB_X86 */
