/*
 * intlstm.h -- internal interface of lowbit's integer-only LSTM (TensorFlow Lite "8x8_16" design).
 *
 * The number formats and the arithmetic are documented in src/lowbit/runtime/int_lstm.py, whose NumPy
 * reference computes exactly the same integers. Split like the binary GEMM (bitgemm.h), one file per concern:
 *
 *   intlstm_gemm_scalar.c   int8 x int8 -> int32 GEMMs in plain C: on packed rows (gemm()), and on prepared
 *                           panels (the LSTM layer, gemm_prepared())
 *   intlstm_gemm_avx2.c     the same with vpmaddwd (rows: 2 x 4 register tiles; panels: 4 rows x half a panel)
 *   intlstm_gemm_avx512.c   rows: AVX-512 vpdpwssd, 4 x 4 tiles; panels: VNNI vpdpbusd, 4 rows x 4 panels
 *   intlstm_step_scalar.c   element-wise step: gate rescale, table activations, cell and hidden update
 *   intlstm_step_avx2.c     the same, 8 lanes
 *   intlstm_step_avx512.c   the same, 16 lanes (AVX-512 F/BW/VL: 64-bit arithmetic shifts, saturating packs)
 *   intlstm_driver.c        per-path kernel table, weight preparation, threads, the layer over a sequence
 *   intlstm_module.c        CPython bindings (buffer protocol through pybuf.h, no NumPy headers)
 *
 * The LSTM layer runs on prepared weights: the int8 panels of the k-bit GEMM (qgemm.h, 8-bit storage; see
 * intlstm_prepare below), made once at load by the Python side (lowbit.kernels.intlstm.prepare_weights) or
 * per call by the packed-rows entry point (intlstm_layer_run). The row kernels serve gemm() on packed rows.
 *
 * Paths are the shared enum of lowbit_cpu.h; each runs (integer sums are exact and the element-wise code
 * computes the same integers in every variant, so all paths give the same bits):
 *
 *   path       panel GEMM  step     note
 *   portable   scalar      scalar
 *   popcnt     scalar      scalar   nothing here counts bits: the portable code
 *   avx2       avx2        avx2     panels widened to int16 per layer run when many rows pass over them
 *   avx512     vnni        avx512   GEMM: needs AVX-512 BW, VL, VNNI besides the path's F + VPOPCNTDQ, the step
 *                                   BW and VL (every such CPU but Knights Mill, which runs the AVX2 code)
 *   avx512vnni vnni        avx512   as avx512 (the path guarantees BW, VL and VNNI)
 */
#ifndef LOWBIT_INTLSTM_H
#define LOWBIT_INTLSTM_H

#include <stddef.h>
#include <stdint.h>

#include "lowbit_cpu.h"

#define INTLSTM_GATE_FRAC_BITS 12
#define INTLSTM_LUT_SEGMENTS 4096
#define INTLSTM_LUT_STEP_BITS 4
#define INTLSTM_LUT_FRAC_BITS 23
#define INTLSTM_MAX_K 65536

/* Weight rows are zero-padded to a multiple of 16 columns ("packed"): every kernel step is whole. */
#define INTLSTM_KP(K) (((K) + 15) & ~15)

/* The AVX kernels' shared pieces: the scalar tail of widening a row of A to int16 (a[k..K) copied, zeros up
 * to Kp), and the rows of W per N block (~96 KB of W, a multiple of 4, at least 4). */
static inline void intlstm_widen_tail(int16_t *d, const int8_t *a, int k, int K, int Kp)
{
    for (; k < K; k++) d[k] = a[k];
    for (; k < Kp; k++) d[k] = 0;
}

static inline int intlstm_n_block(int Kp, int wsz)
{
    const int nb = (96 * 1024) / (Kp > 0 ? Kp * wsz : 1);
    return nb < 4 ? 4 : (nb & ~3);
}

/* ---- fixed point (scalar; shared by every file, and exposed to Python for the tests) ------------------- */

static inline int32_t intlstm_sat16(int64_t v) { return v > 32767 ? 32767 : (v < -32768 ? -32768 : (int32_t)v); }

static inline int32_t intlstm_sat32(int64_t v)
{
    return v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : (int32_t)v);
}

/* round(x / 2^e) with ties going up (towards +inf): floor((x + 2^(e-1)) / 2^e), e in 0..62.
 * (>> on a negative int64 is an arithmetic shift, i.e. floor, with GCC/Clang/MSVC.) */
