"""Binary (+-1) matrix products by XNOR + popcount, and the bit packing they run on.

For vectors ``a``, ``b`` of K values in {-1, +1}, ``dot(a, b) = K - 2 * popcount(bits(a) XOR bits(b))``,
where ``bits`` packs each value into one bit. That turns a K-long multiply-accumulate into K/64 XORs
and popcounts of 64-bit words.

**Packed layout.** A (rows, K) matrix packs into a ``uint64`` array of shape (rows, ceil(K/64)):
element ``j`` of a row is bit ``j % 64`` (least significant first) of word ``j // 64`` -- the layout of
``np.packbits(bits, axis=1, bitorder="little")`` viewed as little-endian uint64. A set bit means -1
(the value was < 0), a clear bit +1 (values >= 0, i.e. sign(0) = +1 as everywhere in lowbit). Bits past
K in the last word are written as 0 and *ignored* when multiplying, so packed operands from elsewhere
may carry garbage there.

Inputs may be NumPy arrays, anything ``np.asarray`` accepts, or torch tensors (converted with
``.numpy()``; torch itself is never imported here). Non-contiguous inputs (transposed views, slices
with steps) are read in place where the C code can, copied otherwise. Bad input raises
:class:`lowbit.errors.ShapeError` with a message naming the problem: shapes, dtypes and ``k`` are
checked in Python before any C code runs; that values are exactly +-1 is checked by the packer in the
same pass that packs them (the message gives the first offending value and its position).
"""
from __future__ import annotations

import operator
import sys

import numpy as np

from ..errors import ConfigError, ShapeError
from . import _bitgemm
from .dispatch import active_path, path_id, resolve_threads

_INT32_MAX = 2**31 - 1


# ---------------------------------------------------------------------------------------------------
# input conversion and checks
# ---------------------------------------------------------------------------------------------------
def _to_numpy(x, name: str) -> np.ndarray:
    torch = sys.modules.get("torch")  # only if the caller already imported it
    if torch is not None and isinstance(x, torch.Tensor):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if t.dtype in (torch.bfloat16, torch.float16):  # no NumPy bfloat16; C reads float32
            t = t.float()
        t = t.resolve_conj().resolve_neg()
        return t.numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        return np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise ShapeError(f"{name} cannot be read as an array: {e}") from None


def _matrix(x, name: str, *, pm1: bool) -> np.ndarray:
    """A 2-D NumPy array of a dtype the C packer reads (native byte order, aligned)."""
    arr = _to_numpy(x, name)
    if arr.ndim != 2:
        raise ShapeError(f"{name} must be a 2-D array (rows, K), got {arr.ndim}-D with shape {arr.shape}")
    kind = arr.dtype.kind
    if pm1 and kind not in "if":
        raise ShapeError(
            f"{name} has dtype {arr.dtype}; +-1 values must be a signed integer (e.g. int8) or float array"
        )
    if not pm1 and kind not in "iuf":
        raise ShapeError(f"{name} has dtype {arr.dtype}; expected an integer or real (float) array")
    if kind == "f" and arr.dtype.itemsize not in (4, 8):  # float16 -> float32, long double -> float64
        arr = arr.astype(np.float32 if arr.dtype.itemsize < 4 else np.float64)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if not arr.flags.aligned:
        arr = arr.copy()
    return arr


def _packed(x, name: str) -> np.ndarray:
    """A 2-D uint64 array with contiguous, aligned rows (as the C GEMM reads it)."""
    arr = _to_numpy(x, name)
    if arr.ndim != 2:
        raise ShapeError(
            f"{name} must be a 2-D packed array (rows, words), got {arr.ndim}-D with shape {arr.shape}"
        )
    if arr.dtype not in (np.uint64, np.int64):
        raise ShapeError(f"{name} has dtype {arr.dtype}; packed bits must be uint64 (as pack_bits returns)")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = arr.view(np.uint64) if arr.dtype == np.int64 else arr
    rows, words = arr.shape
    if (
        not arr.flags.aligned
        or (words > 1 and arr.strides[1] != 8)
        or (rows > 1 and arr.strides[0] % 8 != 0)
    ):
        arr = np.ascontiguousarray(arr)
    return arr


