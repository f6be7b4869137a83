/*
 * qgemm_kernels_avx512.c -- AVX-512 k-bit kernels: bit-serial with VPOPCNTQ, int8 with VNNI vpdpbusd and AMX tdpbusd.
 *
 * Bit-serial: a register tile of MR rows of A x NR rows of B holds, for every output, one accumulator
 * per *weight class* c = p + q (so 2^c is applied once, at the end, not per popcount): a plane pair
 * then costs exactly vpandq + vpopcntq + vpaddq per 512 bits of K. The planes of a row are adjacent in
 * memory (qgemm.h), so one pass over K reads all of them. Tiles per (KA, KB) are chosen to fit the 32
 * zmm registers: MR * NR * (KA + KB - 1) accumulators + MR * KA planes of A + KB planes of B.
 *
 * int8 (VNNI): B in panels of 16 rows; a tile is MR rows of A x 2 panels (32 columns, 2 zmm per row);
 * per k4 step each row's 4 codes are broadcast (embedded {1to16} operand) and vpdpbusd multiplies
 * u8 x s8 and adds 4 products into each int32 lane, without the int16 saturation of vpmaddubsw. With
 * 2-/4-bit storage the codes are decoded in registers (shift + and: 4 or 2 steps per 64-byte load),
 * so ternary / 2-bit weights are read at 2 bits per value. Blocking: MC rows of A x KC steps, so the
 * A block stays in L2 and the B chunk of a tile in L1; C is accumulated in place across K blocks.
 *
 * Measured (Xeon family 6 model 207, one thread, 256 x 1024 x 4096, min of 20, shared machine): a
 * plane pair ~1.5 ms, 70-75% of the probe's AND + VPOPCNTQ + ADD rate (1 x 1: 1360 GOPS, 2 pairs: 680,
 * 4 pairs: 405); the VNNI kernel ~525 GOPS, ~80% of vpdpbusd's rate, at every weight width once the
 * loop took 4 steps per iteration. Hence the dispatch limit of 2 plane pairs with VNNI (quant.py).
 *
 * Compiled without -mavx512*: target attributes; the driver calls in only on CPUs that have them.
 */
#include "qgemm.h"

#if BG_X86
#include <immintrin.h>
#include <stdlib.h>

#include "simd_avx512.h"

#define QGB_FN __attribute__((target("avx512f,avx512vpopcntdq")))
#define QGB_INLINE static inline __attribute__((always_inline, target("avx512f,avx512vpopcntdq")))
#define QGV_FN __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define QGV_INLINE static inline __attribute__((always_inline, target("avx512f,avx512bw,avx512vnni")))

/* ---- bit-serial ------------------------------------------------------------------------------- */
QGB_INLINE void bits_tile(const int KA, const int KB, const int MR, const int NR, const uint64_t *a, ptrdiff_t lda,
                          const uint64_t *b, ptrdiff_t ldb, size_t nv, int32_t *c, ptrdiff_t ldc)
{
    enum { CL_MAX = 7 };
    __m512i acc[4][4][CL_MAX];
    QG_TILE_LOOP(MR, NR, i, j) QG_CLASS_LOOP(KA, KB, cl, 0) acc[i][j][cl] = _mm512_setzero_si512();
    for (size_t v = 0; v < nv; v++) {
        const uint64_t *av = a + v * KA * 8, *bv = b + v * KB * 8;
        __m512i A[4][4];
#pragma GCC unroll 4
        for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
            for (int p = 0; p < KA; p++)
                A[i][p] = _mm512_loadu_si512((const void *)(av + i * lda + p * 8));
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++) {
#pragma GCC unroll 4
            for (int q = 0; q < KB; q++) {
                const __m512i B = _mm512_loadu_si512((const void *)(bv + j * ldb + q * 8));
#pragma GCC unroll 4
                for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
                    for (int p = 0; p < KA; p++)
                        acc[i][j][p + q] =
                            _mm512_add_epi64(acc[i][j][p + q], _mm512_popcnt_epi64(_mm512_and_si512(A[i][p], B)));
            }
        }
    }
    /* weight the classes, then reduce the MR * NR accumulators 8 at a time (reduce8: 21 ops for 8
     * sums instead of ~8 each; at K = 4096 a tile's K loop is only 8 vectors long) */
    __m512i t[16];
