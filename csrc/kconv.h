/*
 * kconv.h -- k-bit codes into and out of the k-bit GEMM (qgemm.h) without NumPy passes in between.
 *
 * Two pieces, each one threaded C pass with run-time CPU dispatch (portable / AVX2 / AVX-512):
 *
 *   pack      NHWC uint8 codes -> the rows the k-bit GEMM reads, im2col included: row r = (n, oy, ox) of a
 *             conv with kernel kh x kw, stride, padding (out-of-image taps take the pad code) holds the
 *             kh*kw*C codes of its window in (ky, kx, c) order, written straight into the kernel's layout:
 *             int8 "a8" rows (zero padded to qg_a8_stride(K)) or bit planes (qg_plane_words), with the
 *             row sums of codes the GEMM's level-set epilogue needs. A dense layer is the 1 x 1 conv of
 *             an (rows, 1, 1, K) input. An optional 256-entry map turns input codes into the kernel's codes
 *             (a code table that is no affine image of 0..L-1, e.g. log quantizers). With dst == NULL the
 *             pass computes the row sums only (a dense a8 operand the GEMM can read in place).
 *             Returns the largest *input* code read (pad code included), so the caller validates the
 *             input with no pass of its own.
 *
 *   epilogue  int32 accumulators (N, H, W, C) -> v = acc * mul + border[y][x][c] (border optional,
 *             int32 wrapping) -> optional max-pool of v (kernel, stride, padding; padded positions never
 *             win) -> per-channel multi-threshold: code = #{j : sign[c] * v >= thr[j][c]} (int32, the
 *             product wrapping like NumPy's) as uint8 codes (N, OH, OW, C), or for one threshold as
 *             packed bits (N, OH, OW, ceil(C/64)) uint64, bit 1 where the code is 0 (the value -1 of the
 *             graph runtime's ``bits``), channel pad bits 0.
 *
 * Row kernels per ISA: kconv_pack.c / kconv_epilogue.c (drivers and portable code), kconv_kernels_avx2.c,
 * kconv_kernels_avx512.c (AVX-512BW for the byte work of the packer, AVX-512F for the epilogue).
 */
#ifndef LOWBIT_KCONV_H
#define LOWBIT_KCONV_H

#include <stdatomic.h>

#include "qgemm.h"

#define KC_MAX_THREADS 256 /* as bg_parallel's limit */

/* ---- pack ----------------------------------------------------------------------------------------- */
typedef struct {
    const uint8_t *x;         /* element (0, 0, 0, 0) of the NHWC codes */
    ptrdiff_t xs_n, xs_h;     /* bytes between images and between image rows (pixels are c bytes apart) */
    size_t n, h, w, c;
    int kh, kw, sh, sw, ph, pw;
    size_t oh, ow;            /* output size: rows = n * oh * ow */
    const uint8_t *map;       /* NULL, or 256 entries: input code -> kernel code */
    uint8_t pad;              /* input code of out-of-image taps (mapped like any other) */
    int bits;                 /* 0: a8 rows; 1..8: bit planes of that many bits */
    void *dst;                /* a8: uint8 rows of >= qg_a8_stride(K); planes: uint64 rows; NULL: sums only */
    ptrdiff_t ldd;            /* row stride of dst, in bytes (a8) or words (planes) */
    int32_t *sums;            /* rows entries: sum of each row's kernel codes (may be NULL) */
} kc_pack_args;

size_t kc_pack_rows(const kc_pack_args *p);          /* n * oh * ow */
size_t kc_pack_k(const kc_pack_args *p);             /* kh * kw * c */
/* packs every row; returns the largest input code read */
unsigned kc_pack(const kc_pack_args *p, int path, int nthreads);

/* per-ISA row finishers: the sum of len bytes; bit planes of nchunks 64-code chunks (buf zero past K) into
 * a planes row d, with the sum of the codes. Both fold the bytes they read into vmax, a 64-byte running
 * byte-wise max (its largest byte: the largest code seen), so a row costs no horizontal max. */
typedef void (*kc_sum_max_fn)(const uint8_t *x, size_t len, uint32_t *sum, uint8_t *vmax);
typedef void (*kc_planes_fn)(const uint8_t *buf, size_t nchunks, int bits, uint64_t *d, uint32_t *sum,
                             uint8_t *vmax);
