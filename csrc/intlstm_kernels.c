/* Integer-only LSTM: int8 GEMM (portable and AVX2) and the LSTM layer over a sequence.
 *
 * The arithmetic is documented in src/lowbit/rnn/int_lstm.py (module docstring), whose NumPy reference
 * computes exactly the same integers. Summary of one step, per batch row b and hidden unit j:
 *
 *   gate_k = sat16(rescale(acc_h[kH + j]) + sat16(rescale(acc_x[kH + j])))    Q3.12, k = i, f, g, o
 *   i, f, o = sigmoid table(gate), g = tanh table(gate)                         Q0.15
 *   c = sat16(rshr(f c, 15) + rshr(i g, 30 - cs))                               scale 2^-cs
 *   h = clamp8(rescale(o * tanh_cell(c)) + z_h)                                 int8 asymmetric
 *
 * rescale() multiplies by a real M = m0 * 2^(shift - 31) held as an int32 mantissa m0 in [2^30, 2^31) (M0 = m0 / 2^31
 * in [1/2, 1), gemmlowp's QuantizeMultiplier) and an exponent: the exact 64-bit product x * m0 followed by
 * one rounding right shift by 31 - shift (TFLite's single-rounding MultiplyByQuantizedMultiplier).
 *
 * Only the GEMM differs between the paths (the element-wise code is shared), and integer sums are exact,
 * so every path gives the same bits. */
#include "intlstm.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
#define INTLSTM_X86 1
#include <immintrin.h>
#else
#define INTLSTM_X86 0
#endif

/* ---- fixed point ------------------------------------------------------------------------------------ */

static inline int32_t sat16(int64_t v) { return v > 32767 ? 32767 : (v < -32768 ? -32768 : (int32_t)v); }

static inline int32_t sat32(int64_t v) {
    return v > INT32_MAX ? INT32_MAX : (v < INT32_MIN ? INT32_MIN : (int32_t)v);
}

/* round(x / 2^e) with ties going up (towards +inf): floor((x + 2^(e-1)) / 2^e), e in 0..62.
 * (>> on a negative int64 is an arithmetic shift, i.e. floor, with GCC/Clang/MSVC.) */
static inline int64_t rshift_round(int64_t x, int e) {
    return e > 0 ? (x + ((int64_t)1 << (e - 1))) >> e : x;
}

/* x * M for the real multiplier M = m0 * 2^(shift - 31), m0 in [2^30, 2^31), shift in -31..30:
 * one 32x32 -> 64-bit product and one rounding right shift by 31 - shift (1..62), saturated to int32.
 * |x * m0| < 2^62, so the sum with the rounding constant (<= 2^61) cannot overflow. */
static inline int32_t rescale(int64_t x, int32_t m0, int shift) {
    return sat32(rshift_round(x * (int64_t)m0, 31 - shift));
}

/* Interpolated table: int16 x -> int16 Q0.15 (table entries Q0.23 at x = -32768 + 16 i). */
static inline int32_t lut16(const int32_t *T, int32_t x) {
    int32_t u = x + 32768;
    int32_t i = u >> INTLSTM_LUT_STEP_BITS;
    int32_t t = u & ((1 << INTLSTM_LUT_STEP_BITS) - 1);
    int32_t a = T[i];
    int32_t v = a + (((T[i + 1] - a) * t + (1 << (INTLSTM_LUT_STEP_BITS - 1))) >> INTLSTM_LUT_STEP_BITS);
    const int s = INTLSTM_LUT_FRAC_BITS - 15;
    return sat16((v + (1 << (s - 1))) >> s);
}

/* exported for the tests of the primitives */
int32_t intlstm_lut16(const int32_t *T, int32_t x) { return lut16(T, x); }
int32_t intlstm_rescale(int64_t x, int32_t m0, int shift) { return rescale(x, m0, shift); }

/* ---- dispatch --------------------------------------------------------------------------------------- */

