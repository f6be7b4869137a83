/*
 * bitgemm.h -- internal interface of lowbit's binary (XNOR + popcount) GEMM.
 *
 * The core is split the way gemmlowp / ruy / BLIS split theirs, one file per concern:
 *
 *   bitgemm_pack.c          packing: +-1 (or any real / integer) matrix -> rows of 64-bit words
 *   bitgemm_kernels_*.c     per-ISA "macro-kernels": loop over register tiles of one cache block,
 *                           each tile computed by an inlined micro-kernel (portable, popcnt, avx2,
 *                           avx512)
 *   bitgemm_driver.c        blocking over K and N (cache), splitting over threads, run-time CPU
 *                           dispatch, the naive reference kernel
 *   bitgemm_module.c        CPython bindings (buffer protocol, no NumPy headers)
 *
 * Data layout (shared by every piece and by the Python side):
 *   A packed row i holds K bits in ceil(K/64) uint64 words; element j of the row is bit (j % 64) of
 *   word (j / 64) (little-endian bit order, as np.packbits(..., bitorder="little")). A set bit means
 *   -1 (the value was < 0), a clear bit +1. Pad bits past K are *ignored* by every kernel (masked),
 *   so packed operands produced elsewhere need not clear them.
 *
 *   For +-1 vectors a, b of length K:  dot(a, b) = K - 2 * popcount(a XOR b).
 *
 * Writing into a caller's int32 output with any row stride is built in (bg_gemm_args.c / ldc). A
 * fused epilogue (e.g. threshold -> packed sign bits for the next binary layer) would go where the
 * micro-kernels store their tile (store_row in the AVX2 kernel, the end of each tile elsewhere):
 * the popcounts are in registers there, and bg_block would carry the per-column thresholds.
 */
#ifndef LOWBIT_BITGEMM_H
#define LOWBIT_BITGEMM_H

#include <stddef.h>
#include <stdint.h>

#include "lowbit_cpu.h"

/* ------------------------------------------------------------------------------------------------
 * Dispatch paths: the shared enum of lowbit_cpu.h. What each runs here:
 *
 *   LB_PATH_PORTABLE   scalar __builtin_popcountll, compiled for the baseline ISA
 *   LB_PATH_POPCNT     scalar, hardware POPCNT instruction
 *   LB_PATH_AVX2       256-bit vpshufb nibble-lookup popcount (Mula)
 *   LB_PATH_AVX512     512-bit VPOPCNTQ (AVX-512 VPOPCNTDQ); the threshold and u8 passes run AVX2 code
 *   LB_PATH_AVX512VNNI the avx512 kernels (VNNI is for the k-bit GEMM's int8 kernel, qgemm.h)
 *   LB_PATH_AMX        the avx512 kernels (AMX is for the k-bit GEMM's int8 kernel, qgemm.h)
 *
 * The bg_ / BG_ names below are aliases kept for code written against the enum this header once had.
 * ---------------------------------------------------------------------------------------------- */
#define BG_X86 LB_X86
typedef lb_path bg_path;
#define BG_PATH_PORTABLE LB_PATH_PORTABLE
#define BG_PATH_POPCNT LB_PATH_POPCNT
#define BG_PATH_AVX2 LB_PATH_AVX2
#define BG_PATH_AVX512 LB_PATH_AVX512
#define BG_PATH_AVX512VNNI LB_PATH_AVX512VNNI
#define BG_PATH_AMX LB_PATH_AMX
#define BG_NPATHS LB_NPATHS
#define BG_PATH_AUTO LB_PATH_AUTO
#define bg_path_name lb_path_name
#define bg_path_supported lb_path_supported
#define bg_best_path lb_best_path

/* The valid bits of the last 64-bit word of a K-bit row (all ones when K % 64 == 0). */
static inline uint64_t bg_last_word_mask(size_t k)
{
    return (k % 64) ? (((uint64_t)1 << (k % 64)) - 1) : ~(uint64_t)0;
}

