/*
 * kconv_kernels_avx512.c -- AVX-512 row kernels of the k-bit pack (AVX-512BW) and epilogue (AVX-512F),
 * kconv.h.
 *
 * Pack: a bit plane of 64 codes is one vptestmb (mask register = the plane word); sums by vpsadbw, the
 * largest code by vpmaxub, tails by masked loads. Epilogue: 16 channels per vector, masked tails;
 * thresholds counted with compare-into-mask + masked add; codes stored by vpmovdb.
 */
#include "kconv.h"

#if LB_X86
#include <immintrin.h>

#define KCB_FN __attribute__((target("avx512f,avx512bw")))
#define KCB_INLINE static inline __attribute__((always_inline, target("avx512f,avx512bw")))
#define KCF_FN __attribute__((target("avx512f")))
#define KCF_INLINE static inline __attribute__((always_inline, target("avx512f")))

/* the sum of the 64-bit lanes of s, of which only the first `lanes` can be non-zero */
KCB_INLINE uint32_t lanes_sum(__m512i s, size_t lanes)
{
    if (lanes <= 2) {
        const __m128i t = _mm512_castsi512_si128(s);
        return (uint32_t)_mm_cvtsi128_si64(_mm_add_epi64(t, _mm_unpackhi_epi64(t, t)));
    }
    return (uint32_t)_mm512_reduce_add_epi64(s);
}

KCB_FN void kc_sum_max_avx512(const uint8_t *x, size_t len, uint32_t *sum, uint8_t *vmax)
{
    const __m512i zero = _mm512_setzero_si512();
    __m512i s = zero, m = _mm512_load_si512((const void *)vmax);
    size_t i = 0;
    for (; i + 64 <= len; i += 64) {
        const __m512i v = _mm512_loadu_si512((const void *)(x + i));
        s = _mm512_add_epi64(s, _mm512_sad_epu8(v, zero));
        m = _mm512_max_epu8(m, v);
    }
    if (i < len) {
        const __m512i v = _mm512_maskz_loadu_epi8((__mmask64)(~0ULL >> (64 - (len - i))), (const void *)(x + i));
        s = _mm512_add_epi64(s, _mm512_sad_epu8(v, zero));
        m = _mm512_max_epu8(m, v);
    }
    _mm512_store_si512((void *)vmax, m);
    *sum = lanes_sum(s, len <= 16 ? 2 : 8);
}

KCB_FN void kc_planes_avx512(const uint8_t *buf, size_t nchunks, int bits, uint64_t *d, uint32_t *sum,
                             uint8_t *vmax)
{
    const __m512i zero = _mm512_setzero_si512();
    __m512i s = zero, m = _mm512_load_si512((const void *)vmax);
    for (size_t v = 0; v < nchunks; v++) {
        const __m512i x = _mm512_loadu_si512((const void *)(buf + 64 * v));
        s = _mm512_add_epi64(s, _mm512_sad_epu8(x, zero));
        m = _mm512_max_epu8(m, x);
        uint64_t *dw = d + (v / 8) * (size_t)bits * 8 + v % 8;
        for (int p = 0; p < bits; p++)
            dw[8 * p] = (uint64_t)_mm512_test_epi8_mask(x, _mm512_set1_epi8((char)(1 << p)));
    }
    _mm512_store_si512((void *)vmax, m);
    *sum = (uint32_t)_mm512_reduce_add_epi64(s);
}

/* ---- epilogue ------------------------------------------------------------------------------------- */
KCF_INLINE __m512i v16(const kc_epi_args *e, size_t img, size_t y, size_t x, size_t cc, __mmask16 k, __m512i mul)
{
    __m512i a = _mm512_maskz_loadu_epi32(k, e->acc + ((img * e->h + y) * e->w + x) * e->ld_acc + cc);
    if (e->border)
        a = _mm512_add_epi32(_mm512_mullo_epi32(a, mul),
                             _mm512_maskz_loadu_epi32(k, e->border + (y * e->w + x) * e->ld_border + cc));
    return a;
}

KCF_FN void kc_epi_rows_avx512(const kc_epi_args *e, size_t r0, size_t r1)
{
    const size_t c = e->c;
    const __m512i mul = _mm512_set1_epi32(e->mul), one = _mm512_set1_epi32(1);
    for (size_t r = r0; r < r1; r++) {
        const size_t img = r / e->oh, oy = r % e->oh;
        size_t ylo = oy, yhi = oy + 1;
        if (e->kh)
            kc_window(oy, e->kh, e->sh, e->ph, e->h, &ylo, &yhi);
        for (size_t ox = 0; ox < e->ow; ox++) {
            size_t xlo = ox, xhi = ox + 1;
            if (e->kh)
                kc_window(ox, e->kw, e->sw, e->pw, e->w, &xlo, &xhi);
            const size_t pix = r * e->ow + ox;
            uint64_t word = 0;
            for (size_t cc = 0; cc < c; cc += 16) {
                const __mmask16 k = c - cc >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (c - cc)) - 1u);
                __m512i v;
                if (!e->kh) {
                    v = v16(e, img, oy, ox, cc, k, mul);
                } else {
                    v = _mm512_set1_epi32(INT32_MIN);
                    for (size_t y = ylo; y < yhi; y++)
                        for (size_t x = xlo; x < xhi; x++)
                            v = _mm512_max_epi32(v, v16(e, img, y, x, cc, k, mul));
                }
                if (e->flip)
                    v = _mm512_mullo_epi32(v, _mm512_maskz_loadu_epi32(k, e->sign + cc));
                if (e->out_bits) { /* one threshold: bit 1 where v < t */
                    const __mmask16 lt = _mm512_mask_cmplt_epi32_mask(k, v, _mm512_maskz_loadu_epi32(k, e->thr + cc));
                    word |= (uint64_t)lt << (cc % 64);
                    if (cc % 64 == 48 || cc + 16 >= c) {
                        ((uint64_t *)e->out)[pix * e->ld_out + cc / 64] = word;
                        word = 0;
                    }
                    continue;
                }
                __m512i cnt = _mm512_setzero_si512();
                for (int j = 0; j < e->nthr; j++) {
                    const __mmask16 ge =
                        _mm512_mask_cmpge_epi32_mask(k, v, _mm512_maskz_loadu_epi32(k, e->thr + (size_t)j * e->ld_thr + cc));
                    cnt = _mm512_mask_add_epi32(cnt, ge, cnt, one);
                }
                _mm512_mask_cvtepi32_storeu_epi8((uint8_t *)e->out + pix * e->ld_out + cc, k, cnt);
            }
        }
    }
}

#endif /* LB_X86 */
