"""GPU kernels in Triton: binary (XNOR + popcount) and bit-serial k-bit matrix products on torch tensors.

The GPU counterpart of :mod:`lowbit.kernels` (CPU, NumPy/C), for torch tensors:

* :func:`binary_matmul` -- ``a @ b.T`` for +-1 tensors, exact int32 (packs both on the GPU, then XNOR GEMM)
* :func:`pack_bits`, :func:`pack_signs` -- +-1 values / signs -> int32 words (Triton packing kernel)
* :func:`binary_matmul_packed` -- the product of packed operands (weights packed once);
  :func:`binary_matmul_naive` -- the same with the deliberately naive kernel (one program per output)
* :func:`quant_matmul` -- ``a @ b.T`` for operands of named level sets (``binary``, ``ternary``, ``uK``,
  ``sK``, ``oK``; :mod:`lowbit.kernels.levels`), exact int32: bit-serial (AND + popcount over code bit
  planes) for sets of 1-4 bits; 5-8 bit sets go to ``torch._int_mm`` (int8 tensor cores) on CUDA where
  its shape rules allow, else to an exact plain product (float64 on CUDA, int64 on the CPU)
* :func:`pack_levels` -> :class:`PackedLevels`, :func:`quant_matmul_packed` -- the same with packed operands
* :func:`float_matmul` -- a tiled float32 GEMM of the XNOR kernel's structure (CUDA cores, no tensor
  cores): the paper's "baseline" for its 23x claim
* :func:`popcount` -- the SWAR bit count, elementwise on int32 words (test hook)
* :func:`available`, :func:`interpreted`, :func:`ptx_report`, :func:`launched_ptx`

**Devices.** Compiled kernels need CUDA tensors. With ``TRITON_INTERPRET=1`` set before the first call
(the kernels module is imported then), they run through Triton's interpreter on CPU tensors -- slowly,
for tests. Triton is imported only on first use; without it the functions raise :class:`ConfigError`
(``pip install 'lowbit[gpu]'``).

**Layout** (see :mod:`lowbit.kernels._triton_kernels`): rows of 32-bit words, element ``j`` is bit
``j % 32`` of word ``j // 32``; for +-1 a set bit means -1, so a CPU ``pack_bits`` row (uint64) viewed
as uint32 is the same row.

**Popcount.** Triton has no popcount; the kernels count bits with a SWAR sequence that LLVM lowers to
PTX ``popc``. Check that on a real GPU: :func:`ptx_report` compiles each kernel for the current device
(or for sm_90 when there is none) and counts ``popc`` in its PTX, and ``benchmarks/gpu_gemm.py``
records the same for the kernels it ran.

Validation (shapes, dtypes, devices, +-1 / level-set membership, int32 range) raises
:class:`lowbit.errors.ShapeError`; membership is checked with a few elementwise torch ops and one
device sync per operand (``check=False`` skips it).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from ..errors import ConfigError, ShapeError
from .levels import LevelSet, level_set

_INT32_MAX = 2**31 - 1
_WORD = 32

_kernels = None  # lowbit.kernels._triton_kernels once imported


# ---------------------------------------------------------------------------------------------------
# triton import and device rules
# ---------------------------------------------------------------------------------------------------
def available() -> bool:
    """True when triton can be imported (kernels may still need a CUDA device, see :func:`interpreted`)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def _k():
    """The kernels module, imported on first use (``TRITON_INTERPRET`` is read then)."""
    global _kernels
    if _kernels is None:
        try:
            import triton  # noqa: F401
        except ImportError as e:
            raise ConfigError(
                f"lowbit.kernels.gpu needs triton ({e}); install it with: pip install 'lowbit[gpu]' "
                "(or pip install 'triton>=3.0')"
            ) from None
        _kernels = importlib.import_module(__package__ + "._triton_kernels")
    return _kernels


def interpreted() -> bool:
    """True when the kernels run under Triton's CPU interpreter (``TRITON_INTERPRET=1`` at first use)."""
    k = _k()
    return type(k.popcount_kernel).__name__ == "InterpretedFunction"


