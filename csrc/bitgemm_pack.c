/*
 * bitgemm_pack.c -- packing +-1 / real / integer matrices into rows of 64-bit words.
 *
 * Element j of a row becomes bit (j % 64) of word (j / 64); the bit is 1 where the value is < 0
 * (-1) and 0 where it is >= 0 (+1; lowbit's sign(0) = +1, and a NaN also packs as +1 because
 * NaN < 0 is false). Bits past K in the last word are written as 0.
 *
 * Packing runs at inference time on every layer's activations, so the common layouts (rows
 * contiguous, int8 / float32 / float64) go through SSE2 compare + movemask, which every x86-64 CPU
 * has (no run-time dispatch needed, and packing is close to memory bound anyway). Everything else
 * (other dtypes, strided rows such as transposed views, other CPUs) uses a scalar loop that honours
 * arbitrary byte strides, so the Python side never has to copy.
 *
 * With check_pm1 the packer also verifies every value is exactly +1 or -1 and reports the first
 * offender, so the +-1 API validates its input in the same pass that packs it.
 */
#include <string.h>

#include "bitgemm.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#define BG_HAVE_SSE2 1
#else
#define BG_HAVE_SSE2 0
#endif

/* ---- scalar packer, one instantiation per element type --------------------------------------
 * Returns -1, or the column of the first non-+-1 value (check only). memcpy keeps unaligned and
 * oddly strided elements well defined; it compiles to a plain load. */
#define BG_DEFINE_PACK_SCALAR(NAME, T, IS_NEG, IS_PM1)                                         \
    static long long NAME(const char *src, ptrdiff_t s1, size_t j0, size_t k, uint64_t *dst,  \
                          int check)                                                          \
    {                                                                                         \
        size_t j = j0;                                                                        \
        while (j < k) {                                                                       \
            const size_t end = (k - j > 64) ? j + 64 : k;                                     \
            uint64_t word = 0;                                                                \
            for (unsigned bit = 0; j < end; j++, bit++) {                                     \
                T v;                                                                          \
                memcpy(&v, src + (ptrdiff_t)j * s1, sizeof v);                                \
                if (check && !(IS_PM1(v)))                                                    \
                    return (long long)j;                                                      \
                word |= (uint64_t)(IS_NEG(v) ? 1u : 0u) << bit;                               \
            }                                                                                 \
            dst[(j - 1) / 64] = word;                                                         \
        }                                                                                     \
        return -1;                                                                            \
    }

#define BG_NEG_SIGNED(v) ((v) < 0)
#define BG_NEG_UNSIGNED(v) (0)
#define BG_PM1_SIGNED(v) ((v) == 1 || (v) == -1)
#define BG_PM1_UNSIGNED(v) ((v) == 1) /* an unsigned type cannot hold -1 */
#define BG_PM1_FLOAT(v) ((v) == 1.0 || (v) == -1.0)

BG_DEFINE_PACK_SCALAR(pack_i8, int8_t, BG_NEG_SIGNED, BG_PM1_SIGNED)
BG_DEFINE_PACK_SCALAR(pack_i16, int16_t, BG_NEG_SIGNED, BG_PM1_SIGNED)
BG_DEFINE_PACK_SCALAR(pack_i32, int32_t, BG_NEG_SIGNED, BG_PM1_SIGNED)
BG_DEFINE_PACK_SCALAR(pack_i64, int64_t, BG_NEG_SIGNED, BG_PM1_SIGNED)
BG_DEFINE_PACK_SCALAR(pack_u8, uint8_t, BG_NEG_UNSIGNED, BG_PM1_UNSIGNED)
BG_DEFINE_PACK_SCALAR(pack_u16, uint16_t, BG_NEG_UNSIGNED, BG_PM1_UNSIGNED)
BG_DEFINE_PACK_SCALAR(pack_u32, uint32_t, BG_NEG_UNSIGNED, BG_PM1_UNSIGNED)
BG_DEFINE_PACK_SCALAR(pack_u64, uint64_t, BG_NEG_UNSIGNED, BG_PM1_UNSIGNED)
BG_DEFINE_PACK_SCALAR(pack_f32, float, BG_NEG_SIGNED, BG_PM1_FLOAT)
BG_DEFINE_PACK_SCALAR(pack_f64, double, BG_NEG_SIGNED, BG_PM1_FLOAT)