int intlstm_path_supported(intlstm_path p) {
    if (p == INTLSTM_PATH_PORTABLE) return 1;
#if INTLSTM_X86
    if (p == INTLSTM_PATH_AVX2) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") ? 1 : 0;
    }
#endif
    return 0;
}

/* ---- GEMM: portable --------------------------------------------------------------------------------- */

static void gemm_portable(const int8_t *A, const int8_t *W, const int32_t *bias, int32_t *C, int M, int N, int K) {
    const int Kp = INTLSTM_KP(K);
    for (int m = 0; m < M; m++) {
        const int8_t *a = A + (size_t)m * K;
        for (int n = 0; n < N; n++) {
            const int8_t *w = W + (size_t)n * Kp;
            int32_t acc = 0;
            for (int k = 0; k < K; k++) acc += (int32_t)a[k] * (int32_t)w[k];
            C[(size_t)m * N + n] = acc + (bias ? bias[n] : 0);
        }
    }
}

/* ---- GEMM: AVX2 --------------------------------------------------------------------------------------
 * A is sign-extended to int16 once (scratch, rows of Kp with zeros beyond K); W rows (int8, already padded
 * with zeros to Kp) are sign-extended on the fly (vpmovsxbw from memory); vpmaddwd multiplies 16 int16
 * pairs and adds adjacent products into 8 int32 lanes (exact: |products| <= 2^14). Register blocks of
 * 2 A rows x 4 W rows (8 accumulators), 1 x 4 for a single row (batch 1). W is walked in blocks of rows
 * that stay in L2 while every A row passes over them. The zero padding makes every row a whole number of
 * 16-element steps, so there is no scalar tail. */
#if INTLSTM_X86
/* 16 weights from row w at column k: int8 sign-extended on the fly (wsz 1), or already int16 (wsz 2) */
__attribute__((target("avx2"))) static inline __m256i ldw(const char *w, int k, int wsz) {
    if (wsz == 1) return _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(w + k)));
    return _mm256_loadu_si256((const __m256i *)(w + 2 * (size_t)k));
}

__attribute__((target("avx2"))) static inline __m256i lda(const int16_t *p) {
    return _mm256_loadu_si256((const __m256i *)p);
}

__attribute__((target("avx2"))) static inline __m256i madd_acc(__m256i acc, __m256i a, __m256i w) {
    return _mm256_add_epi32(acc, _mm256_madd_epi16(a, w));
}

/* the four horizontal sums of a, b, c, d as one vector */
__attribute__((target("avx2"))) static inline __m128i hsum4(__m256i a, __m256i b, __m256i c, __m256i d) {
    __m256i ab = _mm256_hadd_epi32(a, b);
    __m256i cd = _mm256_hadd_epi32(c, d);
    __m256i abcd = _mm256_hadd_epi32(ab, cd);
    return _mm_add_epi32(_mm256_castsi256_si128(abcd), _mm256_extracti128_si256(abcd, 1));
}

