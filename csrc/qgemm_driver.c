/*
 * qgemm_driver.c -- the k-bit GEMM's kernel table, threading and epilogue.
 *
 * The kernel table (ggml's type_traits in spirit): one row per (kind, path) naming the function that
 * computes D. Kinds are chosen by the Python layer (lowbit/kernels/quant.py, its dispatch rule), which
 * also makes the layouts they read; the path (portable .. amx) is bitgemm's one dispatch.
 *
 * Threads split the columns (rows of B: the weights, each thread then streams its own slices of them)
 * in chunks of whole int8 panels taken from a shared counter; each thread runs the kernel on a chunk
 * and then the epilogue on the same columns while they are still in its cache. Binary x binary has no epilogue: bitgemm's XNOR kernel
 * produces the +-1 product itself.
 */
#include <stdatomic.h>

#include "qgemm.h"

typedef struct {
    qg_kernel_fn bits, int8, fold;
} qg_traits;

static qg_traits qg_traits_for(int path)
{
    qg_traits t = {qg_bits_scalar, qg_int8_scalar, qg_fold};
#if BG_X86
    switch (path) {
    case BG_PATH_POPCNT: t.bits = qg_bits_popcnt; break;
    case BG_PATH_AVX2: t.bits = qg_bits_avx2; t.int8 = qg_int8_avx2; t.fold = qg_fold_avx2; break;
    case BG_PATH_AVX512: t.bits = qg_bits_avx512; t.int8 = qg_int8_avx2; t.fold = qg_fold_avx512; break; /* no VNNI assumed */
    case BG_PATH_AVX512VNNI: t.bits = qg_bits_avx512; t.int8 = qg_int8_vnni; t.fold = qg_fold_avx512; break;
    case BG_PATH_AMX: t.bits = qg_bits_avx512; t.int8 = qg_int8_amx; t.fold = qg_fold_avx512; break;
    default: break;
    }
#else
    (void)path;
#endif
    return t;
}

qg_kernel_fn qg_kernel_for(int kind, int path)
{
    path = lb_path_or_best(path);
    const qg_traits t = qg_traits_for(path);
    return kind == QG_INT8 ? t.int8 : t.bits;
}

qg_kernel_fn qg_fold_for(int path)
{
    path = lb_path_or_best(path);
    return qg_traits_for(path).fold;
}

/* C = sa*sb*D + ra_i + rb_j, in uint32 (see qgemm.h): ra_i = (sa*sb*zb + sa*ob)*SA_i + K*oa*ob,
 * rb_j = oa*sb*SB_j */
static inline void fold_row(const qg_args *g, const qg_fold_k *f, int32_t *c32, uint32_t ra, size_t j0, size_t j1)
{
    uint32_t *c = (uint32_t *)c32;
    if (g->sumb) {
        for (size_t j = j0; j < j1; j++)
            c[j] = f->sab * c[j] + ra + f->cb * (uint32_t)g->sumb[j];
    } else {
        for (size_t j = j0; j < j1; j++)
            c[j] = f->sab * c[j] + ra;
    }
}

void qg_fold(const qg_args *g, size_t i0, size_t i1, size_t j0, size_t j1)
{
    qg_fold_rows(g, i0, i1, j0, j1, fold_row);
}

static double qg_work(const qg_args *g)
{
    /* in units of ~1 ns of single-core SIMD work */
    if (g->kind == QG_INT8)
        return (double)g->m * (double)g->n * (double)g->k / 32.0;
    return (double)g->m * (double)g->n * (double)((g->k + 63) / 64) * (double)(g->abits * g->bbits) / 4.0;
}

int qg_plan_threads(const qg_args *g, int path, int nthreads)
{
    if (g->kind == QG_XNOR) {
        bg_gemm_args b = {NULL, 0, NULL, 0, NULL, 0, g->m, g->n, g->k, NULL};
        return bg_plan_threads(&b, path, nthreads);
    }
    /* a thread per ~50 us of work, several times its start and join */
    int nt = (int)(qg_work(g) / 5e4);
    /* the units qg_gemm can hand out: column panels, times 256-row blocks when the rows are split too */
    const size_t units = (g->n + QG_NR - 1) / QG_NR * ((g->m + 255) / 256);
    if (nt > nthreads) nt = nthreads;
    if ((size_t)nt > units) nt = (int)units;
    return nt < 1 ? 1 : nt;
}

typedef struct {
    const qg_args *g;
    qg_kernel_fn fn, fold;
    size_t chunk;          /* columns per chunk, a multiple of QG_NR */
    size_t nchunks;        /* column chunks */
    size_t rchunk;         /* rows per row chunk */
    size_t nrchunks;       /* row chunks (1 unless there are too few column chunks for the threads) */
} qg_ctx;

