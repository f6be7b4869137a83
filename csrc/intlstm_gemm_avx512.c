/*
 * intlstm_gemm_avx512.c -- the integer LSTM's GEMM with AVX-512 VNNI (avx512 path; see intlstm.h).
 *
 * The AVX2 kernel's scheme at twice the width, with one instruction where AVX2 needs two: A is sign-extended
 * to int16 once (scratch), W rows are read as int8 and sign-extended on the fly (or read as the int16 copy the
 * driver makes for batches), and vpdpwssd multiplies 32 int16 pairs and adds adjacent products into the 16
 * int32 lanes of the accumulator (AVX2: vpmaddwd + vpaddd for half as many). Products are <= 2^14 in
 * magnitude and int32 sums wrap exactly as the AVX2 adds do, so every bit matches the other paths.
 *
 * Register tile 4 A rows x 4 W rows (16 accumulators of the 32 zmm registers; 2 and 1 rows at the M edge, 1
 * W row at the N edge). Rows hold Kp = a multiple of 16 values: the last step of a row with Kp % 32 == 16 is a
 * half step, loaded under a mask (masked-off lanes read as 0 and never fault). W is walked in blocks of rows
 * that stay in L2 while every A row passes over them, as in the AVX2 kernel.
 *
 * Needs AVX-512 F, BW (16-bit lanes), VL (masked 256-bit loads) and VNNI; the driver calls in only when the
 * CPU has them (every CPU with the avx512 path's VPOPCNTDQ has them, except Knights Mill, which keeps the
 * AVX2 kernel).
 */
#include "intlstm.h"

#if LB_X86
#include <immintrin.h>

#define T512 "avx512f,avx512bw,avx512vl,avx512vnni"
#define INLINE512 static inline __attribute__((always_inline, target(T512)))

/* 32 weights of row w from column k (int8 sign-extended, or int16), lanes outside m read as 0 */
INLINE512 __m512i ldw(const char *w, int k, int wsz, __mmask32 m)
{
    if (wsz == 1)
        return _mm512_cvtepi8_epi16(_mm256_maskz_loadu_epi8(m, w + k));
    return _mm512_maskz_loadu_epi16(m, w + 2 * (size_t)k);
}

/* the four horizontal sums of a..d as one 128-bit vector */
INLINE512 __m128i hsum4(__m512i a, __m512i b, __m512i c, __m512i d)
{
    __m256i a8 = _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
    __m256i b8 = _mm256_add_epi32(_mm512_castsi512_si256(b), _mm512_extracti64x4_epi64(b, 1));
    __m256i c8 = _mm256_add_epi32(_mm512_castsi512_si256(c), _mm512_extracti64x4_epi64(c, 1));
    __m256i d8 = _mm256_add_epi32(_mm512_castsi512_si256(d), _mm512_extracti64x4_epi64(d, 1));
    __m256i abcd = _mm256_hadd_epi32(_mm256_hadd_epi32(a8, b8), _mm256_hadd_epi32(c8, d8));
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

/* C[0..MR) x [0..NR) of one tile; MR, NR, wsz are constants in every instance */
INLINE512 void tile(const int16_t *a, int Kp, const char *w, size_t ldw_bytes, int wsz, int MR, int NR,
                    const int32_t *bias, int32_t *c, int ldc)
{
    __m512i acc[4][4];
    for (int i = 0; i < MR; i++)
        for (int j = 0; j < NR; j++) acc[i][j] = _mm512_setzero_si512();
    for (int k = 0; k < Kp; k += 32) {
        const __mmask32 m = Kp - k >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)0xFFFFu;
        __m512i x[4];
        for (int i = 0; i < MR; i++) x[i] = _mm512_maskz_loadu_epi16(m, a + (size_t)i * Kp + k);
        for (int j = 0; j < NR; j++) {
            const __m512i v = ldw(w + j * ldw_bytes, k, wsz, m);
            for (int i = 0; i < MR; i++) acc[i][j] = _mm512_dpwssd_epi32(acc[i][j], x[i], v);
        }
    }
    for (int i = 0; i < MR; i++) {
        int32_t *ci = c + (size_t)i * ldc;
        if (NR == 4) {
            const __m128i b = bias ? _mm_loadu_si128((const __m128i *)bias) : _mm_setzero_si128();
            _mm_storeu_si128((__m128i *)ci, _mm_add_epi32(hsum4(acc[i][0], acc[i][1], acc[i][2], acc[i][3]), b));
        } else {
            for (int j = 0; j < NR; j++) ci[j] = _mm512_reduce_add_epi32(acc[i][j]) + (bias ? bias[j] : 0);
        }
    }
}