static inline int64_t intlstm_rshift_round(int64_t x, int e) { return e > 0 ? (x + ((int64_t)1 << (e - 1))) >> e : x; }

/* x * M for the real multiplier M = m0 * 2^(shift - 31), m0 in [2^30, 2^31), shift in -31..30: one 32x32 ->
 * 64-bit product and one rounding right shift by 31 - shift (1..62), saturated to int32 (TFLite's
 * single-rounding MultiplyByQuantizedMultiplier). |x * m0| < 2^62, so adding the rounding constant (<= 2^61)
 * cannot overflow. */
static inline int32_t intlstm_rescale(int64_t x, int32_t m0, int shift)
{
    return intlstm_sat32(intlstm_rshift_round(x * (int64_t)m0, 31 - shift));
}

/* Interpolated table: int16 x -> int16 Q0.15 (table entries Q0.23 at x = -32768 + 16 i). */
static inline int32_t intlstm_lut16(const int32_t *T, int32_t x)
{
    int32_t u = x + 32768;
    int32_t i = u >> INTLSTM_LUT_STEP_BITS;
    int32_t t = u & ((1 << INTLSTM_LUT_STEP_BITS) - 1);
    int32_t a = T[i];
    int32_t v = a + (((T[i + 1] - a) * t + (1 << (INTLSTM_LUT_STEP_BITS - 1))) >> INTLSTM_LUT_STEP_BITS);
    const int s = INTLSTM_LUT_FRAC_BITS - 15;
    return intlstm_sat16((v + (1 << (s - 1))) >> s);
}

/* ---- GEMM on packed rows (gemm()) ----------------------------------------------------------------------
 *   c[m*n_ + j] = bias[j] + sum_k a[m*K + k] * w[j*Kp + k]     int8 x int8 -> int32, exact for K <= 65536
 * w rows hold Kp = INTLSTM_KP(K) weights, zeros beyond K: int8 (wsz 1, as packed) or an int16 copy (wsz 2;
 * the kernels take it, no caller makes one now: the LSTM runs on the panels below). */
typedef struct {
    const int8_t *a;
    const void *w;
    int wsz;
    const int32_t *bias; /* NULL: none */
    int32_t *c;
    int m, n, k;
    int16_t *scratch; /* at least m * Kp int16: the AVX2 kernel's sign-extended copy of a */
} intlstm_gemm_args;

typedef void (*intlstm_gemm_fn)(const intlstm_gemm_args *g);
/* A row-GEMM kernel runs the instance of its body for the weights' width: body(g, 1) (int8) or body(g, 2)
 * (int16). always_inline with a constant body: both calls are direct and inlined, wsz a constant in each. */
static inline __attribute__((always_inline)) void intlstm_gemm_by_width(const intlstm_gemm_args *g,
                                                                        void (*body)(const intlstm_gemm_args *, int))
{
    if (g->wsz == 2)
        body(g, 2);
    else
        body(g, 1);
}
void intlstm_gemm_scalar(const intlstm_gemm_args *g);
#if LB_X86
void intlstm_gemm_avx2(const intlstm_gemm_args *g);
void intlstm_gemm_avx512(const intlstm_gemm_args *g); /* needs AVX-512 BW, VL and VNNI besides the path */
#endif

/* ---- prepared weights: the int8 panels of the k-bit GEMM (qgemm.h, 8-bit storage) -----------------------
 * W (N, K) int8 -> panels of INTLSTM_NR = 16 rows; panel p holds S = Kp / 4 "k4 steps" of 64 bytes, byte
 * 4 l + q of step s = W[16 p + l][4 s + q] (0 past N or K): Np = round_up(N, 16) rows of Kp = INTLSTM_KP(K)
 * bytes in all. A is read as unsigned bytes u = x + 128 (= x ^ 0x80), rows of Kp (any bytes past K: the
 * panels hold 0 there), so that VNNI's vpdpbusd (u8 x s8) applies; since
 *     sum_k W[j][k] x[k] = sum_k W[j][k] u[k] - 128 rowsum(W[j]),
 * the prepared bias is bias - 128 rowsum(W) (the "effective bias", in wrapping int32 arithmetic: the true
 * result fits int32 -- |bias| <= 2^30, K <= 65536 -- so the wrapped sum is exact).
 *
 *   c[m][j] = bias_eff[j] + sum_k u[m][k] * W[j][k]     for m < M, j < N (row stride ldc)
 */