def _check_device(t: torch.Tensor, name: str) -> None:
    if interpreted():
        if t.device.type != "cpu":
            raise ShapeError(f"{name} is on {t.device}; under TRITON_INTERPRET=1 the kernels take CPU tensors")
    elif t.device.type != "cuda":
        raise ShapeError(
            f"{name} is on {t.device}; the compiled Triton kernels need CUDA tensors (or set TRITON_INTERPRET=1 "
            "before the first call to run them on CPU tensors through Triton's interpreter)"
        )


def _same_device(x: torch.Tensor, y: torch.Tensor, xn: str, yn: str) -> None:
    if x.device != y.device:
        raise ShapeError(f"{xn} is on {x.device} but {yn} is on {y.device}: both must be on the same device")


def _tensor2d(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{name} must be a torch tensor, got {type(x).__name__} (use lowbit.kernels for NumPy arrays)")
    if x.dim() != 2:
        raise ShapeError(f"{name} must be a 2-D tensor (rows, K), got {x.dim()}-D with shape {tuple(x.shape)}")
    _check_device(x, name)
    return x


_SIGNED_INTS = (torch.int8, torch.int16, torch.int32, torch.int64)
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_VALUE_DTYPES = _SIGNED_INTS + _FLOATS + (torch.uint8,)


def _value_tensor(x, name: str, *, pm1: bool) -> torch.Tensor:
    x = _tensor2d(x, name)
    ok = (_SIGNED_INTS + _FLOATS) if pm1 else _VALUE_DTYPES
    if x.dtype not in ok:
        what = "+-1 values must be a signed integer (e.g. int8) or float tensor" if pm1 else (
            "values must be an integer (int8/16/32/64, uint8) or float tensor")
        raise ShapeError(f"{name} has dtype {x.dtype}; {what}")
    return x


def _first_bad(x: torch.Tensor, bad: torch.Tensor) -> Tuple[Tuple[int, int], object]:
    i, j = (int(v) for v in bad.nonzero()[0])
    return (i, j), x[i, j].item()


def _check_pm1(x: torch.Tensor, name: str) -> None:
    bad = (x != 1) & (x != -1)
    if bool(bad.any()):
        (i, j), v = _first_bad(x, bad)
        raise ShapeError(f"{name} must hold only +1/-1 values; found {v!r} at [{i}, {j}]")


def _check_levels(x: torch.Tensor, ls: LevelSet, name: str) -> None:
    v = x.to(torch.float64) if x.dtype.is_floating_point else x.to(torch.int64)
    shifted = v - ls.offset
    ok = (shifted >= 0) & (shifted <= ls.step * (ls.ncodes - 1))
    if ls.step != 1:
        ok &= shifted % ls.step == 0
    if x.dtype.is_floating_point:
        ok &= v == torch.round(v)  # NaN and inf fail the comparisons above
    bad = ~ok
    if bool(bad.any()):
        (i, j), val = _first_bad(x, bad)
        raise ShapeError(
            f"{name}[{i}, {j}] = {val!r} is not in level set {ls.name!r} (integers {ls.min}..{ls.max}"
            f"{', step ' + str(ls.step) if ls.step != 1 else ''})"
        )


def _check_same_k(ka: int, kb: int, fn: str) -> None:
    if ka != kb:
        raise ShapeError(
            f"a has K={ka} columns but b has K={kb}: {fn}(a, b) computes a @ b.T with a (M, K) and b (N, K)"
        )


def _words(k: int) -> int:
    return (k + _WORD - 1) // _WORD


def _pow2_at_most(n: int, cap: int, floor: int = 1) -> int:
    p = floor
    while p * 2 <= min(n, cap):
        p *= 2
    return p


# ---------------------------------------------------------------------------------------------------
# launch configurations
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Block:
    """Tile of a GEMM launch: (block_m, block_n) outputs per program, block_k words (or floats) per step."""

    m: int
    n: int
    k: int
    num_warps: int = 4

    def check(self) -> "Block":
        for name, v in (("m", self.m), ("n", self.n), ("k", self.k)):
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ShapeError(f"block.{name} must be a power of two >= 1, got {v!r}")
        if self.num_warps not in (1, 2, 4, 8, 16):
            raise ShapeError(f"block.num_warps must be 1, 2, 4, 8 or 16, got {self.num_warps!r}")
        return self


def default_block(m: int, n: int, words: int, kind: str = "xnor") -> Block:
    """The tile :func:`binary_matmul_packed` / :func:`quant_matmul_packed` / :func:`float_matmul` use.

    On the GPU: 64 x 64 outputs, 4 words (128 elements) per K step for the binary kernel, 2 for the
    bit-serial one (its plane pairs multiply the work per step), 8 floats for the float kernel; narrower
    tiles when M or N is small (a batch of a few rows). ``benchmarks/gpu_gemm.py`` times alternatives.
    Under the interpreter small tiles keep the NumPy temporaries small.
    """
    if _kernels is not None and interpreted():
        return Block(_pow2_at_most(m, 16, 16), _pow2_at_most(n, 16, 16), 2 if kind != "float" else 16, 1)
    bk = {"xnor": 4, "bitserial": 2, "float": 8}[kind]
    bm = 64 if m > 32 else (32 if m > 16 else 16)
    bn = 64 if n > 32 else (32 if n > 16 else 16)
    warps = 8 if bm * bn >= 4096 else 4
    return Block(bm, bn, bk, warps)


_LAUNCHED: dict = {}  # kernel name -> the compiled kernel of its latest launch (None when interpreted)


def _remember(name: str, handle) -> None:
    _LAUNCHED[name] = handle


def launched_ptx() -> dict:
    """``{kernel name: popc count}`` in the PTX of each kernel's latest compiled launch in this process
    (what actually ran, as opposed to :func:`ptx_report`'s ahead-of-time builds); empty when interpreted."""
    out = {}
    for name, handle in _LAUNCHED.items():
        asm = getattr(handle, "asm", None)
        if asm is not None and "ptx" in asm:
            out[name] = count_popc(asm["ptx"])
    return out


def _cdiv(a: int, b: int) -> int:
    return (a + b - 1) // b


# ---------------------------------------------------------------------------------------------------
# popcount
# ---------------------------------------------------------------------------------------------------
def popcount(words: torch.Tensor) -> torch.Tensor:
    """Bits set in each int32 word (as uint32), computed by the kernels' SWAR count; int32 result."""
    if not isinstance(words, torch.Tensor) or words.dtype != torch.int32:
        raise ShapeError(f"popcount takes an int32 tensor, got {getattr(words, 'dtype', type(words).__name__)}")
    _check_device(words, "words")
    flat = words.contiguous().view(-1)
    out = torch.empty_like(flat)
    if flat.numel():
        block = 256
        grid = (_cdiv(flat.numel(), block),)
        _remember("popcount_kernel", _k().popcount_kernel[grid](flat, out, flat.numel(), BLOCK=block))
    return out.view(words.shape)


# ---------------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------------
def _pack_block(rows: int, words: int) -> Tuple[int, int]:
    if _kernels is not None and interpreted():
        return _pow2_at_most(rows, 16), _pow2_at_most(words, 8)
    return 8, _pow2_at_most(words, 4)


def _launch_pack(x: torch.Tensor, *, sign: bool, bits: int = 1, offset: int = 0, step: int = 1):
    rows, k = x.shape
    w = _words(k)
    planes = torch.zeros((bits, rows, w), dtype=torch.int32, device=x.device)
    rowsum = torch.zeros((rows,), dtype=torch.int32, device=x.device)
    if rows and w:
        br, bw = _pack_block(rows, w)
        _remember("pack_kernel", _k().pack_kernel[(_cdiv(rows, br),)](
            x, planes, rowsum, rows, k, w,
            x.stride(0), x.stride(1), planes.stride(0), planes.stride(1),
            SIGN=sign, BITS=bits, OFFSET=offset, STEP_SHIFT=step.bit_length() - 1,
            BLOCK_R=br, BLOCK_W=bw,
        ))
    return planes, rowsum


def pack_bits(x, *, check: bool = True) -> torch.Tensor:
    """Pack a (rows, K) tensor of +-1 values into int32 words (rows, ceil(K/32)); set bit = -1.

    Args:
        x: 2-D tensor of +1/-1 values, signed integer or float dtype, any strides, on the kernels'
            device (CUDA; CPU under the interpreter).
        check: verify that every value is +-1 (one elementwise pass and a sync); False skips it.

    Raises:
        ShapeError: not a 2-D tensor, wrong dtype or device, or a value other than +-1.
    """
    x = _value_tensor(x, "x", pm1=True)
    if check:
        _check_pm1(x, "x")
    return _launch_pack(x, sign=True)[0][0]


def pack_signs(x) -> torch.Tensor:
    """Pack the signs of a (rows, K) real or integer tensor: bit set where ``x < 0`` (0 and NaN are +1)."""
    x = _value_tensor(x, "x", pm1=False)
    return _launch_pack(x, sign=True)[0][0]


@dataclass(frozen=True)
class PackedLevels:
    """A level-set operand packed for :func:`quant_matmul_packed`.

    ``planes``: int32 (bits, rows, ceil(K/32)), plane ``p`` = bit ``p`` of each element's code;
    ``rowsum``: int32 (rows,), each row's sum of codes; ``k``: elements per row; ``levels``: the set.
    """

    planes: torch.Tensor
    rowsum: torch.Tensor
    k: int
    levels: LevelSet

    @property
    def rows(self) -> int:
        return self.planes.shape[1]


def pack_levels(x, levels, *, check: bool = True) -> PackedLevels:
    """Pack a (rows, K) tensor of values of the level set ``levels`` (name or :class:`LevelSet`, 1-4 bits)
    into code bit planes and row sums of codes, on the GPU.

    Raises:
        ShapeError: unknown or wider than 4-bit set, not a 2-D tensor, wrong dtype or device, or (with
            ``check``) a value outside the set (the message gives its position and value).
    """
    ls = level_set(levels)
    if ls.bits > 4:
        raise ShapeError(f"pack_levels packs sets of 1-4 bits for the bit-serial kernel; {ls.name!r} has {ls.bits}")
    x = _value_tensor(x, "x", pm1=False)
    if check:
        _check_levels(x, ls, "x")
    planes, rowsum = _launch_pack(x, sign=False, bits=ls.bits, offset=ls.offset, step=ls.step)
    return PackedLevels(planes, rowsum, x.shape[1], ls)


# ---------------------------------------------------------------------------------------------------
# binary products
# ---------------------------------------------------------------------------------------------------
def _packed_tensor(p, name: str) -> torch.Tensor:
    p = _tensor2d(p, name)
    if p.dtype != torch.int32:
        raise ShapeError(f"{name} has dtype {p.dtype}; packed words must be int32 (as pack_bits returns)")
    if p.shape[1] > 1 and p.stride(1) != 1:
        p = p.contiguous()
    return p


def _packed_operands(pa, pb, k) -> Tuple[torch.Tensor, torch.Tensor, int]:
    pa = _packed_tensor(pa, "pa")
    pb = _packed_tensor(pb, "pb")
    _same_device(pa, pb, "pa", "pb")
    if pa.shape[1] != pb.shape[1]:
        raise ShapeError(f"pa has {pa.shape[1]} words per row but pb has {pb.shape[1]}: both must pack the same K")
    if isinstance(k, bool) or not isinstance(k, int):
        raise ShapeError(f"k must be an integer number of bits, got {k!r}")
    if k < 0 or k > _WORD * pa.shape[1]:
        raise ShapeError(
            f"k={k} does not fit the packed rows: {pa.shape[1]} word(s) of 32 bits hold 0..{_WORD * pa.shape[1]}"
        )
    if k > _INT32_MAX:
        raise ShapeError(f"k={k} is too large: results are int32")
    return pa, pb, k


def _gemm_launch(kind: str, m: int, n: int, k: int, dtype, device, block: Optional[Block]):
    """(out, block, grid) of an (m, n) tiled GEMM kernel over ``k`` (words or values); block None when there is
    nothing to launch and ``out`` is already the result (empty, or zeros for ``k == 0``)."""
    out = torch.empty((m, n), dtype=dtype, device=device)
    if m == 0 or n == 0 or k == 0:
        return out.zero_(), None, None
    blk = (block or default_block(m, n, k, kind)).check()
    return out, blk, (_cdiv(m, blk.m), _cdiv(n, blk.n))


def binary_matmul_packed(pa, pb, k: int, *, block: Optional[Block] = None) -> torch.Tensor:
    """``a @ b.T`` for +-1 operands given packed: ``out[i, j] = k - 2 * popcount(pa[i] ^ pb[j])``.

    Args:
        pa: int32 (M, W) from :func:`pack_bits` / :func:`pack_signs` (or a CPU pack viewed as int32).
        pb: int32 (N, W), packed the same way.
        k: elements per row, ``0 <= k <= 32 W``; bits past ``k`` are ignored.
        block: tile override (:class:`Block`); default :func:`default_block`.

    Returns:
        int32 tensor (M, N) on the operands' device.
    """
    pa, pb, k = _packed_operands(pa, pb, k)
    m, n, w = pa.shape[0], pb.shape[0], pa.shape[1]
    out, blk, grid = _gemm_launch("xnor", m, n, w, torch.int32, pa.device, block)
    if blk is None:
        return out
    _remember("xnor_gemm_kernel", _k().xnor_gemm_kernel[grid](
        pa, pb, out, m, n, w, k,
        pa.stride(0), pb.stride(0), out.stride(0), out.stride(1),
        BLOCK_M=blk.m, BLOCK_N=blk.n, BLOCK_KW=blk.k, num_warps=blk.num_warps,
    ))
    return out


def binary_matmul_naive(pa, pb, k: int) -> torch.Tensor:
    """The deliberately naive XNOR kernel on packed operands: one program per output, a scalar loop
    over the words (the paper's "unoptimized" reference). Same arguments and result as
    :func:`binary_matmul_packed`, except that pad bits past ``k`` must be 0 (as the packers write)."""
    pa, pb, k = _packed_operands(pa, pb, k)
    m, n, w = pa.shape[0], pb.shape[0], _words(k)
    if n > 65535:
        raise ShapeError(f"binary_matmul_naive launches one program per output on an (M, N) grid: N={n} > 65535")
    out = torch.empty((m, n), dtype=torch.int32, device=pa.device)
    if m == 0 or n == 0:
        return out
    _remember("xnor_naive_kernel", _k().xnor_naive_kernel[(m, n)](
        pa, pb, out, w, k, pa.stride(0), pb.stride(0), out.stride(0), out.stride(1), num_warps=1,
    ))
    return out


def binary_matmul(a, b, *, check: bool = True, block: Optional[Block] = None) -> torch.Tensor:
    """``a @ b.T`` for tensors of +-1 values, exactly, by XNOR + popcount on the GPU.

    Args:
        a: (M, K) tensor of +1/-1 values, signed integer or float dtype, any strides.
        b: (N, K) tensor of +1/-1 values on the same device.
        check: verify that every value is +-1 (False skips the pass and its sync).
        block: tile override for the GEMM.

    Returns:
        int32 tensor (M, N) equal to ``a.long() @ b.long().T``.

    Raises:
        ShapeError: not 2-D tensors, different K, devices or dtypes that do not fit, a value other than +-1.
    """
    a = _value_tensor(a, "a", pm1=True)
    b = _value_tensor(b, "b", pm1=True)
    _same_device(a, b, "a", "b")
    _check_same_k(a.shape[1], b.shape[1], "binary_matmul")
    k = a.shape[1]
    if k > _INT32_MAX:
        raise ShapeError(f"K={k} is too large: results are int32, K must be < 2**31")
    if check:
        _check_pm1(a, "a")
        _check_pm1(b, "b")
    pa = _launch_pack(a, sign=True)[0][0]
    pb = _launch_pack(b, sign=True)[0][0]
    return binary_matmul_packed(pa, pb, k, block=block)


# ---------------------------------------------------------------------------------------------------
# k-bit products
# ---------------------------------------------------------------------------------------------------
def _check_range(k: int, la: LevelSet, lb: LevelSet) -> None:
    bound = k * la.max_abs * lb.max_abs
    if bound > _INT32_MAX:
        raise ShapeError(
            f"K={k} with sets {la.name!r} x {lb.name!r} can reach |a.b| = {bound} > 2**31 - 1: results are int32"
        )


def quant_matmul_packed(pa: PackedLevels, pb: PackedLevels, *, block: Optional[Block] = None) -> torch.Tensor:
    """``a @ b.T`` (int32, exact) for operands packed by :func:`pack_levels`, by the bit-serial kernel."""
    for name, p in (("pa", pa), ("pb", pb)):
        if not isinstance(p, PackedLevels):
            raise ShapeError(f"{name} must be a PackedLevels (from pack_levels), got {type(p).__name__}")
        _check_device(p.planes, name)
    _same_device(pa.planes, pb.planes, "pa", "pb")
    if pa.k != pb.k:
        raise ShapeError(f"pa packs K={pa.k} but pb packs K={pb.k}: both must have the same K")
    la, lb, k = pa.levels, pb.levels, pa.k
    _check_range(k, la, lb)
    m, n, w = pa.rows, pb.rows, pa.planes.shape[2]
    out, blk, grid = _gemm_launch("bitserial", m, n, w, torch.int32, pa.planes.device, block)
    if blk is None:
        return out
    A, B = pa.planes, pb.planes
    _remember("bitserial_gemm_kernel", _k().bitserial_gemm_kernel[grid](
        A, B, out, pa.rowsum, pb.rowsum, m, n, w, k,
        A.stride(0), A.stride(1), B.stride(0), B.stride(1), out.stride(0), out.stride(1),
        SA=la.step, OA=la.offset, SB=lb.step, OB=lb.offset, BITS_A=la.bits, BITS_B=lb.bits,
        BLOCK_M=blk.m, BLOCK_N=blk.n, BLOCK_KW=blk.k, num_warps=blk.num_warps,
    ))
    return out


def _int8_shift(ls: LevelSet) -> int:
    """A shift c with every ``value - c`` of the set in int8 (0 when the set already fits)."""
    return 0 if ls.min >= -128 and ls.max <= 127 else 128


def _int_mm_fits(m: int, n: int, k: int) -> bool:
    """torch._int_mm's shape rules on CUDA (cuBLASLt int8): M > 16, K and N multiples of 8."""
    return m > 16 and k >= 8 and k % 8 == 0 and n % 8 == 0


def _int8_matmul(a: torch.Tensor, b: torch.Tensor, la: LevelSet, lb: LevelSet) -> torch.Tensor:
    """``a @ b.T`` by ``torch._int_mm`` (int8 in, int32 out), values first shifted into int8.

    With ``a = a' + ca`` and ``b = b' + cb`` (``c = 128`` for a set that does not fit int8, e.g. u8):
    ``a.b = a'.b' + cb sum(a') + ca sum(b') + K ca cb``, exact in int64 before the int32 result.
    """
    k = a.shape[1]
    ca, cb = _int8_shift(la), _int8_shift(lb)
    a8 = (a.to(torch.int32) - ca).to(torch.int8)
    b8 = (b.to(torch.int32) - cb).to(torch.int8)
    acc = torch._int_mm(a8, b8.t())
    if ca or cb:
        acc = (acc.to(torch.int64) + cb * a8.sum(1, dtype=torch.int64)[:, None]
               + ca * b8.sum(1, dtype=torch.int64)[None, :] + k * ca * cb)
    return acc.to(torch.int32)


def _wide_matmul(a: torch.Tensor, b: torch.Tensor, la: LevelSet, lb: LevelSet) -> torch.Tensor:
    """The exact product when a set is wider than 4 bits (path named by :func:`wide_path`)."""
    path = wide_path(la, lb, a.shape[0], b.shape[0], a.shape[1], a.device)
    if path == "torch._int_mm":
        return _int8_matmul(a, b, la, lb)
    if path == "float64 matmul":  # no integer matmul on CUDA; float64 is exact (|a.b| < 2**31 << 2**53)
        return (a.to(torch.float64) @ b.to(torch.float64).t()).to(torch.int32)
    return (a.to(torch.int64) @ b.to(torch.int64).t()).to(torch.int32)


def quant_matmul(a, b, a_levels, b_levels, *, check: bool = True, block: Optional[Block] = None) -> torch.Tensor:
    """``a @ b.T`` exactly, for integer values of named level sets, on the GPU.

    Same semantics as the CPU ``lowbit.kernels.quant_matmul``: ``a`` (M, K) holds values of
    ``a_levels``, ``b`` (N, K) of ``b_levels`` (names of :data:`lowbit.kernels.levels.LEVEL_SETS`:
    ``binary``, ``ternary``, ``u1``..``u8``, ``s2``..``s8``, ``o1``..``o4``), as integer or integral float
    tensors; the result is int32 ``a.long() @ b.long().T``.

    Sets of 1-4 bits (both operands) run the bit-serial Triton kernel: each operand's codes
    ``(value - offset) / step`` are packed into bit planes, the kernel sums
    ``2^(i+j) popcount(A_i & B_j)`` over plane pairs, and the offsets are folded back exactly with the
    row sums of the codes. If either set is wider (5-8 bits) the product falls back to
    ``torch._int_mm`` (int8 tensor cores; values shifted into int8 with the same exact correction) on
    CUDA when M > 16 and K, N are multiples of 8, else to a plain exact matmul (float64 on CUDA, int64
    on the CPU).

    Raises:
        ShapeError: unknown set, not 2-D tensors, different K or devices, unsupported dtype, a value
            outside its set (position and value in the message), or |a.b| that may overflow int32.
    """
    la, lb = level_set(a_levels), level_set(b_levels)
    a = _value_tensor(a, "a", pm1=False)
    b = _value_tensor(b, "b", pm1=False)
    _same_device(a, b, "a", "b")
    _check_same_k(a.shape[1], b.shape[1], "quant_matmul")
    k = a.shape[1]
    _check_range(k, la, lb)
    if check:
        _check_levels(a, la, "a")
        _check_levels(b, lb, "b")
    if la.bits > 4 or lb.bits > 4:
        return _wide_matmul(a, b, la, lb)
    pa = PackedLevels(*_launch_pack(a, sign=False, bits=la.bits, offset=la.offset, step=la.step), k, la)
    pb = PackedLevels(*_launch_pack(b, sign=False, bits=lb.bits, offset=lb.offset, step=lb.step), k, lb)
    return quant_matmul_packed(pa, pb, block=block)


def wide_path(a_levels, b_levels, m: int, n: int, k: int, device) -> str:
    """Which path :func:`quant_matmul` takes for these sets and shape: ``"bit-serial"``, or for a set wider
    than 4 bits ``"torch._int_mm"`` / ``"float64 matmul"`` (CUDA) / ``"int64 matmul"`` (CPU)."""
    la, lb = level_set(a_levels), level_set(b_levels)
    if la.bits <= 4 and lb.bits <= 4:
        return "bit-serial"
    dev = torch.device(device)
    if dev.type == "cuda":
        return "torch._int_mm" if _int_mm_fits(m, n, k) else "float64 matmul"
    return "int64 matmul"


# ---------------------------------------------------------------------------------------------------
# float GEMM (the paper's baseline structure)
# ---------------------------------------------------------------------------------------------------
def float_matmul(a, b, *, block: Optional[Block] = None) -> torch.Tensor:
    """``a @ b.T`` in float32 by the tiled Triton GEMM of the XNOR kernel's structure (no tensor cores).

    Args:
        a: (M, K) float16 / bfloat16 / float32 tensor; b: (N, K) likewise, same device.

    Returns:
        float32 tensor (M, N).
    """
    a = _tensor2d(a, "a")
    b = _tensor2d(b, "b")
    _same_device(a, b, "a", "b")
    for name, t in (("a", a), ("b", b)):
        if t.dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ShapeError(f"{name} has dtype {t.dtype}; float_matmul takes float16, bfloat16 or float32")
    _check_same_k(a.shape[1], b.shape[1], "float_matmul")
    m, k = a.shape
    n = b.shape[0]
    out, blk, grid = _gemm_launch("float", m, n, k, torch.float32, a.device, block)
    if blk is None:
        return out
    _remember("float_gemm_kernel", _k().float_gemm_kernel[grid](
        a, b, out, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1), out.stride(0), out.stride(1),
        BLOCK_M=blk.m, BLOCK_N=blk.n, BLOCK_K=blk.k, num_warps=blk.num_warps,
    ))
    return out