#pragma GCC unroll 16
    for (int x = 0; x < 16; x++)
        t[x] = _mm512_setzero_si512();
    QG_TILE_LOOP(MR, NR, i, j) {
            __m512i u = acc[i][j][0];
            QG_CLASS_LOOP(KA, KB, cl, 1) u = _mm512_add_epi64(u, _mm512_slli_epi64(acc[i][j][cl], (unsigned)cl));
            t[i * NR + j] = u;
        }
    int32_t sums[16];
    _mm256_storeu_si256((__m256i *)sums, _mm512_cvtepi64_epi32(lb_reduce8_epi64(t)));
    if (MR * NR > 8)
        _mm256_storeu_si256((__m256i *)(sums + 8), _mm512_cvtepi64_epi32(lb_reduce8_epi64(t + 8)));
#pragma GCC unroll 4
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int j = 0; j < NR; j++)
            c[(ptrdiff_t)i * ldc + j] = sums[i * NR + j];
}

/* all tiles of rows [i0, i1) x [j0, j1): groups of BG_C_GROUP rows of B (L1), all of A inside. A tile
 * is addressed as base + row * stride (few registers: with a pointer per row the compiler ran out of
 * general registers and moved pointers through vector registers, on the ports the popcounts need).
 * Edge tiles are moved back to end at the last row, recomputing (and rewriting, identically) a few
 * outputs of the previous tile; only ranges narrower than a tile fall back to 1-row / 1-column tiles. */
QGB_INLINE void bits_macro(const int KA, const int KB, const int MR, const int NR, const qg_args *g, size_t i0,
                           size_t i1, size_t j0, size_t j1)
{
    const uint64_t *A = (const uint64_t *)g->a, *B = (const uint64_t *)g->b;
    const ptrdiff_t lda = g->lda, ldb = g->ldb, ldc = g->ldc;
    const size_t nv = (g->k + 511) / 512;
    for (size_t jg = j0; jg < j1; jg += BG_C_GROUP) {
        const size_t jend = (j1 - jg > BG_C_GROUP) ? jg + BG_C_GROUP : j1;
        for (size_t i = i0; i < i1; i += MR) {
            if (i1 - i0 < (size_t)MR || i1 - i == 1) { /* thin: one row of A at a time */
                for (size_t r = i; r < i1; r++)
                    for (size_t j = jg; j < jend; j += NR) {
                        if (jend - jg < (size_t)NR) {
                            for (size_t q = j; q < jend; q++)
                                bits_tile(KA, KB, 1, 1, A + (ptrdiff_t)r * lda, lda, B + (ptrdiff_t)q * ldb, ldb, nv,
                                          g->c + (ptrdiff_t)r * ldc + (ptrdiff_t)q, ldc);
                            break;
                        }
                        const size_t jj = (j + NR > jend) ? jend - NR : j;
                        bits_tile(KA, KB, 1, NR, A + (ptrdiff_t)r * lda, lda, B + (ptrdiff_t)jj * ldb, ldb, nv,
                                  g->c + (ptrdiff_t)r * ldc + (ptrdiff_t)jj, ldc);
                    }
                break;
            }
            const size_t ii = (i + MR > i1) ? i1 - MR : i;
            const uint64_t *a = A + (ptrdiff_t)ii * lda;
            for (size_t j = jg; j < jend; j += NR) {
                if (jend - jg < (size_t)NR) {
                    for (size_t q = j; q < jend; q++)
                        bits_tile(KA, KB, MR, 1, a, lda, B + (ptrdiff_t)q * ldb, ldb, nv,
                                  g->c + (ptrdiff_t)ii * ldc + (ptrdiff_t)q, ldc);
                    break;
                }
                const size_t jj = (j + NR > jend) ? jend - NR : j;
                bits_tile(KA, KB, MR, NR, a, lda, B + (ptrdiff_t)jj * ldb, ldb, nv,
                          g->c + (ptrdiff_t)ii * ldc + (ptrdiff_t)jj, ldc);
            }
        }
    }
}

/* tiles: MR * NR * (KA + KB - 1) accumulators <= 24 of the 32 registers. By KA * KB: 1 -> 4 x 4, 2 -> 3 x 3,
 * 2 x 2 -> 2 x 4, 3 -> 2 x 3, 12 and 16 -> 1 x 3, the others (4, 6, 8, 9) -> 2 x 2. */
