/*
 * intlstm_driver.c -- per-path kernel table, weight preparation, threads, and the integer LSTM layer over a
 * sequence (see run_rows below for its loop).
 *
 * The arithmetic of each piece is in intlstm_step_scalar.c; which code runs on which path is the table in
 * intlstm.h, made here by kernel_for() (row GEMM, step) and pgemm_for() (panel GEMM).
 */
#include <stdlib.h>
#include <string.h>

#include "intlstm.h"

typedef struct {
    intlstm_gemm_fn gemm;
    intlstm_rescale_rows_fn rescale_rows;
    intlstm_step_rows_fn step_rows;
} intlstm_kernel;

static intlstm_kernel kernel_for(int path)
{
    intlstm_kernel k = {intlstm_gemm_scalar, intlstm_rescale_rows_scalar, intlstm_step_rows_scalar};
#if LB_X86
    if (path >= LB_PATH_AVX2) { /* avx2 and every path above it (the paths are nested) */
        k.gemm = intlstm_gemm_avx2;
        k.rescale_rows = intlstm_rescale_rows_avx2;
        k.step_rows = intlstm_step_rows_avx2;
    }
    if (path >= LB_PATH_AVX512 && lb_cpu_has(LB_CPU_AVX512BW) && lb_cpu_has(LB_CPU_AVX512VL) &&
        lb_cpu_has(LB_CPU_AVX512VNNI))
        k.gemm = intlstm_gemm_avx512;
    if (path >= LB_PATH_AVX512 && lb_cpu_has(LB_CPU_AVX512BW) && lb_cpu_has(LB_CPU_AVX512VL)) {
        k.rescale_rows = intlstm_rescale_rows_avx512;
        k.step_rows = intlstm_step_rows_avx512;
    }
#else
    (void)path;
#endif
    return k;
}

void intlstm_gemm(int path, const int8_t *A, const int8_t *W, const int32_t *bias, int32_t *C, int M, int N, int K,
                  int16_t *scratch)
{
    const intlstm_gemm_args g = {A, W, 1, bias, C, M, N, K, scratch};
    kernel_for(path).gemm(&g);
}

#define CHUNK_ELEMS (1 << 18) /* input-projection rows are computed this many int32 at a time */

int intlstm_buffers_alloc(intlstm_buffers *b, int T, int B, int I, int H, int G)
{
    int tc = CHUNK_ELEMS / ((size_t)B * G);
    if (tc < 1) tc = 1;
    if (tc > T) tc = T;
    size_t scratch_n = (size_t)tc * B * INTLSTM_KP(I);
    if ((size_t)B * INTLSTM_KP(H) > scratch_n) scratch_n = (size_t)B * INTLSTM_KP(H);
    b->tc = tc;
    b->accx = (int32_t *)malloc((size_t)tc * B * G * sizeof(int32_t));
    b->gx = (int16_t *)malloc((size_t)tc * B * G * sizeof(int16_t));
    b->acch = (int32_t *)malloc((size_t)B * G * sizeof(int32_t));
    b->scratch = (int16_t *)malloc(scratch_n * sizeof(int16_t));
    if (!b->accx || !b->gx || !b->acch || !b->scratch) {
        intlstm_buffers_free(b);
        return -1;
    }
    return 0;
}

void intlstm_buffers_free(intlstm_buffers *b)
{
    free(b->accx); free(b->gx); free(b->acch); free(b->scratch);
    b->accx = b->acch = NULL;
    b->gx = b->scratch = NULL;
}


/* ---- threads: lb_parallel (lowbit_cpu.c), capped at INTLSTM_MAX_THREADS shares ---------------------------- */
#define INTLSTM_MAX_THREADS 64

static void parallel(int nthreads, lb_task_fn fn, void *ctx)
{
    lb_parallel(nthreads > INTLSTM_MAX_THREADS ? INTLSTM_MAX_THREADS : nthreads, fn, ctx);
}

static int share(int n, int t, int nthreads) { return (int)((long long)n * t / nthreads); }

/* ---- prepared weights -------------------------------------------------------------------------------- */
void intlstm_prepare(const int8_t *W, size_t ldw, int N, int K, const int32_t *bias, int8_t *panels,
                     int32_t *bias_eff)
{
    const int Kp = INTLSTM_KP(K);
    const size_t pbytes = (size_t)Kp * INTLSTM_NR;
    memset(panels, 0, (size_t)INTLSTM_NP(N) * Kp);
    for (int j = 0; j < N; j++) {
        const int8_t *w = W + (size_t)j * ldw;
        int8_t *d = panels + (size_t)(j / INTLSTM_NR) * pbytes + 4 * (j % INTLSTM_NR);
        int32_t sum = 0; /* |sum| <= 128 * 65536 */
        int k = 0;
        for (; k + 4 <= K; k += 4) {
            memcpy(d + (size_t)k * 16, w + k, 4); /* step k / 4 starts at byte 64 (k / 4) = 16 k */
            sum += w[k] + w[k + 1] + w[k + 2] + w[k + 3];
        }
        for (; k < K; k++) {
            d[(size_t)(k / 4) * 64 + k % 4] = w[k];
            sum += w[k];
        }
        bias_eff[j] = (int32_t)((bias ? (uint32_t)bias[j] : 0u) - 128u * (uint32_t)sum);
    }
}