/* Threads take chunks of columns from a shared counter (qg_run_units) instead of fixed halves: on a shared
 * machine (or with one core busy elsewhere) the thread that runs takes the work of the one that waits, and
 * the call ends when the work is done, not when a thread that never got a core finally starts. Chunks are
 * large enough (>= 1/4 of a thread's share, >= 64 columns) that re-reading the A block per chunk stays small. */
static void qg_unit(void *vctx, size_t u, void *scratch)
{
    (void)scratch;
    const qg_ctx *ctx = (const qg_ctx *)vctx;
    const qg_args *g = ctx->g;
    const size_t c = u % ctx->nchunks, rc = u / ctx->nchunks;
    const size_t j0 = c * ctx->chunk;
    const size_t j1 = (g->n - j0 > ctx->chunk) ? j0 + ctx->chunk : g->n;
    const size_t i0 = rc * ctx->rchunk;
    const size_t i1 = (g->m - i0 > ctx->rchunk) ? i0 + ctx->rchunk : g->m;
    ctx->fn(g, i0, i1, j0, j1);
    ctx->fold(g, i0, i1, j0, j1);
}

/* The units of work: column chunks of whole panels (each thread then streams its own slices of the weights),
 * times row blocks when there are few columns; on AMX tiles, row blocks only. */
static void qg_split(qg_ctx *ctx, int path, int nt)
{
    const qg_args *g = ctx->g;
    const size_t panels = (g->n + QG_NR - 1) / QG_NR;
    if (path == BG_PATH_AMX && g->kind == QG_INT8 && nt > 1 && g->m >= 32 * (size_t)nt) {
        /* AMX tiles: rows only, in a multiple of nt blocks of whole 32s (<= ~1024 rows), every block all the
         * columns. Splitting the columns made each chunk re-pack its rows into tile order and cut the strips
         * a K block serves; at 784 x 128 x 1152 two threads then ran slower than one (0.38 vs 0.34 ms), this
         * way 0.28 ms (196 x 256 x 2304: 0.45 -> 0.31 ms). With fewer than 32 rows a thread (no tiles: the
         * VNNI kernel), the columns are split as below. */
        const size_t nblk = (size_t)nt * ((g->m + 1024 * (size_t)nt - 1) / (1024 * (size_t)nt));
        const size_t r = ((g->m + nblk - 1) / nblk + 31) / 32 * 32;
        ctx->chunk = panels * QG_NR;
        ctx->nchunks = 1;
        ctx->rchunk = r;
        ctx->nrchunks = (g->m + r - 1) / r;
        return;
    }
    size_t per = panels / (4 * (size_t)nt); /* panels per chunk */
    if (per < 4) per = 4;
    if (nt == 1 || per > panels) per = panels;
    ctx->chunk = per * QG_NR;
    ctx->nchunks = (panels + per - 1) / per;
    /* few columns (a conv's output channels) for the threads: split the rows too, in blocks of whole
     * 256-row kernel blocks, ~4 chunks a thread (the rows of A are then read once per column chunk) */
    ctx->rchunk = g->m;
    ctx->nrchunks = 1;
    if (nt > 1 && ctx->nchunks < 4 * (size_t)nt) {
        const size_t want = (4 * (size_t)nt + ctx->nchunks - 1) / ctx->nchunks;
        size_t rchunk = (g->m + want - 1) / want;
        rchunk = (rchunk + 255) / 256 * 256;
        if (rchunk < g->m) {
            ctx->rchunk = rchunk;
            ctx->nrchunks = (g->m + rchunk - 1) / rchunk;
        }
    }
}

void qg_gemm(const qg_args *g, int path, int nthreads)
{
    if (g->m == 0 || g->n == 0)
        return;
    path = lb_path_or_best(path);
    if (g->kind == QG_XNOR) { /* +-1 planes: bit set = +1 here, = -1 in bitgemm; XOR does not care */
        bg_gemm_args b = {(const uint64_t *)g->a, g->lda, (const uint64_t *)g->b, g->ldb, g->c, g->ldc,
                          g->m, g->n, g->k, NULL};
        bg_gemm(&b, path, nthreads);
        return;
    }
    if (g->k == 0) { /* D = 0: the epilogue alone */
        for (size_t i = 0; i < g->m; i++)
            for (size_t j = 0; j < g->n; j++)
                g->c[(ptrdiff_t)i * g->ldc + (ptrdiff_t)j] = 0;
        qg_fold(g, 0, g->m, 0, g->n);
        return;
    }
    const qg_traits t = qg_traits_for(path);
    const int nt = qg_plan_threads(g, path, nthreads);
    qg_ctx ctx;
    ctx.g = g;
    ctx.fn = g->kind == QG_INT8 ? t.int8 : t.bits;
    ctx.fold = t.fold;
    qg_split(&ctx, path, nt);
    qg_run_units(ctx.nchunks * ctx.nrchunks, nt, qg_unit, &ctx, 0);
}
