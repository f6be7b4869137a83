/*
 * intlstm_gemm_avx2.c -- the integer LSTM's GEMM with AVX2 (avx2 and avx512 paths; see intlstm.h).
 *
 * A is sign-extended to int16 once (scratch, rows of Kp with zeros beyond K); W rows (int8, already padded
 * with zeros to Kp) are sign-extended on the fly (vpmovsxbw from memory); vpmaddwd multiplies 16 int16
 * pairs and adds adjacent products into 8 int32 lanes (exact: |products| <= 2^14). Register blocks of
 * 2 A rows x 4 W rows (8 accumulators), 1 x 4 for a single row (batch 1). W is walked in blocks of rows
 * that stay in L2 while every A row passes over them. The zero padding makes every row a whole number of
 * 16-element steps, so there is no scalar tail.
 *
 * Compiled without -mavx2: every function carries target("avx2"), and the driver calls in only on a path
 * lb_path_supported said the CPU runs.
 */
#include "intlstm.h"

#if LB_X86
#include <immintrin.h>

/* 16 weights from row w at column k: int8 sign-extended on the fly (wsz 1), or already int16 (wsz 2) */
__attribute__((target("avx2"))) static inline __m256i ldw(const char *w, int k, int wsz) {
    if (wsz == 1) return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + k)));
    return _mm256_loadu_si256((const __m256i *)(w + 2 * (size_t)k));
}

__attribute__((target("avx2"))) static inline __m256i lda(const int16_t *p) {
    return _mm256_loadu_si256((const __m256i *)p);
}

__attribute__((target("avx2"))) static inline __m256i madd_acc(__m256i acc, __m256i a, __m256i w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, w));
}