#define INTLSTM_NR 16
#define INTLSTM_NP(N) (((N) + INTLSTM_NR - 1) / INTLSTM_NR * INTLSTM_NR)

/* panels (INTLSTM_NP(N) * INTLSTM_KP(K) bytes) and the effective bias (N int32; bias NULL: 0) of W, whose
 * row j starts at W + j * ldw (ldw >= K: rows packed to 16 columns or not) */
void intlstm_prepare(const int8_t *W, size_t ldw, int N, int K, const int32_t *bias, int8_t *panels,
                     int32_t *bias_eff);

typedef struct {
    const uint8_t *a; /* M rows of u8 (x ^ 0x80), row stride lda >= Kp */
    size_t lda;
    const int8_t *p;        /* panels */
    const int16_t *p16;     /* the same widened to int16 (NULL: none; only the AVX2 kernel reads it) */
    const int32_t *bias;    /* N effective bias (NULL: none) */
    int32_t *c;             /* M rows of N int32, row stride ldc */
    size_t ldc;
    int m, n, kp;           /* kp = INTLSTM_KP(K) */
    int16_t *scratch;       /* the AVX2 kernel's int16 copy of A: at least m * kp int16 */
} intlstm_pgemm_args;

typedef void (*intlstm_pgemm_fn)(const intlstm_pgemm_args *g);
void intlstm_pgemm_scalar(const intlstm_pgemm_args *g);
#if LB_X86
void intlstm_pgemm_avx2(const intlstm_pgemm_args *g);
void intlstm_pgemm_vnni(const intlstm_pgemm_args *g); /* AVX-512 F, BW, VNNI */
#endif

/* ---- element-wise step -------------------------------------------------------------------------------- */
typedef struct {
    const int8_t *w_ih;     /* (4H, Ip) packed, Ip = INTLSTM_KP(I) (intlstm_layer_run) */
    const int8_t *w_hh;     /* (4H, Hp) packed */
    const int8_t *p_ih;     /* the same as panels (intlstm_prepare; intlstm_layer_run_prepared) */
    const int8_t *p_hh;
    const int32_t *bias_x;  /* (4H) input bias (zero point folded in); with panels: its effective bias */
    const int32_t *bias_h;  /* (4H) recurrent bias; with panels: its effective bias */
    const int32_t *qmul;    /* (4, 4H): m0_x, shift_x, m0_h, shift_h */
    const int32_t *lut_sig, *lut_tanh, *lut_cell; /* (LUT_SEGMENTS + 1) Q0.23 */
    int I, H;
    int z_h;            /* hidden zero point */
    int cell_frac_bits; /* cs: cell scale 2^-cs */
    int32_t hid_m0;     /* Q0.30 -> int8 hidden multiplier */
    int hid_shift;
    int cell_clip; /* 0: none */
} intlstm_layer;

/* What every step of one layer run shares. */
typedef struct {
    const intlstm_layer *L;
    int H;
    int ig_shift;  /* i g (Q0.30) -> cell scale: 30 - cs */
    int cell_left; /* cell -> Q3.12 table input: max(0, 12 - cs) */
} intlstm_step_ctx;

/* Input contributions: out[r*G + j] = sat16(rescale(acc[r*G + j], m0[j], sh[j])), r < rows, j < G (Q3.12). */
typedef void (*intlstm_rescale_rows_fn)(const int32_t *acc, const int32_t *m0, const int32_t *sh, int16_t *out,
                                        size_t rows, int G);
/* One time step of B batch rows: acch (B, 4H) recurrent accumulators, gx (B, 4H) input contributions; c (B, H)
 * is updated in place, y (B, H) receives the new hidden state. */
typedef void (*intlstm_step_rows_fn)(const intlstm_step_ctx *s, const int32_t *acch, const int16_t *gx, int16_t *c,
                                     int8_t *y, int B);

/* A step of B rows, one row kernel row(s, ah, ax, c, y) per batch row (inlined: a constant in each caller). */
static inline __attribute__((always_inline)) void intlstm_step_each_row(
    const intlstm_step_ctx *s, const int32_t *acch, const int16_t *gx, int16_t *c, int8_t *y, int B,
    void (*row)(const intlstm_step_ctx *, const int32_t *, const int16_t *, int16_t *, int8_t *))
{
    const size_t G = 4 * (size_t)s->H;
    for (int b = 0; b < B; b++)
        row(s, acch + b * G, gx + b * G, c + (size_t)b * s->H, y + (size_t)b * s->H);
}