void kc_sum_max_scalar(const uint8_t *x, size_t len, uint32_t *sum, uint8_t *vmax);
void kc_planes_scalar(const uint8_t *buf, size_t nchunks, int bits, uint64_t *d, uint32_t *sum, uint8_t *vmax);
#if LB_X86
void kc_sum_max_avx2(const uint8_t *x, size_t len, uint32_t *sum, uint8_t *vmax);
void kc_planes_avx2(const uint8_t *buf, size_t nchunks, int bits, uint64_t *d, uint32_t *sum, uint8_t *vmax);
void kc_sum_max_avx512(const uint8_t *x, size_t len, uint32_t *sum, uint8_t *vmax);
void kc_planes_avx512(const uint8_t *buf, size_t nchunks, int bits, uint64_t *d, uint32_t *sum, uint8_t *vmax);
#endif
typedef struct {
    kc_sum_max_fn sum_max;
    kc_planes_fn planes;
} kc_row_fns;
kc_row_fns kc_row_fns_for(int path);
/* rows [r0, r1) of the pass: row r into dst + (r - r0) * ldd (NULL: sums only) and sums[r - r0] (may be
 * NULL); buf: kc_pack_buf_bytes(p) bytes, zeroed once by the caller (bit planes and dst-less rows are
 * gathered there). Returns the largest input code read. */
size_t kc_pack_buf_bytes(const kc_pack_args *p);
unsigned kc_pack_range(const kc_pack_args *p, const kc_row_fns *f, size_t r0, size_t r1, void *dst, ptrdiff_t ldd,
                       int32_t *sums, uint8_t *buf);

/* ---- epilogue ------------------------------------------------------------------------------------- */
typedef struct {
    const int32_t *acc;       /* (n, h, w) pixels of c channels, pixel p at acc + p * ld_acc */
    size_t n, h, w, c;
    int32_t mul;              /* v = acc * mul + border (uint32 arithmetic: wraps) */
    const int32_t *border;    /* (h, w) pixels (stride ld_border) or NULL (0) */
    int kh, kw, sh, sw, ph, pw; /* max-pool window; kh == 0: no pooling (oh = h, ow = w) */
    size_t oh, ow;
    int nthr;                 /* thresholds per channel, 1..255 (levels - 1) */
    const int32_t *thr;       /* the signed thresholds: threshold j of channel ch at thr[j * ld_thr + ch] */
    const int32_t *sign;      /* (c) +-1 */
    int flip;                 /* some sign is -1 */
    int out_bits;             /* 0: uint8 codes (n, oh, ow) pixels; 1: uint64 bits, ceil(c / 64) words a pixel */
    void *out;                /* pixel p at out + p * ld_out (bytes for codes, words for bits, floats) */
    size_t ld_acc, ld_border, ld_thr, ld_out; /* all c (words for bits) when the arrays are whole */
    int out_float;            /* 1: no thresholds; out = (float)v * scale[ch] + bias[ch] (float32, unfused) */
    const float *scale, *bias;
} kc_epi_args;

/* output image rows [r0, r1) (r = n * oh + oy), one ISA each (one function type declares them; the vector
 * ones exist on x86 only) */
typedef void kc_epi_rows_k(const kc_epi_args *e, size_t r0, size_t r1);
typedef kc_epi_rows_k *kc_epi_rows_fn;
kc_epi_rows_k kc_epi_rows_scalar, kc_epi_rows_avx2, kc_epi_rows_avx512;
void kc_epilogue(const kc_epi_args *e, int path, int nthreads);
kc_epi_rows_fn kc_epi_fn_for(int path);

/* ---- a whole conv layer: pack + GEMM + epilogue per band of its output (kconv_conv.c) --------------- */
typedef struct {
    kc_pack_args pack;        /* the input and the conv window (dst, ldd, sums unused); bits: the kernel's
                               * layout, 0 (a8) for QG_INT8, the codes' bits (planes) for QG_BITSERIAL */
    qg_args gemm;             /* kind, b, ldb, abits, bbits, bstore, n, k, sa, oa, sb, ob, zb, sumb;
                               * a, lda, m, suma, c, ldc are set per block */
    int pooled;               /* epi's window is a max-pool (epi.oh, epi.ow: the pooled size) */
    kc_epi_args epi;          /* border (OH, OW, n) contiguous, mul, window, thresholds (nthr, n), sign,
                               * flip, out_bits, out (the whole output, contiguous); per-block fields are set
                               * per block */
    int32_t *out_acc;         /* non-NULL: no epilogue; the int32 product, rows x n, row stride ld_out_acc */
    ptrdiff_t ld_out_acc;
} kc_conv_args;

/* 0, or -1 when no thread could allocate its blocks; *max_code: the largest input code read */
int kc_conv(kc_conv_args *a, int path, int nthreads, unsigned *max_code);

/* ---- float32 in and out ---------------------------------------------------------------------------- */
/* per-channel thresholds of float32 values (a quantizer after a float op): code = #{j : sign[ch] * x >=
 * thr[j][ch]} (float compares: NaN counts no threshold), as uint8 codes or, for one threshold, packed bits */