/* the four horizontal sums of a, b, c, d as one vector */
__attribute__((target("avx2"))) static inline __m128i hsum4(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i ab = _mm256_hadd_epi32(a, b);
    __m256i cd = _mm256_hadd_epi32(c, d);
    __m256i abcd = _mm256_hadd_epi32(ab, cd);
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

__attribute__((target("avx2"))) static inline int32_t hsum1(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

__attribute__((target("avx2"), always_inline))
static inline void gemm_avx2_block(const int16_t *A16, const char *W, int wsz, const int32_t *bias, int32_t *C, int M,
                                   int N, int ldc, int Kp) {
    const size_t ldw_bytes = (size_t)Kp * wsz;
    int m = 0;
    for (; m + 2 <= M; m += 2) {
        const int16_t *a0 = A16 + (size_t)m * Kp, *a1 = a0 + Kp;
        int32_t *c0 = C + (size_t)m * ldc, *c1 = c0 + ldc;
        int n = 0;
        for (; n + 4 <= N; n += 4) {
            const char *w0 = W + n * ldw_bytes, *w1 = w0 + ldw_bytes, *w2 = w1 + ldw_bytes, *w3 = w2 + ldw_bytes;
            __m256i s00 = _mm256_setzero_si256(), s01 = s00, s02 = s00, s03 = s00;
            __m256i s10 = s00, s11 = s00, s12 = s00, s13 = s00;
            for (int k = 0; k < Kp; k += 16) {
                __m256i x0 = lda(a0 + k), x1 = lda(a1 + k);
                __m256i v = ldw(w0, k, wsz);
                s00 = madd_acc(s00, x0, v);
                s10 = madd_acc(s10, x1, v);
                v = ldw(w1, k, wsz);
                s01 = madd_acc(s01, x0, v);
                s11 = madd_acc(s11, x1, v);
                v = ldw(w2, k, wsz);
                s02 = madd_acc(s02, x0, v);
                s12 = madd_acc(s12, x1, v);
                v = ldw(w3, k, wsz);
                s03 = madd_acc(s03, x0, v);
                s13 = madd_acc(s13, x1, v);
            }
            __m128i b = bias ? _mm_loadu_si128((const __m128i *)(bias + n)) : _mm_setzero_si128();
            _mm_storeu_si128((__m128i *)(c0 + n), _mm_add_epi32(hsum4(s00, s01, s02, s03), b));
            _mm_storeu_si128((__m128i *)(c1 + n), _mm_add_epi32(hsum4(s10, s11, s12, s13), b));
        }
        for (; n < N; n++) {
            const char *w0 = W + n * ldw_bytes;
            __m256i s0 = _mm256_setzero_si256(), s1 = s0;
            for (int k = 0; k < Kp; k += 16) {
                __m256i v = ldw(w0, k, wsz);
                s0 = madd_acc(s0, lda(a0 + k), v);
                s1 = madd_acc(s1, lda(a1 + k), v);
            }
            int32_t b = bias ? bias[n] : 0;
            c0[n] = hsum1(s0) + b;
            c1[n] = hsum1(s1) + b;
        }
    }
    for (; m < M; m++) {
        const int16_t *a0 = A16 + (size_t)m * Kp;
        int32_t *c0 = C + (size_t)m * ldc;
        int n = 0;
        for (; n + 4 <= N; n += 4) {
            const char *w0 = W + n * ldw_bytes, *w1 = w0 + ldw_bytes, *w2 = w1 + ldw_bytes, *w3 = w2 + ldw_bytes;
            __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
            for (int k = 0; k < Kp; k += 16) {
                __m256i x0 = lda(a0 + k);
                s0 = madd_acc(s0, x0, ldw(w0, k, wsz));
                s1 = madd_acc(s1, x0, ldw(w1, k, wsz));
                s2 = madd_acc(s2, x0, ldw(w2, k, wsz));
                s3 = madd_acc(s3, x0, ldw(w3, k, wsz));
            }
            __m128i b = bias ? _mm_loadu_si128((const __m128i *)(bias + n)) : _mm_setzero_si128();
            _mm_storeu_si128((__m128i *)(c0 + n), _mm_add_epi32(hsum4(s0, s1, s2, s3), b));
        }
        for (; n < N; n++) {
            const char *w0 = W + n * ldw_bytes;
            __m256i s0 = _mm256_setzero_si256();
            for (int k = 0; k < Kp; k += 16) s0 = madd_acc(s0, lda(a0 + k), ldw(w0, k, wsz));
            c0[n] = hsum1(s0) + (bias ? bias[n] : 0);
        }
    }
}

__attribute__((target("avx2"), always_inline))
static inline void gemm_avx2_any(const int8_t *A, const char *W, int wsz, const int32_t *bias, int32_t *C, int M,
                                 int N, int K, int16_t *scratch) {
    const int K16 = K & ~15;
    const int Kp = INTLSTM_KP(K);
    for (int m = 0; m < M; m++) {
        const int8_t *a = A + (size_t)m * K;
        int16_t *d = scratch + (size_t)m * Kp;
        int k = 0;
        for (; k < K16; k += 16)
            _mm256_storeu_si256((__m256i *)(d + k), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + k))));
        intlstm_widen_tail(d, a, k, K, Kp);
    }
    const int nb = intlstm_n_block(Kp, wsz);
    for (int n0 = 0; n0 < N; n0 += nb) {
        int nn = N - n0 < nb ? N - n0 : nb;
        gemm_avx2_block(scratch, W + (size_t)n0 * Kp * wsz, wsz, bias ? bias + n0 : NULL, C + n0, M, nn, N, Kp);
    }
}

/* the body of each weight width: W int8 (packed rows), or W already widened to int16 (intlstm_layer_run) */
__attribute__((target("avx2"), always_inline)) static inline void gemm_width(const intlstm_gemm_args *g, int wsz)
{
    gemm_avx2_any(g->a, (const char *)g->w, wsz, g->bias, g->c, g->m, g->n, g->k, g->scratch);
}

__attribute__((target("avx2"))) void intlstm_gemm_avx2(const intlstm_gemm_args *g)
{
    intlstm_gemm_by_width(g, gemm_width);
}
#endif /* LB_X86 */

