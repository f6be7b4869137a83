/*
 * qgemm_probe.c -- the instruction-rate probe behind the benchmark's "fraction of peak": each probe
 * runs one kernel's inner instruction mix on registers only (no loads, 12 independent chains, enough
 * to cover every latency) and returns the elapsed seconds; the caller divides the operations done
 * (qg_probe_ops) by it. Running it in the benchmark's own process, on its threads, gives the peak
 * under the same clock and load as the kernels it is compared with.
 *
 *   0  vpdpbusd zmm                       (AVX-512 VNNI int8: 64 MACs)
 *   1  vpandq + vpopcntq + vpaddq zmm     (bit-serial AVX-512: 512 bit-MACs)
 *   2  vpxorq + vpopcntq + vpaddq zmm     (XNOR AVX-512: 512 bit-MACs)
 *   3  vpmaddubsw + vpmaddwd + vpaddd ymm (AVX2 int8: 32 MACs)
 *   4  vpand + Mula nibble popcount ymm   (bit-serial AVX2: 256 bit-MACs; vpand, vpsrlw, 2 vpand,
 *                                          2 vpshufb, 2 vpaddb)
 *   5  vfmadd231ps zmm                    (fp32: 16 MACs)
 *   6  tdpbusd on AMX tiles               (AMX int8: 16 x 16 x 64 = 16384 MACs; 4 accumulator tiles)
 *   7  the AMX kernel's 32 x 32 block     (per 4 tdpbusd, its 2 A and 2 B tiles loaded from L1: the rate
 *                                          qg_int8_amx could reach with every operand in L1. Tile registers
 *                                          are not renamed, so the loads do not overlap the tdpbusd that
 *                                          read the previous tiles; on this VM the rate also moves 3x
 *                                          with what shares the core, while probe 6 does not)
 */
#include <time.h>

#include "qgemm.h"

#if BG_X86
#include <immintrin.h>

#define CH 12

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* the values are kept live through an asm barrier so the loops are not folded away */
#define SINK(v) __asm__ volatile("" : "+v"(v))

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static void p_vnni(long iters)
{
    __m512i acc[CH], a = _mm512_set1_epi8(3), b = _mm512_set1_epi8(5);
    for (int c = 0; c < CH; c++) acc[c] = _mm512_set1_epi32(c);
    for (long i = 0; i < iters; i++) {
        for (int c = 0; c < CH; c++) acc[c] = _mm512_dpbusd_epi32(acc[c], a, b);
        SINK(a);
    }
    for (int c = 0; c < CH; c++) SINK(acc[c]);
}

__attribute__((target("avx512f,avx512vpopcntdq"))) static void p_bits512(long iters, int xor_)
{
    __m512i acc[CH], x[CH], b = _mm512_set1_epi64(0x5555);
    for (int c = 0; c < CH; c++) { acc[c] = _mm512_setzero_si512(); x[c] = _mm512_set1_epi64(c * 77 + 1); }
    if (xor_) {
        for (long i = 0; i < iters; i++) {
            for (int c = 0; c < CH; c++) acc[c] = _mm512_add_epi64(acc[c], _mm512_popcnt_epi64(_mm512_xor_si512(x[c], b)));
            SINK(b);
        }
    } else {
        for (long i = 0; i < iters; i++) {
            for (int c = 0; c < CH; c++) acc[c] = _mm512_add_epi64(acc[c], _mm512_popcnt_epi64(_mm512_and_si512(x[c], b)));
            SINK(b);
        }
    }
    for (int c = 0; c < CH; c++) SINK(acc[c]);
}

__attribute__((target("avx2"))) static void p_avx2_int8(long iters)
{
    __m256i acc[CH], a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(5), ones = _mm256_set1_epi16(1);
    for (int c = 0; c < CH; c++) acc[c] = _mm256_set1_epi32(c);
    for (long i = 0; i < iters; i++) {
        for (int c = 0; c < CH; c++) acc[c] = _mm256_add_epi32(acc[c], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), ones));
        SINK(a);
    }
    for (int c = 0; c < CH; c++) SINK(acc[c]);
}

