/*
 * simd_avx512.h -- AVX-512 helpers shared by the kernels that accumulate popcounts in 64-bit lanes
 * (bitgemm_kernels_avx512.c, qgemm_kernels_avx512.c). Included only inside their #if LB_X86 blocks, after
 * <immintrin.h>; the functions carry the same target as their callers (AVX-512F; VPOPCNTDQ so they inline
 * into VPOPCNTQ code).
 */
#ifndef LOWBIT_SIMD_AVX512_H
#define LOWBIT_SIMD_AVX512_H

#define LB_AVX512_INLINE static inline __attribute__((always_inline, target("avx512f,avx512vpopcntdq")))

/* The 8 horizontal sums of v[0..7] (64-bit lanes), lane L = sum of v[L], by a transpose-and-add tree:
 * 21 ops for 8 vectors, against ~6 per vector for _mm512_reduce_add_epi64 one at a time. */
LB_AVX512_INLINE __m512i lb_reduce8_epi64(const __m512i *v)
{
    __m512i s[4], u[2];
    for (int p = 0; p < 4; p++) /* 128-bit lane L of s[p] = (partial of v[2p], partial of v[2p+1]) */
        s[p] = _mm512_add_epi64(_mm512_unpacklo_epi64(v[2 * p], v[2 * p + 1]),
                                _mm512_unpackhi_epi64(v[2 * p], v[2 * p + 1]));
    for (int p = 0; p < 2; p++) /* lanes: s[2p] (L0+L1, L2+L3), s[2p+1] (L0+L1, L2+L3) */
        u[p] = _mm512_add_epi64(_mm512_shuffle_i64x2(s[2 * p], s[2 * p + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_i64x2(s[2 * p], s[2 * p + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    return _mm512_add_epi64(_mm512_shuffle_i64x2(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                            _mm512_shuffle_i64x2(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

#endif /* LOWBIT_SIMD_AVX512_H */