#define QGB_MR(P) ((P) == 1 ? 4 : (P) == 2 ? 3 : (P) >= 12 ? 1 : 2)
#define QGB_NR(KA, P) ((P) == 1 ? 4 : (P) == 2 ? 3 : ((P) == 4 && (KA) == 2) ? 4 : ((P) == 3 || (P) >= 12) ? 3 : 2)
#define QGB_CASE(KA, KB)                                                                                   \
    case (KA)*8 + (KB): bits_macro(KA, KB, QGB_MR((KA) * (KB)), QGB_NR(KA, (KA) * (KB)), g, i0, i1, j0, j1); return;

QGB_FN void qg_bits_avx512(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1)
{
    switch (g->abits * 8 + g->bbits) {
    QG_BITS_PAIRS(QGB_CASE)
    default: qg_bits_scalar(g, i0, i1, j0, j1); return;
    }
}

/* ---- int8 (VNNI) ------------------------------------------------------------------------------ */
#define QGV_MR 8
#define QGV_MC 256  /* rows of A per block: 256 x KC bytes in L2 */
/* k4 steps per block: the tile's B chunk (2 panels x KC steps x STORE/8 x 64 bytes) stays at 16 KB,
 * a third of L1 (at 32 KB the 8-bit panels ran at 2/3 of the speed of the 2-bit ones) */
#define QGV_KC(STORE) ((size_t)(1024 / (STORE)))

/* one tile over steps [s0, s0 + ns): MR rows of A x 2 panels (p1 may alias p0: then only 16 columns
 * are stored). STORE: bits per B code in the panels. */
QGV_INLINE void i8_tile(const int MR, const int STORE, const uint8_t *a, ptrdiff_t lda, const uint8_t *p0,
                        const uint8_t *p1, size_t s0, size_t ns, int first, int32_t *c, ptrdiff_t ldc,
                        int ncols)
{
    /* odd steps go to a second set of accumulators when the tile is thin (batch 1: vpdpbusd's 5-cycle
     * latency, not its throughput, would bound 2 chains) */
    enum { SETS = 2 };
    const int sets = MR <= 2 ? 2 : 1;
    __m512i acc[SETS][QGV_MR][2];
#pragma GCC unroll 2
    for (int e = 0; e < sets; e++)
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++)
            acc[e][i][0] = acc[e][i][1] = _mm512_setzero_si512();
    const int per = 8 / STORE;
    const __m512i mask = _mm512_set1_epi8((char)((1 << STORE) - 1));
    /* 4 steps (16 values of K) per iteration whatever the storage: the row addresses advance once per
     * 4 steps (with one step per iteration, 8-bit panels ran at half the speed of 2-bit ones: the
     * per-row pointer updates compete with vpdpbusd for ports 0 and 5) */
    for (size_t s = s0; s < s0 + ns; s += 4) {
        const uint8_t *as = a + 4 * s;
        __m512i V0 = _mm512_setzero_si512(), V1 = V0;
#pragma GCC unroll 4
        for (int h = 0; h < 4; h++) {
            if (h % per == 0) {
                const size_t off = (s + (size_t)h) / (size_t)per * 64;
                V0 = _mm512_load_si512((const void *)(p0 + off));
                V1 = _mm512_load_si512((const void *)(p1 + off));
            }
            __m512i B0 = V0, B1 = V1;
            if (STORE != 8) {
                const int sh = STORE * (h % per);
                B0 = _mm512_and_si512(sh ? _mm512_srli_epi16(V0, (unsigned)sh) : V0, mask);
                B1 = _mm512_and_si512(sh ? _mm512_srli_epi16(V1, (unsigned)sh) : V1, mask);
            }
            const int e = sets == 2 ? (h & 1) : 0;
#pragma GCC unroll 8
            for (int i = 0; i < MR; i++) {
                int32_t w;
                __builtin_memcpy(&w, as + (ptrdiff_t)i * lda + 4 * h, 4);
                const __m512i Ab = _mm512_set1_epi32(w);
                acc[e][i][0] = _mm512_dpbusd_epi32(acc[e][i][0], Ab, B0);
                acc[e][i][1] = _mm512_dpbusd_epi32(acc[e][i][1], Ab, B1);
            }
        }
    }
    if (sets == 2)
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            acc[0][i][0] = _mm512_add_epi32(acc[0][i][0], acc[1][i][0]);
            acc[0][i][1] = _mm512_add_epi32(acc[0][i][1], acc[1][i][1]);
        }
    const __mmask16 m0 = ncols >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << ncols) - 1u);
    const __mmask16 m1 = ncols >= 32 ? (__mmask16)0xffff : ncols <= 16 ? 0 : (__mmask16)((1u << (ncols - 16)) - 1u);
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        int32_t *ci = c + (ptrdiff_t)i * ldc;
        if (!first) {
            acc[0][i][0] = _mm512_add_epi32(acc[0][i][0], _mm512_maskz_loadu_epi32(m0, ci));
            acc[0][i][1] = _mm512_add_epi32(acc[0][i][1], _mm512_maskz_loadu_epi32(m1, ci + 16));
        }
        _mm512_mask_storeu_epi32(ci, m0, acc[0][i][0]);
        _mm512_mask_storeu_epi32(ci + 16, m1, acc[0][i][1]);
    }
}

