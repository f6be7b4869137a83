/*
 * bitgemm_kernels_avx2.c -- the AVX2 macro-kernel (256-bit vpshufb popcount).
 *
 * Compiled without -mavx2: every function here carries target("avx2,popcnt") and the driver only
 * calls in after __builtin_cpu_supports("avx2") said yes.
 *
 * Popcount (Mula, "Faster population counts using AVX2"): split each byte of x = a XOR b into its
 * two nibbles, look both up in a 16-entry table with vpshufb and add both into a per-byte counter
 * (+0..8 per step). Counters are widened (vpsadbw against zero: four 64-bit sums) at the latest
 * after 31 steps, the most a byte can take (31 * 8 = 248 <= 255).
 *
 * Two kernels, both with a 2 x 4 register tile (2 rows of A x 4 rows of B, 8 byte accumulators):
 *
 *  - nibble panels (the fast one, for blocks with >= 4 rows on both sides): the A and B blocks are
 *    first split into their low / high nibbles in scratch memory, once per block; since the split
 *    is linear over XOR, a pair then costs 6 ops per 256 bits (2 vpxor, 2 vpshufb, 2 vpaddb), ~1.5
 *    cycles on Zen 3. See "Nibble panels" below.
 *  - direct (batch 1 and other thin blocks, where splitting would not be reused): reads the packed
 *    rows in place and splits x = a ^ b for every pair: 8 ops (vpxor, 2 vpand, vpsrlw, 2 vpshufb,
 *    2 vpaddb), ~2.1 cycles on Zen 3.
 *
 * The panel kernel's step is inline asm (see BG_STEP_NIB_2x4 for why). Register use stays at 14 or
 * 15 of the 16 ymm registers, with B read as memory operands. The bound is the vector ALUs, not
 * loads or caches.
 *
 * Measured on Zen 3 and not kept: 3 x 4, 2 x 3, 1 x 6, 4 x 2 tiles (same speed within noise);
 * Harley-Seal carry-save trees over 7 or 15 vectors in the direct kernel (fewer ops per vector, but
 * at K = 4096 the per-output reduction and the tree's latency ate the gain); interleaving scalar
 * POPCNT work (front-end bound); vpmaskmovq for the tail; non-temporal C stores (slower).
 *
 * K tail: the last partial vector of a block is fetched with loads of exactly the words present (no
 * over-read past the end of a row or buffer) and ANDed with the pad-bit mask.
 */
#include "bitgemm.h"

#if BG_X86
#include <immintrin.h>

#define BG_AVX2_FN __attribute__((target("avx2,popcnt")))
#define BG_AVX2_INLINE static inline __attribute__((always_inline, target("avx2,popcnt")))

#define BG_AVX2_CHUNK 30 /* full vectors per byte-counter run; + 1 tail vector = 31 max */

#define LOADU(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))

/* Four byte-count vectors -> their four totals, as the 64-bit lanes of one vector (in order).
 * Done jointly so that the horizontal sums share shuffles instead of 4 separate extract chains. */
BG_AVX2_INLINE __m256i reduce4(__m256i c0, __m256i c1, __m256i c2, __m256i c3)
{
    const __m256i z = _mm256_setzero_si256();
    const __m256i s0 = _mm256_sad_epu8(c0, z), s1 = _mm256_sad_epu8(c1, z);
    const __m256i s2 = _mm256_sad_epu8(c2, z), s3 = _mm256_sad_epu8(c3, z);
    /* t01 = [s0.0+s0.1, s1.0+s1.1 | s0.2+s0.3, s1.2+s1.3], t23 likewise */
    const __m256i t01 = _mm256_add_epi64(_mm256_unpacklo_epi64(s0, s1), _mm256_unpackhi_epi64(s0, s1));
    const __m256i t23 = _mm256_add_epi64(_mm256_unpacklo_epi64(s2, s3), _mm256_unpackhi_epi64(s2, s3));
    return _mm256_add_epi64(_mm256_permute2x128_si256(t01, t23, 0x20), _mm256_permute2x128_si256(t01, t23, 0x31));
}