__attribute__((target("avx2"))) static inline int32_t hsum1(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

__attribute__((target("avx2"), always_inline))
static inline void gemm_avx2_block(const int16_t *A16, const char *W, int wsz, const int32_t *bias, int32_t *C, int M,
                                   int N, int ldc, int Kp) {
    const size_t ldw_bytes = (size_t)Kp * wsz;
    int m = 0;
    for (; m + 2 <= M; m += 2) {
        const int16_t *a0 = A16 + (size_t)m * Kp, *a1 = a0 + Kp;
        int32_t *c0 = C + (size_t)m * ldc, *c1 = c0 + ldc;
        int n = 0;
        for (; n + 4 <= N; n += 4) {
            const char *w0 = W + n * ldw_bytes, *w1 = w0 + ldw_bytes, *w2 = w1 + ldw_bytes, *w3 = w2 + ldw_bytes;
            __m256i s00 = _mm256_setzero_si256(), s01 = s00, s02 = s00, s03 = s00;
            __m256i s10 = s00, s11 = s00, s12 = s00, s13 = s00;
            for (int k = 0; k < Kp; k += 16) {
                __m256i x0 = lda(a0 + k), x1 = lda(a1 + k);
                __m256i v = ldw(w0, k, wsz);
                s00 = madd_acc(s00, x0, v);
                s10 = madd_acc(s10, x1, v);
                v = ldw(w1, k, wsz);
                s01 = madd_acc(s01, x0, v);
                s11 = madd_acc(s11, x1, v);
                v = ldw(w2, k, wsz);
                s02 = madd_acc(s02, x0, v);
                s12 = madd_acc(s12, x1, v);
                v = ldw(w3, k, wsz);
                s03 = madd_acc(s03, x0, v);
                s13 = madd_acc(s13, x1, v);
            }
            __m128i b = bias ? _mm_loadu_si128((const __m128i *)(bias + n)) : _mm_setzero_si128();
            _mm_storeu_si128((__m128i *)(c0 + n), _mm_add_epi32(hsum4(s00, s01, s02, s03), b));
            _mm_storeu_si128((__m128i *)(c1 + n), _mm_add_epi32(hsum4(s10, s11, s12, s13), b));
        }
        for (; n < N; n++) {
            const char *w0 = W + n * ldw_bytes;
            __m256i s0 = _mm256_setzero_si256(), s1 = s0;
            for (int k = 0; k < Kp; k += 16) {
                __m256i v = ldw(w0, k, wsz);
                s0 = madd_acc(s0, lda(a0 + k), v);
                s1 = madd_acc(s1, lda(a1 + k), v);
            }
            int32_t b = bias ? bias[n] : 0;
            c0[n] = hsum1(s0) + b;
            c1[n] = hsum1(s1) + b;
        }
    }
    for (; m < M; m++) {
        const int16_t *a0 = A16 + (size_t)m * Kp;
        int32_t *c0 = C + (size_t)m * ldc;
        int n = 0;
        for (; n + 4 <= N; n += 4) {
            const char *w0 = W + n * ldw_bytes, *w1 = w0 + ldw_bytes, *w2 = w1 + ldw_bytes, *w3 = w2 + ldw_bytes;
            __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0;
            for (int k = 0; k < Kp; k += 16) {
                __m256i x0 = lda(a0 + k);
                s0 = madd_acc(s0, x0, ldw(w0, k, wsz));
                s1 = madd_acc(s1, x0, ldw(w1, k, wsz));
                s2 = madd_acc(s2, x0, ldw(w2, k, wsz));
                s3 = madd_acc(s3, x0, ldw(w3, k, wsz));
            }
            __m128i b = bias ? _mm_loadu_si128((const __m128i *)(bias + n)) : _mm_setzero_si128();
            _mm_storeu_si128((__m128i *)(c0 + n), _mm_add_epi32(hsum4(s0, s1, s2, s3), b));
        }
        for (; n < N; n++) {
            const char *w0 = W + n * ldw_bytes;
            __m256i s0 = _mm256_setzero_si256();
            for (int k = 0; k < Kp; k += 16) s0 = madd_acc(s0, lda(a0 + k), ldw(w0, k, wsz));
            c0[n] = hsum1(s0) + (bias ? bias[n] : 0);
        }
    }
}

__attribute__((target("avx2"), always_inline))
static inline void gemm_avx2_any(const int8_t *A, const char *W, int wsz, const int32_t *bias, int32_t *C, int M,
                                 int N, int K, int16_t *scratch) {
    const int K16 = K & ~15;
    const int Kp = INTLSTM_KP(K);
    for (int m = 0; m < M; m++) {
        const int8_t *a = A + (size_t)m * K;
        int16_t *d = scratch + (size_t)m * Kp;
        int k = 0;
        for (; k < K16; k += 16)
            _mm256_storeu_si256((__m256i *)(d + k), _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)(a + k))));
        for (; k < K; k++) d[k] = a[k];
        for (; k < Kp; k++) d[k] = 0;
    }
    int nb = (96 * 1024) / (Kp > 0 ? Kp * wsz : 1);
    nb = nb < 4 ? 4 : (nb & ~3);
    for (int n0 = 0; n0 < N; n0 += nb) {
        int nn = N - n0 < nb ? N - n0 : nb;
        gemm_avx2_block(scratch, W + (size_t)n0 * Kp * wsz, wsz, bias ? bias + n0 : NULL, C + n0, M, nn, N, Kp);
    }
}

