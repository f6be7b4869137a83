/*
 * qgemm.h -- internal interface of lowbit's k-bit GEMM (level sets beyond +-1).
 *
 * Every operand is a matrix of unsigned codes c (0 <= c < 2^bits) of a level set value = step*c + offset
 * (lowbit/kernels/levels.py). The kernels compute the raw code product
 *
 *   D[i][j] = sum_k ca[i][k] * (cb[j][k] - zb)          (mod 2^32, int32 lanes wrap)
 *
 * and one epilogue folds the level sets back in, exactly, from the row sums of codes SA, SB:
 *
 *   C = sa*sb*(D + zb*SA_i) + sa*ob*SA_i + oa*sb*SB_j + K*oa*ob
 *
 * All of it is evaluated modulo 2^32 (uint32 arithmetic); since the Python layer admits only problems
 * whose exact result fits int32, the wrapped value *is* the result. So no kernel needs wide
 * accumulators, and the int8 kernels may wrap their int32 lanes.
 *
 * Kernels (one file per ISA, as bitgemm):
 *   bit-serial    operands of 1..4-bit codes as bit planes, D = sum_{p,q} 2^(p+q) popcount(A_p AND B_q)
 *                 (zb = 0). qgemm_kernels_{scalar,avx2,avx512}.c
 *   int8          A as u8 codes, B as s8 (cb - zb) -- or B as 2-/4-bit codes decoded in registers
 *                 (zb = 0) -- with tdpbusd on 16 x 64-byte tiles (AMX), vpdpbusd (AVX-512 VNNI) or
 *                 vpmaddubsw + vpmaddwd (AVX2). 16 consecutive k4 steps of a panel are one AMX B tile.
 *   binary x binary goes to bitgemm's XNOR kernel (qgemm_driver.c).
 *
 * Layouts (made by qgemm_pack.c; pad codes are 0, so they add nothing to D, SA or SB):
 *   planes   row r of a k-bit operand: for each 512-bit slice v of K, for each plane p (bit p of the
 *            codes), 8 uint64 words, element k at bit k % 64 of word k / 64 % 8. Row stride ld words
 *            (>= nv * bits * 8, nv = ceil(K / 512)). One pass over a row reads all of its planes.
 *   a8       u8 codes of A, rows of kp bytes (K rounded up to QG_KALIGN, zero pad), stride lda.
 *   panels   B in panels of QG_NR = 16 rows; per group of 4 values of K ("k4 step") 64 bytes,
 *            byte 4*l + q = code of row 16*panel + l, K index 4*step + q. With 8-bit storage a step is
 *            one 64-byte vector of (cb - zb) as int8; with 4-bit storage a vector holds 2 steps (step
 *            2t + h in nibble h), with 2-bit storage 4 steps (step 4t + h in bits 2h, 2h+1).
 */
#ifndef LOWBIT_QGEMM_H
#define LOWBIT_QGEMM_H

#include "bitgemm.h"

#define QG_NR 16     /* rows of B per int8 panel (16 int32 lanes of a zmm) */
#define QG_KALIGN 16 /* K of a8 rows and of panels is padded to this (4 steps of 2-bit storage) */

typedef enum { QG_BITSERIAL = 0, QG_INT8 = 1, QG_XNOR = 2 } qg_kind;

/* The 16 (abits, bbits) pairs of the bit-serial kernels, CASE(KA, KB) each: a kernel's switch on
 * abits * 8 + bbits instantiates its tile body once per pair (KA, KB constants in each). */
#define QG_BITS_PAIRS(CASE)                                                                                \
    CASE(1, 1) CASE(1, 2) CASE(2, 1) CASE(2, 2) CASE(1, 3) CASE(3, 1) CASE(1, 4) CASE(4, 1)                \
    CASE(2, 3) CASE(3, 2) CASE(2, 4) CASE(4, 2) CASE(3, 3) CASE(3, 4) CASE(4, 3) CASE(4, 4)

