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
 * Threads are lb_parallel's (lowbit_cpu.c), plain pthreads started per call. Starting one costs tens
 * of microseconds, so problems with less than BG_MIN_WORK_PER_THREAD word pairs per
 * thread use fewer threads, down to one (the calling thread; no thread is started then).
 */
#include <stdlib.h>

#include "bitgemm.h"

/* blocking of the paths that read packed rows in place (AVX2's is in bitgemm.h) */
#define BG_KC 128 /* words (8192 bits) of K per block */
#define BG_NC 256 /* rows of B per block */
#define BG_MC 256 /* rows of A per block */
/* word pairs (row of A x row of B x 64-bit word) below which one more thread is not worth
 * starting: about 100 us of single-core AVX2 work, several times a thread's start + join */
#define BG_MIN_WORK_PER_THREAD ((double)(1 << 19))

/* ---- dispatch (the paths and the CPU checks are lowbit_cpu.c's) ------------------------------ */
static bg_kernel bg_kernel_for(int path)
{
    bg_kernel k = {bg_macro_portable, 2, 4, BG_KC, BG_NC, BG_MC, NULL, NULL, NULL, NULL};
#if LB_X86
    switch (path) {
    case LB_PATH_POPCNT: k.macro = bg_macro_popcnt; break;
    case LB_PATH_AVX2:
        k.macro = bg_macro_avx2;
        k.kc = BG_AVX2_KC;
        k.nc = BG_AVX2_NC;
        k.mc = BG_AVX2_MC;
        k.scratch_bytes = bg_avx2_scratch_bytes;
        k.split = bg_avx2_split;
        k.prep_bytes = bg_avx2_prep_bytes;
        k.prep_block = bg_avx2_prep_block;
        break;
    case LB_PATH_AVX512:
    case LB_PATH_AVX512VNNI:
    case LB_PATH_AMX: k.macro = bg_macro_avx512; k.mr = 4; break; /* + VNNI: nothing more to use */
    default: break;
    }
#else
    (void)path;
#endif
    return k;
}

/* ---- blocking --------------------------------------------------------------------------------- */
/* A block's fields that stay the same for a whole range (the strides, K, the scratch); blk_at sets the rest. */
static inline bg_block blk_for(const bg_gemm_args *g, void *scratch, size_t scratch_bytes)
{
    bg_block blk;
    blk.lda = g->lda;
    blk.ldb = g->ldb;
    blk.ldc = g->ldc;
    blk.k = (int32_t)g->k;
    blk.scratch = scratch;
    blk.scratch_bytes = scratch_bytes;
    blk.apanel = blk.bpanel = NULL;
    return blk;
}

/* Points blk at rows mb.. of A and nb.. of B, K words kb.. (at most kc of the W, the last masked by lastmask). */
static inline void blk_at(bg_block *blk, const bg_gemm_args *g, size_t mb, size_t nb, size_t kb, size_t kc, size_t W,
                          uint64_t lastmask)
{
    blk->nw = (W - kb < kc) ? W - kb : kc;
    blk->tailmask = (kb + blk->nw == W) ? lastmask : ~(uint64_t)0;
    blk->first = kb == 0;
    blk->a = g->a + (ptrdiff_t)mb * g->lda + (ptrdiff_t)kb;
    blk->b = g->b + (ptrdiff_t)nb * g->ldb + (ptrdiff_t)kb;
    blk->c = g->c + (ptrdiff_t)mb * g->ldc + (ptrdiff_t)nb;
}

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
    const uint64_t lastmask = bg_last_word_mask(g->k);
    bg_block blk = blk_for(g, scratch, scratch_bytes);
    for (size_t nb = n0; nb < n1; nb += kern->nc) {
        blk.n = (n1 - nb < kern->nc) ? n1 - nb : kern->nc;
        for (size_t mb = m0; mb < m1; mb += kern->mc) {
            blk.m = (m1 - mb < kern->mc) ? m1 - mb : kern->mc;
            for (size_t kb = 0; kb < W; kb += kern->kc) {
                blk_at(&blk, g, mb, nb, kb, kern->kc, W, lastmask);
                kern->macro(&blk);
            }
        }
    }
    free(scratch);
}