/* c[0:nr] = (first ? k : c[0:nr]) - 2 * pop, pop = the four 64-bit lanes of tot (each < 2^31) */
BG_AVX2_INLINE void store_row(int32_t *c, __m256i tot, int nr, int first, int32_t k)
{
    const __m128i pop = _mm256_castsi256_si128(
        _mm256_permutevar8x32_epi32(tot, _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7)));
    const __m128i twice = _mm_add_epi32(pop, pop); /* wraps like the int32 result does: exact mod 2^32 */
    if (nr == 4) {
        const __m128i base = first ? _mm_set1_epi32(k) : _mm_loadu_si128((const __m128i *)(const void *)c);
        _mm_storeu_si128((__m128i *)(void *)c, _mm_sub_epi32(base, twice));
    } else {
        int32_t t[4];
        _mm_storeu_si128((__m128i *)(void *)t, twice);
        for (int j = 0; j < nr; j++)
            c[j] = (int32_t)((uint32_t)(first ? k : c[j]) - (uint32_t)t[j]);
    }
}

/* where the vectors of a block end and what its tail vector looks like */
typedef struct {
    size_t nvec;     /* full 4-word vectors */
    int rem;         /* words in the final, partial vector: 0 (none) .. 4 */
    __m256i bitmask; /* bits to keep in that vector (the last word's pad bits cleared) */
} avx2_tail;

BG_AVX2_INLINE avx2_tail make_tail(size_t nw, uint64_t tailmask)
{
    avx2_tail t;
    size_t rem;
    if (tailmask == ~(uint64_t)0) {
        t.nvec = nw / 4;
        rem = nw % 4;
    } else { /* the partial word must go through the masked tail even if nw % 4 == 0 */
        t.nvec = (nw - 1) / 4;
        rem = nw - 4 * t.nvec;
    }
    t.rem = (int)rem;
    long long bits[4];
    for (size_t l = 0; l < 4; l++)
        bits[l] = l + 1 < rem ? -1 : (l + 1 == rem ? (long long)tailmask : 0);
    t.bitmask = _mm256_setr_epi64x(bits[0], bits[1], bits[2], bits[3]);
    return t;
}

/* The tail vector: exactly rem words are read (8, 16, 24 or 32 bytes, never past the row, so never
 * past the buffer), the rest of the vector is zero, then the pad bits are cleared. Plain loads of
 * the right width; vpmaskmovq would do the same (it measured no faster). */
BG_AVX2_INLINE __m256i tail_load(const uint64_t *p, const avx2_tail *t)
{
    const __m128i *q = (const __m128i *)(const void *)p;
    __m256i v;
    switch (t->rem) {
    case 1: v = _mm256_set_m128i(_mm_setzero_si128(), _mm_loadl_epi64(q)); break;
    case 2: v = _mm256_set_m128i(_mm_setzero_si128(), _mm_loadu_si128(q)); break;
    case 3: v = _mm256_set_m128i(_mm_loadl_epi64(q + 1), _mm_loadu_si128(q)); break;
    default: v = _mm256_loadu_si256((const __m256i *)(const void *)p); break;
    }
    return _mm256_and_si256(v, t->bitmask);
}

#define TAIL_LOAD(p) tail_load((p), tail)

/* acc += per-byte popcount of x (Mula). */
BG_AVX2_INLINE __m256i acc_step(__m256i acc, __m256i x, __m256i lut, __m256i low4)
{
    const __m256i lo = _mm256_and_si256(x, low4);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low4);
    return _mm256_add_epi8(_mm256_add_epi8(acc, _mm256_shuffle_epi8(lut, lo)), _mm256_shuffle_epi8(lut, hi));
}

#define ACC(acc, A, B) acc = acc_step(acc, _mm256_xor_si256(A, B), lut, low4)

#define BG_LUT                                                                                          \
    _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, \
                     2, 3, 3, 4)

/* ================================================================================================
 * Direct kernels: packed rows read in place
 * ================================================================================================
 * One tile over the block's whole K: runs of at most 30 full vectors plus, in the last run, the tail
 * vector (31 steps at most: the byte counters cannot overflow), each run widened into 64-bit
 * totals, then the store. */