void intlstm_rescale_rows_scalar(const int32_t *acc, const int32_t *m0, const int32_t *sh, int16_t *out, size_t rows,
                                 int G);
void intlstm_step_rows_scalar(const intlstm_step_ctx *s, const int32_t *acch, const int16_t *gx, int16_t *c, int8_t *y,
                              int B);
/* the scalar code from column j0 (rescale) / hidden unit j0 (step) on: the vector kernels' tails */
void intlstm_rescale_rows_scalar_from(const int32_t *acc, const int32_t *m0, const int32_t *sh, int16_t *out,
                                      size_t rows, int G, int j0);
void intlstm_step_row_scalar_from(const intlstm_step_ctx *s, const int32_t *ah, const int16_t *ax, int16_t *c,
                                  int8_t *y, int j0);
#if LB_X86
void intlstm_rescale_rows_avx2(const int32_t *acc, const int32_t *m0, const int32_t *sh, int16_t *out, size_t rows,
                               int G);
void intlstm_step_rows_avx2(const intlstm_step_ctx *s, const int32_t *acch, const int16_t *gx, int16_t *c, int8_t *y,
                            int B);
void intlstm_rescale_rows_avx512(const int32_t *acc, const int32_t *m0, const int32_t *sh, int16_t *out, size_t rows,
                                 int G); /* AVX-512 F, BW, VL */
void intlstm_step_rows_avx512(const intlstm_step_ctx *s, const int32_t *acch, const int16_t *gx, int16_t *c, int8_t *y,
                              int B);
#endif

/* ---- driver (intlstm_driver.c); path: a supported lb_path (the caller resolves LB_PATH_AUTO) ------------ */

/* The row GEMM above with int8 packed weights W; scratch as intlstm_gemm_args.scratch. */
void intlstm_gemm(int path, const int8_t *A, const int8_t *W, const int32_t *bias, int32_t *C, int M, int N, int K,
                  int16_t *scratch);

/* The buffers of a layer run over T >= 1 steps of B >= 1 batch rows with G gate rows (the LSTM's, and the GRU and
 * RNN runs of intrnn_cells.c): input accumulators and their Q3.12 rescale for tc steps at once (a chunk of about
 * CHUNK_ELEMS accumulators), the recurrent accumulators, the GEMMs' scratch. */
typedef struct {
    int tc;           /* time steps per chunk of the input GEMM */
    int32_t *accx;    /* (tc B, G) */
    int16_t *gx;      /* (tc B, G) */
    int32_t *acch;    /* (B, G) */
    int16_t *scratch; /* max(tc B Ip, B Hp) int16 (intlstm_gemm_args.scratch of both GEMMs) */
} intlstm_buffers;

/* Returns 0, or -1 if out of memory (then nothing is held). */
int intlstm_buffers_alloc(intlstm_buffers *b, int T, int B, int I, int H, int G);
void intlstm_buffers_free(intlstm_buffers *b);

/* Run one layer over a sequence. x (T, B, I) int8; h (B, H) int8 and c (B, H) int16 are read as the initial
 * state and overwritten with the final one; y (T, B, H) int8. Returns 0, or -1 if out of memory.
 * intlstm_layer_run reads L's packed rows (w_ih, w_hh) and prepares panels from them for the run;
 * intlstm_layer_run_prepared reads L's panels (p_ih, p_hh) and effective biases. nthreads (>= 1) threads
 * split the batch rows (each runs every time step of its rows: no synchronisation between steps). */
int intlstm_layer_run(int path, const intlstm_layer *L, const int8_t *x, int T, int B, int8_t *h, int16_t *c,
                      int8_t *y);
int intlstm_layer_run_prepared(int path, const intlstm_layer *L, const int8_t *x, int T, int B, int8_t *h,
                               int16_t *c, int8_t *y, int nthreads);
/* threads a prepared run of T steps of B rows would use (at most nthreads) */
int intlstm_plan_threads(int T, int B, int I, int H, int nthreads);

/* c (M, N) = a (M, K) int8 @ W.T + bias through W's panels and effective bias; nthreads split the columns.
 * Returns 0, or -1 if out of memory. */
int intlstm_gemm_prepared(int path, const int8_t *a, const int8_t *panels, const int32_t *bias_eff, int32_t *c, int M,
                          int N, int K, int nthreads);
int intlstm_gemm_plan_threads(int M, int N, int K, int nthreads); /* threads intlstm_gemm_prepared uses */

#endif /* LOWBIT_INTLSTM_H */