/* the two instances: W int8 (packed rows), and W already widened to int16 (intlstm_layer_run) */
__attribute__((target("avx2")))
static void gemm_avx2(const int8_t *A, const int8_t *W, const int32_t *bias, int32_t *C, int M, int N, int K,
                      int16_t *scratch) {
    gemm_avx2_any(A, (const char *)W, 1, bias, C, M, N, K, scratch);
}

__attribute__((target("avx2")))
static void gemm_avx2_w16(const int8_t *A, const int16_t *W16, const int32_t *bias, int32_t *C, int M, int N, int K,
                          int16_t *scratch) {
    gemm_avx2_any(A, (const char *)W16, 2, bias, C, M, N, K, scratch);
}
#endif

void intlstm_gemm(intlstm_path p, const int8_t *A, const int8_t *W, const int32_t *bias, int32_t *C, int M, int N,
                  int K, int16_t *scratch) {
#if INTLSTM_X86
    if (p == INTLSTM_PATH_AVX2) {
        gemm_avx2(A, W, bias, C, M, N, K, scratch);
        return;
    }
#endif
    (void)scratch;
    gemm_portable(A, W, bias, C, M, N, K);
}

/* ---- the LSTM layer ----------------------------------------------------------------------------------- */

typedef struct {
    const intlstm_layer *L;
    int H, ig_shift, cell_left;
} step_ctx;

/* Input contributions of `rows` rows: gx = sat16(rescale(acc_x)) per gate row (scalar, from index j0). */
static void rescale_rows_scalar(const int32_t *acc, const int32_t *m0, const int32_t *sh, int16_t *out, size_t rows,
                                int G, int j0) {
    for (size_t r = 0; r < rows; r++)
        for (int j = j0; j < G; j++) out[r * G + j] = (int16_t)sat16(rescale(acc[r * G + j], m0[j], sh[j]));
}

/* One time step of one batch row for hidden units j0 .. H-1 (scalar). */
static void step_row_scalar(const step_ctx *s, const int32_t *ah, const int16_t *ax, int16_t *c, int8_t *y, int j0) {
    const intlstm_layer *L = s->L;
    const int H = s->H, G = 4 * H;
    const int32_t *m0h = L->qmul + 2 * G, *shh = L->qmul + 3 * G;
    for (int j = j0; j < H; j++) {
        int32_t gi = sat16(rescale(ah[j], m0h[j], shh[j]) + ax[j]);
        int32_t gf = sat16(rescale(ah[H + j], m0h[H + j], shh[H + j]) + ax[H + j]);
        int32_t gg = sat16(rescale(ah[2 * H + j], m0h[2 * H + j], shh[2 * H + j]) + ax[2 * H + j]);
        int32_t go = sat16(rescale(ah[3 * H + j], m0h[3 * H + j], shh[3 * H + j]) + ax[3 * H + j]);
        int32_t i = lut16(L->lut_sig, gi);
        int32_t f = lut16(L->lut_sig, gf);
        int32_t g = lut16(L->lut_tanh, gg);
        int32_t o = lut16(L->lut_sig, go);
        /* f c: Q0.15 x 2^-cs -> >> 15 back to 2^-cs; i g: Q0.30 -> >> (30 - cs) to 2^-cs */
        int32_t nc = sat16(rshift_round((int64_t)f * c[j], 15) + rshift_round((int64_t)i * g, s->ig_shift));
        if (L->cell_clip) {
            if (nc > L->cell_clip) nc = L->cell_clip;
            if (nc < -L->cell_clip) nc = -L->cell_clip;
        }
        int32_t tcv = lut16(L->lut_cell, sat16((int64_t)nc * ((int64_t)1 << s->cell_left)));
        int64_t hv = rescale((int64_t)o * tcv, L->hid_m0, L->hid_shift) + L->z_h;
        if (hv > 127) hv = 127;
        if (hv < -128) hv = -128;
        c[j] = (int16_t)nc;
        y[j] = (int8_t)hv;
    }
}