/* the rows [m0, M) of A against N rows of W (one L2 block), MR rows at a time */
INLINE512 void rows(const int16_t *A16, const char *W, int wsz, const int32_t *bias, int32_t *C, int m0, int M, int N,
                    int ldc, int Kp, int MR)
{
    const size_t ldw_bytes = (size_t)Kp * wsz;
    for (int m = m0; m + MR <= M; m += MR) {
        const int16_t *a = A16 + (size_t)m * Kp;
        int32_t *c = C + (size_t)m * ldc;
        int n = 0;
        for (; n + 4 <= N; n += 4)
            tile(a, Kp, W + n * ldw_bytes, ldw_bytes, wsz, MR, 4, bias ? bias + n : NULL, c + n, ldc);
        for (; n < N; n++)
            tile(a, Kp, W + n * ldw_bytes, ldw_bytes, wsz, MR, 1, bias ? bias + n : NULL, c + n, ldc);
    }
}

INLINE512 void gemm_any(const intlstm_gemm_args *g, int wsz)
{
    const int M = g->m, N = g->n, K = g->k, Kp = INTLSTM_KP(K), K32 = K & ~31;
    for (int m = 0; m < M; m++) { /* A -> int16 rows of Kp, zeros past K */
        const int8_t *a = g->a + (size_t)m * K;
        int16_t *d = g->scratch + (size_t)m * Kp;
        int k = 0;
        for (; k < K32; k += 32)
            _mm512_storeu_si512((void *)(d + k), _mm512_cvtepi8_epi16(_mm256_loadu_si256((const __m256i *)(a + k))));
        intlstm_widen_tail(d, a, k, K, Kp);
    }
    const int nb = intlstm_n_block(Kp, wsz);
    const int M4 = M & ~3, M2 = M & ~1;
    for (int n0 = 0; n0 < N; n0 += nb) {
        const int nn = N - n0 < nb ? N - n0 : nb;
        const char *W = (const char *)g->w + (size_t)n0 * Kp * wsz;
        const int32_t *bias = g->bias ? g->bias + n0 : NULL;
        rows(g->scratch, W, wsz, bias, g->c + n0, 0, M4, nn, N, Kp, 4);
        rows(g->scratch, W, wsz, bias, g->c + n0, M4, M2, nn, N, Kp, 2);
        rows(g->scratch, W, wsz, bias, g->c + n0, M2, M, nn, N, Kp, 1);
    }
}

__attribute__((target(T512))) void intlstm_gemm_avx512(const intlstm_gemm_args *g)
{
    intlstm_gemm_by_width(g, gemm_any);
}
#endif /* LB_X86 */

/* ---- prepared (panel) weights with VNNI vpdpbusd, see intlstm.h ------------------------------------------
 * The k-bit GEMM's int8 scheme (qgemm_kernels_avx512.c): per k4 step a row's 4 bytes u are broadcast to the
 * 16 lanes and vpdpbusd multiplies them (u8) with the step's 64 panel bytes (s8, 16 rows x 4) and adds the 4
 * products into each row's int32 lane: no int16 stage, so no saturation, and the 16 lanes are 16 outputs
 * (no horizontal sums). Tile: MR (1..4) rows of A x NP (1..4) panels, MR * NP zmm accumulators; a single row
 * (batch 1) alternates two sets, so that vpdpbusd's latency does not bound the few dependency chains. The
 * panels of a tile (NP x Kp x 16 bytes) stay in L1 while a block of rows of A passes over them. Bias added
 * and partial panels masked at the store. */
#if LB_X86
#define PGV_INLINE static inline __attribute__((always_inline, target(T512)))

