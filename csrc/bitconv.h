/*
 * bitconv.h -- internal interface of lowbit's binary (XNOR + popcount) 2-D convolution.
 *
 * An implicit GEMM on packed NHWC activations: no im2col matrix is ever made. Every output pixel's patch is
 * read in place, kh runs of kw * cw contiguous words (one per kernel row) of a zero-bordered copy of the
 * input, and the BN + sign threshold of the next binary layer (or the int32 store) happens in the register
 * epilogue of each tile, so the accumulators never travel through memory.
 *
 *   bitconv_driver.c         input padding / nibble planes, weight preparation, threading, dispatch
 *   bitconv_pool.c           persistent worker threads (spinning briefly between calls, as OpenMP's do)
 *   bitconv_kernels_*.c      per-ISA pixel kernels: portable + popcnt (scalar), avx2, avx512
 *   bitconv_module.c         CPython bindings (lowbit.kernels._bitgemm, same module as the GEMM)
 *
 * Data layout (the runtime's, see lowbit.runtime.engine): activations (N, H, W, cw) uint64, each pixel's C
 * channels packed into cw = ceil(C / 64) words, bit j % 64 of word j / 64 = channel j, bit 1 = -1, bit 0 = +1.
 * Weights (out, kh, kw, cw) in the same per-pixel packing, so that a patch and a weight row are both
 * K = kh * kw * cw words in the order (dy, dx, c) -- the NHWC im2col order.
 *
 *   out[n, oy, ox, j] = KSUM - 2 * popcount over the patch of (x XOR w_j)     KSUM = kh * kw * in_bits
 *
 * where positions outside the image read as zero words (+1: the exact pad of a binary conv) and bits at or
 * past in_bits in a pixel's last word are ignored (masked in the padded copy of the input and in the prepared
 * weights). in_bits = 64 * cw keeps every bit (the runtime's convention: matching zero pad bits of
 * activations and weights add a known constant, which its epilogue subtracts).
 *
 * Why vectorize over output channels. The binary GEMM (bitgemm_*) vectorizes along K and reduces each
 * (row, column) accumulator horizontally at the end of its tile; a conv has a short K (9 words for 64
 * channels, 36 for 256) and one horizontal reduction per output then costs as much as the products. Here
 * the 64-bit lanes of a vector hold different output channels instead: the weights are laid out [K word]
 * [32 channels] per group of 32 channels, each activation word is broadcast to every lane, and a lane's
 * running popcount *is* its output: no reduction, no K tail, no K padding. The threshold compare yields one
 * bit per lane, i.e. the packed output word directly.
 * ---------------------------------------------------------------------------------------------------- */
#ifndef LOWBIT_BITCONV_H
#define LOWBIT_BITCONV_H

#include <stddef.h>
#include <stdint.h>

#include "bitgemm.h" /* bg_parallel, bg_share, the path enum */

/* Output channels per weight group: one group is 4 zmm of 8 channels (avx512), 8 ymm of 4 (avx2), and half
 * a packed output word. */
#define BC_G 32
/* Tile heights (output pixels per register tile) of the pixel kernels. AVX2: 3 x 8 channels is 6 byte counters +
 * 4 weight vectors + the table + 2 broadcasts + temporaries = 16 ymm (2 pixels measured slower, 4 spills). */
#define BC_SCALAR_MR 2
#ifndef BC_AVX2_MR
#define BC_AVX2_MR 3 /* 1..4 */
#endif
#define BC_AVX512_MR 6

/* Output pixels per cache block (a multiple of every tile height): the block's patches stay in L1/L2 while every channel group runs over them. */
#define BC_PB 96

/* ---- prepared weights ---------------------------------------------------------------------------------
 * Group g (channels 32 g .. 32 g + 31) is a panel of K x 32 words, panel[kk * 32 + j] = w[32 g + j][kk] (0 for
 * channels >= nout, and the pad bits of each pixel's last word cleared). The AVX2 path stores two panels per
 * group, the low nibbles (w & 0x0f0f...) then the high nibbles ((w >> 4) & 0x0f0f...) of the same words: its
 * popcount is a 4-bit table lookup, and XOR commutes with the split, so neither side is split per step. */