/* ------------------------------------------------------------------------------------------------
 * One cache block of the GEMM, as handed from the driver to a macro-kernel.
 *
 *   C[i][j] = (first ? k : C[i][j]) - 2 * popcount(A[i][0:nw] XOR B[j][0:nw])    0 <= i < m, 0 <= j < n
 *
 * where the last of the nw words is ANDed with tailmask (all ones unless this block holds the end of
 * K and K % 64 != 0). a, b point at word 0 of the block's first row; lda, ldb, ldc are row strides
 * in elements. Splitting K into blocks is why `first` exists: the first block initialises C, later
 * ones subtract their share, so C never needs a separate popcount buffer.
 * ---------------------------------------------------------------------------------------------- */
typedef struct {
    const uint64_t *a;
    ptrdiff_t lda;
    const uint64_t *b;
    ptrdiff_t ldb;
    int32_t *c;
    ptrdiff_t ldc;
    size_t m, n; /* rows of A, rows of B in this block */
    size_t nw;   /* words of K in this block, >= 1 */
    uint64_t tailmask;
    int first;
    int32_t k; /* total K in bits (only used when first) */
    void *scratch; /* per-thread work memory for packing panels (64-byte aligned), may be NULL */
    size_t scratch_bytes;
    /* Panels already in the kernel's native layout (NULL: none; then the kernel reads a / b, splitting
     * them itself if it wants panels). Set only by the prepared-B loop nest (bg_gemm with
     * bg_gemm_args.bprep): apanel holds the block's m rows of A split by the driver once per (M block,
     * K block) instead of once per (N block, M block, K block); bpanel the block's n rows of B from
     * bg_prepare, made once at load time. a and b stay valid either way (thin blocks read them). */
    const void *apanel;
    const void *bpanel;
} bg_block;

typedef void (*bg_macro_fn)(const bg_block *blk);

/* Macro-kernels sweep the rows of A inside groups of BG_C_GROUP rows of B, so that one pass writes a
 * whole 64-byte line of each C row (16 int32). Writing C in 16-byte pieces instead (one 4-wide tile)
 * touches every line 4 times, far apart in time; with C rows 16 KB apart (N = 4096) those lines also
 * fall into a handful of cache sets, and C traffic went to L3. */
#define BG_C_GROUP 16

/* Per-path kernel description: the macro-kernel and the blocking it wants from the driver. */
typedef struct {
    bg_macro_fn macro;
    int mr, nr;    /* register tile (rows of A x rows of B) */
    size_t kc;     /* K block, in words */
    size_t nc;     /* N block, in rows of B */
    size_t mc;     /* M block, in rows of A */
    /* per-thread work memory the macro-kernel wants for blocks of m x n rows and kc words (NULL:
     * none); the driver passes it in bg_block.scratch */
    size_t (*scratch_bytes)(size_t m, size_t n, size_t kc);
    /* Prepared B ("prepacked RHS", as in gemmlowp / ruy): paths whose macro-kernel repacks B (AVX2:
     * nibble panels) can have the weights repacked once, at load time, in exactly the layout their
     * blocks consume; NULL members: the path reads packed rows in place and has nothing to prepare.
     *   split:      rows x nw words (last word ANDed with tailmask) -> panel at dst (64-byte aligned)
     *   prep_bytes: size of the prepared form of n rows of w words
     *   prep_block: where, in a prepared buffer of n rows of w words, the panel of row `row` for the
     *               K block starting at word kb begins (rows of one K block are contiguous, so any
     *               range of rows is itself a panel: thread shares need not align to anything) */
    void (*split)(const uint64_t *src, ptrdiff_t ld, size_t rows, size_t nw, uint64_t tailmask, void *dst);
    size_t (*prep_bytes)(size_t n, size_t w);
    const void *(*prep_block)(const void *prep, size_t n, size_t w, size_t kb, size_t row);
} bg_kernel;