BG_AVX2_INLINE void tile_2x4(const uint64_t *a0, const uint64_t *a1, const uint64_t *b0, const uint64_t *b1,
                             const uint64_t *b2, const uint64_t *b3, const avx2_tail *tail, int32_t *c0,
                             int32_t *c1, int nr, int first, int32_t k)
{
    const __m256i lut = BG_LUT, low4 = _mm256_set1_epi8(0x0f);
    __m256i tot0 = _mm256_setzero_si256(), tot1 = _mm256_setzero_si256();
    size_t v = 0;
    for (;;) {
        __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c03 = c00;
        __m256i c10 = c00, c11 = c00, c12 = c00, c13 = c00;
        const size_t vend = (tail->nvec - v > BG_AVX2_CHUNK) ? v + BG_AVX2_CHUNK : tail->nvec;
        for (; v < vend; v++) {
            const size_t o = 4 * v;
            const __m256i A0 = LOADU(a0 + o), A1 = LOADU(a1 + o);
            __m256i B;
            B = LOADU(b0 + o); ACC(c00, A0, B); ACC(c10, A1, B);
            B = LOADU(b1 + o); ACC(c01, A0, B); ACC(c11, A1, B);
            B = LOADU(b2 + o); ACC(c02, A0, B); ACC(c12, A1, B);
            B = LOADU(b3 + o); ACC(c03, A0, B); ACC(c13, A1, B);
        }
        const int done = v == tail->nvec;
        if (done && tail->rem) {
            const size_t o = 4 * tail->nvec;
            const __m256i A0 = TAIL_LOAD(a0 + o), A1 = TAIL_LOAD(a1 + o);
            __m256i B;
            B = TAIL_LOAD(b0 + o); ACC(c00, A0, B); ACC(c10, A1, B);
            B = TAIL_LOAD(b1 + o); ACC(c01, A0, B); ACC(c11, A1, B);
            B = TAIL_LOAD(b2 + o); ACC(c02, A0, B); ACC(c12, A1, B);
            B = TAIL_LOAD(b3 + o); ACC(c03, A0, B); ACC(c13, A1, B);
        }
        tot0 = _mm256_add_epi64(tot0, reduce4(c00, c01, c02, c03));
        tot1 = _mm256_add_epi64(tot1, reduce4(c10, c11, c12, c13));
        if (done)
            break;
    }
    store_row(c0, tot0, nr, first, k);
    store_row(c1, tot1, nr, first, k);
}

/* 1 x 4: the odd last row of A, and batch-1 (matrix-vector) products, which are memory bound */
BG_AVX2_INLINE void tile_1x4(const uint64_t *a0, const uint64_t *b0, const uint64_t *b1, const uint64_t *b2,
                             const uint64_t *b3, const avx2_tail *tail, int32_t *c0, int nr, int first, int32_t k)
{
    const __m256i lut = BG_LUT, low4 = _mm256_set1_epi8(0x0f);
    __m256i tot0 = _mm256_setzero_si256();
    size_t v = 0;
    for (;;) {
        __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c03 = c00;
        const size_t vend = (tail->nvec - v > BG_AVX2_CHUNK) ? v + BG_AVX2_CHUNK : tail->nvec;
        for (; v < vend; v++) {
            const size_t o = 4 * v;
            const __m256i A0 = LOADU(a0 + o);
            ACC(c00, A0, LOADU(b0 + o));
            ACC(c01, A0, LOADU(b1 + o));
            ACC(c02, A0, LOADU(b2 + o));
            ACC(c03, A0, LOADU(b3 + o));
        }
        const int done = v == tail->nvec;
        if (done && tail->rem) {
            const size_t o = 4 * tail->nvec;
            const __m256i A0 = TAIL_LOAD(a0 + o);
            ACC(c00, A0, TAIL_LOAD(b0 + o));
            ACC(c01, A0, TAIL_LOAD(b1 + o));
            ACC(c02, A0, TAIL_LOAD(b2 + o));
            ACC(c03, A0, TAIL_LOAD(b3 + o));
        }
        tot0 = _mm256_add_epi64(tot0, reduce4(c00, c01, c02, c03));
        if (done)
            break;
    }
    store_row(c0, tot0, nr, first, k);
}

/* ---- one row pair of A against one group of <= BG_C_GROUP rows of B ----------------------------
 * The unit the macro-kernel calls, kept out of line: it is big enough (4 tiles) that the call costs
 * nothing, and small enough that GCC allocates registers for the hot loop alone. B rows past ncols
 * alias the last one (computed, not stored). a1 == NULL: a single row of A. */