/* ---- prepared (panel) weights, see intlstm.h -------------------------------------------------------------
 * A's bytes u (0..255) are widened to int16 once (scratch); per k4 step a row's 4 values, broadcast as one
 * 64-bit lane, meet 16 bytes of the panel (4 rows x 4 k) sign-extended to int16 -- or 16 int16 of the panel's
 * widened copy (g->p16) when the driver made one: then no shuffle per load, a third fewer uops per multiply --
 * and vpmaddwd gives, per row, two int32 partial sums (k0 k1 and k2 k3; |2 * 255 * 128| fits easily). A
 * panel is 4 such accumulators (16 rows); at the end vphaddd pairs the partials and a vpermq puts the rows in
 * order. Tiles: 4 rows of A x half a panel, the last 1-3 rows x a whole panel. (vpmaddubsw, twice the multiplies per instruction, would saturate:
 * u8 x s8 pairs reach 2 * 255 * 128 > 32767; the k-bit GEMM's split "wide" step costs more than it saves.) */
#if LB_X86
#define PG2_INLINE static inline __attribute__((always_inline, target("avx2")))

PG2_INLINE __m256i pg2_rows8(__m256i lo, __m256i hi) /* rows 0..3 (lo), 4..7 (hi) -> the 8 row sums */
{
    return _mm256_permute4x64_epi64(_mm256_hadd_epi32(lo, hi), 0xD8);
}

/* 16 weights (4 rows x 4 k) of quarter q of step s: int8 panels sign-extended, or the int16 copy */
PG2_INLINE __m256i pg2_w(const int WSZ, const void *P, int s, int q)
{
    if (WSZ == 1)
        return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)((const int8_t *)P + (size_t)s * 64 + 16 * q)));
    return _mm256_loadu_si256((const __m256i *)((const int16_t *)P + (size_t)s * 64 + 16 * q));
}

/* MR (1, 2) rows of A x a whole panel: MR * 4 accumulators (the rows past the last multiple of 4, and batch 1) */
PG2_INLINE void pg2_tile_full(const int MR, const int WSZ, const int16_t *a16, int kp, const void *P,
                              const int32_t *bias, int32_t *c, size_t ldc, int nc)
{
    __m256i acc[2][4];
    for (int i = 0; i < MR; i++)
        for (int q = 0; q < 4; q++) acc[i][q] = _mm256_setzero_si256();
    const int S = kp / 4;
    for (int s = 0; s < S; s++) {
        __m256i x[2];
        for (int i = 0; i < MR; i++)
            x[i] = _mm256_set1_epi64x(*(const long long *)(const void *)(a16 + (size_t)i * kp + 4 * s));
        for (int q = 0; q < 4; q++) {
            const __m256i w = pg2_w(WSZ, P, s, q);
            for (int i = 0; i < MR; i++) acc[i][q] = _mm256_add_epi32(acc[i][q], _mm256_madd_epi16(x[i], w));
        }
    }
    __m256i b0 = _mm256_setzero_si256(), b1 = b0;
    if (bias && nc == INTLSTM_NR) {
        b0 = _mm256_loadu_si256((const __m256i *)bias);
        b1 = _mm256_loadu_si256((const __m256i *)(bias + 8));
    }
    for (int i = 0; i < MR; i++) {
        const __m256i r0 = _mm256_add_epi32(pg2_rows8(acc[i][0], acc[i][1]), b0);
        const __m256i r1 = _mm256_add_epi32(pg2_rows8(acc[i][2], acc[i][3]), b1);
        int32_t *ci = c + (size_t)i * ldc;
        if (nc == INTLSTM_NR) {
            _mm256_storeu_si256((__m256i *)ci, r0);
            _mm256_storeu_si256((__m256i *)(ci + 8), r1);
        } else {
            int32_t t[INTLSTM_NR];
            _mm256_storeu_si256((__m256i *)t, r0);
            _mm256_storeu_si256((__m256i *)(t + 8), r1);
            for (int l = 0; l < nc; l++) ci[l] = (int32_t)((uint32_t)t[l] + (bias ? (uint32_t)bias[l] : 0u));
        }
    }
}

/* 4 rows of A x the 8 panel rows of quarters 2 h, 2 h + 1 (h = 0, 1): 8 accumulators, each weight load serves
 * 4 rows (the whole panel with 4 rows would need all 16 registers for accumulators) */