#if INTLSTM_X86
/* ---- the element-wise step, 8 lanes of AVX2 ------------------------------------------------------------
 * Same integers as the scalar code. rescale() needs 64-bit products: vpmuldq multiplies the even 32-bit lanes
 * (the odd ones after a 32-bit shift), and the arithmetic right shift by a per-lane count, which AVX2 lacks
 * for 64-bit lanes, is a logical one on the product offset by 2^62 (|x m0| < 2^62 keeps it non-negative):
 * floor((p + 2^(e-1) + 2^62) / 2^e) - 2^(62-e) = floor((p + 2^(e-1)) / 2^e). The result is clamped to
 * [lo, hi] before it returns to 32-bit lanes; with the bounds used (+-2^16 before a sat16 of a sum with an
 * int16, +-2^20 before an int8 clamp) this gives the same value as the scalar sat32 followed by the clamp. */
__attribute__((target("avx2"))) static inline __m256i clamp64(__m256i v, __m256i lo, __m256i hi) {
    v = _mm256_blendv_epi8(v, hi, _mm256_cmpgt_epi64(v, hi));
    return _mm256_blendv_epi8(v, lo, _mm256_cmpgt_epi64(lo, v));
}

__attribute__((target("avx2"))) static inline __m256i clamp32(__m256i v, int lo, int hi) {
    return _mm256_min_epi32(_mm256_max_epi32(v, _mm256_set1_epi32(lo)), _mm256_set1_epi32(hi));
}

/* 8 x rescale(x, m0, shift) clamped to [lo, hi]; e = 31 - shift (1..62) per lane. */
__attribute__((target("avx2"))) static inline __m256i rescale8(__m256i x, __m256i m0, __m256i e, __m256i lo,
                                                               __m256i hi) {
    const __m256i one = _mm256_set1_epi64x(1), big = _mm256_set1_epi64x((int64_t)1 << 62);
    const __m256i low32 = _mm256_set1_epi64x(0xFFFFFFFFLL);
    __m256i e_ev = _mm256_and_si256(e, low32), e_od = _mm256_srli_epi64(e, 32);
    __m256i p_ev = _mm256_mul_epi32(x, m0);
    __m256i p_od = _mm256_mul_epi32(_mm256_srli_epi64(x, 32), _mm256_srli_epi64(m0, 32));
    __m256i r_ev = _mm256_add_epi64(_mm256_sllv_epi64(one, _mm256_sub_epi64(e_ev, one)), big);
    __m256i r_od = _mm256_add_epi64(_mm256_sllv_epi64(one, _mm256_sub_epi64(e_od, one)), big);
    __m256i v_ev = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_add_epi64(p_ev, r_ev), e_ev), _mm256_srlv_epi64(big, e_ev));
    __m256i v_od = _mm256_sub_epi64(_mm256_srlv_epi64(_mm256_add_epi64(p_od, r_od), e_od), _mm256_srlv_epi64(big, e_od));
    v_ev = clamp64(v_ev, lo, hi);
    v_od = clamp64(v_od, lo, hi);
    return _mm256_blend_epi32(v_ev, _mm256_slli_epi64(v_od, 32), 0xAA);
}

