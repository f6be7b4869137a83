/*
 * kconv_conv.c -- a k-bit conv layer as one threaded pass over bands of its output (kconv.h):
 *
 *   for each unit (image, band of output rows, chunk of output channels), on the thread that takes it:
 *     pack    the im2col rows the band needs, straight into a thread-local block of the GEMM's layout
 *             (kc_pack_range: a8 rows or bit planes, row sums)
 *     GEMM    that block times the chunk's weight panels (the qgemm kernel of the path, qg_kernel_for)
 *             and the level-set fold (qg_fold), into a thread-local int32 block
 *     epilogue border, max-pool and thresholds of the block (the kconv row kernel of the path) -> the
 *             band's codes / bits in the output; or, with no epilogue, the int32 block written in place
 *
 * so neither the (rows, K) patches nor the (rows, N) accumulators ever leave the cache: per thread one
 * block of ~100-200 KB, reused. With a max-pool, a band is a range of *pooled* rows and packs the conv
 * rows their windows cover (overlapping windows recompute their shared conv row). Units come from a
 * shared counter, so a thread slowed by another process's work hands its share to the others.
 *
 * Band size: a block of ~192 KB of packed rows + accumulators (L2), shrunk, and the channels split into
 * chunks of whole 64s, until there are >= 4 units a thread (batch 1 layers with few rows).
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kconv.h"

typedef struct {
    const kc_conv_args *a;
    kc_row_fns rf;
    qg_kernel_fn gemm, fold;
    kc_epi_rows_fn epi;
    size_t band, nbands;       /* output rows per band, bands per image */
    size_t chunk, nchunks;     /* channels per chunk (a multiple of 64), chunks */
    size_t max_rows;           /* conv rows x OW of the largest unit */
    size_t row_bytes;          /* bytes of one packed row */
    size_t units;
    size_t off_blk, off_sums, off_acc; /* the parts of a thread's scratch */
    atomic_uint max;           /* the largest input code read */
} conv_ctx;

static size_t align64(size_t n)
{
    return (n + 63) / 64 * 64;
}

static size_t out_h(const kc_conv_args *a)
{
    return a->pooled ? a->epi.oh : a->pack.oh;
}

/* conv rows [y0, y1) band [py0, py1) of the output reads */
static void conv_rows(const kc_conv_args *a, size_t py0, size_t py1, size_t *y0, size_t *y1)
{
    if (!a->pooled) {
        *y0 = py0, *y1 = py1;
        return;
    }
    const kc_epi_args *e = &a->epi;
    const ptrdiff_t lo = (ptrdiff_t)py0 * e->sh - e->ph, hi = (ptrdiff_t)(py1 - 1) * e->sh - e->ph + e->kh;
    *y0 = lo < 0 ? 0 : (size_t)lo;
    *y1 = hi < 0 ? 0 : ((size_t)hi > a->pack.oh ? a->pack.oh : (size_t)hi);
    if (*y1 < *y0)
        *y1 = *y0;
}