/* Macro-kernels (one per path; the x86 ones exist only where the compiler can target them). */
void bg_macro_portable(const bg_block *blk);
#if LB_X86
void bg_macro_popcnt(const bg_block *blk);
void bg_macro_avx2(const bg_block *blk);
void bg_macro_avx512(const bg_block *blk);
/* blocking of the AVX2 path (its macro-kernel splits whole blocks into nibble panels) */
#define BG_AVX2_KC 64  /* words: 4096 bits, 16 vector steps, below the 31 a byte counter takes */
#define BG_AVX2_MC 128
#define BG_AVX2_NC 128
size_t bg_avx2_scratch_bytes(size_t m, size_t n, size_t kc);
void bg_avx2_split(const uint64_t *src, ptrdiff_t ld, size_t rows, size_t nw, uint64_t tailmask, void *dst);
size_t bg_avx2_prep_bytes(size_t n, size_t w);
const void *bg_avx2_prep_block(const void *prep, size_t n, size_t w, size_t kb, size_t row);
#endif

/* ------------------------------------------------------------------------------------------------
 * Driver (bitgemm_driver.c)
 * ---------------------------------------------------------------------------------------------- */
typedef struct {
    const uint64_t *a;
    ptrdiff_t lda; /* in words */
    const uint64_t *b;
    ptrdiff_t ldb;
    int32_t *c;
    ptrdiff_t ldc; /* in int32 elements */
    size_t m, n;
    size_t k; /* bits; the driver reads ceil(k/64) words of each row, < 2^31 */
    /* B prepared by bg_prepare for `path` with these n and k (NULL: none). b must still point at
     * the packed rows: blocks too thin for panels (fewer than 4 rows of A) read them in place. */
    const void *bprep;
} bg_gemm_args;

/* C = A x B^T for +-1 matrices stored packed. path must be supported (or LB_PATH_AUTO). With
 * g->bprep, path must be the one it was prepared for (bg_gemm ignores bprep otherwise). */
void bg_gemm(const bg_gemm_args *g, int path, int nthreads);

/* Prepared B: bytes of the prepared form of n packed rows of k bits for `path` (0: the path reads
 * packed rows in place, nothing to prepare), and the preparation itself into dst (64-byte aligned,
 * bg_prepared_bytes long). */
size_t bg_prepared_bytes(int path, size_t n, size_t k);
void bg_prepare(int path, const uint64_t *b, ptrdiff_t ldb, size_t n, size_t k, void *dst, int nthreads);

/* How many threads bg_gemm would use for this problem (small problems run on fewer, down to 1). */
int bg_plan_threads(const bg_gemm_args *g, int path, int nthreads);

/* The deliberately naive reference: for i, for j, for word: acc += popcount(a ^ b). One thread, no
 * blocking. hw_popcount = 0: __builtin_popcountll compiled for the baseline ISA (what a plain build
 * gives); 1: the same loops with the POPCNT instruction (only if supported). */
void bg_gemm_naive(const bg_gemm_args *g, int hw_popcount);

/* Threads: lb_parallel (lowbit_cpu.h), under the names the kernel families of this extension use. */
typedef lb_task_fn bg_task_fn;
#define bg_parallel lb_parallel
/* Where thread t of nthreads starts its share of n items (its share ends where thread t + 1's starts). */
static inline size_t bg_share(size_t n, int t, int nthreads) { return n * (size_t)t / (size_t)nthreads; }

/* ------------------------------------------------------------------------------------------------
 * Threshold epilogue: int32 accumulators -> packed sign bits of the next binary layer
 *
 *   bit j of out row i (1 = -1) = sign[j] * (acc[i][j] - bias) < thr[j]      (int32, wrapping)
 *
 * with sign[j] = +-1 (precisely: a negative sign[j] negates, any other value keeps x; negation wraps
 * like int32). Bits past n in the last word are 0. This is BN + sign folded into one integer
 * comparison per output (lowbit.runtime.engine). Per-ISA row kernels
 * (scalar in bitgemm_kernels_scalar.c, AVX2 in bitgemm_kernels_avx2.c), threaded by the driver.
 * ---------------------------------------------------------------------------------------------- */
typedef struct {
    const int32_t *acc;
    ptrdiff_t ldacc; /* in int32 elements */
    size_t m, n;
    const int32_t *sign, *thr;
    int32_t bias;
    uint64_t *out;
    ptrdiff_t ldo; /* in words; each row gets ceil(n/64) words */
} bg_threshold_args;

