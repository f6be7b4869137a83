/*
 * qgemm_kernels_avx2.c -- AVX2 k-bit kernels: bit-serial with the vpshufb nibble popcount, int8 with
 * vpmaddubsw + vpmaddwd.
 *
 * Bit-serial: per 256 bits of a plane pair, vpand, then the popcount of each byte by Mula's nibble
 * lookup (vpsrlw, 2 vpand, 2 vpshufb) added into a byte counter -- one counter per output and weight
 * class c = p + q, so the weights 2^c cost nothing per step. A class holds at most min(KA, KB) pairs,
 * +8 each per step, so the byte counters are widened (vpsadbw into 64-bit lanes) every
 * 255 / (8 min(KA, KB)) steps.
 *
 * int8: vpmaddubsw multiplies u8 (A codes) x s8 (B) and adds adjacent pairs into int16 *with
 * saturation*; vpmaddwd against ones then adds pairs into int32. That is exact while
 * 2 * max(A) * max|B| <= 32767, true for every pair of level sets except 8-bit codes against B values
 * beyond +-64 (u8 x s8 / u8 x u7 ...). Those take the "wide" step: A's codes split into the low 7 bits
 * and the top bit, two vpmaddubsw (each exact), the top-bit half weighted by 128 in its vpmaddwd.
 * 2-/4-bit B codes are decoded in registers as in the AVX-512 kernel.
 */
#include "qgemm.h"

#if BG_X86
#include <immintrin.h>

#define QG2_FN __attribute__((target("avx2")))
#define QG2_INLINE static inline __attribute__((always_inline, target("avx2")))

/* ---- bit-serial ------------------------------------------------------------------------------- */
QG2_INLINE __m256i popcnt_bytes(__m256i x, __m256i lut, __m256i m4)
{
    const __m256i lo = _mm256_and_si256(x, m4), hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), m4);
    return _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
}

QG2_INLINE void bits_tile2(const int KA, const int KB, const int MR, const int NR, const uint64_t *const ap[],
                           const uint64_t *const bp[], size_t nv, int32_t *c, ptrdiff_t ldc, int mr, int nr)
{
    enum { CL_MAX = 7 };
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                         2, 2, 3, 2, 3, 3, 4);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const int minab = KA < KB ? KA : KB;
    const size_t flush = (size_t)(255 / (8 * minab)); /* 256-bit steps per byte-counter run */
    __m256i wide[2][2][CL_MAX];
    QG_TILE_LOOP(MR, NR, i, j) QG_CLASS_LOOP(KA, KB, cl, 0) wide[i][j][cl] = _mm256_setzero_si256();
    const size_t nsteps = 2 * nv; /* 256-bit halves of the 512-bit slices */
    for (size_t s0 = 0; s0 < nsteps; s0 += flush) {
        const size_t s1 = (nsteps - s0 > flush) ? s0 + flush : nsteps;
        __m256i cnt[2][2][CL_MAX];
        QG_TILE_LOOP(MR, NR, i, j) QG_CLASS_LOOP(KA, KB, cl, 0) cnt[i][j][cl] = _mm256_setzero_si256();
        for (size_t s = s0; s < s1; s++) {
            const size_t v = s / 2, half = (s % 2) * 4;
#pragma GCC unroll 4
            for (int p = 0; p < KA; p++) {
                __m256i A[2];
#pragma GCC unroll 2
                for (int i = 0; i < MR; i++)
                    A[i] = _mm256_loadu_si256((const __m256i *)(ap[i] + (v * KA + p) * 8 + half));
#pragma GCC unroll 4
                for (int q = 0; q < KB; q++)
#pragma GCC unroll 2
                    for (int j = 0; j < NR; j++) {
                        const __m256i B = _mm256_loadu_si256((const __m256i *)(bp[j] + (v * KB + q) * 8 + half));
#pragma GCC unroll 2
                        for (int i = 0; i < MR; i++)
                            cnt[i][j][p + q] = _mm256_add_epi8(cnt[i][j][p + q],
                                                               popcnt_bytes(_mm256_and_si256(A[i], B), lut, m4));
                    }
            }
        }
        QG_TILE_LOOP(MR, NR, i, j) QG_CLASS_LOOP(KA, KB, cl, 0)
            wide[i][j][cl] = _mm256_add_epi64(wide[i][j][cl], _mm256_sad_epu8(cnt[i][j][cl], _mm256_setzero_si256()));
    }
    QG_TILE_LOOP(MR, NR, i, j) {
            __m256i t = wide[i][j][0];
            QG_CLASS_LOOP(KA, KB, cl, 1) t = _mm256_add_epi64(t, _mm256_slli_epi64(wide[i][j][cl], cl));
            const __m128i h = _mm_add_epi64(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
            const uint64_t sum = (uint64_t)_mm_cvtsi128_si64(h) + (uint64_t)_mm_extract_epi64(h, 1);
            if (i < mr && j < nr)
                c[(ptrdiff_t)i * ldc + j] = (int32_t)(uint32_t)sum;
        }
}