size_t bc_prepared_bytes(int path, size_t nout, size_t kwords);
/* w: nout rows of kwords = kh * kw * cw words (row stride ldw words); dst 64-byte aligned, bc_prepared_bytes long */
void bc_prepare(int path, const uint64_t *w, ptrdiff_t ldw, size_t nout, size_t kh, size_t kw, size_t cw,
                size_t in_bits, void *dst);

/* ---- the convolution ------------------------------------------------------------------------------------ */
typedef struct {
    const uint64_t *x; /* (n, h, w, cw) words, C-contiguous */
    size_t n, h, w, cw;
    size_t in_bits; /* bits of a pixel that count, 64 * cw - 63 .. 64 * cw */
    size_t kh, kw, sh, sw, ph, pw;
    size_t oh, ow; /* (h + 2 ph - kh) / sh + 1, ... (the caller's; checked >= 1) */
    const void *wprep; /* prepared for the path the call runs on */
    size_t nout;
    /* output: int32 (n, oh, ow, nout) contiguous when sign == NULL, else packed bits (n, oh, ow,
     * ceil(nout / 64)) contiguous with bit j = sign[j] * (acc - bias) < thr[j] (int32, wrapping) */
    int32_t *acc;
    uint64_t *bits;
    const int32_t *sign, *thr;
    int32_t bias;
} bc_conv_args;

/* Returns 0, or -1 when work memory could not be allocated. path must be supported (or LB_PATH_AUTO). */
int bc_conv2d(const bc_conv_args *a, int path, int nthreads);

/* Run fn(ctx) on the calling thread and on up to nthreads - 1 persistent worker threads (bitconv_pool.c);
 * fn must take its work from a shared queue, so that any number of participants completes it. fallback(ctx, t,
 * n) is the same job for bg_parallel, used when another caller holds the pool. */
typedef void (*bc_job_fn)(void *ctx);
void bc_pool_run(int nthreads, bc_job_fn fn, void *ctx, bg_task_fn fallback);
/* The same, the caller running self(ctx) and the workers fn(ctx) (e.g. the caller with scratch it already has);
 * fallback(ctx, 0, n) is the caller's part under bg_parallel. */
void bc_pool_run_split(int nthreads, bc_job_fn fn, bc_job_fn self, void *ctx, bg_task_fn fallback);

/* How many threads bc_conv2d would use. */
int bc_plan_threads(size_t pixels, size_t nout, size_t kwords, int path, int nthreads);

/* ---- what the driver hands a pixel kernel ----------------------------------------------------------------- */
typedef struct {
    const uint64_t *x0; /* zero-bordered input, (n, hp, wp, cw): plain words, or (avx2) the low-nibble plane */
    ptrdiff_t hi;       /* avx2: where the high-nibble plane starts, in words from x0 (same layout); else 0 */
    size_t hp, wp, cw;
    size_t kh, kw, sh, sw, oh, ow;
    size_t kwords;      /* kh * kw * cw */
    const ptrdiff_t *koff; /* kwords offsets: where word kk of a patch lies from the patch's corner */
    const uint64_t *w;  /* prepared panels */
    size_t panel_words; /* words per group (both panels on avx2) */
    size_t nout, ngroups;
    int32_t ksum; /* kh * kw * in_bits */
    int32_t *acc;
    uint64_t *bits;
    size_t owords;                /* ceil(nout / 64) */
    const int32_t *sign, *thr;    /* ngroups * 32 long (padded with 1 / 0), or NULL: int32 output */
    int32_t bias;
    /* The threshold on the popcount itself (set when no int32 wrap can occur, i.e. always in the runtime):
     *   bit j = (pop_j > pop_thr[j]) XOR (sign[j] < 0)         exactly sign * (ksum - 2 pop - bias) < thr
     * pop_thr: ngroups * 32 int64 (padding channels 0); neg: per group, bit j set where sign[32 g + j] < 0.
     * NULL: the kernels compute the int32 value and compare it (wrapping), as threshold_pack does. */
    const int64_t *pop_thr;
    const uint32_t *neg;
} bc_work;

/* output pixels [p0, p1) (flattened over n, oy, ox), every channel; per path (all but the portable one on
 * x86 only) */
