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
#include <string.h>

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

/* bytes v into the running sums s (vpsadbw) and byte-wise max m of a row finisher */
KCB_INLINE void sum_max_step(__m512i v, __m512i *s, __m512i *m)
{
    *s = _mm512_add_epi64(*s, _mm512_sad_epu8(v, _mm512_setzero_si512()));
    *m = _mm512_max_epu8(*m, v);
}

KCB_FN void kc_sum_max_avx512(const uint8_t *x, size_t len, uint32_t *sum, uint8_t *vmax)
{
    __m512i s = _mm512_setzero_si512(), m = _mm512_load_si512((const void *)vmax);
    size_t i;
    for (i = 0; i + 64 <= len; i += 64)
        sum_max_step(_mm512_loadu_si512((const void *)(x + i)), &s, &m);
    if (i < len) /* the tail by a masked load */
        sum_max_step(_mm512_maskz_loadu_epi8((__mmask64)(~0ULL >> (64 - (len - i))), (const void *)(x + i)), &s, &m);
    _mm512_store_si512((void *)vmax, m);
    *sum = lanes_sum(s, len <= 16 ? 2 : 8);
}

KCB_FN void kc_planes_avx512(const uint8_t *buf, size_t nchunks, int bits, uint64_t *d, uint32_t *sum,
                             uint8_t *vmax)
{
    __m512i s = _mm512_setzero_si512(), m = _mm512_load_si512((const void *)vmax);
    for (size_t v = 0; v < nchunks; v++) {
        const __m512i x = _mm512_loadu_si512((const void *)(buf + 64 * v));
        sum_max_step(x, &s, &m);
        uint64_t *dw = d + (v / 8) * (size_t)bits * 8 + v % 8;
        for (int p = 0; p < bits; p++)
            dw[8 * p] = (uint64_t)_mm512_test_epi8_mask(x, _mm512_set1_epi8((char)(1 << p)));
    }
    _mm512_store_si512((void *)vmax, m);
    *sum = (uint32_t)_mm512_reduce_add_epi64(s);
}

/* ---- epilogue ------------------------------------------------------------------------------------- */
/* Every field the loops read is copied into a local first: the uint8 stores alias everything, and with
 * e->... operands the compiler reloaded (and re-multiplied) the strides after each store. The body is
 * specialized (always_inline with constant arguments) for pooling, a border, and 1 or 3 thresholds (binary
 * and 2-bit outputs; NT = 0: any count). */
KCF_INLINE void epi_rows(const kc_epi_args *e, size_t r0, size_t r1, const int POOL, const int BORDER, const int NT)
{
    const kc_epi_args a = *e;
    const size_t c = e->c, w = e->w;
    const size_t ld_acc = e->ld_acc, ld_border = e->ld_border, ld_thr = e->ld_thr, ld_out = e->ld_out;
    const int32_t *const thr = e->thr, *const sign = e->sign;
    const int nthr = NT > 0 ? NT : e->nthr;
    const int flip = e->flip, out_bits = e->out_bits;
    uint8_t *const out8 = (uint8_t *)e->out;
    uint64_t *const out64 = (uint64_t *)e->out;
    float *const outf = (float *)e->out;
    const float *const scale = e->scale, *const bias = e->bias;
    const __m512i mul = _mm512_set1_epi32(e->mul), one = _mm512_set1_epi32(1);
    const __m512i lowest = _mm512_set1_epi32(INT32_MIN);
    for (kc_epi_walk px = kc_epi_start(&a, r0, r1, POOL, BORDER); px.pix < px.end; kc_epi_next(&a, &px, POOL, BORDER)) {
            const size_t pix = px.pix;
            const int32_t *a0 = px.a0, *b0 = px.b0;
            uint64_t word = 0;
            for (size_t cc = 0; cc < c; cc += 16) {
                const __mmask16 k = c - cc >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (c - cc)) - 1u);
                __m512i v;
                if (!POOL) {
                    v = _mm512_maskz_loadu_epi32(k, a0 + cc);
                    if (BORDER)
                        v = _mm512_add_epi32(_mm512_mullo_epi32(v, mul), _mm512_maskz_loadu_epi32(k, b0 + cc));
                } else {
                    v = lowest;
                    for (size_t y = 0; y < px.ny; y++) {
                        const int32_t *ay = a0 + y * w * ld_acc + cc;
                        const int32_t *by = BORDER ? b0 + y * w * ld_border + cc : NULL;
                        for (size_t x = 0; x < px.nx; x++) {
                            __m512i t = _mm512_maskz_loadu_epi32(k, ay + x * ld_acc);
                            if (BORDER)
                                t = _mm512_add_epi32(_mm512_mullo_epi32(t, mul),
                                                     _mm512_maskz_loadu_epi32(k, by + x * ld_border));
                            v = _mm512_max_epi32(v, t);
                        }
                    }
                }
                if (NT < 0) { /* float out: product then sum, two roundings as NumPy's */
                    const __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), _mm512_maskz_loadu_ps(k, scale + cc));
                    _mm512_mask_storeu_ps(outf + pix * ld_out + cc, k, _mm512_add_ps(f, _mm512_maskz_loadu_ps(k, bias + cc)));
                    continue;
                }
                if (flip)
                    v = _mm512_mullo_epi32(v, _mm512_maskz_loadu_epi32(k, sign + cc));
                if (NT == 1 && out_bits) { /* one threshold: bit 1 where v < t */
                    const __mmask16 lt = _mm512_mask_cmplt_epi32_mask(k, v, _mm512_maskz_loadu_epi32(k, thr + cc));
                    kc_put_bits(out64 + pix * ld_out, &word, lt, cc, 16, c);
                    continue;
                }
                /* two counters: the masked adds of consecutive thresholds do not wait for each other */
                __m512i n0 = _mm512_setzero_si512(), n1 = n0;
                const int32_t *t = thr + cc;
                int j = 0;
                for (; j + 2 <= nthr; j += 2, t += 2 * ld_thr) {
                    n0 = _mm512_mask_add_epi32(n0, _mm512_cmpge_epi32_mask(v, _mm512_maskz_loadu_epi32(k, t)), n0, one);
                    n1 = _mm512_mask_add_epi32(n1, _mm512_cmpge_epi32_mask(v, _mm512_maskz_loadu_epi32(k, t + ld_thr)),
                                               n1, one);
                }
                if (j < nthr)
                    n0 = _mm512_mask_add_epi32(n0, _mm512_cmpge_epi32_mask(v, _mm512_maskz_loadu_epi32(k, t)), n0, one);
                _mm512_mask_cvtepi32_storeu_epi8(out8 + pix * ld_out + cc, k, _mm512_add_epi32(n0, n1));
            }
    }
}