QG2_INLINE void bits_macro2(const int KA, const int KB, const int MR, const int NR, const qg_args *g, size_t i0,
                            size_t i1, size_t j0, size_t j1)
{
    const uint64_t *A = (const uint64_t *)g->a, *B = (const uint64_t *)g->b;
    const size_t nv = (g->k + 511) / 512;
    for (size_t jg = j0; jg < j1; jg += BG_C_GROUP) {
        const size_t jend = (j1 - jg > BG_C_GROUP) ? jg + BG_C_GROUP : j1;
        for (size_t i = i0; i < i1; i += MR) {
            const int mr = (i1 - i >= (size_t)MR) ? MR : (int)(i1 - i);
            const uint64_t *ap[2];
            for (int q = 0; q < MR; q++)
                ap[q] = A + (ptrdiff_t)(i + (size_t)(q < mr ? q : mr - 1)) * g->lda;
            for (size_t j = jg; j < jend; j += NR) {
                const int nr = (jend - j >= (size_t)NR) ? NR : (int)(jend - j);
                const uint64_t *bp[2];
                for (int q = 0; q < NR; q++)
                    bp[q] = B + (ptrdiff_t)(j + (size_t)(q < nr ? q : nr - 1)) * g->ldb;
                int32_t *c = g->c + (ptrdiff_t)i * g->ldc + (ptrdiff_t)j;
                if (mr == 1 && MR > 1)
                    bits_tile2(KA, KB, 1, NR, ap, bp, nv, c, g->ldc, 1, nr);
                else
                    bits_tile2(KA, KB, MR, NR, ap, bp, nv, c, g->ldc, mr, nr);
            }
        }
    }
}

/* 16 ymm registers: 2 x 2 tiles while the byte counters fit (KA + KB <= 3), 1 x 2 beyond */
#define QG2_CASE(KA, KB)                                                                                   \
    case (KA)*8 + (KB): bits_macro2(KA, KB, (KA) + (KB) <= 3 ? 2 : 1, 2, g, i0, i1, j0, j1); return;

QG2_FN void qg_bits_avx2(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1)
{
    switch (g->abits * 8 + g->bbits) {
    QG_BITS_PAIRS(QG2_CASE)
    default: qg_bits_scalar(g, i0, i1, j0, j1); return;
    }
}

/* ---- int8 ------------------------------------------------------------------------------------- */
#define QG2_MR 4
#define QG2_MC 256
#define QG2_KC 256

