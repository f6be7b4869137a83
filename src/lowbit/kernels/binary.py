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

**Prepared weights.** The AVX2 kernel works on "nibble panels" (each byte split into its two 4-bit
halves, laid out block by block as its loops consume them) and makes them from the packed operands
on every call. :func:`prepare_packed` makes B's panels once -- the "prepacked RHS" of gemmlowp / ruy,
for weights that are multiplied many times -- and :func:`binary_matmul_packed` accepts the
:class:`PreparedMatrix` in place of ``pb``. Paths that read packed rows in place (portable, popcnt,
avx512) have nothing to prepare and use the packed rows the object keeps.

**Threshold epilogue.** :func:`threshold_pack` turns int32 accumulators into the packed sign bits of
the next binary layer in one pass (``sign * (acc - pad) < threshold`` per column), and
:func:`binary_matmul_threshold` chains the product and the threshold.
"""
from __future__ import annotations

import operator
import sys
import threading

import numpy as np

from ..errors import ConfigError, ShapeError
from .native import bitgemm as _bitgemm
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
        arr = arr.copy(order="C")  # a fresh array is aligned (ascontiguousarray keeps a misaligned contiguous one)
    return arr


def _integer(value, name: str, what: str = "an integer") -> int:
    """``value`` as a Python int; bools, floats and other non-integers get a ShapeError naming ``name``."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise ShapeError(f"{name} must be {what}, got {value!r}")


def _check_k(k, words: int, name: str = "k") -> int:
    k = _integer(k, name, "an integer number of bits")
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


def _check_out(out, m: int, n: int, *inputs) -> np.ndarray:
    """``out`` checked as a writable int32 (m, n) result buffer that overlaps none of ``inputs`` (the kernels
    read their operands while writing: an aliased buffer would give wrong results)."""
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
    for i, x in enumerate(inputs):
        if isinstance(x, np.ndarray) and np.may_share_memory(out, x) and np.shares_memory(out, x, max_work=10**6):
            raise ShapeError(f"out overlaps input operand {i + 1} in memory; pass a separate output buffer")
    return out


def binary_matmul_packed(pa, pb, k, *, out=None, num_threads=None) -> np.ndarray:
    """``a @ b.T`` for +-1 matrices given packed: ``out[i, j] = k - 2 * popcount(pa[i] ^ pb[j])``.

    For callers that pack once and multiply many times (e.g. weights packed at load time).

    Args:
        pa: uint64 array (M, W) from :func:`pack_bits` / :func:`pack_signs` (int64 is accepted too).
        pb: uint64 array (N, W) packed the same way, or a :class:`PreparedMatrix` of it (from
            :func:`prepare_packed`; ``k`` must then be the ``k`` it was prepared with). Same result
            either way; prepared, the kernel skips re-laying out B on every call.
        k: the number of bits (values) per row, ``0 <= k <= 64 * W``; bits past ``k`` and words past
            ``ceil(k/64)`` are ignored.
        out: optional preallocated int32 array of shape (M, N) with contiguous rows, written in
            place and returned (a row slice of a wider buffer works).
        num_threads: threads (default :func:`get_num_threads`); small products run on one thread
            whatever this says, as starting threads would cost more than it saves.

    Returns:
        int32 array (M, N) (``out`` if given).

    Raises:
        ShapeError: not 2-D, not 64-bit words, different word counts, ``k`` out of range (or not the
            prepared one), or an unusable ``out``.
    """
    if isinstance(pb, PreparedMatrix):
        pa = _packed(pa, "pa")
        pb._check_operand(pa, k)
        m, n = pa.shape[0], pb.rows
        out = np.empty((m, n), dtype=np.int32) if out is None else _check_out(out, m, n, pa)
        pb._gemm(pa, out, resolve_threads(num_threads))
        return out
    pa, pb, k = _gemm_operands(pa, pb, k)
    m, n = pa.shape[0], pb.shape[0]
    out = np.empty((m, n), dtype=np.int32) if out is None else _check_out(out, m, n, pa, pb)
    _bitgemm.gemm(pa, pb, k, out, path_id(active_path()), resolve_threads(num_threads))
    return out


# ---------------------------------------------------------------------------------------------------
# prepared weights
# ---------------------------------------------------------------------------------------------------
_ALIGN = 64  # the panels are read with aligned 256-bit loads; 64 keeps every step in one cache line


def _aligned_bytes(nbytes: int) -> np.ndarray:
    """A 1-D uint8 array of nbytes whose data starts on a 64-byte boundary (NumPy guarantees 16)."""
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    off = (-raw.ctypes.data) % _ALIGN
    return raw[off:off + nbytes]