__attribute__((target("avx2"))) static inline __m256i shift_count(const int32_t *sh) {
    return _mm256_sub_epi32(_mm256_set1_epi32(31), _mm256_loadu_si256((const __m256i *)sh));
}

/* 8 table lookups (vpgatherdd) with the interpolation of lut16 */
__attribute__((target("avx2"))) static inline __m256i lut8(const int32_t *T, __m256i x) {
    __m256i u = _mm256_add_epi32(x, _mm256_set1_epi32(32768));
    __m256i i = _mm256_srli_epi32(u, INTLSTM_LUT_STEP_BITS);
    __m256i t = _mm256_and_si256(u, _mm256_set1_epi32((1 << INTLSTM_LUT_STEP_BITS) - 1));
    __m256i a = _mm256_i32gather_epi32((const int *)T, i, 4);
    __m256i b = _mm256_i32gather_epi32((const int *)(T + 1), i, 4);
    __m256i d = _mm256_mullo_epi32(_mm256_sub_epi32(b, a), t);
    d = _mm256_srai_epi32(_mm256_add_epi32(d, _mm256_set1_epi32(1 << (INTLSTM_LUT_STEP_BITS - 1))), INTLSTM_LUT_STEP_BITS);
    __m256i v = _mm256_add_epi32(a, d);
    const int sh = INTLSTM_LUT_FRAC_BITS - 15;
    return clamp32(_mm256_srai_epi32(_mm256_add_epi32(v, _mm256_set1_epi32(1 << (sh - 1))), sh), -32768, 32767);
}

__attribute__((target("avx2"))) static inline __m256i gate8(const int32_t *ah, const int16_t *ax, const int32_t *m0,
                                                            const int32_t *sh) {
    const __m256i lo = _mm256_set1_epi64x(-65536), hi = _mm256_set1_epi64x(65536);
    __m256i v = rescale8(_mm256_loadu_si256((const __m256i *)ah), _mm256_loadu_si256((const __m256i *)m0),
                         shift_count(sh), lo, hi);
    v = _mm256_add_epi32(v, _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)ax)));
    return clamp32(v, -32768, 32767);
}

__attribute__((target("avx2")))
static void rescale_rows_avx2(const int32_t *acc, const int32_t *m0, const int32_t *sh, int16_t *out, size_t rows,
                              int G) {
    const __m256i lo = _mm256_set1_epi64x(-32768), hi = _mm256_set1_epi64x(32767);
    const int G8 = G & ~7;
    for (size_t r = 0; r < rows; r++) {
        for (int j = 0; j < G8; j += 8) {
            __m256i v = rescale8(_mm256_loadu_si256((const __m256i *)(acc + r * G + j)),
                                 _mm256_loadu_si256((const __m256i *)(m0 + j)), shift_count(sh + j), lo, hi);
            __m256i p = _mm256_permute4x64_epi64(_mm256_packs_epi32(v, v), 0x08);
            _mm_storeu_si128((__m128i *)(out + r * G + j), _mm256_castsi256_si128(p));
        }
    }
    if (G8 < G) rescale_rows_scalar(acc, m0, sh, out, rows, G, G8);
}