PGV_INLINE void pgv_tile(const int MR, const int NP, const uint8_t *a, size_t lda, const int8_t *P, size_t pbytes,
                         int S, const int32_t *bias, int32_t *c, size_t ldc, int nc)
{
    enum { SETS = 2 };
    const int sets = MR == 1 ? 2 : 1;
    __m512i acc[SETS][4][4];
    for (int e = 0; e < sets; e++)
        for (int i = 0; i < MR; i++)
            for (int j = 0; j < NP; j++) acc[e][i][j] = _mm512_setzero_si512();
    for (int s = 0; s < S; s += 4) { /* S is a multiple of 4 (Kp of 16) */
#pragma GCC unroll 4
        for (int h = 0; h < 4; h++) {
            const int e = sets == 2 ? (h & 1) : 0;
            __m512i w[4];
            for (int j = 0; j < NP; j++)
                w[j] = _mm512_loadu_si512((const void *)(P + (size_t)j * pbytes + (size_t)(s + h) * 64));
            for (int i = 0; i < MR; i++) {
                int32_t v;
                __builtin_memcpy(&v, a + (size_t)i * lda + 4 * (size_t)(s + h), 4);
                const __m512i x = _mm512_set1_epi32(v);
                for (int j = 0; j < NP; j++) acc[e][i][j] = _mm512_dpbusd_epi32(acc[e][i][j], x, w[j]);
            }
        }
    }
    for (int j = 0; j < NP; j++) {
        const int left = nc - INTLSTM_NR * j;
        const __mmask16 m = left >= INTLSTM_NR ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1u);
        const __m512i b = bias ? _mm512_maskz_loadu_epi32(m, bias + INTLSTM_NR * j) : _mm512_setzero_si512();
        for (int i = 0; i < MR; i++) {
            __m512i r = sets == 2 ? _mm512_add_epi32(acc[0][i][j], acc[1][i][j]) : acc[0][i][j];
            _mm512_mask_storeu_epi32(c + (size_t)i * ldc + INTLSTM_NR * j, m, _mm512_add_epi32(r, b));
        }
    }
}

/* rows [m0, m1) of A against the NP panels from column j0 (nc valid columns) */
PGV_INLINE void pgv_cols(const int NP, const intlstm_pgemm_args *g, int j0, int nc, int m0, int m1)
{
    const int S = g->kp / 4;
    const size_t pbytes = (size_t)g->kp * INTLSTM_NR;
    const int8_t *P = g->p + (size_t)(j0 / INTLSTM_NR) * pbytes;
    const int32_t *bias = g->bias ? g->bias + j0 : NULL;
    int m = m0;
    for (; m + 4 <= m1; m += 4)
        pgv_tile(4, NP, g->a + (size_t)m * g->lda, g->lda, P, pbytes, S, bias, g->c + (size_t)m * g->ldc + j0, g->ldc, nc);
    switch (m1 - m) {
    case 3: pgv_tile(3, NP, g->a + (size_t)m * g->lda, g->lda, P, pbytes, S, bias, g->c + (size_t)m * g->ldc + j0, g->ldc, nc); break;
    case 2: pgv_tile(2, NP, g->a + (size_t)m * g->lda, g->lda, P, pbytes, S, bias, g->c + (size_t)m * g->ldc + j0, g->ldc, nc); break;
    case 1: pgv_tile(1, NP, g->a + (size_t)m * g->lda, g->lda, P, pbytes, S, bias, g->c + (size_t)m * g->ldc + j0, g->ldc, nc); break;
    default: break;
    }
}

/* Blocks of PGV_MB rows of A (in L1) pass over all the panels (from L2), so the output is written a block of
 * rows at a time: a wide output (the decoder's vocabulary) is not strewn over all its rows at once. */
#define PGV_MB 64

__attribute__((target(T512))) static void pgemm_vnni(const intlstm_pgemm_args *g)
{
    const int N = g->n, M = g->m;
    for (int m0 = 0; m0 < M; m0 += PGV_MB) {
        const int m1 = M - m0 < PGV_MB ? M : m0 + PGV_MB;
        int j0 = 0;
        for (; N - j0 > 3 * INTLSTM_NR; j0 += 4 * INTLSTM_NR) /* 4 panels (the last one possibly partial) */
            pgv_cols(4, g, j0, N - j0 < 4 * INTLSTM_NR ? N - j0 : 4 * INTLSTM_NR, m0, m1);
        switch ((N - j0 + INTLSTM_NR - 1) / INTLSTM_NR) {
        case 3: pgv_cols(3, g, j0, N - j0, m0, m1); break;
        case 2: pgv_cols(2, g, j0, N - j0, m0, m1); break;
        case 1: pgv_cols(1, g, j0, N - j0, m0, m1); break;
        default: break;
        }
    }
}

void intlstm_pgemm_vnni(const intlstm_pgemm_args *g) { pgemm_vnni(g); }
#endif /* LB_X86 */