#define KC_EPI_CASE(P, B, N)                                                                               \
    case (P)*6 + (B)*3 + ((N) == 3 ? 2 : (N)): epi_rows(e, r0, r1, P, B, N); return;

KCF_FN void kc_epi_rows_avx512(const kc_epi_args *e, size_t r0, size_t r1)
{
    const int p = e->kh != 0, b = e->border != NULL;
    if (e->out_float) {
        if (p)
            b ? epi_rows(e, r0, r1, 1, 1, -1) : epi_rows(e, r0, r1, 1, 0, -1);
        else
            b ? epi_rows(e, r0, r1, 0, 1, -1) : epi_rows(e, r0, r1, 0, 0, -1);
        return;
    }
    /* codes with 1 threshold and bits share the NT = 1 body (out_bits is tested inside it) */
    const int n = e->nthr == 1 ? 1 : (e->nthr == 3 && !e->out_bits) ? 2 : 0;
    switch (p * 6 + b * 3 + n) {
    KC_EPI_CASE(0, 0, 0) KC_EPI_CASE(0, 0, 1) KC_EPI_CASE(0, 0, 3)
    KC_EPI_CASE(0, 1, 0) KC_EPI_CASE(0, 1, 1) KC_EPI_CASE(0, 1, 3)
    KC_EPI_CASE(1, 0, 0) KC_EPI_CASE(1, 0, 1) KC_EPI_CASE(1, 0, 3)
    KC_EPI_CASE(1, 1, 0) KC_EPI_CASE(1, 1, 1) KC_EPI_CASE(1, 1, 3)
    default: return;
    }
}

/* ---- float32 thresholds ---------------------------------------------------------------------------- */
KCF_FN void kc_fthr_rows_avx512(const kc_fthr_args *f, size_t r0, size_t r1)
{
    const kc_fthr_args a = *f; /* a local copy: the uint8 stores alias everything */
    const size_t c = a.c, words = (c + 63) / 64;
    const __m512i one = _mm512_set1_epi32(1);
    for (size_t r = r0; r < r1; r++) {
        const float *x = a.x + r * a.ld_x;
        uint64_t word = 0;
        for (size_t cc = 0; cc < c; cc += 16) {
            const __mmask16 k = c - cc >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (c - cc)) - 1u);
            __m512 v = _mm512_maskz_loadu_ps(k, x + cc);
            if (a.sign)
                v = _mm512_mul_ps(v, _mm512_maskz_loadu_ps(k, a.sign + cc));
            if (a.out_bits) { /* bit 1 where not v >= t (NaN included) */
                const __mmask16 ge = _mm512_mask_cmp_ps_mask(k, v, _mm512_maskz_loadu_ps(k, a.thr + cc), _CMP_GE_OQ);
                kc_put_bits((uint64_t *)a.out + r * words, &word, (__mmask16)(~ge & k), cc, 16, c);
                continue;
            }
            __m512i n0 = _mm512_setzero_si512();
            for (int j = 0; j < a.nthr; j++)
                n0 = _mm512_mask_add_epi32(
                    n0, _mm512_cmp_ps_mask(v, _mm512_maskz_loadu_ps(k, a.thr + (size_t)j * c + cc), _CMP_GE_OQ), n0, one);
            _mm512_mask_cvtepi32_storeu_epi8((uint8_t *)a.out + r * c + cc, k, n0);
        }
    }
}

