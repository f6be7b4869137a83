/*
 * bitgemm_kernels_avx2.c -- the AVX2 macro-kernel (256-bit vpshufb popcount).
 *
 * Compiled without -mavx2: every function here carries target("avx2,popcnt") and the driver only
 * calls in after lb_path_supported(LB_PATH_AVX2) said yes (lowbit_cpu.c: cpuid + xgetbv).
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
#include <string.h>

#include "bitgemm.h"

#if LB_X86
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
/* one vector step of the tile at word o, its loads by LOAD: LOADU, or TAIL_LOAD for the K tail */
#define STEP_2X4(LOAD, o)                                                                                  \
    do {                                                                                                   \
        const __m256i A0 = LOAD(a0 + (o)), A1 = LOAD(a1 + (o));                                            \
        __m256i B;                                                                                         \
        B = LOAD(b0 + (o)); ACC(c00, A0, B); ACC(c10, A1, B);                                              \
        B = LOAD(b1 + (o)); ACC(c01, A0, B); ACC(c11, A1, B);                                              \
        B = LOAD(b2 + (o)); ACC(c02, A0, B); ACC(c12, A1, B);                                              \
        B = LOAD(b3 + (o)); ACC(c03, A0, B); ACC(c13, A1, B);                                              \
    } while (0)
        for (; v < vend; v++)
            STEP_2X4(LOADU, 4 * v);
        const int done = v == tail->nvec;
        if (done && tail->rem)
            STEP_2X4(TAIL_LOAD, 4 * tail->nvec);
#undef STEP_2X4
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

/* The split as a driver / preparation hook (bg_kernel.split): rows x nw words -> panel at dst. */
BG_AVX2_FN void bg_avx2_split(const uint64_t *src, ptrdiff_t ld, size_t rows, size_t nw, uint64_t tailmask, void *dst)
{
    const avx2_tail tail = make_tail(nw, tailmask);
    split_rows(src, ld, rows, &tail, (__m256i *)dst);
}

/* ---- prepared B: the nibble panels of the whole matrix, made once --------------------------------
 * Layout: K block after K block (BG_AVX2_KC words each, as the driver cuts K), and inside a K block
 * all n rows one after the other, each ceil(nw / 4) steps of [lo, hi] (64 bytes). Rows of a K block
 * are thus one panel with the row stride the macro-kernel's scratch panels have, and any slice of
 * rows [row, row + n') is a panel of its own: the driver's N blocks and thread shares can start at
 * any row (shares are cut at 4-row tiles, not at blocks). Size: 2x the packed rows, rounded up to
 * whole 256-bit steps per K block. */
static size_t avx2_steps(size_t nw) { return (nw + 3) / 4; }

size_t bg_avx2_prep_bytes(size_t n, size_t w)
{
    const size_t full = w / BG_AVX2_KC, rest = w % BG_AVX2_KC;
    return n * 64 * (full * avx2_steps(BG_AVX2_KC) + avx2_steps(rest));
}