/* one unit (image, band, channel chunk); scratch: the thread's pack buffer, packed block, sums, int32 block */
static void conv_unit(void *vctx, size_t u, void *scratch)
{
    conv_ctx *ctx = (conv_ctx *)vctx;
    const kc_conv_args *a = ctx->a;
    const kc_pack_args *p = &a->pack;
    const size_t n = a->gemm.n, ow = p->ow;
    const int planes = p->bits > 0;
    uint8_t *buf = (uint8_t *)scratch;
    void *blk = (uint8_t *)scratch + ctx->off_blk;
    int32_t *sums = (int32_t *)((uint8_t *)scratch + ctx->off_sums);
    int32_t *acc = (int32_t *)((uint8_t *)scratch + ctx->off_acc);
    const size_t steps = qg_a8_stride(a->gemm.k) / 4;
    const size_t panel_bytes = steps * (size_t)a->gemm.bstore / 8 * 64;
    const size_t words = (n + 63) / 64, oh_out = out_h(a);
    {
        const size_t ch = u % ctx->nchunks, sp = u / ctx->nchunks;
        const size_t img = sp / ctx->nbands, b = sp % ctx->nbands;
        const size_t py0 = b * ctx->band, py1 = py0 + ctx->band < oh_out ? py0 + ctx->band : oh_out;
        size_t y0, y1;
        conv_rows(a, py0, py1, &y0, &y1);
        const size_t rows = (y1 - y0) * ow, rs = (img * p->oh + y0) * ow;
        const size_t j0 = ch * ctx->chunk, j1 = j0 + ctx->chunk < n ? j0 + ctx->chunk : n, nc = j1 - j0;
        if (rows) {
            const ptrdiff_t ldd = planes ? (ptrdiff_t)(ctx->row_bytes / 8) : (ptrdiff_t)ctx->row_bytes;
            kc_atomic_max(&ctx->max, kc_pack_range(p, &ctx->rf, rs, rs + rows, blk, ldd, sums, buf));
            qg_args g = a->gemm;
            g.a = blk;
            g.lda = ldd;
            g.m = rows;
            g.suma = sums;
            g.n = nc;
            g.b = planes ? (const void *)((const uint64_t *)a->gemm.b + (ptrdiff_t)j0 * a->gemm.ldb)
                         : (const void *)((const uint8_t *)a->gemm.b + (j0 / QG_NR) * panel_bytes);
            g.sumb = a->gemm.sumb ? a->gemm.sumb + j0 : NULL;
            if (a->out_acc) {
                g.c = a->out_acc + (ptrdiff_t)rs * a->ld_out_acc + (ptrdiff_t)j0;
                g.ldc = a->ld_out_acc;
            } else {
                g.c = acc;
                g.ldc = (ptrdiff_t)nc;
            }
            ctx->gemm(&g, 0, rows, 0, nc);
            ctx->fold(&g, 0, rows, 0, nc);
        }
        if (a->out_acc)
            return;
        kc_epi_args e = a->epi;
        e.acc = acc;
        e.ld_acc = nc;
        e.n = 1;
        e.h = y1 - y0;
        e.w = ow;
        e.c = nc;
        e.border = a->epi.border ? a->epi.border + (ptrdiff_t)(y0 * ow * n + j0) : NULL;
        e.ld_border = n;
        if (a->pooled) {
            e.ph = (int)((ptrdiff_t)a->epi.ph + (ptrdiff_t)y0 - (ptrdiff_t)py0 * a->epi.sh);
            e.oh = py1 - py0;
        } else {
            e.kh = 0;
            e.oh = py1 - py0;
            e.ow = ow;
        }
        e.ld_thr = n;
        if (e.out_float) {
            e.scale = a->epi.scale + j0;
            e.bias = a->epi.bias + j0;
        } else {
            e.thr = a->epi.thr + j0;
            e.sign = a->epi.sign + j0;
        }
        const size_t first = (img * oh_out + py0) * e.ow;
        if (e.out_float) {
            e.out = (float *)a->epi.out + first * n + j0;
            e.ld_out = n;
        } else if (e.out_bits) {
            e.out = (uint64_t *)a->epi.out + first * words + j0 / 64;
            e.ld_out = words;
        } else {
            e.out = (uint8_t *)a->epi.out + first * n + j0;
            e.ld_out = n;
        }
        ctx->epi(&e, 0, py1 - py0);
    }
}