static intlstm_pgemm_fn pgemm_for(int path)
{
    intlstm_pgemm_fn f = intlstm_pgemm_scalar;
#if LB_X86
    if (path >= LB_PATH_AVX2) f = intlstm_pgemm_avx2;
    if (path >= LB_PATH_AVX512 && lb_cpu_has(LB_CPU_AVX512BW) && lb_cpu_has(LB_CPU_AVX512VL) &&
        lb_cpu_has(LB_CPU_AVX512VNNI))
        f = intlstm_pgemm_vnni;
#else
    (void)path;
#endif
    return f;
}

/* The AVX2 kernel multiplies int16 pairs: with weights widened to int16 ahead it skips a sign extension per
 * load (a third of its uops). Worth the copy (n int16, and twice the bytes to read) only when many rows of A
 * pass over the weights: the LSTM widens them per layer run (T * B rows; the recurrent ones only with
 * several batch rows), gemm_prepared per call (M rows), from 8 * WIDEN_ROWS rows. NULL if out of memory (the
 * int8 panels then serve). */
#define WIDEN_ROWS 8

static intlstm_pgemm_fn pgemm_avx2_fn(void)
{
#if LB_X86
    return intlstm_pgemm_avx2;
#else
    return NULL;
#endif
}

static int16_t *widen(size_t n, const int8_t *p)
{
    int16_t *w = (int16_t *)malloc((n + 1) * sizeof(int16_t));
    if (w)
        for (size_t i = 0; i < n; i++) w[i] = p[i];
    return w;
}

/* rows of int8 -> u8 (x ^ 0x80) rows of kp bytes, zeros past k */
static void to_u8(const int8_t *x, size_t ldx, int rows, int k, uint8_t *d, int kp)
{
    for (int r = 0; r < rows; r++) {
        const uint8_t *s = (const uint8_t *)(x + (size_t)r * ldx);
        uint8_t *o = d + (size_t)r * kp;
        for (int i = 0; i < k; i++) o[i] = s[i] ^ 0x80;
        for (int i = k; i < kp; i++) o[i] = 0;
    }
}

/* ---- GEMM with prepared weights ------------------------------------------------------------------------ */
typedef struct {
    intlstm_pgemm_fn fn;
    const uint8_t *a;
    const int8_t *panels;
    const int16_t *panels16;
    const int32_t *bias;
    int32_t *c;
    int M, N, Kp;
    int16_t *scratch; /* per thread: M * Kp int16 */
} gemm_ctx;

static void gemm_task(void *vctx, int t, int nthreads)
{
    const gemm_ctx *g = (const gemm_ctx *)vctx;
    const int np = (g->N + INTLSTM_NR - 1) / INTLSTM_NR; /* whole panels per thread */
    const int p0 = share(np, t, nthreads), p1 = share(np, t + 1, nthreads);
    if (p1 <= p0) return;
    const int j0 = p0 * INTLSTM_NR, j1 = p1 * INTLSTM_NR < g->N ? p1 * INTLSTM_NR : g->N;
    const intlstm_pgemm_args a = {g->a, (size_t)g->Kp, g->panels + (size_t)j0 * g->Kp,
                                  g->panels16 ? g->panels16 + (size_t)j0 * g->Kp : NULL, g->bias + j0, g->c + j0,
                                  (size_t)g->N, g->M, j1 - j0, g->Kp, g->scratch + (size_t)t * g->M * g->Kp};
    g->fn(&a);
}

int intlstm_gemm_plan_threads(int M, int N, int K, int nthreads)
{
    const int np = (N + INTLSTM_NR - 1) / INTLSTM_NR;
    /* 2e7 multiply-adds per thread, as the LSTM layer (intlstm_plan_threads), and whole panels */
    int nt = (int)((double)M * N * INTLSTM_KP(K) / 2e7);
    if (nt > nthreads) nt = nthreads;
    if (nt > np) nt = np;
    if (nt > INTLSTM_MAX_THREADS) nt = INTLSTM_MAX_THREADS;
    return nt < 1 ? 1 : nt;
}