/* one panel (16 columns = 2 ymm) x MR rows over steps [s0, s0 + ns) */
QG2_INLINE void i8_tile2(const int MR, const int STORE, const int WIDE, const uint8_t *a, ptrdiff_t lda,
                         const uint8_t *p, size_t s0, size_t ns, int first, int32_t *c, ptrdiff_t ldc, int ncols)
{
    __m256i acc[QG2_MR][2];
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
        acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    const int per = 8 / STORE;
    const __m256i mask = _mm256_set1_epi8((char)((1 << STORE) - 1));
    const __m256i ones = _mm256_set1_epi16(1), w128 = _mm256_set1_epi16(128);
    const __m256i lo7 = _mm256_set1_epi8(0x7f);
    for (size_t s = s0; s < s0 + ns; s += 4) { /* 4 steps per iteration, as in the AVX-512 kernel */
        const uint8_t *as = a + 4 * s;
        __m256i V0 = _mm256_setzero_si256(), V1 = V0;
#pragma GCC unroll 4
        for (int h = 0; h < 4; h++) {
            if (h % per == 0) {
                const size_t off = (s + (size_t)h) / (size_t)per * 64;
                V0 = _mm256_load_si256((const __m256i *)(p + off));
                V1 = _mm256_load_si256((const __m256i *)(p + off + 32));
            }
            __m256i B0 = V0, B1 = V1;
            if (STORE != 8) {
                const int sh = STORE * (h % per);
                B0 = _mm256_and_si256(sh ? _mm256_srli_epi16(V0, sh) : V0, mask);
                B1 = _mm256_and_si256(sh ? _mm256_srli_epi16(V1, sh) : V1, mask);
            }
#pragma GCC unroll 4
            for (int i = 0; i < MR; i++) {
                int32_t w;
                __builtin_memcpy(&w, as + (ptrdiff_t)i * lda + 4 * h, 4);
                const __m256i Ab = _mm256_set1_epi32(w);
                if (!WIDE) {
                    acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(Ab, B0), ones));
                    acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(Ab, B1), ones));
                } else {
                    const __m256i Al = _mm256_and_si256(Ab, lo7);
                    const __m256i Ah = _mm256_and_si256(_mm256_srli_epi16(Ab, 7), _mm256_set1_epi8(1));
                    acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(Al, B0), ones));
                    acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(Al, B1), ones));
                    acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(_mm256_maddubs_epi16(Ah, B0), w128));
                    acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(_mm256_maddubs_epi16(Ah, B1), w128));
                }
            }
        }
    }
    /* lanes: acc[i][0] = columns 0..7, acc[i][1] = 8..15 */
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++) {
        int32_t *ci = c + (ptrdiff_t)i * ldc;
        if (ncols >= 16) {
            if (!first) {
                acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_loadu_si256((const __m256i *)ci));
                acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_loadu_si256((const __m256i *)(ci + 8)));
            }
            _mm256_storeu_si256((__m256i *)ci, acc[i][0]);
            _mm256_storeu_si256((__m256i *)(ci + 8), acc[i][1]);
        } else {
            int32_t t[16];
            _mm256_storeu_si256((__m256i *)t, acc[i][0]);
            _mm256_storeu_si256((__m256i *)(t + 8), acc[i][1]);
            for (int j = 0; j < ncols; j++)
                ci[j] = first ? t[j] : (int32_t)((uint32_t)ci[j] + (uint32_t)t[j]);
        }
    }
}

/* the tiles of rows [i, me) over one B chunk: panel p holds steps [s0, s0 + ns) at STORE bits per code */
QG2_INLINE void i8_rows2(const int STORE, const int WIDE, const uint8_t *a, ptrdiff_t lda, size_t i, size_t me,
                         const uint8_t *p, size_t s0, size_t ns, int first, int32_t *c, ptrdiff_t ldc, int ncols)
{
    for (; i < me; i += QG2_MR, a += QG2_MR * lda, c += QG2_MR * ldc) {
        switch (me - i >= QG2_MR ? QG2_MR : (int)(me - i)) {
        case 4: i8_tile2(4, STORE, WIDE, a, lda, p, s0, ns, first, c, ldc, ncols); break;
        case 3: i8_tile2(3, STORE, WIDE, a, lda, p, s0, ns, first, c, ldc, ncols); break;
        case 2: i8_tile2(2, STORE, WIDE, a, lda, p, s0, ns, first, c, ldc, ncols); break;
        default: i8_tile2(1, STORE, WIDE, a, lda, p, s0, ns, first, c, ldc, ncols); break;
        }
    }
}

/* Steps [s0, s0 + ns) of a 2-/4-bit panel as 8-bit codes, 64 bytes per step (s0, ns multiples of 4). */
QG2_INLINE void i8_decode2(const int STORE, const uint8_t *p, size_t s0, size_t ns, uint8_t *dst)
{
    const int per = 8 / STORE;
    const __m256i mask = _mm256_set1_epi8((char)((1 << STORE) - 1));
    for (size_t s = 0; s < ns; s += (size_t)per) {
        const uint8_t *src = p + (s0 + s) / (size_t)per * 64;
        const __m256i V0 = _mm256_load_si256((const __m256i *)src), V1 = _mm256_load_si256((const __m256i *)(src + 32));
#pragma GCC unroll 4
        for (int h = 0; h < per; h++) {
            uint8_t *d = dst + (s + (size_t)h) * 64;
            _mm256_store_si256((__m256i *)d, _mm256_and_si256(h ? _mm256_srli_epi16(V0, STORE * h) : V0, mask));
            _mm256_store_si256((__m256i *)(d + 32), _mm256_and_si256(h ? _mm256_srli_epi16(V1, STORE * h) : V1, mask));
        }
    }
}