__attribute__((target("avx2")))
static void step_row_avx2(const step_ctx *s, const int32_t *ah, const int16_t *ax, int16_t *c, int8_t *y) {
    const intlstm_layer *L = s->L;
    const int H = s->H, G = 4 * H, H8 = H & ~7;
    const int32_t *m0h = L->qmul + 2 * G, *shh = L->qmul + 3 * G;
    const __m128i ig_cnt = _mm_cvtsi32_si128(s->ig_shift), left_cnt = _mm_cvtsi32_si128(s->cell_left);
    const __m256i ig_rnd = _mm256_set1_epi32(s->ig_shift > 0 ? 1 << (s->ig_shift - 1) : 0);
    const __m256i hid_m0 = _mm256_set1_epi32(L->hid_m0), hid_e = _mm256_set1_epi32(31 - L->hid_shift);
    const __m256i hlo = _mm256_set1_epi64x(-(1 << 20)), hhi = _mm256_set1_epi64x(1 << 20);
    const __m256i zh = _mm256_set1_epi32(L->z_h);
    for (int j = 0; j < H8; j += 8) {
        __m256i i = lut8(L->lut_sig, gate8(ah + j, ax + j, m0h + j, shh + j));
        __m256i f = lut8(L->lut_sig, gate8(ah + H + j, ax + H + j, m0h + H + j, shh + H + j));
        __m256i g = lut8(L->lut_tanh, gate8(ah + 2 * H + j, ax + 2 * H + j, m0h + 2 * H + j, shh + 2 * H + j));
        __m256i o = lut8(L->lut_sig, gate8(ah + 3 * H + j, ax + 3 * H + j, m0h + 3 * H + j, shh + 3 * H + j));
        __m256i c32 = _mm256_cvtepi16_epi32(_mm_loadu_si128((const __m128i *)(c + j)));
        /* |f c|, |i g| <= 2^30: the products fit int32 */
        __m256i fc = _mm256_srai_epi32(_mm256_add_epi32(_mm256_mullo_epi32(f, c32), _mm256_set1_epi32(1 << 14)), 15);
        __m256i ig = _mm256_sra_epi32(_mm256_add_epi32(_mm256_mullo_epi32(i, g), ig_rnd), ig_cnt);
        __m256i nc = clamp32(_mm256_add_epi32(fc, ig), -32768, 32767);
        if (L->cell_clip) nc = clamp32(nc, -L->cell_clip, L->cell_clip);
        __m256i tin = clamp32(_mm256_sll_epi32(nc, left_cnt), -32768, 32767);
        __m256i tcv = lut8(L->lut_cell, tin);
        __m256i hv = rescale8(_mm256_mullo_epi32(o, tcv), hid_m0, hid_e, hlo, hhi);
        hv = clamp32(_mm256_add_epi32(hv, zh), -128, 127);
        __m256i c16 = _mm256_permute4x64_epi64(_mm256_packs_epi32(nc, nc), 0x08);
        _mm_storeu_si128((__m128i *)(c + j), _mm256_castsi256_si128(c16));
        __m256i h16 = _mm256_packs_epi32(hv, hv);
        __m256i h8 = _mm256_packs_epi16(h16, h16);
        int32_t lo4 = _mm256_cvtsi256_si32(h8), hi4 = _mm256_extract_epi32(h8, 4);
        memcpy(y + j, &lo4, 4);
        memcpy(y + j + 4, &hi4, 4);
    }
    if (H8 < H) step_row_scalar(s, ah, ax, c, y, H8);
}
#endif

/* The layer's GEMMs: from the int16 copy of the weights when there is one (W16 != NULL, AVX2 only), else from
 * the packed int8 rows through the path's own GEMM. */
static void layer_gemm(intlstm_path p, const int8_t *A, const int8_t *W, const int16_t *W16, const int32_t *bias,
                       int32_t *C, int M, int N, int K, int16_t *scratch) {
#if INTLSTM_X86
    if (W16) {
        gemm_avx2_w16(A, W16, bias, C, M, N, K, scratch);
        return;
    }
#endif
    (void)W16;
    intlstm_gemm(p, A, W, bias, C, M, N, K, scratch);
}

#define CHUNK_ELEMS (1 << 18) /* input-projection rows are computed this many int32 at a time */