/* rows [r0, r1), per ISA (one function type declares them all; the AVX2 one exists on x86 only) */
typedef void bg_threshold_rows_k(const bg_threshold_args *t, size_t r0, size_t r1);
typedef bg_threshold_rows_k *bg_threshold_rows_fn;
bg_threshold_rows_k bg_threshold_rows_scalar, bg_threshold_rows_avx2;
void bg_threshold_pack(const bg_threshold_args *t, int path, int nthreads);

/* ------------------------------------------------------------------------------------------------
 * First layer: 8-bit inputs times +-1 weights, exact in int32
 *
 *   C[i][j] = sum_k x[i][k] * w[j][k]      x: M rows of K uint8 (pixels), w: N rows of K values in
 *                                          {-1, 0, +1}, prepared once (bg_u8_prepare)
 *
 * The float32 sgemm this replaces is exact too (K * 255 < 2^24) but does 8 multiply-adds per vector
 * op; vpmaddubsw does 32 (u8 x s8 products, adjacent pairs summed into int16), and with |w| <= 1 a
 * pair is at most 510, so 64 pairs (128 values of K) accumulate in int16 without overflow before
 * they are widened into the int32 result.
 *
 * Prepared weights: panels of BG_U8_NR = 32 rows of w; per pair of K values (kp) one 64-byte step,
 * byte 32 * v + 2 * l + h = w[32 * panel + 16 * v + l][2 * kp + h] (v = 0, 1: the two vectors, l: the
 * 16-bit lane, h: which of the pair); rows past N and the value past an odd K are 0.
 * ---------------------------------------------------------------------------------------------- */
#define BG_U8_NR 32
#define BG_U8_MR 4
#define BG_U8_KCHUNK 64 /* pairs of K per int16 accumulation run: 64 * 510 = 32640 <= 32767 */

typedef struct {
    const uint8_t *x;
    ptrdiff_t ldx; /* in bytes */
    const int8_t *wp; /* prepared weights, bg_u8_prepared_bytes(n, k) bytes, 64-byte aligned */
    int32_t *c;
    ptrdiff_t ldc;
    size_t m, n, k;
} bg_u8_args;

size_t bg_u8_prepared_bytes(size_t n, size_t k);
void bg_u8_prepare(const int8_t *w, ptrdiff_t s0, ptrdiff_t s1, size_t n, size_t k, int8_t *dst);
/* the panels [p0, p1) of the product, all rows of x; per ISA (the AVX2 one on x86 only) */
typedef void bg_u8_panels_k(const bg_u8_args *g, size_t p0, size_t p1);
typedef bg_u8_panels_k *bg_u8_panels_fn;
bg_u8_panels_k bg_u8_panels_scalar, bg_u8_panels_avx2;
/* path: LB_PATH_AVX2 or better runs the AVX2 kernel, the others the scalar loops */
void bg_u8_gemm(const bg_u8_args *g, int path, int nthreads);

/* ------------------------------------------------------------------------------------------------
 * Packing (bitgemm_pack.c)
 * ---------------------------------------------------------------------------------------------- */
typedef enum {
    BG_T_I8, BG_T_I16, BG_T_I32, BG_T_I64,
    BG_T_U8, BG_T_U16, BG_T_U32, BG_T_U64,
    BG_T_F32, BG_T_F64
} bg_dtype;

typedef struct {
    const char *src; /* element (0, 0) */
    ptrdiff_t s0, s1; /* strides in bytes (any sign) */
    bg_dtype dtype;
    size_t rows, k;
    uint64_t *dst; /* row r starts at dst + r * ldd (ldd in words) */
    ptrdiff_t ldd;
    size_t dwords; /* words written per row, >= ceil(k/64); those past ceil(k/64) are zeroed */
    int check_pm1; /* 1: every value must be exactly +1 or -1 */
} bg_pack_args;

/* Packs; returns -1, or (with check_pm1) the row-major index i*k + j of the first value that is not
 * +-1 (the packed output is then unspecified). */
long long bg_pack(const bg_pack_args *p, int nthreads);

#endif /* LOWBIT_BITGEMM_H */