/* The loop nest with B prepared (g->bprep, kern->prep_block): B's panels exist already, so nothing
 * of B is copied per call, and the N blocks lose their purpose (they bounded the B panel copied into
 * scratch); the loops become
 *
 *   for each MC rows of A
 *     for each KC words of K
 *       split the A block into the thread's scratch, once     (was: once per N block)
 *       macro-kernel(A panel x the share's whole B panel)     16 rows of B at a time, streamed
 *                                                             from L3 in order (prefetch-friendly)
 *
 * At M = 256, N = K = 4096 on 2 threads this splits 256 rows of A per thread and call instead of
 * 4096 rows of A and 4096 of B. Blocks with fewer than 4 rows of A get no panel and take the kernel's
 * direct path on the packed rows (batch 1 stays memory bound, and reads the packed B: half the bytes
 * of its panels).
 *
 * Measured on Zen 3 (one thread, N = K = 4096; min of 20): M = 4: 0.21 vs 0.24 ms, M = 16: 0.66 vs
 * 0.73, M = 64: 2.43 vs 2.58, M = 256: 9.6 vs 9.9 ms. The split was never the large share of the
 * time (~4 ops per vector, reused by >= 128 rows on the other side): the 2 x 4 tile's 6 vector ops
 * per 256-bit pair are. The B panel streamed from L3 needs the software prefetch in the AVX2
 * macro-kernel (panel_tiles): without it the prepared path was 7-15% *slower* at M = 16..64. */