def _check_k(k, words: int, name: str = "k") -> int:
    if isinstance(k, bool):
        raise ShapeError(f"{name} must be an integer number of bits, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise ShapeError(f"{name} must be an integer number of bits, got {k!r}") from None
    if k < 0:
        raise ShapeError(f"{name} must be >= 0, got {k}")
    if k > 64 * words:
        raise ShapeError(
            f"{name}={k} bits does not fit the packed rows: {words} word(s) of 64 bits hold at most {64 * words}"
        )
    if k > _INT32_MAX:
        raise ShapeError(f"{name}={k} is too large: results are int32, K must be < 2**31")
    return k


def _pack(arr: np.ndarray, name: str, *, check: bool, num_threads) -> np.ndarray:
    rows, k = arr.shape
    out = np.empty((rows, (k + 63) // 64), dtype=np.uint64)
    bad = _bitgemm.pack(arr, out, check, resolve_threads(num_threads))
    if bad >= 0:
        i, j = divmod(bad, k)
        raise ShapeError(f"{name} must hold only +1/-1 values; found {arr[i, j].item()!r} at [{i}, {j}]")
    return out


# ---------------------------------------------------------------------------------------------------
# packing
# ---------------------------------------------------------------------------------------------------
def pack_bits(x, *, num_threads=None) -> np.ndarray:
    """Pack a (rows, K) matrix of +-1 values into bits.

    Args:
        x: 2-D array of values that are exactly +1 or -1: signed integer (int8, ...) or float
            dtype; NumPy array, array-like or torch tensor. Any strides.
        num_threads: threads for large inputs (default :func:`get_num_threads`).

    Returns:
        uint64 array of shape (rows, ceil(K/64)); see the module docstring for the layout.

    Raises:
        ShapeError: not 2-D, unsupported dtype, or a value other than +-1 (the message gives its
            position and value).
    """
    arr = _matrix(x, "x", pm1=True)
    return _pack(arr, "x", check=True, num_threads=num_threads)


def pack_signs(x, *, num_threads=None) -> np.ndarray:
    """Pack the signs of a (rows, K) real or integer matrix into bits: bit set where ``x < 0``.

    This is the binarization lowbit applies to activations: values >= 0 (zero included) count as +1,
    negative values as -1 (a NaN counts as +1). Unsigned arrays pack to all zeros.

    Args:
        x: 2-D integer or float array (NumPy, array-like or torch tensor), any strides.
        num_threads: threads for large inputs (default :func:`get_num_threads`).

    Returns:
        uint64 array of shape (rows, ceil(K/64)), same layout as :func:`pack_bits`.

    Raises:
        ShapeError: not 2-D or not an integer / real dtype.
    """
    arr = _matrix(x, "x", pm1=False)
    return _pack(arr, "x", check=False, num_threads=num_threads)


# ---------------------------------------------------------------------------------------------------
# products
# ---------------------------------------------------------------------------------------------------
def _gemm_operands(pa, pb, k):
    pa = _packed(pa, "pa")
    pb = _packed(pb, "pb")
    if pa.shape[1] != pb.shape[1]:
        raise ShapeError(
            f"pa has {pa.shape[1]} words per row but pb has {pb.shape[1]}: both must pack the same K"
        )
    k = _check_k(k, pa.shape[1])
    return pa, pb, k


def _check_out(out, m: int, n: int) -> np.ndarray:
    if not isinstance(out, np.ndarray):
        raise ShapeError(f"out must be a NumPy int32 array of shape ({m}, {n}), got {type(out).__name__}")
    if out.dtype != np.int32 or not out.dtype.isnative:
        raise ShapeError(f"out must have dtype int32, got {out.dtype}")
    if out.shape != (m, n):
        raise ShapeError(f"out has shape {out.shape}, expected ({m}, {n})")
    if not out.flags.writeable:
        raise ShapeError("out is read-only")
    if (
        not out.flags.aligned
        or (n > 1 and out.strides[1] != 4)
        or (m > 1 and out.strides[0] % 4 != 0)
    ):
        raise ShapeError(
            f"out must have contiguous rows (strides {out.strides}); pass a C-contiguous array or a row slice of one"
        )
    return out


def binary_matmul_packed(pa, pb, k, *, out=None, num_threads=None) -> np.ndarray:
    """``a @ b.T`` for +-1 matrices given packed: ``out[i, j] = k - 2 * popcount(pa[i] ^ pb[j])``.

    For callers that pack once and multiply many times (e.g. weights packed at load time).

    Args:
        pa: uint64 array (M, W) from :func:`pack_bits` / :func:`pack_signs` (int64 is accepted too).
        pb: uint64 array (N, W) packed the same way.
        k: the number of bits (values) per row, ``0 <= k <= 64 * W``; bits past ``k`` and words past
            ``ceil(k/64)`` are ignored.
        out: optional preallocated int32 array of shape (M, N) with contiguous rows, written in
            place and returned (a row slice of a wider buffer works).
        num_threads: threads (default :func:`get_num_threads`); small products run on one thread
            whatever this says, as starting threads would cost more than it saves.

    Returns:
        int32 array (M, N) (``out`` if given).

    Raises:
        ShapeError: not 2-D, not 64-bit words, different word counts, ``k`` out of range, or an
            unusable ``out``.
    """
    pa, pb, k = _gemm_operands(pa, pb, k)
    m, n = pa.shape[0], pb.shape[0]
    out = np.empty((m, n), dtype=np.int32) if out is None else _check_out(out, m, n)
    _bitgemm.gemm(pa, pb, k, out, path_id(active_path()), resolve_threads(num_threads))
    return out


def binary_matmul(a, b, *, num_threads=None) -> np.ndarray:
    """``a @ b.T`` for matrices of +-1 values, exactly, by XNOR + popcount.

    Args:
        a: (M, K) array of +1/-1 values, signed integer (int8, ...) or float dtype; NumPy array,
            array-like or torch tensor; any strides.
        b: (N, K) array of +1/-1 values (e.g. a layer's weights, one row per output).
        num_threads: threads (default :func:`get_num_threads`).

    Returns:
        int32 NumPy array (M, N) equal to ``a.astype(int64) @ b.astype(int64).T``.

    Raises:
        ShapeError: not 2-D, different K, unsupported dtype, or a value other than +-1.
    """
    A = _matrix(a, "a", pm1=True)
    B = _matrix(b, "b", pm1=True)
    if A.shape[1] != B.shape[1]:
        raise ShapeError(
            f"a has K={A.shape[1]} columns but b has K={B.shape[1]}: binary_matmul(a, b) computes a @ b.T "
            "with a (M, K) and b (N, K)"
        )
    k = A.shape[1]
    if k > _INT32_MAX:
        raise ShapeError(f"K={k} is too large: results are int32, K must be < 2**31")
    pa = _pack(A, "a", check=True, num_threads=num_threads)
    pb = _pack(B, "b", check=True, num_threads=num_threads)
    out = np.empty((A.shape[0], B.shape[0]), dtype=np.int32)
    _bitgemm.gemm(pa, pb, k, out, path_id(active_path()), resolve_threads(num_threads))
    return out


def binary_matmul_naive(pa, pb, k, *, hw_popcount: bool = False) -> np.ndarray:
    """The deliberately naive XNOR kernel: ``for i: for j: for word: acc += popcount(pa[i]^pb[j])``.

    One thread, no cache blocking, no register tiling, no SIMD: the "unoptimized" baseline the
    optimized kernel is measured against (and an independent implementation for tests). Same
    arguments and result as :func:`binary_matmul_packed`.

    Args:
        hw_popcount: False (default): ``__builtin_popcountll`` as a plain portable build compiles it
            (on x86-64 a call to libgcc's table-driven popcount). True: the same loops with the
            POPCNT instruction (x86-64 CPUs that have it), a stronger baseline.
    """
    pa, pb, k = _gemm_operands(pa, pb, k)
    out = np.empty((pa.shape[0], pb.shape[0]), dtype=np.int32)
    if hw_popcount and "popcnt" not in _bitgemm.supported_paths():
        raise ConfigError("hw_popcount=True needs a CPU with the POPCNT instruction")
    _bitgemm.gemm_naive(pa, pb, k, out, bool(hw_popcount))
    return out


def planned_threads(m: int, n: int, k: int, num_threads=None) -> int:
    """How many threads :func:`binary_matmul_packed` would use for an (M x K) . (N x K)^T product
    with the active path: ``num_threads`` (or the default) capped so that each thread gets enough
    work to pay for starting it; 1 for small problems."""
    return _bitgemm.plan_threads(int(m), int(n), int(k), path_id(active_path()), resolve_threads(num_threads))
