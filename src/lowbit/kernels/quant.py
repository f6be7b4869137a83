"""Exact integer products of low-bit operands: bit-serial k-bit GEMM, int8 (VNNI / AVX2), ternary.

``quant_matmul(a, b, a_levels, b_levels)`` returns the exact int32 ``a @ b.T`` for a (M, K) and b (N, K)
holding values of named level sets (:mod:`lowbit.kernels.levels`): ``binary``, ``ternary``, ``u1``..``u8``,
``s2``..``s8``, ``o1``..``o4``. Every set is ``value = step * code + offset``; the kernels multiply the
unsigned codes and fold steps and offsets back in exactly from the row sums of codes (computed when an
operand is packed). Three kernels (``KERNELS``), chosen per pair of level sets and CPU path:

``xnor``
    binary x binary: bitgemm's XNOR + popcount kernel on the single bit plane.
``bitserial``
    codes of 1-4 bits as bit planes; ``sum_k ca*cb = sum_{p,q} 2^(p+q) popcount(A_p AND B_q)``: one
    AND + popcount per plane pair and 64 (scalar) / 256 (AVX2) / 512 (AVX-512 VPOPCNTQ) values of K.
``int8``
    A as u8 codes, B as s8 (codes minus a zero point), or as 2-/4-bit codes decoded in registers (ternary
    and 2-bit weights are read at 2 bits per value): ``vpdpbusd`` (AVX-512 VNNI) or ``vpmaddubsw`` +
    ``vpmaddwd`` (AVX2; 8-bit codes against 8-bit weights take a split, saturation-free step).

**Dispatch rule** (:func:`choose_kernel`): binary x binary -> ``xnor``; else ``bitserial`` when both
sets have at most 4-bit codes and the number of plane pairs ``abits * bbits`` is at most the path's
limit in ``BITSERIAL_MAX_PAIRS``; else ``int8``. The limits compare the cost of a plane pair with the
cost of one int8 multiply-add on each path (the ratios measured by ``benchmarks/quant_gemm.py``; see
the table there). Peak rates from the probe (``_bitgemm.qg_probe``) on a Sapphire/Emerald Rapids
class Xeon, per core: AND + VPOPCNTQ + ADD ~4x the multiply-adds of VPDPBUSD (a 512-value plane pair
per 3 uops on 2 ports, against 64 multiply-adds per vpdpbusd at 1 per cycle), so with VNNI 2 x 2-bit
(4 pairs) only ties with int8 at peak and measured slower (the int8 kernel runs nearer its peak): the
limit is 2 pairs. Without VNNI the int8 kernel is the AVX2 one (~8x fewer multiply-adds than the
popcount mix): 8 pairs. On AVX2 a plane pair (vpand + Mula's nibble lookup, 8 ops per 256 values) is
only ~1.5x the AVX2 int8 rate: 1 pair. On the scalar paths a 64-bit POPCNT beats any scalar
multiply loop by far: 16 (every 1-4-bit pair). For batch 1 both kernels are bound by reading the
weights, and both read 2-bit weights at 2 bits per value.

On ``amx`` the rule has the number of rows of the activations too (``rows``): from ``AMX_MIN_ROWS`` (32)
rows every pair but binary x binary goes to ``int8``, whose tdpbusd tiles (16 x 16 x 64 multiply-adds per
instruction, ~2x the popcount mix's rate per plane pair at 1 pair) beat bit-serial even at 1 x 2 planes
(binary x u2 at 256 x 4096 x 4096: 2.2x). Below 32 rows the int8 kernel is the VNNI one, and the
``BITSERIAL_MAX_PAIRS`` limit applies. Without ``rows`` (weights prepared before the batch is known) the
rule assumes a batch of 32 rows or more.

**Packed operands.** :func:`pack_levels` packs a matrix once (codes as bit planes + row sums);
:func:`prepare_levels` also lays it out now for the kernel a given activation level set will use with it
(the weights' "prepared" form, like :func:`~lowbit.kernels.prepare_packed`); :func:`quant_matmul_packed`
multiplies packed operands. Layouts another kernel needs are derived from the planes once and cached.

Inputs: NumPy arrays, array-likes or torch CPU tensors (``.numpy()``, torch is never imported), any
strides, read-only fine. Errors (:class:`~lowbit.errors.ShapeError`): unknown level set, values outside
it, non-integer dtypes, mismatched K, or a product whose worst case ``K * max|a| * max|b|`` exceeds
int32.
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import ConfigError, ShapeError
from .native import bitgemm as _bitgemm
from .binary import _aligned_bytes, _check_out, _to_numpy
from .dispatch import active_path, path_id, resolve_threads
from .levels import LevelSet, check_in_set, level_set

_INT32_MAX = 2**31 - 1
_KIND_ID = {"bitserial": 0, "int8": 1, "xnor": 2}
KERNELS = tuple(_KIND_ID)

# the dispatch rule: most plane pairs (abits * bbits) for which bit-serial beats int8, per path. On amx below
# AMX_MIN_ROWS rows the int8 kernel is the VNNI one (tiles need blocks of 32 rows), which 2 plane pairs beat;
# from AMX_MIN_ROWS rows the tiles beat bit-serial at every pair.
BITSERIAL_MAX_PAIRS = {"portable": 16, "popcnt": 16, "avx2": 1, "avx512": 8, "avx512vnni": 2, "amx": 2}
AMX_MIN_ROWS = 32


# ---------------------------------------------------------------------------------------------------
# kernel choice
# ---------------------------------------------------------------------------------------------------
def kernel_supported(kernel: str, a_levels, b_levels) -> bool:
    """Whether ``kernel`` can multiply these level sets (``xnor``: both binary; ``bitserial``: codes of
    at most 4 bits; ``int8``: any)."""
    la, lb = level_set(a_levels), level_set(b_levels)
    if kernel == "xnor":
        return la.name in ("binary", "o1") and lb.name in ("binary", "o1")
    if kernel == "bitserial":
        return la.bits <= 4 and lb.bits <= 4
    if kernel == "int8":
        return True
    raise ShapeError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")


def choose_kernel(a_levels, b_levels, path: str | None = None, *, rows: int | None = None) -> str:
    """The kernel :func:`quant_matmul` uses for this pair of level sets on ``path`` (default: the
    active one) with ``rows`` rows of activations (None: a batch of at least 32); see the module
    docstring for the rule."""
    la, lb = level_set(a_levels), level_set(b_levels)
    path = active_path() if path is None else path
    if path not in BITSERIAL_MAX_PAIRS:
        raise ConfigError(f"unknown kernel path {path!r}; choose one of {', '.join(BITSERIAL_MAX_PAIRS)}")
    if kernel_supported("xnor", la, lb):
        return "xnor"
    if path == "amx" and (rows is None or rows >= AMX_MIN_ROWS):
        return "int8"
    if la.bits <= 4 and lb.bits <= 4 and la.bits * lb.bits <= BITSERIAL_MAX_PAIRS[path]:
        return "bitserial"
    return "int8"


def _b_store(lb: LevelSet) -> tuple:
    """(bits per stored B code, zero point) of the int8 kernel: 2-/4-bit codes decoded in registers
    (zero point 0), else int8 codes centred on 0 (|cb - zb| <= 128)."""
    if lb.bits <= 2:
        return 2, 0
    if lb.bits <= 4:
        return 4, 0
    return 8, lb.ncodes // 2


# ---------------------------------------------------------------------------------------------------
# validation and codes
# ---------------------------------------------------------------------------------------------------
def _int_matrix(x, name: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim != 2:
        raise ShapeError(f"{name} must be a 2-D array (rows, K), got {arr.ndim}-D with shape {arr.shape}")
    if arr.dtype.kind not in "iu":
        raise ShapeError(
            f"{name} has dtype {arr.dtype}; level-set values must be an integer array (int8, uint8, int32, ...)"
        )
    return arr


def _codes(arr: np.ndarray, ls: LevelSet, name: str) -> np.ndarray:
    """Checked unsigned codes (uint8, rows contiguous) of the values in ``arr``."""
    if ls.step == 1 and ls.offset == 0 and arr.dtype == np.uint8:  # uK activation codes: used as they are
        if arr.size and int(arr.max()) >= ls.ncodes:
            check_in_set(arr, ls, name)
        return arr if arr.strides[-1] == 1 or arr.shape[1] <= 1 else np.ascontiguousarray(arr)
    if arr.dtype.itemsize == 1 and ls.bits <= 7 and ls.step in (1, 2):  # int8 / uint8 values, uint8 arithmetic
        # (value - offset) mod 256 is the code times the step for every value in [min, max]; a value outside
        # that range, or an odd multiple of a step of 2, is refused (a 256-entry table lookup instead took
        # 4 ms per million values, 10x the product of 256 x 4096 binary activations it fed)
        d = arr.view(np.uint8) - np.uint8(ls.offset % 256)
        if arr.size and (int(arr.min()) < ls.min or int(arr.max()) > ls.max or (ls.step == 2 and (d & 1).any())):
            check_in_set(arr, ls, name)
        return np.ascontiguousarray(d >> 1 if ls.step == 2 else d)
    check_in_set(arr, ls, name)
    wide = arr.astype(np.int32 if arr.dtype.itemsize <= 4 else np.int64)
    if ls.offset:
        wide -= ls.offset
    if ls.step != 1:
        wide //= ls.step
    return np.ascontiguousarray(wide, dtype=np.uint8)


def _check_bound(k: int, la: LevelSet, lb: LevelSet) -> None:
    if k * la.max_abs * lb.max_abs > _INT32_MAX:
        raise ShapeError(
            f"K={k} with {la.name} x {lb.name} values (|a| <= {la.max_abs}, |b| <= {lb.max_abs}) could overflow "
            f"the int32 result: K * {la.max_abs} * {lb.max_abs} > 2**31 - 1"
        )


# ---------------------------------------------------------------------------------------------------
# packed operands
# ---------------------------------------------------------------------------------------------------
class PackedLevels:
    """A matrix of level-set values packed for the k-bit GEMM (make it with :func:`pack_levels` or
    :func:`prepare_levels`).

    Attributes:
        levels: its :class:`~lowbit.kernels.levels.LevelSet`.
        rows, k: its shape.
        planes: the codes as bit planes, uint64 (rows, words): per 512 values of K, ``levels.bits``
            planes of 8 words (``None`` for 5-8-bit codes, which only the int8 kernel multiplies, and
            for activations packed for the int8 kernel: made when a bit-serial product needs them).
        sums: int32 (rows,), the sum of each row's codes.
        nbytes: bytes held (planes, sums and every cached kernel layout).

    Other layouts (int8 panels of a weight operand, padded u8 rows of an activation operand) are made
    from it when a product first needs them and kept; pickling keeps the codes only.
    """

    __slots__ = ("levels", "rows", "k", "planes", "sums", "_codes", "_layouts", "_lock")

    def __init__(self, codes: np.ndarray, levels: LevelSet, *, keep_codes: bool, num_threads=None,
                 planes: bool = True):
        self.levels = levels
        self.rows, self.k = codes.shape
        self.sums = np.empty(self.rows, np.int32)
        self._layouts = {}
        self._lock = threading.Lock()
        self.planes = None
        nt = resolve_threads(num_threads)
        if levels.bits <= 4 and planes:
            self.planes = np.empty((self.rows, _bitgemm.qg_plane_words(self.k, levels.bits)), np.uint64)
            _bitgemm.qg_pack_planes(codes, levels.bits, self.planes, self.sums, nt)
            self.planes.flags.writeable = False
            self._codes = np.ascontiguousarray(codes) if keep_codes else None
        else:  # the int8 kernel's padded u8 rows straight from the codes
            self._codes = np.ascontiguousarray(codes)
            a8 = np.empty((self.rows, _bitgemm.qg_a8_stride(self.k)), np.uint8)
            _bitgemm.qg_pack_a8(self._codes, a8, self.sums, nt)
            a8.flags.writeable = False
            self._layouts["a8"] = a8
        self.sums.flags.writeable = False

    @classmethod
    def _wrap(cls, levels: LevelSet, rows: int, k: int, sums: np.ndarray, *, planes=None, a8=None):
        """A packed operand around layouts made elsewhere (:mod:`lowbit.kernels.codes`): bit planes, or
        int8 rows ``a8`` (rows, >= K) whose first K columns are the codes."""
        self = cls.__new__(cls)
        self.levels, self.rows, self.k = levels, int(rows), int(k)
        self.sums = sums
        self.sums.flags.writeable = False
        self._layouts = {}
        self._lock = threading.Lock()
        self.planes = planes
        self._codes = None
        if planes is not None:
            planes.flags.writeable = False
        if a8 is not None:
            if a8.flags.writeable:
                a8.flags.writeable = False
            self._layouts["a8"] = a8
            self._codes = a8[:, : self.k]
        return self

    def _planes(self, nthreads: int) -> np.ndarray:
        with self._lock:
            if self.planes is None:  # packed for the int8 kernel, now multiplied bit-serially
                planes = np.empty((self.rows, _bitgemm.qg_plane_words(self.k, self.levels.bits)), np.uint64)
                _bitgemm.qg_pack_planes(self._codes, self.levels.bits, planes, None, nthreads)
                planes.flags.writeable = False
                self.planes = planes
            return self.planes

    @property
    def nbytes(self) -> int:
        held = self.sums.nbytes + sum(v.nbytes for v in self._layouts.values())
        held += 0 if self.planes is None else self.planes.nbytes
        return held + (0 if self._codes is None else self._codes.nbytes)

    def codes(self) -> np.ndarray:
        """The unsigned codes (rows, k) uint8 (unpacked from the planes when not kept)."""
        if self._codes is not None:
            return self._codes
        nv = (self.k + 511) // 512
        bits = self.levels.bits
        planes = np.ascontiguousarray(self.planes).view(np.uint8).reshape(self.rows, nv, bits, 64)
        unpacked = np.unpackbits(planes, axis=3, bitorder="little")  # (rows, nv, bits, 512)
        weights = (1 << np.arange(bits, dtype=np.uint8)).reshape(1, 1, bits, 1)
        codes = (unpacked * weights).sum(axis=2, dtype=np.uint8).reshape(self.rows, nv * 512)
        return np.ascontiguousarray(codes[:, : self.k])

    def to_array(self) -> np.ndarray:
        """The values back, int32 (rows, k)."""
        return self.levels.decode(self.codes()).astype(np.int32)

    def _layout(self, key, nthreads: int):
        with self._lock:
            if key not in self._layouts:
                if key == "a8":
                    buf = np.empty((self.rows, _bitgemm.qg_a8_stride(self.k)), np.uint8)
                    _bitgemm.qg_pack_a8(self.codes(), buf, None, nthreads)
                else:
                    _, store, zb = key
                    buf = _aligned_bytes(_bitgemm.qg_panel_bytes(self.rows, self.k, store))
                    _bitgemm.qg_pack_panels(self.codes(), store, zb, buf, None)
                buf.flags.writeable = False
                self._layouts[key] = buf
            return self._layouts[key]

    def __reduce__(self):
        return (_unpickle, (self.codes(), self.levels.name))

    def __repr__(self) -> str:
        return f"PackedLevels({self.levels.name!r}, rows={self.rows}, k={self.k})"


def _unpickle(codes, name):
    return PackedLevels(codes, level_set(name), keep_codes=False)


def pack_levels(x, levels, *, weights_levels=None, num_threads=None) -> PackedLevels:
    """Pack a (rows, K) matrix of values of level set ``levels`` for :func:`quant_matmul_packed`.

    Args:
        weights_levels: for activations (the ``pa`` operand), the level set of the weights they will be
            multiplied with: when that pair runs on the int8 kernel, its layout (padded u8 rows) is
            made directly instead of bit planes. Default: bit planes (every 1-4-bit set).

    Raises:
        ShapeError: unknown level set, not a 2-D integer array, or a value outside the set.
    """
    ls = level_set(levels)
    arr = _int_matrix(x, "x")
    planes = weights_levels is None or choose_kernel(ls, weights_levels, rows=arr.shape[0]) != "int8"
    return PackedLevels(_codes(arr, ls, "x"), ls, keep_codes=False, num_threads=num_threads, planes=planes)


def prepare_levels(b, b_levels, a_levels, *, num_threads=None) -> PackedLevels:
    """Pack weights ``b`` (N, K) and lay them out now for the kernel that multiplies them with
    activations of level set ``a_levels`` on the active path (load-time work instead of first-call
    work). ``b`` may already be a :class:`PackedLevels`."""
    pb = b if isinstance(b, PackedLevels) else pack_levels(b, b_levels, num_threads=num_threads)
    if pb.levels != level_set(b_levels):
        raise ShapeError(f"b is packed as {pb.levels.name!r}, not {level_set(b_levels).name!r}")
    la = level_set(a_levels)
    if choose_kernel(la, pb.levels) == "int8":
        pb._layout(("panels",) + _b_store(pb.levels), resolve_threads(num_threads))
    return pb


# ---------------------------------------------------------------------------------------------------
# products
# ---------------------------------------------------------------------------------------------------
def _gemm(kind: str, la: LevelSet, lb: LevelSet, m: int, n: int, k: int, a_op, suma, b_op, sumb, store, zb,
          out, nthreads):
    abits = 1 if kind == "xnor" else la.bits
    _bitgemm.qg_gemm(_KIND_ID[kind], a_op, abits, b_op, lb.bits, store, n, k, la.step, la.offset, lb.step,
                     lb.offset, zb, suma, sumb, out, path_id(active_path()), nthreads)


def _resolve_kernel(kernel, la: LevelSet, lb: LevelSet, rows: int) -> str:
    if kernel is None:
        return choose_kernel(la, lb, rows=rows)
    if kernel not in KERNELS:
        raise ShapeError(f"unknown kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    if not kernel_supported(kernel, la, lb):
        raise ShapeError(f"kernel {kernel!r} cannot multiply {la.name} x {lb.name}")
    return kernel


def _out(out, m: int, n: int, *inputs) -> np.ndarray:
    return np.empty((m, n), dtype=np.int32) if out is None else _check_out(out, m, n, *inputs)


def quant_matmul(a, b, a_levels, b_levels, *, out=None, kernel=None, num_threads=None) -> np.ndarray:
    """Exact ``a @ b.T`` (int32) for a (M, K) and b (N, K) holding values of level sets ``a_levels``
    and ``b_levels`` (names as in :mod:`lowbit.kernels.levels`, e.g. ``"u2"`` activations x ``"o2"``
    weights).

    Args:
        a, b: integer arrays (NumPy, array-like or torch CPU tensors), any strides.
        out: optional int32 (M, N) array with contiguous rows, written and returned.
        kernel: force ``"bitserial"``, ``"int8"`` or ``"xnor"`` (default: :func:`choose_kernel`).
        num_threads: threads (default :func:`~lowbit.kernels.get_num_threads`).

    Raises:
        ShapeError: unknown level set or kernel, non-integer dtype, not 2-D, mismatched K, a value
            outside its level set (named with its position), or a result that could overflow int32.
    """
    la, lb = level_set(a_levels), level_set(b_levels)
    A, B = _int_matrix(a, "a"), _int_matrix(b, "b")
    if A.shape[1] != B.shape[1]:
        raise ShapeError(
            f"a has K={A.shape[1]} columns but b has K={B.shape[1]}: quant_matmul(a, b) computes a @ b.T "
            "with a (M, K) and b (N, K)"
        )
    m, k = A.shape
    n = B.shape[0]
    _check_bound(k, la, lb)
    kind = _resolve_kernel(kernel, la, lb, m)
    ca, cb = _codes(A, la, "a"), _codes(B, lb, "b")
    out = _out(out, m, n, A, B)
    nt = resolve_threads(num_threads)
    suma, sumb = np.empty(m, np.int32), np.empty(n, np.int32)
    if kind == "int8":
        a_op = np.empty((m, _bitgemm.qg_a8_stride(k)), np.uint8)
        _bitgemm.qg_pack_a8(ca, a_op, suma, nt)
        store, zb = _b_store(lb)
        b_op = _aligned_bytes(_bitgemm.qg_panel_bytes(n, k, store))
        _bitgemm.qg_pack_panels(cb, store, zb, b_op, sumb)
    else:
        store, zb = 8, 0
        abits, bbits = (1, 1) if kind == "xnor" else (la.bits, lb.bits)
        a_op = np.empty((m, _bitgemm.qg_plane_words(k, abits)), np.uint64)
        b_op = np.empty((n, _bitgemm.qg_plane_words(k, bbits)), np.uint64)
        _bitgemm.qg_pack_planes(ca, abits, a_op, suma, nt)
        _bitgemm.qg_pack_planes(cb, bbits, b_op, sumb, nt)
    _gemm(kind, la, lb, m, n, k, a_op, suma, b_op, sumb, store, zb, out, nt)
    return out


def quant_matmul_packed(pa: PackedLevels, pb: PackedLevels, *, out=None, kernel=None,
                        num_threads=None) -> np.ndarray:
    """``a @ b.T`` (int32) of operands packed by :func:`pack_levels` / :func:`prepare_levels`; same
    result and errors as :func:`quant_matmul`."""
    for name, p in (("pa", pa), ("pb", pb)):
        if not isinstance(p, PackedLevels):
            raise ShapeError(f"{name} must be a PackedLevels (from pack_levels), got {type(p).__name__}")
    if pa.k != pb.k:
        raise ShapeError(f"pa has K={pa.k} but pb has K={pb.k}: both must pack the same K")
    la, lb = pa.levels, pb.levels
    m, n, k = pa.rows, pb.rows, pa.k
    _check_bound(k, la, lb)
    kind = _resolve_kernel(kernel, la, lb, m)
    out = _out(out, m, n)
    nt = resolve_threads(num_threads)
    if kind == "int8":
        store, zb = _b_store(lb)
        a_op, b_op = pa._layout("a8", nt), pb._layout(("panels", store, zb), nt)
    else:
        store, zb = 8, 0
        a_op, b_op = pa._planes(nt), pb._planes(nt)
    _gemm(kind, la, lb, m, n, k, a_op, pa.sums, b_op, pb.sums, store, zb, out, nt)
    return out


def quant_planned_threads(m: int, n: int, k: int, a_levels, b_levels, num_threads=None, *, kernel=None) -> int:
    """Threads :func:`quant_matmul` would use for an (M x K) . (N x K)^T product on the active path
    (with ``kernel``, or the one :func:`choose_kernel` picks): ``num_threads`` (or the default) capped
    so that each thread gets ~50 us of work or more."""
    la, lb = level_set(a_levels), level_set(b_levels)
    kind = _resolve_kernel(kernel, la, lb, int(m))
    bits = (1, 1) if kind == "xnor" else (la.bits, lb.bits)
    return _bitgemm.qg_plan_threads(_KIND_ID[kind], int(m), int(n), int(k), *bits, path_id(active_path()),
                                    resolve_threads(num_threads))