static __attribute__((noinline, target("avx2,popcnt"))) void group(const uint64_t *a0, const uint64_t *a1,
                                                                   const uint64_t *b, ptrdiff_t ldb,
                                                                   size_t ncols, const avx2_tail *tail,
                                                                   int32_t *c0, int32_t *c1, int first,
                                                                   int32_t k)
{
    for (size_t j = 0; j < ncols; j += 4) {
        const int nr = (ncols - j >= 4) ? 4 : (int)(ncols - j);
        const uint64_t *b0 = b + (ptrdiff_t)j * ldb;
        const uint64_t *b1 = nr > 1 ? b0 + ldb : b0;
        const uint64_t *b2 = nr > 2 ? b1 + ldb : b1;
        const uint64_t *b3 = nr > 3 ? b2 + ldb : b2;
        if (a1)
            tile_2x4(a0, a1, b0, b1, b2, b3, tail, c0 + j, c1 + j, nr, first, k);
        else
            tile_1x4(a0, b0, b1, b2, b3, tail, c0 + j, nr, first, k);
    }
}

/* ================================================================================================
 * Nibble panels: the fast path for blocks with enough rows on both sides
 * ================================================================================================
 * The nibble split is linear over XOR: lo(a ^ b) = lo(a) ^ lo(b) and hi(a ^ b) = hi(a) ^ hi(b), with
 * lo(x) = x & 0x0f and hi(x) = (x >> 4) & 0x0f per byte. So the split (and, shift, and) need not be
 * done for every (row of A, row of B) pair: each block of A and of B is split once into "nibble
 * panels" in per-thread scratch memory (the packing step of BLIS / gemmlowp), and a pair then costs
 * 6 ops per 256 bits instead of 8: 2 vpxor, 2 vpshufb, 2 vpaddb. Measured on Zen 3: 1.5 instead of
 * 2.15 cycles per 256-bit pair. Splitting costs ~4 ops per vector and is reused by every row on the
 * other side (>= 4 here, typically 128), so blocks with fewer rows keep the direct kernels above.
 *
 * Panel layout: row r, vector step v at panel + (r * nsteps + v) * 2 vectors: [lo, hi]. The K tail
 * is masked while splitting, so the micro-kernel only ever sees whole, clean steps. A block has at
 * most BG_AVX2_KC / 4 = 16 steps, each adding at most 8 to a byte counter: no widening mid-tile. */
size_t bg_avx2_scratch_bytes(size_t m, size_t n, size_t kc)
{
    return (m + n) * ((kc + 3) / 4) * 64;
}

BG_AVX2_INLINE void split_vec(__m256i x, __m256i low4, __m256i *dst)
{
    _mm256_store_si256(dst, _mm256_and_si256(x, low4));
    _mm256_store_si256(dst + 1, _mm256_and_si256(_mm256_srli_epi16(x, 4), low4));
}

/* rows x (nvec full vectors + tail) of packed words -> nibble panel */
BG_AVX2_INLINE void split_rows(const uint64_t *src, ptrdiff_t ld, size_t rows, const avx2_tail *tail,
                               __m256i *dst)
{
    const __m256i low4 = _mm256_set1_epi8(0x0f);
    for (size_t r = 0; r < rows; r++) {
        const uint64_t *row = src + (ptrdiff_t)r * ld;
        for (size_t v = 0; v < tail->nvec; v++, dst += 2)
            split_vec(LOADU(row + 4 * v), low4, dst);
        if (tail->rem) {
            split_vec(tail_load(row + 4 * tail->nvec, tail), low4, dst);
            dst += 2;
        }
    }
}

/* One step of the 2 x 4 tile on nibble panels, in inline asm: GCC, given the same intrinsics
 * (ACC_NIB below), re-associates acc + lo + hi into acc + (lo + hi), which puts one more add on each
 * step's critical path, and spills accumulators in the hot loop; the hand-written step measured ~12%
 * faster per tile on Zen 3. (The direct kernel showed no such difference and stays in C.) The 4 A
 * half-vectors are register inputs (loaded by the compiler), the B half-vectors memory operands
 * addressed through pointer registers: GCC allows at most 30 asm operands, "+x" counting twice, so
 * there is no room for one "m" operand per half-vector; the "memory" clobber stands for those
 * reads. 15 ymm registers in all; the accumulators are "+x" operands, so they stay in registers
 * across iterations. */