const void *bg_avx2_prep_block(const void *prep, size_t n, size_t w, size_t kb, size_t row)
{
    const size_t nw = (w - kb < BG_AVX2_KC) ? w - kb : BG_AVX2_KC; /* kb is a multiple of KC */
    const size_t before = n * 64 * (kb / BG_AVX2_KC) * avx2_steps(BG_AVX2_KC);
    return (const char *)prep + before + row * 64 * avx2_steps(nw);
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
 * nibble panels first; thinner ones (batch 1: matrix-vector) read the packed rows in place. Blocks
 * from the prepared-B loop nest come with both panels made (apanel, bpanel) and go straight to the
 * tiles, whatever their width (the split that makes narrow blocks not worth it is already paid).
 * Their B panel is not in L2 as a freshly split one is: it streams from L3 (2x the packed bytes), so
 * while one group of 16 B rows is being used, the next group's lines are prefetched into L2, a few
 * per row pair (the hardware prefetcher stops at 4 KB pages; with small M there are few rows of A per
 * group to hide the latency behind). */
BG_AVX2_INLINE void panel_tiles(const __m256i *pa, const __m256i *pb, size_t m, size_t n, size_t ns, int32_t *c,
                                ptrdiff_t ldc, int first, int32_t k, int prefetch)
{
    for (size_t jg = 0; jg < n; jg += BG_C_GROUP) {
        const size_t ncols = (n - jg > BG_C_GROUP) ? BG_C_GROUP : n - jg;
        /* prefetch: the next group's panel lines, spread over this group's row pairs */
        const char *next = (const char *)(pb + (jg + ncols) * 2 * ns);
        const size_t next_lines = prefetch ? ((n - jg - ncols < BG_C_GROUP) ? n - jg - ncols : BG_C_GROUP) * ns : 0;
        const size_t per_pair = (next_lines + (m + 1) / 2 - 1) / ((m + 1) / 2);
        size_t line = 0;
        for (size_t i = 0; i < m; i += 2) {
            for (size_t l = 0; l < per_pair && line < next_lines; l++, line++)
                _mm_prefetch(next + 64 * line, _MM_HINT_T1);
            const __m256i *a0 = pa + i * 2 * ns;
            int32_t *c0 = c + (ptrdiff_t)i * ldc + (ptrdiff_t)jg;
            if (m - i >= 2)
                group_nib(a0, a0 + 2 * ns, pb + jg * 2 * ns, ncols, ns, c0, c0 + ldc, first, k);
            else
                group_nib(a0, NULL, pb + jg * 2 * ns, ncols, ns, c0, NULL, first, k);
        }
    }
}

BG_AVX2_FN void bg_macro_avx2(const bg_block *blk)
{
    const avx2_tail tail = make_tail(blk->nw, blk->tailmask);
    const ptrdiff_t lda = blk->lda, ldb = blk->ldb, ldc = blk->ldc;
    const size_t ns = tail.nvec + (tail.rem ? 1 : 0);
    if (blk->apanel && blk->bpanel) {
        panel_tiles((const __m256i *)blk->apanel, (const __m256i *)blk->bpanel, blk->m, blk->n, ns, blk->c, ldc,
                    blk->first, blk->k, 1);
        return;
    }
    const int panels = blk->m >= 4 && blk->n >= 4 && ns <= BG_AVX2_CHUNK + 1 && blk->scratch &&
                       blk->scratch_bytes >= bg_avx2_scratch_bytes(blk->m, blk->n, 4 * ns);
    if (panels) {
        __m256i *pa = (__m256i *)blk->scratch;
        __m256i *pb = pa + blk->m * 2 * ns;
        split_rows(blk->a, lda, blk->m, &tail, pa);
        split_rows(blk->b, ldb, blk->n, &tail, pb);
        panel_tiles(pa, pb, blk->m, blk->n, ns, blk->c, ldc, blk->first, blk->k, 0);
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

/* ================================================================================================
 * Threshold epilogue (bg_threshold_args in bitgemm.h): 8 accumulators per step
 * ================================================================================================
 * x = acc - bias; the sign is applied as (x ^ s) - s with s = sign >> 31 (all ones where the sign is
 * negative: two's complement negation, no multiply); thr > sign * x is one vpcmpgtd, and vmovmskps
 * gathers the 8 comparison bits. 8 steps make one output word. Columns past the last multiple of 8
 * go through a scalar loop (no over-read of the rows); bits past n stay 0. */
BG_AVX2_FN void bg_threshold_rows_avx2(const bg_threshold_args *t, size_t r0, size_t r1)
{
    const size_t nfull = t->n / 8, words = (t->n + 63) / 64;
    const __m256i bias = _mm256_set1_epi32(t->bias);
    for (size_t i = r0; i < r1; i++) {
        const int32_t *acc = t->acc + (ptrdiff_t)i * t->ldacc;
        uint64_t *out = t->out + (ptrdiff_t)i * t->ldo;
        for (size_t w = 0; w < words; w++)
            out[w] = 0;
        for (size_t v = 0; v < nfull; v++) {
            const size_t j = 8 * v;
            const __m256i x = _mm256_sub_epi32(LOADU(acc + j), bias);
            const __m256i s = _mm256_srai_epi32(LOADU(t->sign + j), 31);
            const __m256i sx = _mm256_sub_epi32(_mm256_xor_si256(x, s), s);
            const __m256i lt = _mm256_cmpgt_epi32(LOADU(t->thr + j), sx);
            const uint64_t bits = (uint64_t)(unsigned)_mm256_movemask_ps(_mm256_castsi256_ps(lt));
            out[j / 64] |= bits << (j % 64);
        }
        for (size_t j = 8 * nfull; j < t->n; j++) {
            const int32_t x = (int32_t)((uint32_t)acc[j] - (uint32_t)t->bias);
            const int32_t sx = t->sign[j] < 0 ? (int32_t)(0u - (uint32_t)x) : x;
            if (sx < t->thr[j])
                out[j / 64] |= (uint64_t)1 << (j % 64);
        }
    }
}

/* ================================================================================================
 * First layer: uint8 inputs x {-1, 0, +1} weights (bg_u8_args in bitgemm.h)
 * ================================================================================================
 * A 4 x 32 register tile: per pair of K values, the 32 prepared weights (2 vectors, 16 int16 lanes
 * each = 16 columns) are loaded once and each of the 4 rows' two input bytes broadcast to every lane
 * (vpbroadcastw); vpmaddubsw multiplies u8 x s8 and adds each lane's pair: 8 vpmaddubsw + 8 vpaddw per
 * step for 256 multiply-adds, bound by the 2 multiply pipes. 8 int16 accumulators + 2 weight vectors
 * + 1 broadcast: 11 ymm registers. Every BG_U8_KCHUNK pairs the int16 sums are widened into the
 * tile's int32 totals (in L1; 1 / 64 of the steps). The weight panel (K / 2 x 64 bytes, 25 KB at
 * K = 784) stays in L1 while all rows of x stream past it. */
BG_AVX2_INLINE void widen_add(int32_t *t, __m256i s)
{
    __m256i *q = (__m256i *)(void *)t;
    _mm256_store_si256(q, _mm256_add_epi32(_mm256_load_si256(q), _mm256_cvtepi16_epi32(_mm256_castsi256_si128(s))));
    _mm256_store_si256(q + 1,
                       _mm256_add_epi32(_mm256_load_si256(q + 1), _mm256_cvtepi16_epi32(_mm256_extracti128_si256(s, 1))));
}

#define U8_ROW(A, S0, S1)                                                                               \
    S0 = _mm256_add_epi16(_mm256_maddubs_epi16(A, b0), S0);                                            \
    S1 = _mm256_add_epi16(_mm256_maddubs_epi16(A, b1), S1)

/* One step of the 4 x 32 tile in inline asm: from intrinsics (U8_ROW) GCC hoists the 4 broadcasts
 * and keeps 8 products live at once, runs out of the 16 ymm registers and adds 8 register moves to
 * every step (~36 instead of ~28 instructions; the front end, not the multiply pipes, was then the
 * bound). Here one broadcast and one product are live at a time: 12 ymm registers. */
#define U8_PAIR(X, ACC0, ACC1)                                                                         \
    "vpbroadcastw (" X "), %[a]\n\t"                                                                   \
    "vpmaddubsw %[b0], %[a], %[t]\n\t"                                                                 \
    "vpaddw %[t], " ACC0 ", " ACC0 "\n\t"                                                              \
    "vpmaddubsw %[b1], %[a], %[t]\n\t"                                                                 \
    "vpaddw %[t], " ACC1 ", " ACC1 "\n\t"

#define U8_STEP(px0, px1, px2, px3, pw)                                                                 \
    do {                                                                                               \
        __m256i a_, t_, b0_, b1_;                                                                      \
        __asm__("vmovdqa (%[w]), %[b0]\n\t"                                                            \
                "vmovdqa 32(%[w]), %[b1]\n\t"                                                          \
                U8_PAIR("%[x0]", "%[s00]", "%[s01]") U8_PAIR("%[x1]", "%[s10]", "%[s11]")              \
                U8_PAIR("%[x2]", "%[s20]", "%[s21]") U8_PAIR("%[x3]", "%[s30]", "%[s31]")              \
                : [s00] "+x"(s00), [s01] "+x"(s01), [s10] "+x"(s10), [s11] "+x"(s11),                  \
                  [s20] "+x"(s20), [s21] "+x"(s21), [s30] "+x"(s30), [s31] "+x"(s31),                  \
                  [a] "=&x"(a_), [t] "=&x"(t_), [b0] "=&x"(b0_), [b1] "=&x"(b1_)                       \
                : [w] "r"(pw), [x0] "r"(px0), [x1] "r"(px1), [x2] "r"(px2), [x3] "r"(px3)              \
                : "memory");                                                                           \
    } while (0)

/* rows x0..x3 (aliases past the last row) against one prepared panel, all of K -> tot[4][32] */
static __attribute__((noinline, target("avx2"))) void u8_tile(const uint8_t *x0, const uint8_t *x1,
                                                              const uint8_t *x2, const uint8_t *x3,
                                                              const __m256i *wp, size_t k, int32_t *tot)
{
    const size_t full = k / 2, steps = (k + 1) / 2;
    const __m256i z = _mm256_setzero_si256();
    for (int v = 0; v < 4 * BG_U8_NR / 8; v++)
        _mm256_store_si256((__m256i *)(void *)tot + v, z);
    size_t kp = 0;
    while (kp < steps) {
        const size_t end = (steps - kp > BG_U8_KCHUNK) ? kp + BG_U8_KCHUNK : steps;
        const size_t fend = end < full ? end : full;
        __m256i s00 = z, s01 = z, s10 = z, s11 = z, s20 = z, s21 = z, s30 = z, s31 = z;
        for (; kp < fend; kp++)
            U8_STEP(x0 + 2 * kp, x1 + 2 * kp, x2 + 2 * kp, x3 + 2 * kp, wp + 2 * kp);
        if (kp < end) { /* odd K: the last value pairs with 0 (its weight partner is 0 as well); the
                         * byte past the row is never read */
            const __m256i b0 = _mm256_load_si256(wp + 2 * kp), b1 = _mm256_load_si256(wp + 2 * kp + 1);
            __m256i a;
            a = _mm256_set1_epi16((short)x0[k - 1]); U8_ROW(a, s00, s01);
            a = _mm256_set1_epi16((short)x1[k - 1]); U8_ROW(a, s10, s11);
            a = _mm256_set1_epi16((short)x2[k - 1]); U8_ROW(a, s20, s21);
            a = _mm256_set1_epi16((short)x3[k - 1]); U8_ROW(a, s30, s31);
            kp++;
        }
        widen_add(tot + 0, s00); widen_add(tot + 16, s01);
        widen_add(tot + 32, s10); widen_add(tot + 48, s11);
        widen_add(tot + 64, s20); widen_add(tot + 80, s21);
        widen_add(tot + 96, s30); widen_add(tot + 112, s31);
    }
}

/* one row (batch 1, or the last of M % 4 == 1): the 4-row tile would compute 3 aliases for nothing */
static __attribute__((noinline, target("avx2"))) void u8_tile1(const uint8_t *x0, const __m256i *wp, size_t k,
                                                               int32_t *tot)
{
    const size_t full = k / 2, steps = (k + 1) / 2;
    const __m256i z = _mm256_setzero_si256();
    for (int v = 0; v < BG_U8_NR / 8; v++)
        _mm256_store_si256((__m256i *)(void *)tot + v, z);
    size_t kp = 0;
    while (kp < steps) {
        const size_t end = (steps - kp > BG_U8_KCHUNK) ? kp + BG_U8_KCHUNK : steps;
        const size_t fend = end < full ? end : full;
        __m256i s00 = z, s01 = z;
        for (; kp < fend; kp++) {
            uint16_t pair;
            memcpy(&pair, x0 + 2 * kp, sizeof pair);
            const __m256i a = _mm256_set1_epi16((short)pair);
            const __m256i b0 = _mm256_load_si256(wp + 2 * kp), b1 = _mm256_load_si256(wp + 2 * kp + 1);
            U8_ROW(a, s00, s01);
        }
        if (kp < end) {
            const __m256i a = _mm256_set1_epi16((short)x0[k - 1]);
            const __m256i b0 = _mm256_load_si256(wp + 2 * kp), b1 = _mm256_load_si256(wp + 2 * kp + 1);
            U8_ROW(a, s00, s01);
            kp++;
        }
        widen_add(tot + 0, s00);
        widen_add(tot + 16, s01);
    }
}

BG_AVX2_FN void bg_u8_panels_avx2(const bg_u8_args *g, size_t p0, size_t p1)
{
    const size_t steps = (g->k + 1) / 2;
    int32_t tot[BG_U8_MR * BG_U8_NR] __attribute__((aligned(64)));
    for (size_t p = p0; p < p1; p++) {
        const __m256i *wp = (const __m256i *)(const void *)(g->wp + p * steps * 64);
        const size_t n0 = p * BG_U8_NR, ncols = (g->n - n0 < BG_U8_NR) ? g->n - n0 : BG_U8_NR;
        for (size_t i = 0; i < g->m; i += BG_U8_MR) {
            const size_t rows = (g->m - i < BG_U8_MR) ? g->m - i : BG_U8_MR;
            const uint8_t *x[BG_U8_MR];
            for (size_t r = 0; r < BG_U8_MR; r++)
                x[r] = g->x + (ptrdiff_t)(i + (r < rows ? r : rows - 1)) * g->ldx;
            if (rows == 1)
                u8_tile1(x[0], wp, g->k, tot);
            else /* 2 or 3 rows: aliases of the last one fill the tile, computed and dropped */
                u8_tile(x[0], x[1], x[2], x[3], wp, g->k, tot);
            for (size_t r = 0; r < rows; r++)
                memcpy(g->c + (ptrdiff_t)(i + r) * g->ldc + (ptrdiff_t)n0, tot + r * BG_U8_NR, ncols * sizeof(int32_t));
        }
    }
}

#endif /* LB_X86 */
