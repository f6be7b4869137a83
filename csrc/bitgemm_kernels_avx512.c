/*
 * bitgemm_kernels_avx512.c -- the AVX-512 VPOPCNTDQ macro-kernel.
 *
 * With VPOPCNTQ the popcount of 512 bits is one instruction, so a (row of A, row of B) pair costs
 * 3 ops per 512 bits: vpxorq, vpopcntq, vpaddq into 64-bit lanes (no byte-counter overflow to
 * manage). With 32 zmm registers the register tile is 4 x 4: 16 accumulators + 4 A slices + 1 B
 * slice, 8 loads per 16 pairs.
 *
 * Edge tiles (fewer than 4 rows of A) are the same always-inline body instantiated for 1..3 rows;
 * narrower tiles alias B rows and drop those results, as in the AVX2 kernel.
 *
 * K tail: masked loads (vmovdqu64 with a zeroing k-mask) read only the words present, then the
 * lane holding the partial word is ANDed with the pad-bit mask.
 *
 * Compiled without -mavx512*: the functions carry target("avx512f,avx512vpopcntdq") and the driver
 * calls in only after lb_path_supported(LB_PATH_AVX512) said the CPU has both (lowbit_cpu.c).
 */
#include "bitgemm.h"

#include <string.h>

#if LB_X86
#include <immintrin.h>

#include "simd_avx512.h"

#define BG_AVX512_FN __attribute__((target("avx512f,avx512vpopcntdq")))
#define BG_AVX512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512vpopcntdq")))

#define BG_AVX512_MR 4
#define BG_AVX512_NR 4

typedef struct {
    size_t nvec;     /* full 8-word vectors */
    unsigned rem;    /* words in the tail vector, 0..8 */
    __mmask8 ldmask; /* its lanes to load */
    __m512i bitmask; /* bits to keep in them */
} avx512_tail;

BG_AVX512_INLINE avx512_tail make_tail512(size_t nw, uint64_t tailmask)
{
    avx512_tail t;
    if (tailmask == ~(uint64_t)0) {
        t.nvec = nw / 8;
        t.rem = (unsigned)(nw % 8);
    } else { /* the partial word must go through the masked tail even if nw % 8 == 0 */
        t.nvec = (nw - 1) / 8;
        t.rem = (unsigned)(nw - 8 * t.nvec);
    }
    t.ldmask = (__mmask8)((1u << t.rem) - 1u);
    /* all ones, except the last loaded lane keeps only the bits below K */
    t.bitmask = t.rem ? _mm512_mask_set1_epi64(_mm512_set1_epi64(-1), (__mmask8)(1u << (t.rem - 1u)),
                                               (long long)tailmask)
                      : _mm512_set1_epi64(-1);
    return t;
}

/* One MRc x 4 tile. MRc is a literal at every call site, so after inlining the loops unroll and
 * the arrays live in registers. */