/* The loops of a bit-serial register tile, fully unrolled (the accumulators must stay in registers): every
 * output (i, j) of MR x NR, and every weight class cl = p + q of a (KA, KB) pair. */
#define QG_TILE_LOOP(MR, NR, i, j)                                                                         \
    _Pragma("GCC unroll 4") for (int i = 0; i < (MR); i++) _Pragma("GCC unroll 4") for (int j = 0; j < (NR); j++)
#define QG_CLASS_LOOP(KA, KB, cl, from) _Pragma("GCC unroll 7") for (int cl = (from); cl < (KA) + (KB) - 1; cl++)

typedef struct {
    int kind;
    size_t m, n, k;
    /* A: planes (uint64, lda in words, abits planes) or a8 (uint8, lda in bytes) */
    const void *a;
    ptrdiff_t lda;
    int abits;
    /* B: planes (uint64, ldb in words, bbits planes) or panels (bstore bits per code) */
    const void *b;
    ptrdiff_t ldb;
    int bbits, bstore;
    /* epilogue: level sets and code sums (NULL sums: that term's coefficient is 0) */
    int32_t sa, oa, sb, ob, zb;
    const int32_t *suma, *sumb;
    int32_t *c;
    ptrdiff_t ldc;
} qg_args;

/* the kernel computing D for kind (QG_BITSERIAL / QG_INT8) on path (unsupported: the best path) */
typedef void (*qg_kernel_fn)(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);
qg_kernel_fn qg_kernel_for(int kind, int path);
/* the level-set epilogue on D of rows [i0, i1) x columns [j0, j1): C = sa*sb*(D + zb*SA) + ... (above) */
void qg_fold(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);
/* Its constants, shared by every ISA's fold: C = sab * D + ra_i + cb * SB_j with ra_i = ca * SA_i + k0 (cb 0
 * without SB), uint32 arithmetic. qg_fold_consts returns 0 when the fold is the identity (C = D). */
typedef struct {
    uint32_t sab, ca, k0, cb;
} qg_fold_k;
static inline int qg_fold_consts(const qg_args *g, qg_fold_k *f)
{
    f->sab = (uint32_t)g->sa * (uint32_t)g->sb;
    f->ca = f->sab * (uint32_t)g->zb + (uint32_t)g->sa * (uint32_t)g->ob;
    f->k0 = (uint32_t)g->k * (uint32_t)g->oa * (uint32_t)g->ob;
    f->cb = g->sumb ? (uint32_t)g->oa * (uint32_t)g->sb : 0u;
    return !(f->sab == 1u && (f->ca == 0u || !g->suma) && f->k0 == 0u && f->cb == 0u);
}
/* The fold of rows [i0, i1) x columns [j0, j1): nothing for the identity, else row(g, f, c, ra, j0, j1) on each
 * row c with its ra (an ISA's row loop: a constant where this is inlined, so the call is direct and inlined). */
typedef void (*qg_fold_row_fn)(const qg_args *g, const qg_fold_k *f, int32_t *c, uint32_t ra, size_t j0, size_t j1);
static inline __attribute__((always_inline)) void qg_fold_rows(const qg_args *g, size_t i0, size_t i1, size_t j0,
                                                               size_t j1, qg_fold_row_fn row)
{
    qg_fold_k f;
    if (!qg_fold_consts(g, &f))
        return; /* C = D */
    for (size_t i = i0; i < i1; i++)
        row(g, &f, g->c + (ptrdiff_t)i * g->ldc, (g->suma ? f.ca * (uint32_t)g->suma[i] : 0u) + f.k0, j0, j1);
}
qg_kernel_fn qg_fold_for(int path); /* qg_fold, vectorized for the path */

/* C = the level-set product; path as bitgemm's (must be supported or BG_PATH_AUTO). */
void qg_gemm(const qg_args *g, int path, int nthreads);
int qg_plan_threads(const qg_args *g, int path, int nthreads);