#define BG_PAIR_NIB(ALO, AHI, MLO, MHI, ACC)                                                            \
    "vpxor " MLO ", " ALO ", %[x]\n\t"                                                                  \
    "vpxor " MHI ", " AHI ", %[h]\n\t"                                                                  \
    "vpshufb %[x], %[lut], %[x]\n\t"                                                                    \
    "vpshufb %[h], %[lut], %[h]\n\t"                                                                    \
    "vpaddb %[x], " ACC ", " ACC "\n\t"                                                                 \
    "vpaddb %[h], " ACC ", " ACC "\n\t"

#define BG_STEP_NIB_2x4(pa0, pa1, pb0, pb1, pb2, pb3)                                                    \
    do {                                                                                               \
        const __m256i l0_ = (pa0)[0], h0_ = (pa0)[1], l1_ = (pa1)[0], h1_ = (pa1)[1];                  \
        __m256i x_, hh_;                                                                               \
        __asm__(BG_PAIR_NIB("%[l0]", "%[h0]", "(%[b0])", "32(%[b0])", "%[c00]")                        \
                BG_PAIR_NIB("%[l1]", "%[h1]", "(%[b0])", "32(%[b0])", "%[c10]")                        \
                BG_PAIR_NIB("%[l0]", "%[h0]", "(%[b1])", "32(%[b1])", "%[c01]")                        \
                BG_PAIR_NIB("%[l1]", "%[h1]", "(%[b1])", "32(%[b1])", "%[c11]")                        \
                BG_PAIR_NIB("%[l0]", "%[h0]", "(%[b2])", "32(%[b2])", "%[c02]")                        \
                BG_PAIR_NIB("%[l1]", "%[h1]", "(%[b2])", "32(%[b2])", "%[c12]")                        \
                BG_PAIR_NIB("%[l0]", "%[h0]", "(%[b3])", "32(%[b3])", "%[c03]")                        \
                BG_PAIR_NIB("%[l1]", "%[h1]", "(%[b3])", "32(%[b3])", "%[c13]")                        \
                : [c00] "+x"(c00), [c01] "+x"(c01), [c02] "+x"(c02), [c03] "+x"(c03),                  \
                  [c10] "+x"(c10), [c11] "+x"(c11), [c12] "+x"(c12), [c13] "+x"(c13),                  \
                  [x] "=&x"(x_), [h] "=&x"(hh_)                                                        \
                : [lut] "x"(lut), [l0] "x"(l0_), [h0] "x"(h0_), [l1] "x"(l1_), [h1] "x"(h1_),          \
                  [b0] "r"(pb0), [b1] "r"(pb1), [b2] "r"(pb2), [b3] "r"(pb3)                           \
                : "memory");                                                                           \
    } while (0)

#define ACC_NIB(acc, L, H, pb)                                                                         \
    acc = _mm256_add_epi8(_mm256_add_epi8(acc, _mm256_shuffle_epi8(lut, _mm256_xor_si256(L, (pb)[0]))), \
                          _mm256_shuffle_epi8(lut, _mm256_xor_si256(H, (pb)[1])))

/* One row pair (a1 == NULL: one row) of the A panel against one group of <= BG_C_GROUP rows of the
 * B panel; ns steps per row. Out of line for the same reason as group(). */
static __attribute__((noinline, target("avx2,popcnt"))) void group_nib(const __m256i *a0, const __m256i *a1,
                                                                       const __m256i *b, size_t ncols,
                                                                       size_t ns, int32_t *c0, int32_t *c1,
                                                                       int first, int32_t k)
{
    const __m256i lut = BG_LUT;
    const size_t ld = 2 * ns; /* vectors per panel row */
    for (size_t j = 0; j < ncols; j += 4) {
        const int nr = (ncols - j >= 4) ? 4 : (int)(ncols - j);
        const __m256i *b0 = b + j * ld;
        const __m256i *b1 = nr > 1 ? b0 + ld : b0;
        const __m256i *b2 = nr > 2 ? b1 + ld : b1;
        const __m256i *b3 = nr > 3 ? b2 + ld : b2;
        __m256i c00 = _mm256_setzero_si256(), c01 = c00, c02 = c00, c03 = c00;
        if (a1) {
            __m256i c10 = c00, c11 = c00, c12 = c00, c13 = c00;
            for (size_t v = 0; v < ld; v += 2)
                BG_STEP_NIB_2x4(a0 + v, a1 + v, b0 + v, b1 + v, b2 + v, b3 + v);
            store_row(c0 + j, reduce4(c00, c01, c02, c03), nr, first, k);
            store_row(c1 + j, reduce4(c10, c11, c12, c13), nr, first, k);
        } else {
            for (size_t v = 0; v < ld; v += 2) {
                const __m256i L = a0[v], H = a0[v + 1];
                ACC_NIB(c00, L, H, b0 + v);
                ACC_NIB(c01, L, H, b1 + v);
                ACC_NIB(c02, L, H, b2 + v);
                ACC_NIB(c03, L, H, b3 + v);
            }
            store_row(c0 + j, reduce4(c00, c01, c02, c03), nr, first, k);
        }
    }
}