# ---------------------------------------------------------------------------------------------------
# PTX inspection
# ---------------------------------------------------------------------------------------------------
def _signatures(block: Block, bits=(2, 2)):
    """(kernel name, signature, constexprs) for an ahead-of-time compile of each popcount kernel."""
    i32p, i32 = "*i32", "i32"
    tile = {"BLOCK_M": block.m, "BLOCK_N": block.n, "BLOCK_KW": block.k}
    xnor_sig = {n: i32p for n in ("A", "B", "C")}
    xnor_sig.update({n: i32 for n in ("M", "N", "W", "K", "stride_am", "stride_bn", "stride_cm", "stride_cn")})
    naive_sig = {n: i32p for n in ("A", "B", "C")}
    naive_sig.update({n: i32 for n in ("W", "K", "stride_am", "stride_bn", "stride_cm", "stride_cn")})
    bs_sig = {n: i32p for n in ("A", "B", "C", "RSA", "RSB")}
    bs_sig.update({n: i32 for n in ("M", "N", "W", "K", "stride_ap", "stride_am", "stride_bp", "stride_bn",
                                     "stride_cm", "stride_cn")})
    bs_const = dict(tile, SA=1, OA=0, SB=2, OB=-3, BITS_A=bits[0], BITS_B=bits[1])
    return [
        ("xnor_gemm_kernel", xnor_sig, tile),
        ("xnor_naive_kernel", naive_sig, {}),
        ("bitserial_gemm_kernel", bs_sig, bs_const),
        ("popcount_kernel", {"X": i32p, "Y": i32p, "n": i32}, {"BLOCK": 256}),
    ]