/* ---- threads (qgemm_threads.c) --------------------------------------------------------------------
 * fn(user, u, scratch) for every unit u in [0, units), on up to nthreads threads (the caller included),
 * units taken from a shared counter; returns once every unit is done, without waiting for a helper that
 * never got a core. scratch: scratch_bytes of zeroed memory per thread (NULL when 0). 0, or -1 when the
 * caller could not allocate its scratch (nothing was run). */
typedef void (*qg_unit_fn)(void *user, size_t unit, void *scratch);
int qg_run_units(size_t units, int nthreads, qg_unit_fn fn, void *user, size_t scratch_bytes);

/* ---- packing (qgemm_pack.c); codes: rows x k uint8, row stride ldx bytes, unit inner stride ------ */
size_t qg_plane_words(size_t k, int bits); /* words per planes row */
/* planes of rows [0, rows); sums[r] = sum of the row's codes (may be NULL) */
void qg_pack_planes(const uint8_t *x, ptrdiff_t ldx, size_t rows, size_t k, int bits, uint64_t *dst,
                    ptrdiff_t ldd, int32_t *sums, int nthreads);
/* bit p of each of the 8 bytes of v, gathered into the low 8 bits (byte t -> bit t): the plane packers'
 * (qgemm_pack.c, kconv_pack.c) multiply-free shift-or collapse, byte t's bit landing at bit 8t first */
static inline unsigned qg_gather_bit(uint64_t v, int p)
{
    uint64_t x = (v >> p) & 0x0101010101010101ULL;
    x |= x >> 7;
    x |= x >> 14;
    x |= x >> 28;
    return (unsigned)(x & 0xff);
}
size_t qg_a8_stride(size_t k);
void qg_pack_a8(const uint8_t *x, ptrdiff_t ldx, size_t rows, size_t k, uint8_t *dst, ptrdiff_t ldd,
                int32_t *sums, int nthreads);
size_t qg_panel_bytes(size_t n, size_t k, int store);
void qg_pack_panels(const uint8_t *x, ptrdiff_t ldx, size_t rows, size_t k, int store, int zb, uint8_t *dst,
                    int32_t *sums);

/* ---- kernels: D for rows [i0, i1) of A x panels / rows [j0, j1) of B, raw into g->c ------------- */
void qg_bits_scalar(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);
void qg_int8_scalar(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);
#if BG_X86
void qg_bits_popcnt(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);
void qg_bits_avx2(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);
void qg_int8_avx2(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);
void qg_bits_avx512(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);
void qg_int8_vnni(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);
void qg_int8_amx(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);

/* AMX: the compiler has the tile intrinsics (GCC 11+); else the amx path runs the VNNI kernel */
#if BG_X86 && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11
#define QG_HAVE_AMX 1
#else
#define QG_HAVE_AMX 0
#endif
/* ldtilecfg's 64-byte operand (palette 1): bytes per row and rows of each of the 16 tile registers */
typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} qg_tilecfg;
/* tmm0-7 all 16 rows x 64 bytes (the kernel's and the probe's one shape) */
static inline void qg_tilecfg_16x64(qg_tilecfg *cfg)
{
    __builtin_memset(cfg, 0, sizeof *cfg);
    cfg->palette = 1;
    for (int t = 0; t < 8; t++) {
        cfg->colsb[t] = 64;
        cfg->rows[t] = 16;
    }
    /* GCC's _tile_loadconfig tells the compiler it reads 8 bytes of the config, so the rest of a local
     * config may never be stored (ldtilecfg then faults on garbage): the address escapes here instead */
    __asm__ volatile("" : : "r"(cfg) : "memory");
}
void qg_fold_avx2(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);
void qg_fold_avx512(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1);
#endif

/* instruction-rate probe (qgemm_probe.c): seconds for iters iterations of probe kind (-1: not on this
 * CPU), and the operations (2 per multiply-add) one iteration does */
double qg_probe(int kind, long iters);
double qg_probe_ops(int kind);

#endif /* LOWBIT_QGEMM_H */