BG_AVX512_INLINE void tile512(const int MRc, const uint64_t *a, ptrdiff_t lda, const uint64_t *const bp[4],
                              const avx512_tail tail, int32_t *c, ptrdiff_t ldc, int nr, int first, int32_t k)
{
    __m512i acc[BG_AVX512_MR][BG_AVX512_NR];
#pragma GCC unroll 4
    for (int i = 0; i < MRc; i++)
#pragma GCC unroll 4
        for (int j = 0; j < BG_AVX512_NR; j++)
            acc[i][j] = _mm512_setzero_si512();

    for (size_t v = 0; v < tail.nvec; v++) {
        const size_t o = 8 * v;
        __m512i A[BG_AVX512_MR];
#pragma GCC unroll 4
        for (int i = 0; i < MRc; i++)
            A[i] = _mm512_loadu_si512((const void *)(a + (ptrdiff_t)i * lda + o));
#pragma GCC unroll 4
        for (int j = 0; j < BG_AVX512_NR; j++) {
            const __m512i B = _mm512_loadu_si512((const void *)(bp[j] + o));
#pragma GCC unroll 4
            for (int i = 0; i < MRc; i++)
                acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(A[i], B)));
        }
    }
    if (tail.rem) {
        const size_t o = 8 * tail.nvec;
        __m512i A[BG_AVX512_MR];
#pragma GCC unroll 4
        for (int i = 0; i < MRc; i++)
            A[i] = _mm512_and_si512(_mm512_maskz_loadu_epi64(tail.ldmask, (const void *)(a + (ptrdiff_t)i * lda + o)),
                                    tail.bitmask);
#pragma GCC unroll 4
        for (int j = 0; j < BG_AVX512_NR; j++) {
            const __m512i B =
                _mm512_and_si512(_mm512_maskz_loadu_epi64(tail.ldmask, (const void *)(bp[j] + o)), tail.bitmask);
#pragma GCC unroll 4
            for (int i = 0; i < MRc; i++)
                acc[i][j] = _mm512_add_epi64(acc[i][j], _mm512_popcnt_epi64(_mm512_xor_si512(A[i], B)));
        }
    }
    /* the tile's horizontal sums two rows (8 accumulators) at a time by a transpose-and-add tree: with K of a
     * few thousand bits the K loop is short, and one reduce per accumulator cost ~20% of the tile */
    __m512i sums[BG_AVX512_MR / 2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
#pragma GCC unroll 2
    for (int i = 0; i < MRc; i += 2) {
        __m512i v[8];
#pragma GCC unroll 4
        for (int j = 0; j < BG_AVX512_NR; j++) {
            v[j] = acc[i][j];
            v[4 + j] = i + 1 < MRc ? acc[i + 1][j] : _mm512_setzero_si512();
        }
        sums[i / 2] = lb_reduce8_epi64(v);
    }
    uint64_t pop[BG_AVX512_MR * BG_AVX512_NR];
    memcpy(pop, sums, sizeof pop);
#pragma GCC unroll 4
    for (int i = 0; i < MRc; i++) {
        int32_t *ci = c + (ptrdiff_t)i * ldc;
        for (int j = 0; j < nr; j++) /* |result| <= K < 2^31 fits; 2*pop may not, so compute in 64 bits */
            ci[j] = (int32_t)((int64_t)(first ? k : ci[j]) - 2 * (int64_t)pop[4 * i + j]);
    }
}

/* all tiles of a block, in the order of the AVX2 kernel: groups of BG_C_GROUP rows of B, all rows
 * of A inside (see bitgemm_kernels_avx2.c) */
BG_AVX512_FN void bg_macro_avx512(const bg_block *blk)
{
    const avx512_tail tail = make_tail512(blk->nw, blk->tailmask);
    const ptrdiff_t lda = blk->lda, ldb = blk->ldb, ldc = blk->ldc;
    for (size_t jg = 0; jg < blk->n; jg += BG_C_GROUP) {
        const size_t jend = (blk->n - jg > BG_C_GROUP) ? jg + BG_C_GROUP : blk->n;
        for (size_t i = 0; i < blk->m; i += BG_AVX512_MR) {
            const size_t mr = (blk->m - i >= BG_AVX512_MR) ? BG_AVX512_MR : blk->m - i;
            const uint64_t *a = blk->a + (ptrdiff_t)i * lda;
            for (size_t j = jg; j < jend; j += BG_AVX512_NR) {
                const int nr = (jend - j >= BG_AVX512_NR) ? BG_AVX512_NR : (int)(jend - j);
                const uint64_t *bp[BG_AVX512_NR];
                bp[0] = blk->b + (ptrdiff_t)j * ldb;
                for (int q = 1; q < BG_AVX512_NR; q++)
                    bp[q] = q < nr ? bp[q - 1] + ldb : bp[q - 1];
                int32_t *c = blk->c + (ptrdiff_t)i * ldc + (ptrdiff_t)j;
                switch (mr) {
                case 4: tile512(4, a, lda, bp, tail, c, ldc, nr, blk->first, blk->k); break;
                case 3: tile512(3, a, lda, bp, tail, c, ldc, nr, blk->first, blk->k); break;
                case 2: tile512(2, a, lda, bp, tail, c, ldc, nr, blk->first, blk->k); break;
                default: tile512(1, a, lda, bp, tail, c, ldc, nr, blk->first, blk->k); break;
                }
            }
        }
    }
}

#endif /* LB_X86 */