int intlstm_gemm_prepared(int path, const int8_t *a, const int8_t *panels, const int32_t *bias_eff, int32_t *c, int M,
                          int N, int K, int nthreads)
{
    if (M <= 0 || N <= 0) return 0;
    const int Kp = INTLSTM_KP(K);
    const int nt = intlstm_gemm_plan_threads(M, N, K, nthreads);
    uint8_t *au = (uint8_t *)malloc((size_t)M * Kp + 1);
    int16_t *scratch = (int16_t *)malloc(((size_t)nt * M * Kp + 1) * sizeof(int16_t));
    if (!au || !scratch) {
        free(au); free(scratch);
        return -1;
    }
    to_u8(a, (size_t)K, M, K, au, Kp);
    gemm_ctx g = {pgemm_for(path), au, panels, NULL, bias_eff, c, M, N, Kp, scratch};
    int16_t *p16 = g.fn == pgemm_avx2_fn() && M >= WIDEN_ROWS * 8 ? widen((size_t)INTLSTM_NP(N) * Kp, panels) : NULL;
    g.panels16 = p16;
    parallel(nt, gemm_task, &g);
    free(p16); free(au); free(scratch);
    return 0;
}

/* ---- a layer over a sequence --------------------------------------------------------------------------
 *   for each chunk of time steps (CHUNK_ELEMS accumulators)
 *     input GEMM of the whole chunk (x does not depend on h), rescale to Q3.12      once per chunk
 *     for each step
 *       recurrent GEMM (the rows of h)                                              the serial part
 *       element-wise step of the rows -> c, y; h = y
 * Threads take contiguous ranges of batch rows and run all of it for their rows. */
typedef struct {
    int path;
    const intlstm_layer *L;
    const int8_t *x;
    int T, B;
    int8_t *h;
    int16_t *c;
    int8_t *y;
    const int16_t *p16_ih, *p16_hh; /* widened panels for the AVX2 kernel (NULL: none) */
    int failed[INTLSTM_MAX_THREADS];
} layer_ctx;

static int run_rows(const layer_ctx *r, int b0, int b1)
{
    const intlstm_layer *L = r->L;
    const int T = r->T, B = r->B, bn = b1 - b0, H = L->H, G = 4 * H, I = L->I;
    const intlstm_kernel kern = kernel_for(r->path);
    const intlstm_pgemm_fn pgemm = pgemm_for(r->path);
    const intlstm_step_rows_fn step = kern.step_rows;
    const int Ip = INTLSTM_KP(I), Hp = INTLSTM_KP(H);
    int tc = CHUNK_ELEMS / ((size_t)bn * G);
    if (tc < 1) tc = 1;
    if (tc > T) tc = T;
    size_t scratch_n = (size_t)tc * bn * Ip;
    if ((size_t)bn * Hp > scratch_n) scratch_n = (size_t)bn * Hp;
    uint8_t *xu = (uint8_t *)malloc((size_t)tc * bn * Ip);
    uint8_t *hu = (uint8_t *)malloc((size_t)bn * Hp);
    int32_t *accx = (int32_t *)malloc((size_t)tc * bn * G * sizeof(int32_t));
    int16_t *gx = (int16_t *)malloc((size_t)tc * bn * G * sizeof(int16_t));
    int32_t *acch = (int32_t *)malloc((size_t)bn * G * sizeof(int32_t));
    int16_t *scratch = (int16_t *)malloc(scratch_n * sizeof(int16_t));
    int rc = -1;
    if (!xu || !hu || !accx || !gx || !acch || !scratch)
        goto done;
    intlstm_step_ctx s;
    s.L = L;
    s.H = H;
    s.ig_shift = 30 - L->cell_frac_bits;
    s.cell_left = L->cell_frac_bits < INTLSTM_GATE_FRAC_BITS ? INTLSTM_GATE_FRAC_BITS - L->cell_frac_bits : 0;
    intlstm_pgemm_args gih = {xu, (size_t)Ip, L->p_ih, r->p16_ih, L->bias_x, accx, (size_t)G, 0, G, Ip, scratch};
    intlstm_pgemm_args ghh = {hu, (size_t)Hp, L->p_hh, r->p16_hh, L->bias_h, acch, (size_t)G, bn, G, Hp, scratch};
    int8_t *h = r->h + (size_t)b0 * H;
    int16_t *c = r->c + (size_t)b0 * H;
    const int32_t *m0x = L->qmul, *shx = L->qmul + G;
    for (int t0 = 0; t0 < T; t0 += tc) {
        const int nt = T - t0 < tc ? T - t0 : tc;
        for (int tt = 0; tt < nt; tt++) /* this thread's rows of x, as u8 */
            to_u8(r->x + ((size_t)(t0 + tt) * B + b0) * I, (size_t)I, bn, I, xu + (size_t)tt * bn * Ip, Ip);
        gih.m = nt * bn;
        pgemm(&gih);
        kern.rescale_rows(accx, m0x, shx, gx, (size_t)nt * bn, G);
        for (int tt = 0; tt < nt; tt++) {
            to_u8(h, (size_t)H, bn, H, hu, Hp);
            pgemm(&ghh);
            int8_t *yt = r->y + ((size_t)(t0 + tt) * B + b0) * H;
            step(&s, acch, gx + (size_t)tt * bn * G, c, yt, bn);
            memcpy(h, yt, (size_t)bn * H); /* h_t = y_t */
        }
    }
    rc = 0;
done:
    free(xu); free(hu); free(accx); free(gx); free(acch); free(scratch);
    return rc;
}