typedef void bc_pixels_k(const bc_work *wk, size_t p0, size_t p1);
typedef bc_pixels_k *bc_pixels_fn;
bc_pixels_k bc_pixels_portable, bc_pixels_popcnt, bc_pixels_avx2, bc_pixels_avx512;

/* Word offset in x0 (and in the high-nibble plane) of the top-left corner of pixel p's patch. */
static inline ptrdiff_t bc_patch_offset(const bc_work *wk, size_t p)
{
    const size_t per_image = wk->oh * wk->ow;
    const size_t img = p / per_image, r = p % per_image;
    const size_t oy = r / wk->ow, ox = r % wk->ow;
    return (ptrdiff_t)(((img * wk->hp + oy * wk->sh) * wk->wp + ox * wk->sw) * wk->cw);
}

/* bc_patch_offset of pixels p0 .. p1 - 1 into off[]: one division, then steps along the rows. */
static inline void bc_patch_offsets(const bc_work *wk, size_t p0, size_t p1, ptrdiff_t *off)
{
    if (p0 >= p1)
        return;
    const size_t per_image = wk->oh * wk->ow;
    size_t img = p0 / per_image, r = p0 % per_image;
    size_t oy = r / wk->ow, ox = r % wk->ow;
    const ptrdiff_t step = (ptrdiff_t)(wk->sw * wk->cw);
    ptrdiff_t o = bc_patch_offset(wk, p0);
    for (size_t p = p0; p < p1; p++) {
        off[p - p0] = o;
        if (++ox < wk->ow) {
            o += step;
        } else { /* next output row (or image) */
            ox = 0;
            if (++oy == wk->oh) {
                oy = 0;
                img++;
            }
            o = (ptrdiff_t)(((img * wk->hp + oy * wk->sh) * wk->wp) * wk->cw);
        }
    }
}

/* The sweep every pixel kernel makes over pixels [p0, p1): blocks of BC_PB pixels (their patch offsets computed
 * once), each 32-channel group's panel against the block, tiles of up to MR pixels: tile(wk, g, panel, o, p, mr)
 * for the mr (1..MR) pixels from p, o their patch offsets. always_inline with a constant tile function: the
 * call is direct, inlined (GCC's indirect inlining), and the kernel's tile heights stay compile-time constants. */
typedef void (*bc_tile_fn)(const bc_work *wk, size_t g, const uint64_t *panel, const ptrdiff_t *o, size_t p,
                           size_t mr);
static inline __attribute__((always_inline)) void bc_sweep(const bc_work *wk, size_t p0, size_t p1, size_t MR,
                                                           bc_tile_fn tile)
{
    ptrdiff_t off[BC_PB];
    for (size_t pb = p0; pb < p1; pb += BC_PB) {
        const size_t pe = (p1 - pb < BC_PB) ? p1 : pb + BC_PB;
        bc_patch_offsets(wk, pb, pe, off);
        for (size_t g = 0; g < wk->ngroups; g++) {
            const uint64_t *panel = wk->w + g * wk->panel_words;
            for (size_t p = pb; p < pe; p += MR)
                tile(wk, g, panel, off + (p - pb), p, pe - p >= MR ? MR : pe - p);
        }
    }
}

/* The channels of group g that exist (1..32), and a mask of their bits. */
static inline size_t bc_group_channels(const bc_work *wk, size_t g)
{
    const size_t left = wk->nout - g * BC_G;
    return left < BC_G ? left : BC_G;
}

static inline uint32_t bc_group_mask(size_t channels)
{
    return channels >= 32 ? 0xffffffffu : ((1u << channels) - 1u);
}

/* The 32 output bits of group g for one pixel (bits of missing channels already 0). Groups of a pixel are
 * written in increasing g: an even group starts its word (clearing the upper half, which may not exist), an
 * odd one fills the upper half. */
static inline void bc_put_bits(const bc_work *wk, size_t p, size_t g, uint32_t bits)
{
    uint64_t *word = wk->bits + p * wk->owords + g / 2;
    if (g % 2 == 0)
        *word = (uint64_t)bits;
    else
        *word |= (uint64_t)bits << 32;
}

#endif /* LOWBIT_BITCONV_H */