PG2_INLINE void pg2_tile(const int MR, const int WSZ, const int16_t *a16, int kp, const void *P, int h,
                         const int32_t *bias, int32_t *c, size_t ldc, int nc)
{
    __m256i acc[4][2];
    for (int i = 0; i < MR; i++) acc[i][0] = acc[i][1] = _mm256_setzero_si256();
    const int S = kp / 4;
    for (int s = 0; s < S; s++) {
        const __m256i w0 = pg2_w(WSZ, P, s, 2 * h), w1 = pg2_w(WSZ, P, s, 2 * h + 1);
        for (int i = 0; i < MR; i++) {
            const __m256i x = _mm256_set1_epi64x(*(const long long *)(const void *)(a16 + (size_t)i * kp + 4 * s));
            acc[i][0] = _mm256_add_epi32(acc[i][0], _mm256_madd_epi16(x, w0));
            acc[i][1] = _mm256_add_epi32(acc[i][1], _mm256_madd_epi16(x, w1));
        }
    }
    const int nh = nc - 8 * h; /* valid columns of this half (1..8 when called) */
    const __m256i b = bias && nh >= 8 ? _mm256_loadu_si256((const __m256i *)(bias + 8 * h)) : _mm256_setzero_si256();
    for (int i = 0; i < MR; i++) {
        const __m256i r = _mm256_add_epi32(pg2_rows8(acc[i][0], acc[i][1]), b);
        int32_t *ci = c + (size_t)i * ldc + 8 * h;
        if (nh >= 8) {
            _mm256_storeu_si256((__m256i *)ci, r);
        } else {
            int32_t t[8];
            _mm256_storeu_si256((__m256i *)t, r);
            for (int l = 0; l < nh; l++) ci[l] = (int32_t)((uint32_t)t[l] + (bias ? (uint32_t)bias[8 * h + l] : 0u));
        }
    }
}

PG2_INLINE void pgemm_avx2_any(const int WSZ, const intlstm_pgemm_args *g)
{
    const int M = g->m, N = g->n, kp = g->kp;
    int16_t *a16 = g->scratch;
    for (int m = 0; m < M; m++) { /* u8 -> int16, zero-extended */
        const uint8_t *a = g->a + (size_t)m * g->lda;
        int16_t *d = a16 + (size_t)m * kp;
        for (int k = 0; k < kp; k += 16)
            _mm256_storeu_si256((__m256i *)(d + k), _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i *)(a + k))));
    }
    const size_t pelems = (size_t)kp * INTLSTM_NR;
    for (int j0 = 0; j0 < N; j0 += INTLSTM_NR) {
        const size_t off = (size_t)(j0 / INTLSTM_NR) * pelems;
        const void *P = WSZ == 1 ? (const void *)(g->p + off) : (const void *)(g->p16 + off);
        const int nc = N - j0 < INTLSTM_NR ? N - j0 : INTLSTM_NR;
        const int32_t *bias = g->bias ? g->bias + j0 : NULL;
        const int M4 = M & ~3;
        for (int h = 0; h < 2 && 8 * h < nc; h++)
            for (int m = 0; m < M4; m += 4)
                pg2_tile(4, WSZ, a16 + (size_t)m * kp, kp, P, h, bias, g->c + (size_t)m * g->ldc + j0, g->ldc, nc);
        int m = M4;
        for (; m + 2 <= M; m += 2)
            pg2_tile_full(2, WSZ, a16 + (size_t)m * kp, kp, P, bias, g->c + (size_t)m * g->ldc + j0, g->ldc, nc);
        if (m < M)
            pg2_tile_full(1, WSZ, a16 + (size_t)m * kp, kp, P, bias, g->c + (size_t)m * g->ldc + j0, g->ldc, nc);
    }
}

__attribute__((target("avx2"))) static void pgemm_avx2_w8(const intlstm_pgemm_args *g) { pgemm_avx2_any(1, g); }
__attribute__((target("avx2"))) static void pgemm_avx2_w16(const intlstm_pgemm_args *g) { pgemm_avx2_any(2, g); }

void intlstm_pgemm_avx2(const intlstm_pgemm_args *g)
{
    if (g->p16)
        pgemm_avx2_w16(g);
    else
        pgemm_avx2_w8(g);
}
#endif /* LB_X86 */