static void layer_task(void *vctx, int t, int nthreads)
{
    layer_ctx *r = (layer_ctx *)vctx;
    const int b0 = share(r->B, t, nthreads), b1 = share(r->B, t + 1, nthreads);
    r->failed[t] = b1 > b0 ? run_rows(r, b0, b1) != 0 : 0;
}

int intlstm_plan_threads(int T, int B, int I, int H, int nthreads)
{
    /* >= 2 rows per thread (each thread reads all the weights at every step: one row per thread would double
     * the weight traffic per row), and 2e7 multiply-adds per thread (0.1 ms with VNNI, 0.5 ms with AVX2:
     * well above the cost of starting and joining it) */
    const double work = (double)T * B * 4.0 * H * (INTLSTM_KP(I) + INTLSTM_KP(H));
    int nt = (int)(work / 2e7);
    if (nt > B / 2) nt = B / 2;
    if (nt > nthreads) nt = nthreads;
    if (nt > INTLSTM_MAX_THREADS) nt = INTLSTM_MAX_THREADS;
    return nt < 1 ? 1 : nt;
}

int intlstm_layer_run_prepared(int path, const intlstm_layer *L, const int8_t *x, int T, int B, int8_t *h,
                               int16_t *c, int8_t *y, int nthreads)
{
    if (T <= 0 || B <= 0)
        return 0;
    layer_ctx r = {.path = path, .L = L, .x = x, .T = T, .B = B, .h = h, .c = c, .y = y};
    int16_t *p16_ih = NULL, *p16_hh = NULL;
    if (pgemm_for(path) == pgemm_avx2_fn()) { /* the recurrent weights: B rows per step (a GEMV reads twice
                                                * the bytes from int16 and gains nothing) */
        const size_t G = 4 * (size_t)L->H;
        if ((size_t)T * B >= WIDEN_ROWS * 8)
            p16_ih = widen(INTLSTM_NP(G) * (size_t)INTLSTM_KP(L->I), L->p_ih);
        if (B >= 4 && (size_t)T * B >= WIDEN_ROWS * 8)
            p16_hh = widen(INTLSTM_NP(G) * (size_t)INTLSTM_KP(L->H), L->p_hh);
    }
    r.p16_ih = p16_ih;
    r.p16_hh = p16_hh;
    const int nt = intlstm_plan_threads(T, B, L->I, L->H, nthreads);
    parallel(nt, layer_task, &r);
    free(p16_ih); free(p16_hh);
    for (int t = 0; t < nt; t++)
        if (r.failed[t]) return -1;
    return 0;
}

int intlstm_layer_run(int path, const intlstm_layer *L, const int8_t *x, int T, int B, int8_t *h, int16_t *c,
                      int8_t *y)
{
    if (T <= 0 || B <= 0)
        return 0;
    const int H = L->H, G = 4 * H, I = L->I;
    int8_t *p_ih = (int8_t *)malloc((size_t)INTLSTM_NP(G) * INTLSTM_KP(I));
    int8_t *p_hh = (int8_t *)malloc((size_t)INTLSTM_NP(G) * INTLSTM_KP(H));
    int32_t *bx = (int32_t *)malloc((size_t)G * sizeof(int32_t));
    int32_t *bh = (int32_t *)malloc((size_t)G * sizeof(int32_t));
    int rc = -1;
    if (p_ih && p_hh && bx && bh) {
        intlstm_layer P = *L;
        intlstm_prepare(L->w_ih, (size_t)INTLSTM_KP(I), G, I, L->bias_x, p_ih, bx);
        intlstm_prepare(L->w_hh, (size_t)INTLSTM_KP(H), G, H, L->bias_h, p_hh, bh);
        P.p_ih = p_ih;
        P.p_hh = p_hh;
        P.bias_x = bx;
        P.bias_h = bh;
        rc = intlstm_layer_run_prepared(path, &P, x, T, B, h, c, y, 1);
    }
    free(p_ih); free(p_hh); free(bx); free(bh);
    return rc;
}