/* the tiles of rows [i, me) over one B chunk: p0/p1 hold steps [s0, s0 + ns) at STORE bits per code */
QGV_INLINE void i8_rows(const int STORE, const uint8_t *a, ptrdiff_t lda, size_t i, size_t me, const uint8_t *p0,
                        const uint8_t *p1, size_t s0, size_t ns, int first, int32_t *c, ptrdiff_t ldc, int ncols)
{
    for (; i < me; i += QGV_MR, a += QGV_MR * lda, c += QGV_MR * ldc) {
        switch (me - i >= QGV_MR ? QGV_MR : (int)(me - i)) {
        case 8: i8_tile(8, STORE, a, lda, p0, p1, s0, ns, first, c, ldc, ncols); break;
        case 7: i8_tile(7, STORE, a, lda, p0, p1, s0, ns, first, c, ldc, ncols); break;
        case 6: i8_tile(6, STORE, a, lda, p0, p1, s0, ns, first, c, ldc, ncols); break;
        case 5: i8_tile(5, STORE, a, lda, p0, p1, s0, ns, first, c, ldc, ncols); break;
        case 4: i8_tile(4, STORE, a, lda, p0, p1, s0, ns, first, c, ldc, ncols); break;
        case 3: i8_tile(3, STORE, a, lda, p0, p1, s0, ns, first, c, ldc, ncols); break;
        case 2: i8_tile(2, STORE, a, lda, p0, p1, s0, ns, first, c, ldc, ncols); break;
        default: i8_tile(1, STORE, a, lda, p0, p1, s0, ns, first, c, ldc, ncols); break;
        }
    }
}

/* Steps [s0, s0 + ns) of a 2-/4-bit panel as 8-bit codes, one 64-byte vector per step (ns and s0 are
 * multiples of 4, so whole storage vectors). */
QGV_INLINE void i8_decode(const int STORE, const uint8_t *p, size_t s0, size_t ns, uint8_t *dst)
{
    const int per = 8 / STORE;
    const __m512i mask = _mm512_set1_epi8((char)((1 << STORE) - 1));
    for (size_t s = 0; s < ns; s += (size_t)per) {
        const __m512i V = _mm512_load_si512((const void *)(p + (s0 + s) / (size_t)per * 64));
#pragma GCC unroll 4
        for (int h = 0; h < per; h++)
            _mm512_store_si512((void *)(dst + (s + (size_t)h) * 64),
                               _mm512_and_si512(h ? _mm512_srli_epi16(V, (unsigned)(STORE * h)) : V, mask));
    }
}

/* rows of A per block from which 2-/4-bit panels are decoded once per chunk into an 8-bit L1 buffer
 * rather than in registers by every row tile: the decode then costs ns vectors per chunk instead of
 * ns vectors per 8 rows (ternary x u8 at 256 x 4096 x 4096: the in-register decode left it 5% behind
 * s8 x u8, whose panels need none) */
#define QGV_DECODE_ROWS 32

/* rows [i0, i1) x columns [j0, j1) over the k4 steps from k_begin (a multiple of 16) to the end; from
 * k_begin > 0 the products are added to C */