/* as in the AVX-512 kernel: from this many rows of A per block, 2-/4-bit panels are decoded once per
 * chunk into an 8-bit L1 buffer instead of by every 4-row tile */
#define QG2_DECODE_ROWS 16

QG2_INLINE void i8_macro2(const int STORE, const int WIDE, const qg_args *g, size_t i0, size_t i1, size_t j0,
                          size_t j1)
{
    const uint8_t *A = (const uint8_t *)g->a, *B = (const uint8_t *)g->b;
    const size_t steps = qg_a8_stride(g->k) / 4;
    const size_t panel_bytes = steps * (size_t)STORE / 8 * 64;
    _Alignas(64) uint8_t decoded[QG2_KC * 64];
    for (size_t mb = i0; mb < i1; mb += QG2_MC) {
        const size_t me = (i1 - mb > QG2_MC) ? mb + QG2_MC : i1;
        const int decode = STORE != 8 && me - mb >= QG2_DECODE_ROWS;
        const uint8_t *a = A + (ptrdiff_t)mb * g->lda;
        for (size_t kb = 0; kb < steps; kb += QG2_KC) {
            const size_t ns = (steps - kb > QG2_KC) ? QG2_KC : steps - kb;
            for (size_t j = j0; j < j1; j += QG_NR) {
                const int ncols = (j1 - j >= QG_NR) ? QG_NR : (int)(j1 - j);
                const uint8_t *p = B + (j / QG_NR) * panel_bytes;
                int32_t *c = g->c + (ptrdiff_t)mb * g->ldc + (ptrdiff_t)j;
                if (decode) {
                    i8_decode2(STORE, p, kb, ns, decoded);
                    i8_rows2(8, WIDE, a + 4 * kb, g->lda, mb, me, decoded, 0, ns, kb == 0, c, g->ldc, ncols);
                } else {
                    i8_rows2(STORE, WIDE, a, g->lda, mb, me, p, kb, ns, kb == 0, c, g->ldc, ncols);
                }
            }
        }
    }
}

/* 1 when a pair of u8 x s8 products can leave int16 (see the file comment) */
static int needs_wide(const qg_args *g)
{
    const long amax = (1L << g->abits) - 1;
    long bmax = (1L << g->bbits) - 1;
    if (g->bstore == 8)
        bmax = (g->zb > bmax - g->zb) ? g->zb : bmax - g->zb;
    return 2 * amax * bmax > 32767;
}

QG2_FN void qg_int8_avx2(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1)
{
    switch (g->bstore) {
    case 2: i8_macro2(2, 0, g, i0, i1, j0, j1); return;
    case 4: i8_macro2(4, 0, g, i0, i1, j0, j1); return;
    default:
        if (needs_wide(g))
            i8_macro2(8, 1, g, i0, i1, j0, j1);
        else
            i8_macro2(8, 0, g, i0, i1, j0, j1);
        return;
    }
}


/* ---- the level-set fold (qg_fold, qgemm_driver.c) ------------------------------------------------ */
QG2_INLINE void fold_row(const qg_args *g, const qg_fold_k *f, int32_t *c, uint32_t ra, size_t j0, size_t j1)
{
    const uint32_t sab = f->sab, cb = f->cb;
    const __m256i vsab = _mm256_set1_epi32((int)sab), vcb = _mm256_set1_epi32((int)cb), vra = _mm256_set1_epi32((int)ra);
    size_t j = j0;
    for (; j + 8 <= j1; j += 8) {
        __m256i v = _mm256_add_epi32(_mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(c + j)), vsab), vra);
        if (cb)
            v = _mm256_add_epi32(v, _mm256_mullo_epi32(_mm256_loadu_si256((const __m256i *)(g->sumb + j)), vcb));
        _mm256_storeu_si256((__m256i *)(c + j), v);
    }
    for (; j < j1; j++)
        c[j] = (int32_t)(sab * (uint32_t)c[j] + ra + (cb ? cb * (uint32_t)g->sumb[j] : 0u));
}

QG2_FN void qg_fold_avx2(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1)
{
    qg_fold_rows(g, i0, i1, j0, j1, fold_row);
}

#endif /* BG_X86 */