__attribute__((target("avx2"))) static void p_avx2_bits(long iters)
{
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1,
                                         2, 2, 3, 2, 3, 3, 4);
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    __m256i acc[CH], x[CH], b = _mm256_set1_epi8(0x55);
    for (int c = 0; c < CH; c++) { acc[c] = _mm256_setzero_si256(); x[c] = _mm256_set1_epi8((char)(c * 7 + 1)); }
    for (long i = 0; i < iters; i++) {
        for (int c = 0; c < CH; c++) {
            const __m256i t = _mm256_and_si256(x[c], b);
            const __m256i lo = _mm256_and_si256(t, m4), hi = _mm256_and_si256(_mm256_srli_epi16(t, 4), m4);
            acc[c] = _mm256_add_epi8(acc[c], _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi)));
        }
        SINK(b);
    }
    for (int c = 0; c < CH; c++) SINK(acc[c]);
}

__attribute__((target("avx512f"))) static void p_fma512(long iters)
{
    __m512 acc[CH], a = _mm512_set1_ps(1.0001f), b = _mm512_set1_ps(0.9999f);
    for (int c = 0; c < CH; c++) acc[c] = _mm512_set1_ps((float)c);
    for (long i = 0; i < iters; i++) {
        for (int c = 0; c < CH; c++) acc[c] = _mm512_fmadd_ps(a, b, acc[c]);
        SINK(a);
    }
    for (int c = 0; c < CH; c++) SINK(acc[c]);
}

#if QG_HAVE_AMX
/* 12 tdpbusd per iteration, 3 rounds over the 4 accumulator tiles (one tdpbusd occupies the unit for
 * 16 cycles, so 4 independent chains cover its latency) */
__attribute__((target("amx-tile,amx-int8"))) static void p_amx(long iters)
{
    qg_tilecfg cfg;
    qg_tilecfg_16x64(&cfg);
    _tile_loadconfig(&cfg);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    _tile_zero(4); _tile_zero(5); _tile_zero(6); _tile_zero(7);
    for (long i = 0; i < iters; i++) {
        for (int r = 0; r < 3; r++) {
            _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
        }
    }
    _tile_release();
}

/* 3 steps of the kernel's inner loop per iteration: 4 tile loads from a 4 KB buffer (L1), 4 tdpbusd */
__attribute__((target("amx-tile,amx-int8"))) static void p_amx_block(long iters)
{
    _Alignas(64) static __thread uint8_t buf[4][1024];
    qg_tilecfg cfg;
    qg_tilecfg_16x64(&cfg);
    _tile_loadconfig(&cfg);
    _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    for (long i = 0; i < iters; i++) {
        for (int r = 0; r < 3; r++) {
            _tile_loadd(4, buf[0], 64); _tile_loadd(5, buf[1], 64); _tile_loadd(6, buf[2], 64); _tile_loadd(7, buf[3], 64);
            _tile_dpbusd(0, 4, 6); _tile_dpbusd(1, 4, 7); _tile_dpbusd(2, 5, 6); _tile_dpbusd(3, 5, 7);
        }
    }
    _tile_release();
}
#endif
#endif

#define QG_NPROBES 8

/* operations (2 per multiply-add, as GOPS count them) one iteration of probe `kind` does */
double qg_probe_ops(int kind)
{
    static const double macs[QG_NPROBES] = {64, 512, 512, 32, 256, 16, 16384, 16384};
    return (kind >= 0 && kind < QG_NPROBES) ? 2.0 * 12 * macs[kind] : 0.0;
}

/* seconds for `iters` iterations of probe `kind`; -1 if this CPU cannot run it */
double qg_probe(int kind, long iters)
{
#if BG_X86
    const int need[QG_NPROBES] = {BG_PATH_AVX512VNNI, BG_PATH_AVX512, BG_PATH_AVX512, BG_PATH_AVX2,
                                  BG_PATH_AVX2,       BG_PATH_AVX512, BG_PATH_AMX, BG_PATH_AMX};
    if (kind < 0 || kind >= QG_NPROBES || !bg_path_supported(need[kind]) || (kind >= 6 && !QG_HAVE_AMX))
        return -1.0;
    const double t0 = now();
    switch (kind) {
    case 0: p_vnni(iters); break;
    case 1: p_bits512(iters, 0); break;
    case 2: p_bits512(iters, 1); break;
    case 3: p_avx2_int8(iters); break;
    case 4: p_avx2_bits(iters); break;
    case 5: p_fma512(iters); break;
#if QG_HAVE_AMX
    case 6: p_amx(iters); break;
    default: p_amx_block(iters); break;
#else
    default: break;
#endif
    }
    return now() - t0;
#else
    (void)kind;
    (void)iters;
    return -1.0;
#endif
}
