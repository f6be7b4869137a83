/*
 * bitgemm_driver.c -- run-time dispatch, cache blocking and threading for the binary GEMM.
 *
 *   C[M x N] (int32) = A[M x K] . B[N x K]^T  over +-1 values stored packed (see bitgemm.h)
 *
 * Loop nest (BLIS order; the innermost loops live in the per-ISA macro-kernel):
 *
 *   thread share: a range of rows of B (or of A when B has too few rows to split evenly)
 *     for each NC rows of B
 *       for each MC rows of A
 *         for each KC words of K       the first K block stores into C, later ones subtract
 *           macro-kernel(block)        AVX2: split the A and B blocks into nibble panels in the
 *                                      thread's scratch memory (A panel in L2), then
 *             for each 16 rows of B      (B panel rows in L1; one 64-byte line of each C row)
 *               for each MR rows of A      micro-kernel tiles MR x NR
 *
 * Blocking per path (bg_kernel): AVX2 uses KC = 64 words (4096 bits: a K = 4096 product is one K
 * block and the byte counters never need widening mid-tile) and MC = NC = 128 rows, so both panels
 * together take 256 KB of the 512 KB L2. The scalar and AVX-512 kernels read packed rows in place
 * (rows are already contiguous along K) with KC = 128 words and 256-row blocks.
 *
 * Threads are plain pthreads started per call: simple, no idle pool to manage, fork-safe. Starting
 * one costs tens of microseconds, so problems with less than BG_MIN_WORK_PER_THREAD word pairs per
 * thread use fewer threads, down to one (the calling thread; no thread is started then).
 */
#include <stdlib.h>

#include "bitgemm.h"

#if !defined(_WIN32)
#include <pthread.h>
#define BG_HAVE_PTHREADS 1
#else
#define BG_HAVE_PTHREADS 0
#endif

/* blocking of the paths that read packed rows in place (AVX2's is in bitgemm.h) */
#define BG_KC 128 /* words (8192 bits) of K per block */
#define BG_NC 256 /* rows of B per block */
#define BG_MC 256 /* rows of A per block */
#define BG_MAX_THREADS 256
/* word pairs (row of A x row of B x 64-bit word) below which one more thread is not worth
 * starting: about 100 us of single-core AVX2 work, several times a thread's start + join */
#define BG_MIN_WORK_PER_THREAD ((double)(1 << 19))

/* ---- dispatch --------------------------------------------------------------------------------- */
static const char *const bg_names[BG_NPATHS] = {"portable", "popcnt", "avx2", "avx512"};

const char *bg_path_name(int path)
{
    return (path >= 0 && path < BG_NPATHS) ? bg_names[path] : "?";
}

int bg_path_supported(int path)
{
    switch (path) {
    case BG_PATH_PORTABLE:
        return 1;
#if BG_X86
    case BG_PATH_POPCNT:
        __builtin_cpu_init();
        return __builtin_cpu_supports("popcnt") != 0;
    case BG_PATH_AVX2:
        __builtin_cpu_init(); /* libgcc also checks the OS saves ymm state (XGETBV) */
        return __builtin_cpu_supports("avx2") != 0 && __builtin_cpu_supports("popcnt") != 0;
    case BG_PATH_AVX512:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") != 0 && __builtin_cpu_supports("avx512vpopcntdq") != 0;
#endif
    default:
        return 0;
    }
}

int bg_best_path(void)
{
    for (int p = BG_NPATHS - 1; p > 0; p--)
        if (bg_path_supported(p))
            return p;
    return BG_PATH_PORTABLE;
}

static bg_kernel bg_kernel_for(int path)
{
    bg_kernel k = {bg_macro_portable, 2, 4, BG_KC, BG_NC, BG_MC, NULL};
#if BG_X86
    switch (path) {
    case BG_PATH_POPCNT: k.macro = bg_macro_popcnt; break;
    case BG_PATH_AVX2:
        k.macro = bg_macro_avx2;
        k.kc = BG_AVX2_KC;
        k.nc = BG_AVX2_NC;
        k.mc = BG_AVX2_MC;
        k.scratch_bytes = bg_avx2_scratch_bytes;
        break;
    case BG_PATH_AVX512: k.macro = bg_macro_avx512; k.mr = 4; break;
    default: break;
    }
#else
    (void)path;
#endif
    return k;
}

/* ---- threads ---------------------------------------------------------------------------------- */
#if BG_HAVE_PTHREADS
typedef struct {
    bg_task_fn fn;
    void *ctx;
    int t, n;
} bg_thread_arg;

static void *bg_thread_main(void *p)
{
    const bg_thread_arg *a = (const bg_thread_arg *)p;
    a->fn(a->ctx, a->t, a->n);
    return NULL;
}
#endif

void bg_parallel(int nthreads, bg_task_fn fn, void *ctx)
{
    if (nthreads > BG_MAX_THREADS)
        nthreads = BG_MAX_THREADS;
    if (nthreads <= 1) {
        fn(ctx, 0, 1);
        return;
    }
#if BG_HAVE_PTHREADS
    pthread_t th[BG_MAX_THREADS];
    bg_thread_arg args[BG_MAX_THREADS];
    int started[BG_MAX_THREADS];
    for (int t = 1; t < nthreads; t++) {
        args[t].fn = fn;
        args[t].ctx = ctx;
        args[t].t = t;
        args[t].n = nthreads;
        started[t] = pthread_create(&th[t], NULL, bg_thread_main, &args[t]) == 0;
    }
    fn(ctx, 0, nthreads);
    for (int t = 1; t < nthreads; t++) {
        if (started[t])
            pthread_join(th[t], NULL);
        else /* could not start a thread (resource limits): do its share here */
            fn(ctx, t, nthreads);
    }
#else
    for (int t = 0; t < nthreads; t++)
        fn(ctx, t, nthreads);
#endif
}

