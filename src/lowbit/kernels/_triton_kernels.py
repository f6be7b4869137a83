"""The Triton kernels behind :mod:`lowbit.kernels.gpu` (imported by it on first use; needs triton).

Whether these run compiled (CUDA) or under Triton's CPU interpreter is decided by ``TRITON_INTERPRET``
*when this module is imported* (``triton.jit`` reads it at decoration time).

**Packed layout.** A (rows, K) operand packs into int32 words (rows, W), ``W = ceil(K / 32)``: element
``j`` of a row is bit ``j % 32`` (least significant first) of word ``j // 32``. For a +-1 operand a set
bit means -1 (value < 0), as in the CPU kernels: a row packed by :func:`lowbit.kernels.pack_bits`
(uint64) viewed as uint32 is the same row. A k-bit operand packs into ``bits`` such planes
(bits, rows, W), plane ``p`` holding bit ``p`` of each element's unsigned code. Pad bits past K are 0.
Words are stored as int32 (torch has no general uint32) and bitcast to uint32 in the kernels, so every
shift below is a logical one.
"""
from __future__ import annotations

import triton
import triton.language as tl


# ---------------------------------------------------------------------------------------------------
# popcount
# ---------------------------------------------------------------------------------------------------
@triton.jit
def popcount32(x):
    """Bits set in each element of a uint32 tensor (SWAR), returned as uint32.

    Triton has no popcount builtin. This is the classic SWAR count: 2-bit, then 4-bit, then 8-bit
    partial sums, and a multiply that adds the four byte counts into the top byte. The operand must be
    uint32 so that ``>>`` is a logical shift (on int32 it would drag the sign bit in). LLVM's
    AggressiveInstCombine recognises exactly this idiom and lowers it to ``ctpop`` -> PTX ``popc.b32``;
    ``lowbit.kernels.gpu.ptx_report`` (and the GPU benchmark) check the PTX for ``popc``.
    """
    x = x - ((x >> 1) & 0x55555555)
    x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F
    return (x * 0x01010101) >> 24