typedef long long (*bg_pack_row_fn)(const char *src, ptrdiff_t s1, size_t j0, size_t k, uint64_t *dst,
                                    int check);

static bg_pack_row_fn scalar_packer(bg_dtype t)
{
    switch (t) {
    case BG_T_I8: return pack_i8;
    case BG_T_I16: return pack_i16;
    case BG_T_I32: return pack_i32;
    case BG_T_I64: return pack_i64;
    case BG_T_U8: return pack_u8;
    case BG_T_U16: return pack_u16;
    case BG_T_U32: return pack_u32;
    case BG_T_U64: return pack_u64;
    case BG_T_F32: return pack_f32;
    case BG_T_F64: return pack_f64;
    }
    return NULL;
}

/* ---- SSE2 packers for contiguous rows ---------------------------------------------------------
 * Each handles the whole 64-element words of the row and returns how many elements it consumed
 * (a multiple of 64), or -(1 + word index) when check found a non-+-1 value in that word: the
 * caller then rescans that word with the scalar packer to name the exact element. */
#if BG_HAVE_SSE2
/* Per type, of the values in 16 bytes: the bits of those < 0 (neg), of those exactly +-1 (pm1; NaN compares
 * unequal); for int8, movemask_epi8 takes each byte's sign bit, exactly "v < 0". */
static inline __attribute__((always_inline)) unsigned neg_f32(__m128i v) { return (unsigned)_mm_movemask_ps(_mm_cmplt_ps(_mm_castsi128_ps(v), _mm_setzero_ps())); }
static inline __attribute__((always_inline)) unsigned neg_f64(__m128i v) { return (unsigned)_mm_movemask_pd(_mm_cmplt_pd(_mm_castsi128_pd(v), _mm_setzero_pd())); }
static inline __attribute__((always_inline)) unsigned neg_i8(__m128i v) { return (unsigned)_mm_movemask_epi8(v); }
static inline __attribute__((always_inline)) unsigned pm1_f32(__m128i v)
{
    const __m128 absmask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
    return (unsigned)_mm_movemask_ps(_mm_cmpeq_ps(_mm_and_ps(_mm_castsi128_ps(v), absmask), _mm_set1_ps(1.0f)));
}
static inline __attribute__((always_inline)) unsigned pm1_f64(__m128i v)
{
    const __m128d absmask = _mm_castsi128_pd(_mm_set1_epi64x(0x7fffffffffffffffLL));
    return (unsigned)_mm_movemask_pd(_mm_cmpeq_pd(_mm_and_pd(_mm_castsi128_pd(v), absmask), _mm_set1_pd(1.0)));
}
static inline __attribute__((always_inline)) unsigned pm1_i8(__m128i v)
{
    return (unsigned)_mm_movemask_epi8(_mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(1)), _mm_cmpeq_epi8(v, _mm_set1_epi8(-1))));
}

/* The one SSE2 packer loop, for per (4 float, 2 double, 16 int8) values per 16 bytes and that type's neg and
 * pm1 (constants where it is inlined: the calls are direct and inlined). */
static inline __attribute__((always_inline)) long long pack_sse2(const char *x, size_t k, uint64_t *dst, int check,
                                                                unsigned per, unsigned (*neg)(__m128i),
                                                                unsigned (*pm1)(__m128i))
{
    const unsigned all = (1u << per) - 1u;
    const size_t nw = k / 64;
    for (size_t w = 0; w < nw; w++) {
        const char *p = x + 1024 / per * w;
        uint64_t word = 0;
        unsigned ok = all;
        for (unsigned q = 0; q < 64 / per; q++) {
            const __m128i v = _mm_loadu_si128((const __m128i *)(const void *)(p + 16 * q));
            word |= (uint64_t)neg(v) << (per * q);
            if (check)
                ok &= pm1(v);
        }
        if (ok != all)
            return -1 - (long long)w;
        dst[w] = word;
    }
    return (long long)(64 * nw);
}
#endif