/* ---- macro-kernel: all 2 x 4 tiles of one cache block ------------------------------------------
 * For each group of BG_C_GROUP = 16 rows of B (16 KB of panel at K = 4096, kept in L1), sweep all
 * the block's rows of A (their panel, <= 128 KB, sits in L2), two at a time, through the 4 tiles
 * side by side: the two A rows are reused from L1 by the 4 tiles and each C row gets one full
 * 64-byte line per pass. (Rows of A outer instead re-fetches them from L3 for every row of tiles,
 * ~20% slower; one 4-row tile per pass writes C in 16-byte pieces, see BG_C_GROUP.) Narrow edges
 * reuse the 4-wide kernel with aliased B rows (results for the aliases are computed and dropped);
 * an odd last A row uses the 1 x 4 kernel.
 *
 * Blocks with at least 4 rows on both sides (and scratch memory from the driver) are split into
 * nibble panels first; thinner ones (batch 1: matrix-vector) read the packed rows in place. */
BG_AVX2_FN void bg_macro_avx2(const bg_block *blk)
{
    const avx2_tail tail = make_tail(blk->nw, blk->tailmask);
    const ptrdiff_t lda = blk->lda, ldb = blk->ldb, ldc = blk->ldc;
    const size_t ns = tail.nvec + (tail.rem ? 1 : 0);
    const int panels = blk->m >= 4 && blk->n >= 4 && ns <= BG_AVX2_CHUNK + 1 && blk->scratch &&
                       blk->scratch_bytes >= bg_avx2_scratch_bytes(blk->m, blk->n, 4 * ns);
    if (panels) {
        __m256i *pa = (__m256i *)blk->scratch;
        __m256i *pb = pa + blk->m * 2 * ns;
        split_rows(blk->a, lda, blk->m, &tail, pa);
        split_rows(blk->b, ldb, blk->n, &tail, pb);
        for (size_t jg = 0; jg < blk->n; jg += BG_C_GROUP) {
            const size_t ncols = (blk->n - jg > BG_C_GROUP) ? BG_C_GROUP : blk->n - jg;
            for (size_t i = 0; i < blk->m; i += 2) {
                const __m256i *a0 = pa + i * 2 * ns;
                int32_t *c0 = blk->c + (ptrdiff_t)i * ldc + (ptrdiff_t)jg;
                if (blk->m - i >= 2)
                    group_nib(a0, a0 + 2 * ns, pb + jg * 2 * ns, ncols, ns, c0, c0 + ldc, blk->first, blk->k);
                else
                    group_nib(a0, NULL, pb + jg * 2 * ns, ncols, ns, c0, NULL, blk->first, blk->k);
            }
        }
        return;
    }
    for (size_t jg = 0; jg < blk->n; jg += BG_C_GROUP) {
        const size_t ncols = (blk->n - jg > BG_C_GROUP) ? BG_C_GROUP : blk->n - jg;
        const uint64_t *b = blk->b + (ptrdiff_t)jg * ldb;
        for (size_t i = 0; i < blk->m; i += 2) {
            const uint64_t *a0 = blk->a + (ptrdiff_t)i * lda;
            int32_t *c0 = blk->c + (ptrdiff_t)i * ldc + (ptrdiff_t)jg;
            if (blk->m - i >= 2)
                group(a0, a0 + lda, b, ldb, ncols, &tail, c0, c0 + ldc, blk->first, blk->k);
            else
                group(a0, NULL, b, ldb, ncols, &tail, c0, NULL, blk->first, blk->k);
        }
    }
}

#endif /* BG_X86 */
