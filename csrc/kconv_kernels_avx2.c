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

/* bytes v into the running sums s (vpsadbw) and byte-wise max m of a row finisher */
KC2_INLINE void sum_max_step(__m256i v, __m256i *s, __m256i *m)
{
    *s = _mm256_add_epi64(*s, _mm256_sad_epu8(v, _mm256_setzero_si256()));
    *m = _mm256_max_epu8(*m, v);
}

KC2_FN void kc_sum_max_avx2(const uint8_t *x, size_t len, uint32_t *sum, uint8_t *vmax)
{
    __m256i s = _mm256_setzero_si256(), m = _mm256_load_si256((const __m256i *)vmax);
    size_t i = 0;
    for (; i + 32 <= len; i += 32)
        sum_max_step(_mm256_loadu_si256((const __m256i *)(x + i)), &s, &m);
    if (i + 16 <= len) { /* a 16-byte step, then bytes */
        sum_max_step(_mm256_zextsi128_si256(_mm_loadu_si128((const __m128i *)(x + i))), &s, &m);
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

/* locals for every field the loops read: the uint8 stores alias everything (see the AVX-512 kernel) */
KC2_FN void kc_epi_rows_avx2(const kc_epi_args *e, size_t r0, size_t r1)
{
    const kc_epi_args a = *e;
    const size_t c = e->c, w = e->w;
    const size_t ld_acc = e->ld_acc, ld_border = e->ld_border, ld_thr = e->ld_thr, ld_out = e->ld_out;
    const int32_t *const thr = e->thr, *const sign = e->sign;
    const int pool = e->kh != 0, has_border = e->border != NULL, nthr = e->nthr;
    const int flip = e->flip, out_bits = e->out_bits;
    uint8_t *const out8 = (uint8_t *)e->out;
    uint64_t *const out64 = (uint64_t *)e->out;
    float *const outf = (float *)e->out;
    const float *const scale = e->scale, *const bias = e->bias;
    const int out_float = e->out_float;
    const __m256i mul = _mm256_set1_epi32(e->mul), vnthr = _mm256_set1_epi32(nthr);
    const __m256i lowest = _mm256_set1_epi32(INT32_MIN);
    for (kc_epi_walk px = kc_epi_start(&a, r0, r1, pool, has_border); px.pix < px.end;
         kc_epi_next(&a, &px, pool, has_border)) {
            const size_t pix = px.pix;
            const int32_t *a0 = px.a0, *b0 = px.b0;
            uint64_t word = 0;
            for (size_t cc = 0; cc < c; cc += 8) {
                const int full = c - cc >= 8;
                const __m256i mask = tail_mask(c - cc);
                __m256i v;
                if (!pool) {
                    v = load8(a0 + cc, full, mask);
                    if (b0)
                        v = _mm256_add_epi32(_mm256_mullo_epi32(v, mul), load8(b0 + cc, full, mask));
                } else {
                    v = lowest;
                    for (size_t y = 0; y < px.ny; y++) {
                        const int32_t *ay = a0 + y * w * ld_acc;
                        const int32_t *by = b0 ? b0 + y * w * ld_border : NULL;
                        for (size_t x = 0; x < px.nx; x++) {
                            __m256i t = load8(ay + x * ld_acc + cc, full, mask);
                            if (by)
                                t = _mm256_add_epi32(_mm256_mullo_epi32(t, mul), load8(by + x * ld_border + cc, full, mask));
                            v = _mm256_max_epi32(v, t);
                        }
                    }
                }
                if (out_float) { /* float out: product then sum, two roundings as NumPy's */
                    const __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_castsi256_ps(load8((const int32_t *)scale + cc, full, mask)));
                    const __m256 y = _mm256_add_ps(f, _mm256_castsi256_ps(load8((const int32_t *)bias + cc, full, mask)));
                    if (full)
                        _mm256_storeu_ps(outf + pix * ld_out + cc, y);
                    else
                        _mm256_maskstore_ps(outf + pix * ld_out + cc, mask, y);
                    continue;
                }
                if (flip)
                    v = _mm256_sign_epi32(v, load8(sign + cc, full, mask));
                if (out_bits) { /* one threshold: bit 1 where v < t */
                    const __m256i lt = _mm256_cmpgt_epi32(load8(thr + cc, full, mask), v);
                    kc_put_bits(out64 + pix * ld_out, &word, (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(lt)), cc, 8, c);
                    continue;
                }
                /* v >= t counted as nthr + sum(t > v) (vpcmpgtd gives -1), in two independent sums */
                __m256i n0 = vnthr, n1 = _mm256_setzero_si256();
                const int32_t *t = thr + cc;
                int j = 0;
                for (; j + 2 <= nthr; j += 2, t += 2 * ld_thr) {
                    n0 = _mm256_add_epi32(n0, _mm256_cmpgt_epi32(load8(t, full, mask), v));
                    n1 = _mm256_add_epi32(n1, _mm256_cmpgt_epi32(load8(t + ld_thr, full, mask), v));
                }
                if (j < nthr)
                    n0 = _mm256_add_epi32(n0, _mm256_cmpgt_epi32(load8(t, full, mask), v));
                const __m256i cnt = _mm256_add_epi32(n0, n1);
                const __m256i p16 = _mm256_packus_epi32(cnt, cnt);
                const __m256i p8 = _mm256_packus_epi16(p16, p16);
                const uint64_t bytes = (uint64_t)(uint32_t)_mm256_cvtsi256_si32(p8) |
                                       ((uint64_t)(uint32_t)_mm256_extract_epi32(p8, 4) << 32);
                memcpy(out8 + pix * ld_out + cc, &bytes, full ? 8 : c - cc);
            }
    }
}

/* ---- float32 thresholds ---------------------------------------------------------------------------- */
KC2_FN void kc_fthr_rows_avx2(const kc_fthr_args *f, size_t r0, size_t r1)
{
    const kc_fthr_args a = *f; /* a local copy: the uint8 stores alias everything */
    const size_t c = a.c, words = (c + 63) / 64;
    for (size_t r = r0; r < r1; r++) {
        const float *x = a.x + r * a.ld_x;
        uint64_t word = 0;
        for (size_t cc = 0; cc < c; cc += 8) {
            const int full = c - cc >= 8;
            const __m256i mask = tail_mask(c - cc);
            __m256 v = _mm256_castsi256_ps(load8((const int32_t *)x + cc, full, mask));
            if (a.sign)
                v = _mm256_mul_ps(v, _mm256_castsi256_ps(load8((const int32_t *)a.sign + cc, full, mask)));
            if (a.out_bits) { /* bit 1 where not v >= t (NaN included); lanes past c are 0 */
                const __m256 ge = _mm256_cmp_ps(v, _mm256_castsi256_ps(load8((const int32_t *)a.thr + cc, full, mask)),
                                                _CMP_GE_OQ);
                const unsigned lanes = (unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(mask));
                kc_put_bits((uint64_t *)a.out + r * words, &word, ~(unsigned)_mm256_movemask_ps(ge) & lanes, cc, 8, c);
                continue;
            }
            __m256i n0 = _mm256_setzero_si256();
            for (int j = 0; j < a.nthr; j++) {
                const __m256 t = _mm256_castsi256_ps(load8((const int32_t *)a.thr + (size_t)j * c + cc, full, mask));
                n0 = _mm256_sub_epi32(n0, _mm256_castps_si256(_mm256_cmp_ps(v, t, _CMP_GE_OQ)));
            }
            const __m256i p16 = _mm256_packus_epi32(n0, n0);
            const __m256i p8 = _mm256_packus_epi16(p16, p16);
            const uint64_t bytes = (uint64_t)(uint32_t)_mm256_cvtsi256_si32(p8) |
                                   ((uint64_t)(uint32_t)_mm256_extract_epi32(p8, 4) << 32);
            memcpy((uint8_t *)a.out + r * c + cc, &bytes, full ? 8 : c - cc);
        }
    }
}

/* ---- float32 conv tile (kconv_float.c): R pixels x 2 vectors of 8 channels (12 accumulators) per pass,
 * one pass per 16 channels of the panel ---- */
#define KCF2_INLINE static inline __attribute__((always_inline, target("avx2,fma")))

KCF2_INLINE void ftile16(const kc_ftile_args *t, const float *a, const float *panel, float *out, const int R,
                         const int NB, const __m256i last)
{
    __m256 acc[KC_FTILE_ROWS][2];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 2
        for (int v = 0; v < NB; v++)
            acc[r][v] = _mm256_setzero_ps();
    const int kwc = t->kwc;
    const ptrdiff_t as = t->as;
    for (int ky = 0; ky < t->kh; ky++) {
        const float *ar = a + ky * t->arow, *w = panel + (size_t)ky * kwc * KC_FPANEL;
        for (int i = 0; i < kwc; i++, w += KC_FPANEL) {
            __m256 b[2];
#pragma GCC unroll 2
            for (int v = 0; v < NB; v++)
                b[v] = _mm256_loadu_ps(w + 8 * v);
#pragma GCC unroll 6
            for (int r = 0; r < R; r++) {
                const __m256 x = _mm256_broadcast_ss(ar + r * as + i);
#pragma GCC unroll 2
                for (int v = 0; v < NB; v++)
                    acc[r][v] = _mm256_fmadd_ps(x, b[v], acc[r][v]);
            }
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
        if (NB == 2)
            _mm256_storeu_ps(out + r * t->ldo, acc[r][0]);
        _mm256_maskstore_ps(out + r * t->ldo + 8 * (NB - 1), last, acc[r][NB - 1]);
    }
}

__attribute__((target("avx2,fma"))) void kc_ftile_avx2(const kc_ftile_args *t, const float *a, const float *panel,
                                                       float *out, int rows, int cols)
{
    for (int j0 = 0; j0 < cols; j0 += 16, panel += 16, out += 16) {
        const int left = cols - j0 < 16 ? cols - j0 : 16, nb = (left + 7) / 8, tail = left - 8 * (nb - 1);
        const __m256i last = _mm256_cmpgt_epi32(_mm256_set1_epi32(tail), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
#define FT_CASE(R, NB)                                                                                            \
    case (R) * 2 + (NB) - 1:                                                                                      \
        ftile16(t, a, panel, out, R, NB, last);                                                                   \
        break;
#define FT_ROW(R) FT_CASE(R, 1) FT_CASE(R, 2)
        switch (rows * 2 + nb - 1) {
            FT_ROW(1) FT_ROW(2) FT_ROW(3) FT_ROW(4) FT_ROW(5) FT_ROW(6)
        default:
            kc_ftile_scalar(t, a, panel, out, rows, left); /* not reached: rows <= 6 */
        }
#undef FT_ROW
#undef FT_CASE
    }
}

/* ---- table lookup of a decode (kconv.h, kc_lookup_k): 8 codes a step; vpermps from the table's first 8
 * entries while every code of the step is below 8, a gather otherwise; the tail in scalar code ---- */
KC2_FN unsigned kc_lookup_avx2(const float *x, const uint8_t *q, const float *table, size_t n, float *v)
{
    const __m256 t8 = _mm256_loadu_ps(table);
    const __m256i seven = _mm256_set1_epi32(7);
    __m256i vmax = _mm256_setzero_si256();
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256i idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(q + i)));
        vmax = _mm256_max_epu32(vmax, idx);
        __m256 t = _mm256_movemask_epi8(_mm256_cmpgt_epi32(idx, seven)) ? _mm256_i32gather_ps(table, idx, 4)
                                                                          : _mm256_permutevar8x32_ps(t8, idx);
        if (x)
            t = _mm256_add_ps(_mm256_loadu_ps(x + i), t);
        _mm256_storeu_ps(v + i, t);
    }
    _Alignas(32) uint32_t lanes[8];
    _mm256_store_si256((__m256i *)lanes, vmax);
    unsigned m = 0;
    for (int l = 0; l < 8; l++)
        m = lanes[l] > m ? lanes[l] : m;
    const unsigned mt = kc_lookup_scalar(x ? x + i : NULL, q + i, table, n - i, v + i);
    return mt > m ? mt : m;
}

#endif /* LB_X86 */