QGV_INLINE void i8_macro(const int STORE, const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1,
                         size_t k_begin)
{
    const uint8_t *A = (const uint8_t *)g->a, *B = (const uint8_t *)g->b;
    const size_t steps = qg_a8_stride(g->k) / 4;
    const size_t panel_bytes = steps * (size_t)STORE / 8 * 64;
    _Alignas(64) uint8_t decoded[2][QGV_KC(8) * 64];
    for (size_t mb = i0; mb < i1; mb += QGV_MC) {
        const size_t me = (i1 - mb > QGV_MC) ? mb + QGV_MC : i1;
        const int decode = STORE != 8 && me - mb >= QGV_DECODE_ROWS;
        const size_t kc = decode ? QGV_KC(8) : QGV_KC(STORE);
        const uint8_t *a = A + (ptrdiff_t)mb * g->lda;
        for (size_t kb = k_begin; kb < steps; kb += kc) {
            const size_t ns = (steps - kb > kc) ? kc : steps - kb;
            for (size_t j = j0; j < j1; j += 2 * QG_NR) {
                const int ncols = (j1 - j >= 2 * QG_NR) ? 2 * QG_NR : (int)(j1 - j);
                const uint8_t *p0 = B + (j / QG_NR) * panel_bytes;
                const uint8_t *p1 = ncols > QG_NR ? p0 + panel_bytes : p0;
                int32_t *c = g->c + (ptrdiff_t)mb * g->ldc + (ptrdiff_t)j;
                if (decode) {
                    i8_decode(STORE, p0, kb, ns, decoded[0]);
                    if (p1 != p0)
                        i8_decode(STORE, p1, kb, ns, decoded[1]);
                    i8_rows(8, a + 4 * kb, g->lda, mb, me, decoded[0], p1 != p0 ? decoded[1] : decoded[0], 0, ns,
                            kb == 0, c, g->ldc, ncols);
                } else {
                    i8_rows(STORE, a, g->lda, mb, me, p0, p1, kb, ns, kb == 0, c, g->ldc, ncols);
                }
            }
        }
    }
}

QGV_FN void qg_int8_vnni(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1)
{
    switch (g->bstore) {
    case 2: i8_macro(2, g, i0, i1, j0, j1, 0); return;
    case 4: i8_macro(4, g, i0, i1, j0, j1, 0); return;
    default: i8_macro(8, g, i0, i1, j0, j1, 0); return;
    }
}

/* ---- int8 (AMX) ------------------------------------------------------------------------------- */
/* tdpbusd multiplies a 16-row x 64-byte tile of u8 A by a 16 x 64-byte tile of s8 B holding 16 k4 steps
 * of 16 columns -- exactly 16 consecutive steps of one of our panels (qgemm.h), so 8-bit panels are read
 * as they are -- and adds the 16 x 16 int32 products into a C tile. A block of 32 rows x 32 columns keeps
 * its 4 C tiles in tmm0-3 over a K block: per 16 steps, 2 A tiles (tmm4-5) and 2 B tiles (tmm6-7) are
 * loaded and 4 tdpbusd issued.
 *   A       copied into tile order per 256-row block (a tile load from rows lda bytes apart -- 4 KB at
 *           K = 4096 -- puts all 16 lines in one L1 set); it streams from L2.
 *   B       per 32-column strip and K block, the 2 panels' chunk (16 KB) stays in L1 for every 32-row
 *           block; 2-/4-bit panels are decoded to 8 bits into that L1 chunk (i8_decode), once for all
 *           the rows (a per-call 8-bit copy of every panel was written to memory and read back: 2.5x
 *           slower at 256 x 4096 x 4096).
 *   C       between K blocks the partial sums go to a strip buffer 128 bytes a row (C itself is 16 KB a
 *           row at N = 4096: the 16 rows of a tile fall in one L1 set and few L2 sets, and went to L3
 *           and back); the last K block stores into C.
 * The tile intrinsics are asm statements that take addresses in registers, so the compiler does not see
 * them read memory: compiler barriers follow every write of a buffer they read (else a store into memory
 * that is freed unread may be dropped). The VNNI kernel does the rest: K past the last whole tile
 * (adding to C), and the rows and columns outside whole blocks (N % 32, M % 32 below QGX_MIN_TAIL rows --
 * a longer row tail is one more block, zero-padded -- and calls narrower than a block, such as batch 1). */
#if QG_HAVE_AMX
#define QGX_FN __attribute__((target("avx512f,avx512bw,avx512vnni,amx-tile,amx-int8")))
#define QGX_MC 256 /* rows per block: 256 x K bytes of A in L2 while the 32-column strips pass */
/* k4 steps per K block: the 2 B panels' chunk (2 x KC x 64 bytes = 16 KB) stays in L1 while every
 * 32-row block of the MC rows passes over it */
