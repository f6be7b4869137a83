"""8-bit inputs times +-1 weights, exactly, in int32: the first layer of a binarized network.

A network binarizes its weights everywhere but usually feeds 8-bit pixels to the first layer. That
product ``x @ w.T`` (x uint8, w in {-1, +1}) is exact in float32 (every partial sum is an integer below
2^24 for K * 255 < 2^24), which is how the runtime ran it, at the speed of an fp32 sgemm. The AVX2 kernel
here uses ``vpmaddubsw`` (u8 x s8 products, adjacent pairs summed into int16): 32 multiply-adds per
vector op instead of 8, widened into int32 every 128 values of K (64 * 510 < 2^15), exact for any K with
K * 255 < 2^31.

* :func:`prepare_u8_weights` -> :class:`PreparedU8Weights` -- the weights laid out once in the
  kernel's panels (32 output rows x pairs of K values per 64-byte step)
* :func:`u8_matmul` -- ``x @ w.T`` as int32

Paths: ``avx2``, ``avx512`` and ``avx512vnni`` run the AVX2 kernel; ``portable`` / ``popcnt`` run plain C loops, which
are correct but slower than a BLAS sgemm (the runtime keeps float32 there, see
:func:`u8_matmul_is_fast`).
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .native import bitgemm as _bitgemm
from .binary import _aligned_bytes, _to_numpy
from .dispatch import active_path, path_id, resolve_threads

_INT32_MAX = 2**31 - 1


class PreparedU8Weights:
    """Weights with values in {-1, 0, +1} (N rows of K) in :func:`u8_matmul`'s native layout.

    Attributes:
        rows, k: N and K.
        native: the panels, a 64-byte aligned, read-only uint8 buffer (same for every path).
    """

    __slots__ = ("rows", "k", "native")

    def __init__(self, w: np.ndarray):
        self.rows, self.k = w.shape
        native = _aligned_bytes(_bitgemm.u8_prepared_bytes(self.rows, self.k))
        _bitgemm.u8_prepare(w, native)
        native.flags.writeable = False
        self.native = native

    def __reduce__(self):  # pickles as the +-1 matrix; the panels are remade on load (alignment)
        return (_unpickle, (self.to_array(),))

    def to_array(self) -> np.ndarray:
        """The weights back as an (N, K) int8 array."""
        steps = (self.k + 1) // 2
        if self.rows == 0 or steps == 0:
            return np.zeros((self.rows, self.k), np.int8)
        panels = self.native.view(np.int8).reshape(-1, steps, 2, 16, 2)  # panel, pair, vector, lane, half
        w = panels.transpose(0, 2, 3, 1, 4).reshape(-1, 2 * steps)  # rows in panel order, K (+ pad)
        return np.ascontiguousarray(w[: self.rows, : self.k])

    def __repr__(self) -> str:
        return f"PreparedU8Weights(rows={self.rows}, k={self.k})"


def _unpickle(w):
    return PreparedU8Weights(w)


def prepare_u8_weights(w) -> PreparedU8Weights:
    """Lay out (N, K) weights with values in {-1, 0, +1} for :func:`u8_matmul` (once, at load time).

    Args:
        w: 2-D integer or float array (NumPy, array-like or torch tensor), e.g. a layer's +-1 weights.

    Raises:
        ShapeError: not 2-D, not a number array, a value outside {-1, 0, +1}, or K * 255 >= 2^31.
    """
    arr = _to_numpy(w, "w")
    if arr.ndim != 2:
        raise ShapeError(f"w must be a 2-D array (rows, K), got {arr.ndim}-D with shape {arr.shape}")
    if arr.dtype.kind not in "iuf":
        raise ShapeError(f"w has dtype {arr.dtype}; expected an integer or float array of -1, 0, +1")
    if arr.size and not np.isin(arr, (-1, 0, 1)).all():
        i, j = (int(v) for v in np.argwhere(~np.isin(arr, (-1, 0, 1)))[0])
        raise ShapeError(f"w must hold only -1, 0, +1 values; found {arr[i, j].item()!r} at [{i}, {j}]")
    if arr.shape[1] * 255 > _INT32_MAX:
        raise ShapeError(f"K={arr.shape[1]} is too large: sums of K 8-bit values must fit int32")
    return PreparedU8Weights(np.ascontiguousarray(arr, dtype=np.int8))


def u8_matmul_is_fast() -> bool:
    """True when the active kernel path runs the vectorized kernel (avx2, avx512, avx512vnni); on the others the
    plain C loops are slower than a float32 BLAS product (exact as well for K * 255 < 2^24)."""
    return active_path() in ("avx2", "avx512", "avx512vnni", "amx")


def u8_matmul(x, w: PreparedU8Weights, *, out=None, num_threads=None) -> np.ndarray:
    """``x @ w.T`` exactly: x (M, K) uint8, w prepared from (N, K) weights in {-1, 0, +1}.

    Args:
        x: uint8 array (M, K) (NumPy or torch); rows need not be contiguous with each other.
        w: from :func:`prepare_u8_weights`, with the same K.
        out: optional int32 array (M, N) with contiguous rows, written and returned.
        num_threads: threads (default :func:`get_num_threads`); small products run on one.

    Returns:
        int32 array (M, N).

    Raises:
        ShapeError: x not a 2-D uint8 array, K mismatch, w not prepared, unusable ``out``.
    """
    if not isinstance(w, PreparedU8Weights):
        raise ShapeError(f"w must be a PreparedU8Weights (from prepare_u8_weights), got {type(w).__name__}")
    arr = _to_numpy(x, "x")
    if arr.ndim != 2:
        raise ShapeError(f"x must be a 2-D array (rows, K), got {arr.ndim}-D with shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ShapeError(f"x has dtype {arr.dtype}; expected uint8 (8-bit pixels)")
    if arr.shape[1] != w.k:
        raise ShapeError(f"x has K={arr.shape[1]} columns but the weights were prepared for K={w.k}")
    if arr.shape[1] > 1 and arr.strides[1] != 1:
        arr = np.ascontiguousarray(arr)
    m, n = arr.shape[0], w.rows
    if out is None:
        out = np.empty((m, n), dtype=np.int32)
    else:
        from .binary import _check_out

        out = _check_out(out, m, n, arr)
    _bitgemm.u8_gemm(arr, w.native, n, out, path_id(active_path()), resolve_threads(num_threads))
    return out