int kc_conv(kc_conv_args *a, int path, int nthreads, unsigned *max_code)
{
    const kc_pack_args *p = &a->pack;
    const size_t n = a->gemm.n, k = kc_pack_k(p), rows = kc_pack_rows(p);
    *max_code = 0;
    if (rows == 0 || n == 0)
        return 0;
    path = lb_path_or_best(path);
    if (nthreads > KC_MAX_THREADS)
        nthreads = KC_MAX_THREADS;
    conv_ctx *ctx = (conv_ctx *)malloc(sizeof(conv_ctx));
    if (!ctx)
        return -1;
    ctx->a = a;
    ctx->rf = kc_row_fns_for(path);
    ctx->gemm = qg_kernel_for(a->gemm.kind, path);
    ctx->fold = qg_fold_for(path);
    ctx->epi = kc_epi_fn_for(path);
    ctx->row_bytes = p->bits ? qg_plane_words(k, p->bits) * 8 : qg_a8_stride(k);
    const size_t oh_out = out_h(a), ow = p->ow;
    const size_t conv_per_out = a->pooled ? (size_t)a->epi.sh : 1;
    /* a block of ~192 KB: packed rows + their int32 accumulators. AMX tiles take 32 rows at a time and the
     * kernel's per-call work (A in tile order, weights decoded per K block) pays off over many rows: there a
     * block of ~768 KB (L2 is 2 MB) and >= 128 rows (a 5x5 conv of 192 channels got 27-row blocks, all on
     * the VNNI edge kernel) */
    const int tiles = path == BG_PATH_AMX && a->gemm.kind == QG_INT8;
    size_t target = (size_t)((tiles ? 768 : 192) * 1024) / (ctx->row_bytes + 4 * n);
    if (target < (tiles ? 128u : 32u)) target = tiles ? 128 : 32;
    size_t band = target / (ow * conv_per_out);
    if (band < 1) band = 1;
    if (band > oh_out) band = oh_out;
    /* threads: one per ~50 us of GEMM work (as qg_plan_threads), then enough units for them */
    const double work = (double)rows * (double)n * (double)k / 32.0;
    int nt = (int)(work / 5e4) < nthreads ? (int)(work / 5e4) : nthreads;
    if (nt < 1) nt = 1;
    size_t chunk = (n + 63) / 64 * 64, nchunks = 1;
    const size_t want_units = 4 * (size_t)nt;
    while (nt > 1 && p->n * ((oh_out + band - 1) / band) * nchunks < want_units) {
        if (tiles && chunk >= 256) { /* tiles: split the channels first, keeping the rows per block */
            chunk = (chunk / 2 + 63) / 64 * 64;
            nchunks = (n + chunk - 1) / chunk;
        } else if (band > 1) {
            band = (band + 1) / 2;
        } else if (chunk > 64) {
            chunk = (chunk / 2 + 63) / 64 * 64;
            nchunks = (n + chunk - 1) / chunk;
        } else {
            break;
        }
    }
    ctx->band = band;
    ctx->nbands = (oh_out + band - 1) / band;
    ctx->chunk = chunk;
    ctx->nchunks = nchunks;
    ctx->units = p->n * ctx->nbands * nchunks;
    {
        size_t y0, y1, most = 0;
        for (size_t b = 0; b < ctx->nbands; b++) { /* the widest band (pooled bands at the edges differ) */
            const size_t py0 = b * band, py1 = py0 + band < oh_out ? py0 + band : oh_out;
            conv_rows(a, py0, py1, &y0, &y1);
            most = y1 - y0 > most ? y1 - y0 : most;
        }
        ctx->max_rows = most * ow;
    }
    ctx->off_blk = align64(kc_pack_buf_bytes(p));
    ctx->off_sums = ctx->off_blk + align64(ctx->max_rows * ctx->row_bytes);
    ctx->off_acc = ctx->off_sums + align64(ctx->max_rows * sizeof(int32_t));
    const size_t scratch = ctx->off_acc + (a->out_acc ? 0 : align64(ctx->max_rows * ctx->chunk * sizeof(int32_t)));
    atomic_init(&ctx->max, 0);
    const int rc = qg_run_units(ctx->units, nt, conv_unit, ctx, scratch);
    *max_code = atomic_load(&ctx->max);
    free(ctx);
    return rc;
}