#define QGX_KC 128
#define QGX_MIN_TAIL 8 /* rows past the last whole 32 that run as a padded tile block (fewer: VNNI) */

QGX_FN void qg_int8_amx(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1)
{
    const size_t steps = qg_a8_stride(g->k) / 4, ksteps = steps / 16 * 16;
    const size_t jm = j0 + (j1 - j0) / 32 * 32;
    size_t im = i0 + (i1 - i0) / 32 * 32;
    const int store = g->bstore;
    if (ksteps == 0 || im == i0 || jm == j0) {
        qg_int8_vnni(g, i0, i1, j0, j1);
        return;
    }
    /* a tail of >= QGX_MIN_TAIL rows runs as one more tile block, its missing rows zero in A and its C rows
     * stored through a buffer: the VNNI kernel is ~4x slower a row (a 27-wide conv band of 108 rows left 12
     * of them, 11%, to it) */
    if (i1 - im >= QGX_MIN_TAIL)
        im += 32;
    const size_t iv = im < i1 ? im : i1; /* the valid rows the tiles compute end here */
    const size_t panel_bytes = steps * (size_t)store / 8 * 64;
    const uint8_t *B = (const uint8_t *)g->b;
    const size_t ntiles = ksteps / 16;
    const size_t mc = (im - i0 < QGX_MC) ? im - i0 : QGX_MC;
    uint8_t *apack = (uint8_t *)aligned_alloc(64, mc / 16 * ntiles * 1024);
    if (!apack) {
        qg_int8_vnni(g, i0, i1, j0, j1);
        return;
    }
    _Alignas(64) int32_t cpart[QGX_MC * 32];
    _Alignas(64) uint8_t dec[2][QGX_KC * 64];
    qg_tilecfg cfg;
    qg_tilecfg_16x64(&cfg);
    _tile_loadconfig(&cfg);
    const uint8_t *A = (const uint8_t *)g->a;
    const ptrdiff_t lda = g->lda, ldc = g->ldc, cstride = ldc * (ptrdiff_t)sizeof(int32_t);
    for (size_t mb = i0; mb < im; mb += QGX_MC) {
        const size_t me = (im - mb > QGX_MC) ? mb + QGX_MC : im;
        for (size_t r = mb; r < me; r++) {
            const uint8_t *src = A + (ptrdiff_t)r * lda;
            uint8_t *dst = apack + (r - mb) / 16 * ntiles * 1024 + (r - mb) % 16 * 64;
            for (size_t t = 0; t < ntiles; t++)
                _mm512_store_si512((void *)(dst + t * 1024),
                                   r < i1 ? _mm512_loadu_si512((const void *)(src + t * 64)) : _mm512_setzero_si512());
        }
        __asm__ volatile("" ::: "memory");
        for (size_t j = j0; j < jm; j += 32) {
            const uint8_t *p0 = B + j / QG_NR * panel_bytes, *p1 = p0 + panel_bytes;
            for (size_t kb = 0; kb < ksteps; kb += QGX_KC) {
                const size_t ke = (ksteps - kb > QGX_KC) ? kb + QGX_KC : ksteps;
                const int last = ke == ksteps;
                const uint8_t *b0 = p0 + kb * 64, *b1 = p1 + kb * 64; /* step kb of 8-bit panels */
                if (store != 8) {
                    if (store == 2) {
                        i8_decode(2, p0, kb, ke - kb, dec[0]);
                        i8_decode(2, p1, kb, ke - kb, dec[1]);
                    } else {
                        i8_decode(4, p0, kb, ke - kb, dec[0]);
                        i8_decode(4, p1, kb, ke - kb, dec[1]);
                    }
                    __asm__ volatile("" ::: "memory");
                    b0 = dec[0], b1 = dec[1];
                }
                for (size_t i = mb; i < me; i += 32) {
                    const uint8_t *a0 = apack + (i - mb) / 16 * ntiles * 1024 + kb * 64, *a1 = a0 + ntiles * 1024;
                    int32_t *cp = cpart + (i - mb) * 32;
                    if (kb == 0) {
                        _tile_zero(0);
                        _tile_zero(1);
                        _tile_zero(2);
                        _tile_zero(3);
                    } else {
                        _tile_loadd(0, cp, 128);
                        _tile_loadd(1, cp + 16, 128);
                        _tile_loadd(2, cp + 16 * 32, 128);
                        _tile_loadd(3, cp + 16 * 32 + 16, 128);
                    }
                    for (size_t s = 0; s < ke - kb; s += 16) {
                        _tile_loadd(4, a0 + s * 64, 64);
                        _tile_loadd(5, a1 + s * 64, 64);
                        _tile_loadd(6, b0 + s * 64, 64);
                        _tile_loadd(7, b1 + s * 64, 64);
                        _tile_dpbusd(0, 4, 6);
                        _tile_dpbusd(1, 4, 7);
                        _tile_dpbusd(2, 5, 6);
                        _tile_dpbusd(3, 5, 7);
                    }
                    if (last && i + 32 > i1) { /* the padded tail block: its valid rows only */
                        _Alignas(64) int32_t tail[32 * 32];
                        _tile_stored(0, tail, 128);
                        _tile_stored(1, tail + 16, 128);
                        _tile_stored(2, tail + 16 * 32, 128);
                        _tile_stored(3, tail + 16 * 32 + 16, 128);
                        __asm__ volatile("" ::: "memory");
                        for (size_t r = i; r < i1; r++)
                            __builtin_memcpy(g->c + (ptrdiff_t)r * ldc + (ptrdiff_t)j, tail + (r - i) * 32, 128);
                    } else if (last) {
                        int32_t *c = g->c + (ptrdiff_t)i * ldc + (ptrdiff_t)j;
                        _tile_stored(0, c, cstride);
                        _tile_stored(1, c + 16, cstride);
                        _tile_stored(2, c + 16 * ldc, cstride);
                        _tile_stored(3, c + 16 * ldc + 16, cstride);
                    } else {
                        _tile_stored(0, cp, 128);
                        _tile_stored(1, cp + 16, 128);
                        _tile_stored(2, cp + 16 * 32, 128);
                        _tile_stored(3, cp + 16 * 32 + 16, 128);
                    }
                }
                __asm__ volatile("" ::: "memory"); /* the decode of the next block comes after these reads */
            }
        }
    }
    _tile_release();
    __asm__ volatile("" ::: "memory"); /* the tile stores (asm without a memory clobber) come before C is read */
    free(apack);
    if (ksteps < steps) {
        switch (store) {
        case 2: i8_macro(2, g, i0, iv, j0, jm, ksteps); break;
        case 4: i8_macro(4, g, i0, iv, j0, jm, ksteps); break;
        default: i8_macro(8, g, i0, iv, j0, jm, ksteps); break;
        }
    }
    if (jm < j1)
        qg_int8_vnni(g, i0, iv, jm, j1);
    if (iv < i1)
        qg_int8_vnni(g, iv, i1, j0, j1);
}
#else /* a compiler without AMX intrinsics: the path runs the VNNI kernel */
void qg_int8_amx(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1) { qg_int8_vnni(g, i0, i1, j0, j1); }
#endif


/* ---- the level-set fold (qg_fold, qgemm_driver.c) ------------------------------------------------ */
static inline __attribute__((always_inline, target("avx512f"))) void fold_row(const qg_args *g, const qg_fold_k *f,
                                                                             int32_t *c, uint32_t ra, size_t j0, size_t j1)
{
    const __m512i vsab = _mm512_set1_epi32((int)f->sab), vcb = _mm512_set1_epi32((int)f->cb);
    const __m512i vra = _mm512_set1_epi32((int)ra);
    for (size_t j = j0; j < j1; j += 16) {
        const __mmask16 m = j1 - j >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (j1 - j)) - 1u);
        __m512i v = _mm512_add_epi32(_mm512_mullo_epi32(_mm512_maskz_loadu_epi32(m, c + j), vsab), vra);
        if (f->cb)
            v = _mm512_add_epi32(v, _mm512_mullo_epi32(_mm512_maskz_loadu_epi32(m, g->sumb + j), vcb));
        _mm512_mask_storeu_epi32(c + j, m, v);
    }
}

__attribute__((target("avx512f"))) void qg_fold_avx512(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1)
{
    qg_fold_rows(g, i0, i1, j0, j1, fold_row);
}

#endif /* BG_X86 */
