/*
 * kconv_kernels_avx2.c -- AVX2 row kernels of the k-bit pack and epilogue (kconv.h).
 *
 * Pack: sums by vpsadbw, the largest code by vpmaxub; a bit plane of 32 codes is one vpsllw (bit p of
 * every byte to its top bit) + vpmovmskb. Epilogue: 8 channels per vector; v >= t is counted as
 * nthr + sum(t > v) (vpcmpgtd gives -1), the sign applied by vpsignd (wraps like the int32 product).
 */
#include "kconv.h"

#if LB_X86
#include <immintrin.h>
#include <string.h>

#define KC2_FN __attribute__((target("avx2")))
#define KC2_INLINE static inline __attribute__((always_inline, target("avx2")))

KC2_INLINE uint32_t hsum64(__m256i s)
{
    const __m128i t = _mm_add_epi64(_mm256_castsi256_si128(s), _mm256_extracti128_si256(s, 1));
    return (uint32_t)((uint64_t)_mm_cvtsi128_si64(t) + (uint64_t)_mm_extract_epi64(t, 1));
}

KC2_FN void kc_sum_max_avx2(const uint8_t *x, size_t len, uint32_t *sum, uint8_t *vmax)
{
    const __m256i zero = _mm256_setzero_si256();
    __m256i s = zero, m = _mm256_load_si256((const __m256i *)vmax);
    size_t i = 0;
    for (; i + 32 <= len; i += 32) {
        const __m256i v = _mm256_loadu_si256((const __m256i *)(x + i));
        s = _mm256_add_epi64(s, _mm256_sad_epu8(v, zero));
        m = _mm256_max_epu8(m, v);
    }
    if (i + 16 <= len) {
        const __m256i v = _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(x + i)));
        s = _mm256_add_epi64(s, _mm256_sad_epu8(v, zero));
        m = _mm256_max_epu8(m, v);
        i += 16;
    }
    uint32_t total = hsum64(s);
    unsigned best = 0;
    for (; i < len; i++) {
        total += x[i];
        best = x[i] > best ? x[i] : best;
    }
    _mm256_store_si256((__m256i *)vmax, _mm256_max_epu8(m, _mm256_set1_epi8((char)best)));
    *sum = total;
}

KC2_FN void kc_planes_avx2(const uint8_t *buf, size_t nchunks, int bits, uint64_t *d, uint32_t *sum, uint8_t *vmax)
{
    const __m256i zero = _mm256_setzero_si256();
    __m256i s = zero, m = _mm256_load_si256((const __m256i *)vmax);
    for (size_t v = 0; v < nchunks; v++) {
        const __m256i lo = _mm256_loadu_si256((const __m256i *)(buf + 64 * v));
        const __m256i hi = _mm256_loadu_si256((const __m256i *)(buf + 64 * v + 32));
        s = _mm256_add_epi64(s, _mm256_add_epi64(_mm256_sad_epu8(lo, zero), _mm256_sad_epu8(hi, zero)));
        m = _mm256_max_epu8(m, _mm256_max_epu8(lo, hi));
        uint64_t *dw = d + (v / 8) * (size_t)bits * 8 + v % 8;
        for (int p = 0; p < bits; p++) {
            const __m128i sh = _mm_cvtsi32_si128(7 - p);
            const uint32_t a = (uint32_t)_mm256_movemask_epi8(_mm256_sll_epi16(lo, sh));
            const uint32_t b = (uint32_t)_mm256_movemask_epi8(_mm256_sll_epi16(hi, sh));
            dw[8 * p] = (uint64_t)a | ((uint64_t)b << 32);
        }
    }
    _mm256_store_si256((__m256i *)vmax, m);
    *sum = hsum64(s);
}

/* ---- epilogue ------------------------------------------------------------------------------------- */
KC2_INLINE __m256i tail_mask(size_t rem)
{
    const __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(rem > 8 ? 8 : rem)), idx);
}

KC2_INLINE __m256i load8(const int32_t *p, int full, __m256i mask)
{
    return full ? _mm256_loadu_si256((const __m256i *)p) : _mm256_maskload_epi32((const int *)p, mask);
}

/* v of 8 channels from cc at (img, y, x) */
KC2_INLINE __m256i v8(const kc_epi_args *e, size_t img, size_t y, size_t x, size_t cc, int full, __m256i mask,
                      __m256i mul)
{
    __m256i a = load8(e->acc + ((img * e->h + y) * e->w + x) * e->ld_acc + cc, full, mask);
    if (e->border)
        a = _mm256_add_epi32(_mm256_mullo_epi32(a, mul),
                             load8(e->border + (y * e->w + x) * e->ld_border + cc, full, mask));
    return a;
}

KC2_FN void kc_epi_rows_avx2(const kc_epi_args *e, size_t r0, size_t r1)
{
    const size_t c = e->c;
    const __m256i mul = _mm256_set1_epi32(e->mul), nthr = _mm256_set1_epi32(e->nthr);
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
            for (size_t cc = 0; cc < c; cc += 8) {
                const int full = c - cc >= 8;
                const __m256i mask = tail_mask(c - cc);
                __m256i v;
                if (!e->kh) {
                    v = v8(e, img, oy, ox, cc, full, mask, mul);
                } else {
                    v = _mm256_set1_epi32(INT32_MIN);
                    for (size_t y = ylo; y < yhi; y++)
                        for (size_t x = xlo; x < xhi; x++)
                            v = _mm256_max_epi32(v, v8(e, img, y, x, cc, full, mask, mul));
                }
                if (e->flip)
                    v = _mm256_sign_epi32(v, load8(e->sign + cc, full, mask));
                if (e->out_bits) { /* one threshold: bit 1 where v < t */
                    const __m256i lt = _mm256_cmpgt_epi32(load8(e->thr + cc, full, mask), v);
                    word |= (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(lt)) << (cc % 64);
                    if (cc % 64 == 56 || cc + 8 >= c) {
                        ((uint64_t *)e->out)[pix * e->ld_out + cc / 64] = word;
                        word = 0;
                    }
                    continue;
                }
                __m256i cnt = nthr;
                for (int j = 0; j < e->nthr; j++)
                    cnt = _mm256_add_epi32(cnt, _mm256_cmpgt_epi32(load8(e->thr + (size_t)j * e->ld_thr + cc, full, mask), v));
                const __m256i p16 = _mm256_packus_epi32(cnt, cnt);
                const __m256i p8 = _mm256_packus_epi16(p16, p16);
                const uint64_t bytes = (uint64_t)(uint32_t)_mm256_cvtsi256_si32(p8) |
                                       ((uint64_t)(uint32_t)_mm256_extract_epi32(p8, 4) << 32);
                uint8_t *o = (uint8_t *)e->out + pix * e->ld_out + cc;
                if (full)
                    memcpy(o, &bytes, 8);
                else
                    memcpy(o, &bytes, c - cc);
            }
        }
    }
}

#endif /* LB_X86 */