def _other_signatures():
    """Ahead-of-time builds of the kernels without popcount: packing (signs of float32, codes of int8)
    and the float GEMM (float16 in)."""
    pack_sig = {"X": "*fp32", "P": "*i32", "RS": "*i32"}
    pack_sig.update({n: "i32" for n in ("rows", "K", "W", "stride_xr", "stride_xk", "stride_pp", "stride_pr")})
    pack_tile = {"BLOCK_R": 8, "BLOCK_W": 4}
    float_sig = {"A": "*fp16", "B": "*fp16", "C": "*fp32"}
    float_sig.update({n: "i32" for n in ("M", "N", "K", "stride_am", "stride_ak", "stride_bn", "stride_bk",
                                         "stride_cm", "stride_cn")})
    return [
        ("pack_kernel", pack_sig, dict(pack_tile, SIGN=True, BITS=1, OFFSET=0, STEP_SHIFT=0)),
        ("pack_kernel", dict(pack_sig, X="*i8"), dict(pack_tile, SIGN=False, BITS=2, OFFSET=-3, STEP_SHIFT=1)),
        ("float_gemm_kernel", float_sig, {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 8}),
    ]


def ptx_report(capability: Optional[Tuple[int, int]] = None, block: Optional[Block] = None,
               compile_all: bool = False) -> dict:
    """Compile each popcount kernel ahead of time and count ``popc`` instructions in its PTX.

    Needs the compiled (not interpreted) kernels and triton's CUDA backend, but no GPU: ``capability``
    defaults to the current CUDA device's, or (9, 0) (H100/H200) without one.

    ``compile_all`` also builds the kernels without popcount (packing, float GEMM) to check that they
    compile.

    Returns:
        ``{kernel name: {"popc": count, "ptx_lines": n}}`` plus ``"target": "sm_XY"`` (and
        ``"also_compiled"``: the names of the other kernels built).
    """
    k = _k()
    if interpreted():
        raise ConfigError("ptx_report needs the compiled kernels: unset TRITON_INTERPRET before the first call")
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if capability is None:
        capability = torch.cuda.get_device_capability() if torch.cuda.is_available() else (9, 0)
    arch = 10 * capability[0] + capability[1]
    blk = block or Block(64, 64, 4, 8)
    report = {"target": f"sm_{arch}"}
    target = GPUTarget("cuda", arch, 32)

    def build(name, sig, const):
        sig = dict(sig, **{c: "constexpr" for c in const})
        return triton.compile(ASTSource(fn=getattr(k, name), signature=sig, constexprs=const), target=target)

    for name, sig, const in _signatures(blk):
        ptx = build(name, sig, const).asm["ptx"]
        report[name] = {"popc": count_popc(ptx), "ptx_lines": ptx.count("\n")}
    if compile_all:
        report["also_compiled"] = [build(*spec) and spec[0] for spec in _other_signatures()]
    return report


def count_popc(ptx: str) -> int:
    """Lines of a PTX listing that use ``popc``."""
    return sum("popc" in line for line in ptx.splitlines())


__all__ = [
    "Block",
    "PackedLevels",
    "available",
    "binary_matmul",
    "binary_matmul_naive",
    "binary_matmul_packed",
    "count_popc",
    "default_block",
    "float_matmul",
    "interpreted",
    "launched_ptx",
    "pack_bits",
    "pack_levels",
    "pack_signs",
    "popcount",
    "ptx_report",
    "quant_matmul",
    "quant_matmul_packed",
    "wide_path",
]