static void gemm_range_prepared(const bg_gemm_args *g, const bg_kernel *kern, size_t m0, size_t m1, size_t n0,
                                size_t n1)
{
    const size_t W = (g->k + 63) / 64;
    const size_t mc = (m1 - m0 < kern->mc) ? m1 - m0 : kern->mc;
    const size_t scratch_bytes = kern->scratch_bytes(mc, 0, W < kern->kc ? W : kern->kc);
    void *scratch = mc >= 4 ? aligned_alloc(64, (scratch_bytes + 63) / 64 * 64) : NULL;
    const uint64_t lastmask = bg_last_word_mask(g->k);
    bg_block blk = blk_for(g, NULL, 0); /* no scratch: the kernel gets panels, it has nothing to split */
    blk.n = n1 - n0;
    for (size_t mb = m0; mb < m1; mb += kern->mc) {
        blk.m = (m1 - mb < kern->mc) ? m1 - mb : kern->mc;
        for (size_t kb = 0; kb < W; kb += kern->kc) {
            blk_at(&blk, g, mb, n0, kb, kern->kc, W, lastmask);
            blk.apanel = NULL;
            blk.bpanel = NULL;
            if (blk.m >= 4 && scratch) {
                kern->split(blk.a, g->lda, blk.m, blk.nw, blk.tailmask, scratch);
                blk.apanel = scratch;
                blk.bpanel = kern->prep_block(g->bprep, g->n, W, kb, n0);
            }
            kern->macro(&blk);
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
    if (t > LB_MAX_THREADS) t = LB_MAX_THREADS;
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
    int prepared; /* g->bprep is set and the path has a prepared layout */
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
    void (*range)(const bg_gemm_args *, const bg_kernel *, size_t, size_t, size_t, size_t) =
        ctx->prepared ? gemm_range_prepared : gemm_range;
    if (ctx->split_n)
        range(g, ctx->kern, 0, g->m, lo, hi);
    else
        range(g, ctx->kern, lo, hi, 0, g->n);
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
    path = lb_path_or_best(path);
    const bg_kernel kern = bg_kernel_for(path);
    gemm_ctx ctx;
    ctx.g = g;
    ctx.kern = &kern;
    ctx.prepared = g->bprep != NULL && kern.prep_block != NULL;
    const int nt = plan(g, &kern, nthreads, &ctx.split_n);
    bg_parallel(nt, gemm_task, &ctx);
}

/* ---- prepared B ------------------------------------------------------------------------------- */
size_t bg_prepared_bytes(int path, size_t n, size_t k)
{
    const bg_kernel kern = bg_kernel_for(path);
    return kern.prep_bytes ? kern.prep_bytes(n, (k + 63) / 64) : 0;
}

typedef struct {
    const bg_kernel *kern;
    const uint64_t *b;
    ptrdiff_t ldb;
    size_t n, k;
    void *dst;
} prep_ctx;

static void prep_task(void *vctx, int t, int nthreads)
{
    const prep_ctx *p = (const prep_ctx *)vctx;
    const size_t W = (p->k + 63) / 64;
    const uint64_t lastmask = bg_last_word_mask(p->k);
    const size_t r0 = bg_share(p->n, t, nthreads), r1 = bg_share(p->n, t + 1, nthreads);
    if (r0 >= r1)
        return;
    for (size_t kb = 0; kb < W; kb += p->kern->kc) { /* the K blocks exactly as the driver cuts them */
        const size_t nw = (W - kb < p->kern->kc) ? W - kb : p->kern->kc;
        const uint64_t tailmask = (kb + nw == W) ? lastmask : ~(uint64_t)0;
        void *dst = (void *)p->kern->prep_block(p->dst, p->n, W, kb, r0);
        p->kern->split(p->b + (ptrdiff_t)r0 * p->ldb + (ptrdiff_t)kb, p->ldb, r1 - r0, nw, tailmask, dst);
    }
}

void bg_prepare(int path, const uint64_t *b, ptrdiff_t ldb, size_t n, size_t k, void *dst, int nthreads)
{
    const bg_kernel kern = bg_kernel_for(path);
    if (!kern.prep_bytes || n == 0 || k == 0)
        return;
    prep_ctx p = {&kern, b, ldb, n, k, dst};
    /* a one-time cost, but 2 x the weight bytes written: worth a thread per ~1024 rows of 4096 bits */
    const double work = (double)n * (double)((k + 63) / 64);
    int nt = (int)(work / (double)(1 << 16));
    if (nt > nthreads) nt = nthreads;
    bg_parallel(nt < 1 ? 1 : nt, prep_task, &p);
}

/* ---- threshold epilogue ----------------------------------------------------------------------- */
/* A pass the threads split by items (threshold: rows of t; first layer: panels of g): t or g set. */
typedef struct {
    const bg_threshold_args *t;
    bg_threshold_rows_fn rows;
    const bg_u8_args *g;
    bg_u8_panels_fn panels;
    size_t items;
} pass_ctx;

static void pass_task(void *vctx, int t, int nthreads)
{
    const pass_ctx *c = (const pass_ctx *)vctx;
    const size_t i0 = bg_share(c->items, t, nthreads), i1 = bg_share(c->items, t + 1, nthreads);
    if (i0 >= i1)
        return;
    if (c->t)
        c->rows(c->t, i0, i1);
    else
        c->panels(c->g, i0, i1);
}

void bg_threshold_pack(const bg_threshold_args *t, int path, int nthreads)
{
    if (t->m == 0 || t->n == 0)
        return;
    path = lb_path_or_best(path);
    pass_ctx c = {.t = t, .rows = bg_threshold_rows_scalar, .items = t->m};
#if LB_X86
    if (path >= LB_PATH_AVX2) /* AVX-512 CPUs run the AVX2 version: this pass is memory bound */
        c.rows = bg_threshold_rows_avx2;
#endif
    /* memory bound, ~0.1-0.2 ns per accumulator (AVX2): a thread per 512 K of them (~4 x its start) */
    int nt = (int)((double)t->m * (double)t->n / (double)(1 << 19));
    if (nt > nthreads) nt = nthreads;
    if ((size_t)nt > t->m) nt = (int)t->m;
    bg_parallel(nt < 1 ? 1 : nt, pass_task, &c);
}

/* ---- first layer: uint8 x +-1 ---------------------------------------------------------------- */
size_t bg_u8_prepared_bytes(size_t n, size_t k)
{
    return (n + BG_U8_NR - 1) / BG_U8_NR * ((k + 1) / 2) * 64;
}

void bg_u8_prepare(const int8_t *w, ptrdiff_t s0, ptrdiff_t s1, size_t n, size_t k, int8_t *dst)
{
    const size_t steps = (k + 1) / 2, bytes = bg_u8_prepared_bytes(n, k);
    for (size_t b = 0; b < bytes; b++) /* rows past n and the value past an odd k stay 0 */
        dst[b] = 0;
    for (size_t j = 0; j < n; j++) {
        int8_t *panel = dst + (j / BG_U8_NR) * steps * 64 + 32 * ((j % BG_U8_NR) / 16) + 2 * (j % 16);
        for (size_t kk = 0; kk < k; kk++)
            panel[64 * (kk / 2) + kk % 2] = *(const int8_t *)((const char *)w + (ptrdiff_t)j * s0 + (ptrdiff_t)kk * s1);
    }
}

void bg_u8_gemm(const bg_u8_args *g, int path, int nthreads)
{
    if (g->m == 0 || g->n == 0)
        return;
    path = lb_path_or_best(path);
    const size_t np = (g->n + BG_U8_NR - 1) / BG_U8_NR; /* threads share the panels (weights) */
    pass_ctx c = {.g = g, .panels = bg_u8_panels_scalar, .items = np};
#if LB_X86
    if (path >= LB_PATH_AVX2)
        c.panels = bg_u8_panels_avx2;
#endif
    /* ~40 multiply-adds per cycle (AVX2): a thread per 8 M of them (~70 us) */
    int nt = (int)((double)g->m * (double)g->n * (double)(g->k ? g->k : 1) / (double)(1 << 23));
    if (nt > nthreads) nt = nthreads;
    if ((size_t)nt > np) nt = (int)np;
    bg_parallel(nt < 1 ? 1 : nt, pass_task, &c);
}