/* Packs rows [r0, r1). Returns -1 or the flat index of the first non-+-1 value in that range. */
static long long pack_rows(const bg_pack_args *p, size_t r0, size_t r1)
{
    const size_t W = (p->k + 63) / 64;
    const bg_pack_row_fn scalar = scalar_packer(p->dtype);
    const size_t itemsize = (p->dtype == BG_T_I8 || p->dtype == BG_T_U8)     ? 1
                            : (p->dtype == BG_T_I16 || p->dtype == BG_T_U16) ? 2
                            : (p->dtype == BG_T_I32 || p->dtype == BG_T_U32 || p->dtype == BG_T_F32) ? 4
                                                                                                    : 8;
    const int contiguous = p->s1 == (ptrdiff_t)itemsize;
    for (size_t r = r0; r < r1; r++) {
        const char *row = p->src + (ptrdiff_t)r * p->s0;
        uint64_t *dst = p->dst + (ptrdiff_t)r * p->ldd;
        size_t j0 = 0;
#if BG_HAVE_SSE2
        if (contiguous && p->k >= 64) {
            long long done = -2; /* -2: no fast packer for this dtype */
            switch (p->dtype) {
            case BG_T_F32: done = pack_sse2(row, p->k, dst, p->check_pm1, 4, neg_f32, pm1_f32); break;
            case BG_T_F64: done = pack_sse2(row, p->k, dst, p->check_pm1, 2, neg_f64, pm1_f64); break;
            case BG_T_I8: done = pack_sse2(row, p->k, dst, p->check_pm1, 16, neg_i8, pm1_i8); break;
            default: break;
            }
            if (done >= 0) {
                j0 = (size_t)done;
            } else if (done != -2) { /* a bad value in word (-1 - done): let the scalar packer find it */
                const size_t w = (size_t)(-1 - done);
                const size_t end = 64 * (w + 1);
                const long long j = scalar(row, p->s1, 64 * w, end, dst, 1);
                if (j >= 0)
                    return (long long)(r * p->k) + j;
                j0 = end; /* unreachable in practice: the fast check and the scalar check agree */
            }
        }
#else
        (void)contiguous;
#endif
        if (j0 < p->k) {
            const long long j = scalar(row, p->s1, j0, p->k, dst, p->check_pm1);
            if (j >= 0)
                return (long long)(r * p->k) + j;
        }
        for (size_t w = W; w < p->dwords; w++) /* spare words of a wider destination */
            dst[w] = 0;
    }
    return -1;
}

/* ---- threading: rows are split evenly; each share remembers its first bad index ---------------- */
typedef struct {
    const bg_pack_args *p;
    long long bad[256];
} pack_ctx;

static void pack_task(void *vctx, int t, int nthreads)
{
    pack_ctx *ctx = (pack_ctx *)vctx;
    const size_t rows = ctx->p->rows;
    const size_t r0 = bg_share(rows, t, nthreads), r1 = bg_share(rows, t + 1, nthreads);
    ctx->bad[t] = pack_rows(ctx->p, r0, r1);
}

/* below this many elements a second thread costs more than it saves */
#define BG_PACK_MIN_ELEMS_PER_THREAD ((size_t)1 << 19)

long long bg_pack(const bg_pack_args *p, int nthreads)
{
    if (p->rows == 0)
        return -1;
    size_t elems = p->rows * (p->k ? p->k : 1);
    size_t t = elems / BG_PACK_MIN_ELEMS_PER_THREAD;
    if (t > (size_t)nthreads) t = (size_t)nthreads;
    if (t > p->rows) t = p->rows;
    if (t > 256) t = 256;
    if (t <= 1)
        return pack_rows(p, 0, p->rows);
    pack_ctx ctx;
    ctx.p = p;
    bg_parallel((int)t, pack_task, &ctx);
    long long first = -1;
    for (size_t i = 0; i < t; i++) /* shares are in row order: the first one reporting wins */
        if (ctx.bad[i] >= 0) {
            first = ctx.bad[i];
            break;
        }
    return first;
}