int intlstm_layer_run(intlstm_path p, const intlstm_layer *L, const int8_t *x, int T, int B, int8_t *h, int16_t *c,
                      int8_t *y) {
    const int H = L->H, G = 4 * H, I = L->I;
    if (T <= 0 || B <= 0) return 0;
    int tc = CHUNK_ELEMS / ((size_t)B * G);
    if (tc < 1) tc = 1;
    if (tc > T) tc = T;
    const int Ip = INTLSTM_KP(I), Hp = INTLSTM_KP(H);
    size_t scratch_n = (size_t)tc * B * Ip;
    if ((size_t)B * Hp > scratch_n) scratch_n = (size_t)B * Hp;
    int32_t *accx = (int32_t *)malloc((size_t)tc * B * G * sizeof(int32_t));
    int16_t *gx = (int16_t *)malloc((size_t)tc * B * G * sizeof(int16_t));
    int32_t *acch = (int32_t *)malloc((size_t)B * G * sizeof(int32_t));
    int16_t *scratch = (int16_t *)malloc(scratch_n * sizeof(int16_t));
    if (!accx || !gx || !acch || !scratch) {
        free(accx); free(gx); free(acch); free(scratch);
        return -1;
    }
    const int32_t *m0x = L->qmul, *shx = L->qmul + G;
    step_ctx s;
    s.L = L;
    s.H = H;
    s.ig_shift = 30 - L->cell_frac_bits;
    s.cell_left = L->cell_frac_bits < INTLSTM_GATE_FRAC_BITS ? INTLSTM_GATE_FRAC_BITS - L->cell_frac_bits : 0;
    const int vec = p == INTLSTM_PATH_AVX2;
    /* With several batch rows every weight row is read B/2 times per step: widen the weights to int16 once
     * here instead of sign-extending them on each read (twice the bytes, no shuffle per load). */
    int16_t *w16 = NULL;
#if INTLSTM_X86
    if (vec && B >= 2) w16 = (int16_t *)malloc((size_t)G * (Ip + Hp) * sizeof(int16_t));
    if (w16) {
        for (size_t e = 0; e < (size_t)G * Ip; e++) w16[e] = L->w_ih[e];
        for (size_t e = 0; e < (size_t)G * Hp; e++) w16[(size_t)G * Ip + e] = L->w_hh[e];
    }
#endif

    for (int t0 = 0; t0 < T; t0 += tc) {
        int nt = T - t0 < tc ? T - t0 : tc;
        /* input contributions of nt steps at once: one GEMM, then rescale to Q3.12 */
        layer_gemm(p, x + (size_t)t0 * B * I, L->w_ih, w16, L->bias_x, accx, nt * B, G, I, scratch);
#if INTLSTM_X86
        if (vec)
            rescale_rows_avx2(accx, m0x, shx, gx, (size_t)nt * B, G);
        else
#endif
            rescale_rows_scalar(accx, m0x, shx, gx, (size_t)nt * B, G, 0);
        for (int tt = 0; tt < nt; tt++) {
            layer_gemm(p, h, L->w_hh, w16 ? w16 + (size_t)G * Ip : NULL, L->bias_h, acch, B, G, H, scratch);
            const int16_t *gxt = gx + (size_t)tt * B * G;
            int8_t *yt = y + ((size_t)(t0 + tt) * B) * H;
            for (int b = 0; b < B; b++) {
                const int32_t *ah = acch + (size_t)b * G;
                const int16_t *ax = gxt + (size_t)b * G;
#if INTLSTM_X86
                if (vec) {
                    step_row_avx2(&s, ah, ax, c + (size_t)b * H, yt + (size_t)b * H);
                    continue;
                }
#endif
                step_row_scalar(&s, ah, ax, c + (size_t)b * H, yt + (size_t)b * H, 0);
            }
            memcpy(h, yt, (size_t)B * H); /* h_t = y_t (after the whole step: the GEMM read the old h) */
        }
    }
    (void)vec;
    free(w16);
    free(accx); free(gx); free(acch); free(scratch);
    return 0;
}