/* ---- blocking --------------------------------------------------------------------------------- */
static void gemm_range(const bg_gemm_args *g, const bg_kernel *kern, size_t m0, size_t m1, size_t n0, size_t n1)
{
    /* per-thread work memory for the macro-kernel's panels; without it the kernel reads in place */
    const size_t W = (g->k + 63) / 64;
    void *scratch = NULL;
    size_t scratch_bytes = 0;
    if (kern->scratch_bytes) { /* sized for the largest block this range has */
        scratch_bytes = kern->scratch_bytes(m1 - m0 < kern->mc ? m1 - m0 : kern->mc,
                                            n1 - n0 < kern->nc ? n1 - n0 : kern->nc, W < kern->kc ? W : kern->kc);
        scratch = aligned_alloc(64, (scratch_bytes + 63) / 64 * 64);
        if (!scratch)
            scratch_bytes = 0;
    }
    const uint64_t lastmask = (g->k % 64) ? (((uint64_t)1 << (g->k % 64)) - 1) : ~(uint64_t)0;
    bg_block blk;
    blk.lda = g->lda;
    blk.ldb = g->ldb;
    blk.ldc = g->ldc;
    blk.k = (int32_t)g->k;
    blk.scratch = scratch;
    blk.scratch_bytes = scratch_bytes;
    for (size_t nb = n0; nb < n1; nb += kern->nc) {
        blk.n = (n1 - nb < kern->nc) ? n1 - nb : kern->nc;
        for (size_t mb = m0; mb < m1; mb += kern->mc) {
            blk.m = (m1 - mb < kern->mc) ? m1 - mb : kern->mc;
            for (size_t kb = 0; kb < W; kb += kern->kc) {
                blk.nw = (W - kb < kern->kc) ? W - kb : kern->kc;
                blk.tailmask = (kb + blk.nw == W) ? lastmask : ~(uint64_t)0;
                blk.first = kb == 0;
                blk.a = g->a + (ptrdiff_t)mb * g->lda + (ptrdiff_t)kb;
                blk.b = g->b + (ptrdiff_t)nb * g->ldb + (ptrdiff_t)kb;
                blk.c = g->c + (ptrdiff_t)mb * g->ldc + (ptrdiff_t)nb;
                kern->macro(&blk);
            }
        }
    }
    free(scratch);
}

/* How many threads, and along which dimension. Shares are whole register tiles. */
static int plan(const bg_gemm_args *g, const bg_kernel *kern, int nthreads, int *split_n)
{
    const size_t W = (g->k + 63) / 64;
    const double work = (double)g->m * (double)g->n * (double)(W ? W : 1);
    const size_t tiles_m = (g->m + (size_t)kern->mr - 1) / (size_t)kern->mr;
    const size_t tiles_n = (g->n + (size_t)kern->nr - 1) / (size_t)kern->nr;
    double t = work / BG_MIN_WORK_PER_THREAD;
    if (t > (double)nthreads) t = (double)nthreads;
    if (t > BG_MAX_THREADS) t = BG_MAX_THREADS;
    int nt = t < 1.0 ? 1 : (int)t;
    /* Split the rows of B (each thread then reads a disjoint slice of the usually larger weight
     * matrix) unless there are too few of them to balance, e.g. a 10-output layer. */
    *split_n = tiles_n >= 4 * (size_t)nt || tiles_n >= tiles_m;
    const size_t tiles = *split_n ? tiles_n : tiles_m;
    if ((size_t)nt > tiles) nt = tiles ? (int)tiles : 1;
    return nt;
}

typedef struct {
    const bg_gemm_args *g;
    const bg_kernel *kern;
    int split_n;
} gemm_ctx;

static void gemm_task(void *vctx, int t, int nthreads)
{
    const gemm_ctx *ctx = (const gemm_ctx *)vctx;
    const bg_gemm_args *g = ctx->g;
    const size_t dim = ctx->split_n ? g->n : g->m;
    const size_t tile = (size_t)(ctx->split_n ? ctx->kern->nr : ctx->kern->mr);
    const size_t tiles = (dim + tile - 1) / tile;
    size_t lo = tiles * (size_t)t / (size_t)nthreads * tile, hi = tiles * (size_t)(t + 1) / (size_t)nthreads * tile;
    if (hi > dim) hi = dim;
    if (lo >= hi)
        return;
    if (ctx->split_n)
        gemm_range(g, ctx->kern, 0, g->m, lo, hi);
    else
        gemm_range(g, ctx->kern, lo, hi, 0, g->n);
}

int bg_plan_threads(const bg_gemm_args *g, int path, int nthreads)
{
    const bg_kernel kern = bg_kernel_for(path);
    int split_n;
    return plan(g, &kern, nthreads, &split_n);
}

void bg_gemm(const bg_gemm_args *g, int path, int nthreads)
{
    if (g->m == 0 || g->n == 0)
        return;
    if (g->k == 0) { /* empty sums */
        for (size_t i = 0; i < g->m; i++)
            for (size_t j = 0; j < g->n; j++)
                g->c[(ptrdiff_t)i * g->ldc + (ptrdiff_t)j] = 0;
        return;
    }
    if (path < 0 || path >= BG_NPATHS || !bg_path_supported(path))
        path = bg_best_path();
    const bg_kernel kern = bg_kernel_for(path);
    gemm_ctx ctx;
    ctx.g = g;
    ctx.kern = &kern;
    const int nt = plan(g, &kern, nthreads, &ctx.split_n);
    bg_parallel(nt, gemm_task, &ctx);
}