typedef struct {
    const float *x;           /* rows x c, row stride ld_x */
    size_t rows, c, ld_x;
    int nthr;
    const float *thr;         /* (nthr, c) */
    const float *sign;        /* (c) +-1 or NULL (all +1) */
    int out_bits;
    void *out;                /* rows x c uint8, or rows x ceil(c / 64) uint64, contiguous */
    /* optional addend (a residual add before the quantizer): x + add (float32 sum), or x + add_table[code]
     * of add_codes (the decode of a code map); both rows x c with row stride ld_add; NULL: none */
    const float *add;
    const uint8_t *add_codes;
    const float *add_table;   /* 256 entries */
    size_t ld_add;
} kc_fthr_args;
typedef void kc_fthr_rows_k(const kc_fthr_args *f, size_t r0, size_t r1); /* the row kernels read no addend */
typedef kc_fthr_rows_k *kc_fthr_rows_fn;
kc_fthr_rows_k kc_fthr_rows_scalar, kc_fthr_rows_avx2, kc_fthr_rows_avx512; /* the vector ones on x86 only */
/* returns the largest of add_codes (0 without them) */
unsigned kc_fthreshold(const kc_fthr_args *f, int path, int nthreads);
/* max-pooling of an NHWC map of float32 (NaN wins, as NumPy's maximum) or uint8 codes; padded positions
 * never win (every window holds a pixel: padding < kernel) */
typedef struct {
    const void *x;            /* (n, h, w, c) contiguous */
    int u8;                   /* 1: uint8, 0: float32 */
    size_t n, h, w, c;
    int kh, kw, sh, sw, ph, pw;
    size_t oh, ow;
    void *out;                /* (n, oh, ow, c) contiguous */
} kc_pool_args;
void kc_maxpool(const kc_pool_args *p, int nthreads);
/* the table lookup of a decode: v[i] = table[q[i]] (x NULL), or x[i] + table[q[i]] (float32 sum), i < n;
 * returns the largest code read. table: 256 entries. Per ISA: a 16-entry table in a register (vpermps)
 * while the codes stay below 16, gathers past it. */
typedef unsigned kc_lookup_k(const float *x, const uint8_t *q, const float *table, size_t n, float *v);
typedef kc_lookup_k *kc_lookup_fn;
kc_lookup_k kc_lookup_scalar, kc_lookup_avx2, kc_lookup_avx512; /* the vector ones on x86 only */
kc_lookup_fn kc_lookup_for(int path);
/* out[i] = table[codes[i]] for n codes (table: 256 entries); returns the largest code */
unsigned kc_decode(const uint8_t *codes, size_t n, const float *table, float *out, int path, int nthreads);

/* A float conv's input made from NHWC uint8 codes through per-channel tables (tables[ch][code]: c x 256
 * float32), fill outside the image: its padded map (kc_decode_map, kconv_float.c: out (n, h + 2 ph, w + 2 pw,
 * c); the window fields unused), or its patches (kc_im2col_decode: out (n * oh * ow, kh * kw * c), each value
 * looked up -- for windows that read each pixel less than once, where a map would decode pixels no window
 * reads). Both return the largest code of the input. */
typedef struct {
    const uint8_t *codes;     /* (n, h, w, c), contiguous */
    size_t n, h, w, c, oh, ow;
    int kh, kw, sh, sw, ph, pw;
    const float *tables;
    float fill;
    float *out;
} kc_decode_args;
unsigned kc_im2col_decode(const kc_decode_args *a, int nthreads);
unsigned kc_decode_map(const kc_decode_args *a, int nthreads);

/* ---- float32 conv (kconv_float.c): the float layers of a quantized network, implicit GEMM ------------- */
#define KC_FPANEL 64    /* output channels per weight panel */
#define KC_FTILE_ROWS 6 /* output pixels per tile */
/* weights (K, N) float32 row-major, K in (ky, kx, c) order -> ceil(N / 64) panels of (K, 64), zero past N */
size_t kc_fconv_packed_floats(size_t k, size_t n);
void kc_fconv_pack(const float *w, size_t k, size_t n, float *dst);
typedef struct {
    const float *map;         /* (n, hp, wp, c) float32 NHWC, padding included: the window of output (oy, ox)
                               * starts at map row oy * sh, column ox * sw */
    size_t n, hp, wp, c;
    int kh, kw, sh, sw;
    size_t oh, ow;
    const float *w;           /* kc_fconv_pack panels of K = kh * kw * c */
    size_t nout;
    float *out;               /* output pixel p's nout floats at out + p * ldo */
    size_t ldo;
} kc_fconv_args;
void kc_fconv(const kc_fconv_args *a, int path, int nthreads);
/* a tile: rows (<= KC_FTILE_ROWS) consecutive output pixels whose windows start at a, a + as, ... times one
 * panel, the first cols (<= KC_FPANEL) channels stored at out + r * ldo */