class PreparedMatrix:
    """The packed B operand (e.g. a layer's weights, one row per output) together with its copy in
    the native layout of the kernel path it was prepared for; make it with :func:`prepare_packed` and
    pass it as ``pb`` to :func:`binary_matmul_packed` / :func:`binary_matmul_threshold`.

    Attributes:
        packed: the packed rows (N, W) uint64 (a private, read-only copy), kept for the paths and
            blocks that read them in place (batch-1 products, portable / popcnt / avx512 paths).
        k: bits per row the layout was made for.
        rows, words: N and W.
        path: the kernel path the native layout is for (``None``: nothing prepared yet).
        native: that layout, a 64-byte aligned uint8 buffer, or ``None`` for paths that read packed
            rows in place.

    If the active kernel path changes after preparation (``set_kernel_path``), the next product
    prepares the layout for the new path (once) -- results never depend on which layout is used.
    """

    __slots__ = ("packed", "k", "rows", "words", "path", "native", "_lock")

    def __init__(self, packed: np.ndarray, k: int, *, num_threads=None):
        self.packed = np.array(packed, dtype=np.uint64, order="C", copy=True)
        self.packed.flags.writeable = False  # the native layout is derived from it: freeze both
        self.rows, self.words = self.packed.shape
        self.k = k
        self.path = None
        self.native = None
        self._lock = threading.Lock()
        self._native_for(active_path(), resolve_threads(num_threads))

    @property
    def nbytes(self) -> int:
        """Bytes held: the packed rows plus the native layout."""
        return self.packed.nbytes + (0 if self.native is None else self.native.nbytes)

    def _native_for(self, path: str, nthreads: int):
        """The native buffer for ``path`` (made now if the object was prepared for another one), or
        None when the path reads packed rows in place. Returns (path, buffer) read together, so a
        concurrent re-preparation for another path cannot pair one path's id with another's buffer."""
        with self._lock:
            if self.path != path:
                pid = path_id(path)
                nbytes = _bitgemm.prepared_bytes(pid, self.rows, self.k)
                native = None
                if nbytes:
                    native = _aligned_bytes(nbytes)
                    _bitgemm.prepare(self.packed, self.k, native, pid, nthreads)
                    native.flags.writeable = False
                self.path, self.native = path, native
            return self.path, self.native

    def _check_operand(self, pa: np.ndarray, k) -> None:
        if pa.shape[1] != self.words:
            raise ShapeError(
                f"pa has {pa.shape[1]} words per row but the prepared matrix has {self.words}: "
                "both must pack the same K"
            )
        k = _check_k(k, self.words)
        if k != self.k:
            raise ShapeError(f"k={k} does not match the prepared matrix, which was prepared for k={self.k}")

    def _gemm(self, pa: np.ndarray, out: np.ndarray, nthreads: int) -> None:
        path, native = self._native_for(active_path(), nthreads)
        if native is None:
            _bitgemm.gemm(pa, self.packed, self.k, out, path_id(path), nthreads)
        else:
            _bitgemm.gemm_prepared(pa, self.packed, native, self.k, out, path_id(path), nthreads)

    def __reduce__(self):  # pickles as the packed rows; the layout is remade on load (alignment)
        return (_unpickle_prepared, (self.packed, self.k))

    def __repr__(self) -> str:
        return f"PreparedMatrix(rows={self.rows}, k={self.k}, path={self.path!r}, nbytes={self.nbytes})"


def _unpickle_prepared(packed, k):
    return PreparedMatrix(packed, k)


def prepare_packed(pb, k, *, num_threads=None) -> PreparedMatrix:
    """Prepare a packed B operand (typically weights: N rows of ``k`` bits) once for repeated products.

    Lays B out the way the active kernel path's inner loops read it (AVX2: nibble panels, 2x the
    packed bytes), so that :func:`binary_matmul_packed` no longer redoes that on every call.

    Args:
        pb: uint64 array (N, W) from :func:`pack_bits` / :func:`pack_signs` (int64 accepted); copied.
        k: bits per row, ``0 <= k <= 64 * W``; products with the result must use the same ``k``.
        num_threads: threads for the one-time preparation (default :func:`get_num_threads`).

    Returns:
        a :class:`PreparedMatrix`.

    Raises:
        ShapeError: not a 2-D array of 64-bit words, or ``k`` out of range.
    """
    pb = _packed(pb, "pb")
    k = _check_k(k, pb.shape[1])
    return PreparedMatrix(pb, k, num_threads=num_threads)