/* ---- float32 conv tile (kconv_float.c): R pixels x NB vectors of 16 channels, 6 x 4 = 24 accumulators ---- */
KCF_INLINE void ftile(const kc_ftile_args *t, const float *a, const float *panel, float *out, const int R,
                      const int NB, const __mmask16 last)
{
    __m512 acc[KC_FTILE_ROWS][4];
#pragma GCC unroll 6
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int v = 0; v < NB; v++)
            acc[r][v] = _mm512_setzero_ps();
    const int kwc = t->kwc;
    const ptrdiff_t as = t->as;
    for (int ky = 0; ky < t->kh; ky++) {
        const float *ar = a + ky * t->arow, *w = panel + (size_t)ky * kwc * KC_FPANEL;
        for (int i = 0; i < kwc; i++, w += KC_FPANEL) {
            __m512 b[4];
#pragma GCC unroll 4
            for (int v = 0; v < NB; v++)
                b[v] = _mm512_loadu_ps(w + 16 * v);
#pragma GCC unroll 6
            for (int r = 0; r < R; r++) {
                const __m512 x = _mm512_set1_ps(ar[r * as + i]); /* folds into the FMA as {1to16} */
#pragma GCC unroll 4
                for (int v = 0; v < NB; v++)
                    acc[r][v] = _mm512_fmadd_ps(x, b[v], acc[r][v]);
            }
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < R; r++) {
#pragma GCC unroll 4
        for (int v = 0; v < NB - 1; v++)
            _mm512_storeu_ps(out + r * t->ldo + 16 * v, acc[r][v]);
        _mm512_mask_storeu_ps(out + r * t->ldo + 16 * (NB - 1), last, acc[r][NB - 1]);
    }
}

KCF_FN void kc_ftile_avx512(const kc_ftile_args *t, const float *a, const float *panel, float *out, int rows, int cols)
{
    const int nb = (cols + 15) / 16;
    const __mmask16 last = (__mmask16)(0xFFFFu >> (nb * 16 - cols));
#define FT_CASE(R, NB)                                                                                            \
    case (R) * 4 + (NB) - 1:                                                                                      \
        ftile(t, a, panel, out, R, NB, last);                                                                     \
        return;
#define FT_ROW(R) FT_CASE(R, 1) FT_CASE(R, 2) FT_CASE(R, 3) FT_CASE(R, 4)
    switch (rows * 4 + nb - 1) {
        FT_ROW(1) FT_ROW(2) FT_ROW(3) FT_ROW(4) FT_ROW(5) FT_ROW(6)
    default:
        kc_ftile_scalar(t, a, panel, out, rows, cols); /* not reached: rows <= 6, cols <= 64 */
    }
#undef FT_ROW
#undef FT_CASE
}

/* ---- table lookup of a decode (kconv.h, kc_lookup_k): 16 codes a step; vpermps from the table's first 16
 * entries while every code of the step is below 16 (2-4-bit codes), a gather otherwise ---- */
KCF_FN unsigned kc_lookup_avx512(const float *x, const uint8_t *q, const float *table, size_t n, float *v)
{
    const __m512 t16 = _mm512_loadu_ps(table);
    const __m512i sixteen = _mm512_set1_epi32(16);
    __m512i vmax = _mm512_setzero_si512();
    for (size_t i = 0; i < n; i += 16) {
        const __mmask16 live = n - i >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - i)) - 1);
        __m128i bytes;
        if (n - i >= 16) {
            bytes = _mm_loadu_si128((const __m128i *)(q + i));
        } else { /* the tail: no byte-masked load in AVX-512F */
            _Alignas(16) uint8_t tail[16] = {0};
            memcpy(tail, q + i, n - i);
            bytes = _mm_load_si128((const __m128i *)tail);
        }
        const __m512i idx = _mm512_cvtepu8_epi32(bytes);
        vmax = _mm512_max_epu32(vmax, idx);
        __m512 t = _mm512_cmpge_epu32_mask(idx, sixteen) ? _mm512_i32gather_ps(idx, table, 4)
                                                          : _mm512_permutexvar_ps(idx, t16);
        if (x)
            t = _mm512_add_ps(_mm512_maskz_loadu_ps(live, x + i), t);
        _mm512_mask_storeu_ps(v + i, live, t);
    }
    return (unsigned)_mm512_reduce_max_epu32(vmax);
}

#endif /* LB_X86 */