typedef struct {
    int kh, kwc;              /* window rows; floats per window row (kw * c), consecutive in the map */
    ptrdiff_t as, arow, ldo;  /* floats between the tile's windows (sw * c), between map rows (wp * c), and
                               * between output pixels */
} kc_ftile_args;
typedef void kc_ftile_k(const kc_ftile_args *t, const float *a, const float *panel, float *out, int rows, int cols);
typedef kc_ftile_k *kc_ftile_fn;
kc_ftile_k kc_ftile_scalar, kc_ftile_avx2, kc_ftile_avx512; /* the vector ones on x86 only; avx2 needs FMA */
/* the row passes' thread plan: a thread per ~100 us of work (ns: the pass's estimated single-thread time),
 * then ~4 units a thread over `items` (a thread that gets no core leaves its share to the others) */
static inline int kc_threads_for(double ns, int nthreads)
{
    int nt = (int)(ns / 1e5);
    if (nt > nthreads) nt = nthreads;
    if (nt > KC_MAX_THREADS) nt = KC_MAX_THREADS;
    return nt < 1 ? 1 : nt;
}

static inline size_t kc_units_for(int nt, size_t items)
{
    const size_t u = nt > 1 ? 4 * (size_t)nt : 1;
    return u > items ? items : u;
}

/* *m = max(*m, v), atomically: the largest code a threaded pass read, merged once per unit */
static inline void kc_atomic_max(atomic_uint *m, unsigned v)
{
    unsigned cur = atomic_load(m);
    while (v > cur && !atomic_compare_exchange_weak(m, &cur, v)) {
    }
}

/* the window of output position o along one axis: input positions [lo, hi) of [0, size) */
static inline void kc_window(size_t o, int k, int s, int p, size_t size, size_t *lo, size_t *hi)
{
    const ptrdiff_t a = (ptrdiff_t)o * s - p, b = a + k;
    *lo = a < 0 ? 0 : (size_t)a;
    *hi = b < 0 ? 0 : ((size_t)b > size ? size : (size_t)b);
    if (*hi < *lo)
        *hi = *lo;
}

/* The walk of an epilogue row kernel over the output pixels of image rows [r0, r1) (r = img * oh + oy), stepping
 * along the rows (no division per pixel): per pixel its index, the first position of its window in acc and in
 * border (NULL without one) and the window's rows and columns (1 x 1 without pooling). e: the kernel's local
 * copy of its arguments (the uint8 stores alias everything else, and would make the compiler reload them). */
typedef struct {
    size_t pix, end, img, oy, ox;
    const int32_t *a0, *b0;
    size_t ny, nx;
} kc_epi_walk;

static inline __attribute__((always_inline)) void kc_epi_seek(const kc_epi_args *e, kc_epi_walk *p, int pool,
                                                              int border)
{
    size_t ylo = p->oy, yhi = p->oy + 1, xlo = p->ox, xhi = p->ox + 1;
    if (pool) {
        kc_window(p->oy, e->kh, e->sh, e->ph, e->h, &ylo, &yhi);
        kc_window(p->ox, e->kw, e->sw, e->pw, e->w, &xlo, &xhi);
    }
    p->ny = yhi - ylo;
    p->nx = xhi - xlo;
    p->a0 = e->acc + ((p->img * e->h + ylo) * e->w + xlo) * e->ld_acc;
    p->b0 = border ? e->border + (ylo * e->w + xlo) * e->ld_border : NULL;
}

static inline __attribute__((always_inline)) kc_epi_walk kc_epi_start(const kc_epi_args *e, size_t r0, size_t r1,
                                                                      int pool, int border)
{
    kc_epi_walk p = {r0 * e->ow, r1 * e->ow, r0 / e->oh, r0 % e->oh, 0, NULL, NULL, 0, 0};
    if (p.pix < p.end)
        kc_epi_seek(e, &p, pool, border);
    return p;
}

static inline __attribute__((always_inline)) void kc_epi_next(const kc_epi_args *e, kc_epi_walk *p, int pool,
                                                              int border)
{
    if (++p->pix == p->end)
        return;
    if (++p->ox == e->ow) { /* next output row (or image) */
        p->ox = 0;
        if (++p->oy == e->oh) {
            p->oy = 0;
            p->img++;
        }
    }
    kc_epi_seek(e, p, pool, border);
}

/* Threshold bits of channels [cc, cc + lanes) (bit 1: below) into the running word of their 64, stored at
 * out64[cc / 64] when the word is full or the channels end: the bits output of every vector row kernel. */
static inline void kc_put_bits(uint64_t *out64, uint64_t *word, uint64_t bits, size_t cc, size_t lanes, size_t c)
{
    *word |= bits << (cc % 64);
    if (cc % 64 == 64 - lanes || cc + lanes >= c) {
        out64[cc / 64] = *word;
        *word = 0;
    }
}

#endif /* LOWBIT_KCONV_H */