# ---------------------------------------------------------------------------------------------------
# threshold epilogue
# ---------------------------------------------------------------------------------------------------
def _int32_vector(x, n: int, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ShapeError(f"{name} must be a 1-D array of {n} values (one per column), got shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ShapeError(f"{name} has dtype {arr.dtype}; expected an integer array")
    if arr.dtype != np.int32 or not arr.dtype.isnative:
        if n and (arr.min() < -(2**31) or arr.max() > _INT32_MAX):
            raise ShapeError(f"{name} has values outside the int32 range")
        arr = arr.astype(np.int32)
    return np.ascontiguousarray(arr)


def _threshold_operands(acc_shape, sign, signed_threshold, pad_bits, out):
    m, n = acc_shape
    sign = _int32_vector(sign, n, "sign")
    if n and not np.all((sign == 1) | (sign == -1)):
        raise ShapeError("sign must hold only +1/-1 values")
    thr = _int32_vector(signed_threshold, n, "signed_threshold")
    pad_bits = _integer(pad_bits, "pad_bits")
    if not -(2**31) <= pad_bits <= _INT32_MAX:
        raise ShapeError(f"pad_bits={pad_bits} does not fit int32")
    words = (n + 63) // 64
    if out is None:
        out = np.empty((m, words), dtype=np.uint64)
    else:
        if not isinstance(out, np.ndarray) or out.dtype != np.uint64 or not out.dtype.isnative:
            raise ShapeError(f"out must be a NumPy uint64 array of shape ({m}, {words})")
        if out.shape != (m, words):
            raise ShapeError(f"out has shape {out.shape}, expected ({m}, {words})")
        if not out.flags.writeable:
            raise ShapeError("out is read-only")
        if not out.flags.aligned or (words > 1 and out.strides[1] != 8) or (m > 1 and out.strides[0] % 8 != 0):
            raise ShapeError(f"out must have contiguous rows (strides {out.strides})")
    return sign, thr, pad_bits, out


def threshold_pack(acc, sign, signed_threshold, pad_bits=0, *, out=None, num_threads=None) -> np.ndarray:
    """Integer accumulators -> packed sign bits: the activation of a binarized layer, in one pass.

    Bit ``j`` of output row ``i`` is 1 (the value -1) where
    ``sign[j] * (acc[i, j] - pad_bits) < signed_threshold[j]`` in int32 arithmetic, i.e. BN + sign
    folded into one comparison per channel (``sign = -1`` for channels whose BN scale is negative).
    Rows are packed as :func:`pack_bits` packs them: ceil(N/64) uint64 words, bits past N zero.

    Args:
        acc: int32 array (M, N) (e.g. from :func:`binary_matmul_packed`), contiguous rows.
        sign: N values, each +1 or -1 (any integer dtype).
        signed_threshold: N integer thresholds (within int32).
        pad_bits: integer subtracted from every accumulator first (the constant that zero pad bits add
            to every dot product).
        out: optional uint64 array (M, ceil(N/64)) with contiguous rows, written and returned.
        num_threads: threads for large inputs (default :func:`get_num_threads`).

    Raises:
        ShapeError: wrong shapes or dtypes, a sign other than +-1, values outside int32.
    """
    arr = _to_numpy(acc, "acc")
    if arr.ndim != 2:
        raise ShapeError(f"acc must be a 2-D array (rows, N), got {arr.ndim}-D with shape {arr.shape}")
    if arr.dtype != np.int32 or not arr.dtype.isnative:
        raise ShapeError(f"acc has dtype {arr.dtype}; expected int32 accumulators")
    if not arr.flags.aligned or (arr.shape[1] > 1 and arr.strides[1] != 4) or (arr.shape[0] > 1 and arr.strides[0] % 4):
        arr = np.ascontiguousarray(arr)
    sign, thr, pad_bits, out = _threshold_operands(arr.shape, sign, signed_threshold, pad_bits, out)
    _bitgemm.threshold_pack(arr, sign, thr, pad_bits, out, path_id(active_path()), resolve_threads(num_threads))
    return out


def binary_matmul_threshold(pa, pb, k, sign, signed_threshold, pad_bits=0, *, out=None,
                            num_threads=None) -> np.ndarray:
    """A binary layer in one call: :func:`binary_matmul_packed` then :func:`threshold_pack`.

    ``pb`` may be packed rows or a :class:`PreparedMatrix`. The int32 accumulators live only in a
    temporary. Returns the packed output bits (M, ceil(N/64)) uint64; raises ShapeError like both.
    """
    n = pb.rows if isinstance(pb, PreparedMatrix) else _packed(pb, "pb").shape[0]
    m = _packed(pa, "pa").shape[0]
    sign, thr, pad_bits, out = _threshold_operands((m, n), sign, signed_threshold, pad_bits, out)
    acc = binary_matmul_packed(pa, pb, k, num_threads=num_threads)
    _bitgemm.threshold_pack(acc, sign, thr, pad_bits, out, path_id(active_path()), resolve_threads(num_threads))
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