@triton.jit
def popcount_kernel(X, Y, n, BLOCK: tl.constexpr):
    """Y[i] = popcount32(X[i]) for int32 words (a test hook for the SWAR count)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(X + offs, mask=m, other=0).to(tl.uint32, bitcast=True)
    tl.store(Y + offs, popcount32(x).to(tl.int32), mask=m)


# ---------------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------------
@triton.jit
def pack_kernel(
    X, P, RS,
    rows, K, W,
    stride_xr, stride_xk, stride_pp, stride_pr,
    SIGN: tl.constexpr, BITS: tl.constexpr, OFFSET: tl.constexpr, STEP_SHIFT: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr,
):
    """Pack BLOCK_R rows per program, looping over the row in chunks of BLOCK_W words.

    Each chunk is loaded as a (BLOCK_R, BLOCK_W, 32) tile (the last axis is contiguous in a row-major
    operand, so the load is coalesced); element ``(r, w, i)`` is column ``32 w + i``. Its bit is shifted
    to position ``i`` and the 32 lanes are OR-reduced into the word.

    ``SIGN``: one plane, bit = (x < 0) (the +-1 / sign packing). Otherwise ``BITS`` planes of the code
    ``(x - OFFSET) >> STEP_SHIFT`` (the level set's ``(x - offset) / step``, step 1 or 2), and ``RS[r]``
    receives the row's sum of codes (the exact correction term of the affine fold).
    """
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = r < rows
    lane = tl.arange(0, 32)
    rowsum = tl.zeros((BLOCK_R,), dtype=tl.int32)
    for w0 in range(0, W, BLOCK_W):
        w = w0 + tl.arange(0, BLOCK_W)
        col = w[:, None] * 32 + lane[None, :]  # (BLOCK_W, 32)
        m = rmask[:, None, None] & (col < K)[None, :, :]
        x = tl.load(X + r[:, None, None] * stride_xr + col[None, :, :] * stride_xk, mask=m, other=0)
        pmask = rmask[:, None] & (w < W)[None, :]
        dst = P + r[:, None] * stride_pr + w[None, :]
        if SIGN:
            bit = ((x < 0) & m).to(tl.uint32)
            word = tl.reduce_or(bit << lane[None, None, :].to(tl.uint32), axis=2)
            tl.store(dst, word.to(tl.int32, bitcast=True), mask=pmask)
        else:
            code = (x.to(tl.int32) - OFFSET) >> STEP_SHIFT
            code = tl.where(m, code, 0)
            rowsum += tl.sum(tl.sum(code, axis=2), axis=1)
            ucode = code.to(tl.uint32)
            for p in tl.static_range(BITS):
                bit = (ucode >> p) & 1
                word = tl.reduce_or(bit << lane[None, None, :].to(tl.uint32), axis=2)
                tl.store(dst + p * stride_pp, word.to(tl.int32, bitcast=True), mask=pmask)
    if not SIGN:
        tl.store(RS + r, rowsum, mask=rmask)


# ---------------------------------------------------------------------------------------------------
# binary GEMM (XNOR + popcount)
# ---------------------------------------------------------------------------------------------------
@triton.jit
def _valid_bits(kw, K):
    """uint32 mask of the bits of words ``kw`` that hold one of the first K elements."""
    rem = K - kw * 32
    shift = tl.minimum(tl.maximum(32 - rem, 0), 31).to(tl.uint32)
    ones = tl.full(kw.shape, 0xFFFFFFFF, tl.uint32)
    return tl.where(rem > 0, ones >> shift, 0)


@triton.jit
def xnor_gemm_kernel(
    A, B, C,
    M, N, W, K,
    stride_am, stride_bn, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr,
):
    """C = K - 2 * popcount(A ^ B) over packed rows: C[m, n] = (a_m . b_n) for +-1 operands.

    Tiling: each program owns a (BLOCK_M, BLOCK_N) tile of C and walks K in steps of BLOCK_KW words
    (32 BLOCK_KW elements). A step loads a (BLOCK_M, BLOCK_KW) tile of A and a (BLOCK_N, BLOCK_KW) tile
    of B, XORs every pair of rows word by word as a (BLOCK_M, BLOCK_N, BLOCK_KW) broadcast, counts the
    bits and sums over the words into an int32 accumulator. Bits past K (and words past ceil(K/32)) are
    masked off both tiles, so packed operands with garbage padding still give the exact product.
    """
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for w0 in range(0, W, BLOCK_KW):
        kw = w0 + tl.arange(0, BLOCK_KW)
        kmask = _valid_bits(kw, K)
        a = tl.load(A + rm[:, None] * stride_am + kw[None, :], mask=(rm < M)[:, None] & (kw < W)[None, :], other=0)
        b = tl.load(B + rn[:, None] * stride_bn + kw[None, :], mask=(rn < N)[:, None] & (kw < W)[None, :], other=0)
        a = a.to(tl.uint32, bitcast=True) & kmask[None, :]
        b = b.to(tl.uint32, bitcast=True) & kmask[None, :]
        diff = popcount32(a[:, None, :] ^ b[None, :, :])
        acc += tl.sum(diff.to(tl.int32), axis=2)
    c = K - 2 * acc
    tl.store(C + rm[:, None] * stride_cm + rn[None, :] * stride_cn, c, mask=(rm < M)[:, None] & (rn < N)[None, :])


@triton.jit
def xnor_naive_kernel(A, B, C, W, K, stride_am, stride_bn, stride_cm, stride_cn):
    """The deliberately naive XNOR GEMM: one program per output element, a scalar loop over the words.

    No tiling, no reuse: every program reads its two rows word by word from global memory (the
    paper's "unoptimized" reference point). Expects zero padding past K (as the packers write).
    """
    m = tl.program_id(0)
    n = tl.program_id(1)
    acc = tl.zeros((), dtype=tl.int32)
    for w in range(0, W):
        a = tl.load(A + m * stride_am + w).to(tl.uint32, bitcast=True)
        b = tl.load(B + n * stride_bn + w).to(tl.uint32, bitcast=True)
        x = a ^ b  # popcount32 written out: cheaper per word under the interpreter than a call
        x = x - ((x >> 1) & 0x55555555)
        x = (x & 0x33333333) + ((x >> 2) & 0x33333333)
        x = (x + (x >> 4)) & 0x0F0F0F0F
        acc += ((x * 0x01010101) >> 24).to(tl.int32)
    tl.store(C + m * stride_cm + n * stride_cn, K - 2 * acc)


# ---------------------------------------------------------------------------------------------------
# bit-serial k-bit GEMM
# ---------------------------------------------------------------------------------------------------
@triton.jit
def bitserial_gemm_kernel(
    A, B, C, RSA, RSB,
    M, N, W, K,
    stride_ap, stride_am, stride_bp, stride_bn, stride_cm, stride_cn,
    SA: tl.constexpr, OA: tl.constexpr, SB: tl.constexpr, OB: tl.constexpr,
    BITS_A: tl.constexpr, BITS_B: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_KW: tl.constexpr,
):
    """C = a @ b.T for level-set operands given as code bit planes and row sums of codes.

    With codes ``ca = sum_i 2^i A_i`` and ``cb = sum_j 2^j B_j`` (planes of bits),
    ``ca . cb = sum_{i,j} 2^(i+j) popcount(A_i & B_j)``; tiled exactly like :func:`xnor_gemm_kernel`,
    with the BITS_A x BITS_B plane pairs unrolled inside each K step. The epilogue folds the level sets'
    affine maps ``value = S * code + O`` back in, in int64::

        a . b = SA SB (ca . cb) + SA OB rowsum(ca) + OA SB rowsum(cb) + K OA OB

    Pad bits must be 0 (the packer writes them so).
    """
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    mmask = rm < M
    nmask = rn < N
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for w0 in range(0, W, BLOCK_KW):
        kw = w0 + tl.arange(0, BLOCK_KW)
        wmask = (kw < W)[None, :]
        for i in tl.static_range(BITS_A):
            a = tl.load(A + i * stride_ap + rm[:, None] * stride_am + kw[None, :], mask=mmask[:, None] & wmask, other=0)
            a = a.to(tl.uint32, bitcast=True)
            for j in tl.static_range(BITS_B):
                b_ptr = B + j * stride_bp + rn[:, None] * stride_bn + kw[None, :]
                b = tl.load(b_ptr, mask=nmask[:, None] & wmask, other=0)
                b = b.to(tl.uint32, bitcast=True)
                both = popcount32(a[:, None, :] & b[None, :, :])
                acc += tl.sum(both.to(tl.int32), axis=2) << (i + j)
    rsa = tl.load(RSA + rm, mask=mmask, other=0).to(tl.int64)
    rsb = tl.load(RSB + rn, mask=nmask, other=0).to(tl.int64)
    c = SA * SB * acc.to(tl.int64) + (SA * OB) * rsa[:, None] + (OA * SB) * rsb[None, :] + K.to(tl.int64) * (OA * OB)
    c_ptr = C + rm[:, None] * stride_cm + rn[None, :] * stride_cn
    tl.store(c_ptr, c.to(tl.int32), mask=mmask[:, None] & nmask[None, :])


# ---------------------------------------------------------------------------------------------------
# float GEMM of the same structure (the paper's baseline)
# ---------------------------------------------------------------------------------------------------
@triton.jit
def float_gemm_kernel(
    A, B, C,
    M, N, K,
    stride_am, stride_ak, stride_bn, stride_bk, stride_cm, stride_cn,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """C = A @ B.T in float32 with the tiling of :func:`xnor_gemm_kernel`: multiply-add on CUDA cores.

    The tiles are multiplied as a (BLOCK_M, BLOCK_N, BLOCK_K) broadcast and summed over K, no
    ``tl.dot`` / tensor cores: the "same tiled GEMM in float" that the paper's XNOR kernel is measured
    against. fp16 / bf16 inputs are widened to float32 on load.
    """
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        kmask = (rk < K)[None, :]
        a = tl.load(A + rm[:, None] * stride_am + rk[None, :] * stride_ak, mask=(rm < M)[:, None] & kmask, other=0.0)
        b = tl.load(B + rn[:, None] * stride_bn + rk[None, :] * stride_bk, mask=(rn < N)[:, None] & kmask, other=0.0)
        acc += tl.sum(a.to(tl.float32)[:, None, :] * b.to(tl.float32)[None, :, :], axis=2)
    tl.store(C + rm[:, None] * stride_cm + rn[None, :] * stride_cn, acc, mask=(rm < M)[:, None] & (rn < N)[None, :])
