"""k-bit codes into and out of the k-bit GEMM in one C pass each: fused im2col + pack, integer epilogue.

A k-bit conv/linear layer of the graph runtime (:mod:`lowbit.runtime.graph`) reads uint8 codes (NHWC) and
writes uint8 codes. Between them sit the k-bit GEMM of :mod:`lowbit.kernels.quant` and two passes this
module makes native (C, run-time CPU dispatch: portable / AVX2 / AVX-512, threaded):

* :func:`pack_conv_levels` -- NHWC codes straight into the rows the GEMM kernel reads, im2col included
  (window order (ky, kx, c), the pad code at out-of-image taps): int8 rows for the ``int8`` kernel or bit
  planes for ``bitserial``, with the row sums of codes, in one pass; no (rows, K) matrix of patches is
  ever made. :func:`pack_dense_levels` does the same for (rows, K) codes and, where the int8 kernel can
  read them in place (K a multiple of 16, rows contiguous), copies nothing at all.
* :func:`threshold_codes` -- int32 accumulators -> ``v = acc * mul + border`` (optional) -> max-pool
  (optional) -> per-channel multi-thresholds ``code = #{j : sign_c * v >= signed_thresholds[c, j]}`` as
  uint8 codes, or packed bits for one threshold, in one pass.

Both speak the graph runtime's conventions: codes are the quantizer's codes ``0..L-1``; when the code table
is no affine image of ``0..L-1`` (log quantizers) ``values`` gives each code's integer value in the level
set. The int32 arithmetic of the epilogue wraps like NumPy's, so results are bit-identical to the NumPy
passes they replace. Errors are :class:`~lowbit.errors.ShapeError`.
"""
from __future__ import annotations

import numpy as np

from ..errors import ShapeError
from .binary import _to_numpy
from .dispatch import active_path, path_id, resolve_threads
from .levels import LevelSet, level_set
from .native import bitgemm as _bitgemm
from .quant import PackedLevels, choose_kernel

QG_KALIGN = 16  # K of the int8 kernel's rows is padded to this (csrc/qgemm.h)


# ---- argument checks --------------------------------------------------------------------------------------


def _pair(v, name: str, lo: int) -> tuple:
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (int(v), int(v))
    try:
        a, b = v
    except (TypeError, ValueError):
        raise ShapeError(f"{name} must be an integer or a pair of integers, got {v!r}") from None
    for e in (a, b):
        if isinstance(e, bool) or not isinstance(e, (int, np.integer)) or e < lo:
            raise ShapeError(f"{name} must be integers >= {lo}, got {v!r}")
    return int(a), int(b)


def _out_size(size: int, k: int, s: int, p: int, what: str, axis: str) -> int:
    o = (size + 2 * p - k) // s + 1 if size + 2 * p >= k else 0
    if o < 1:
        raise ShapeError(f"{what}: a window of {k} (stride {s}, padding {p}) does not fit an input {axis} of {size}")
    return o


def _codes_array(x, ndim: int, what: str) -> np.ndarray:
    arr = _to_numpy(x, "x")
    if arr.ndim != ndim:
        shape = "(N, H, W, C)" if ndim == 4 else "(rows, K)"
        raise ShapeError(f"{what}: x must be a {ndim}-D array of codes {shape}, got shape {arr.shape}")
    if arr.dtype != np.uint8:
        raise ShapeError(f"{what}: x must hold uint8 codes, got dtype {arr.dtype}")
    return arr


def _code_map(ls: LevelSet, values, what: str):
    """(256-entry map input code -> kernel code or None, number of valid input codes)."""
    if values is None:
        return None, ls.ncodes
    v = np.asarray(values)
    if v.ndim != 1 or not 1 <= len(v) <= 256 or v.dtype.kind not in "iu":
        raise ShapeError(f"{what}: values must be a 1-D integer array of 1..256 code values, got "
                         f"{v.dtype} {v.shape}")
    bad = ~ls.contains(v)
    if bad.any():
        j = int(np.argmax(bad))
        raise ShapeError(f"{what}: values[{j}] = {int(v[j])} is not in level set {ls.name!r} "
                         f"(values {ls.min}..{ls.max})")
    table = np.full(256, 255, np.uint8)
    table[: len(v)] = ls.codes(v)
    return table, len(v)


def _use_planes(ls: LevelSet, weights_levels, rows: int) -> bool:
    if ls.bits > 4:
        return False
    return weights_levels is None or choose_kernel(ls, weights_levels, rows=rows) != "int8"


def _raise_bad_code(x: np.ndarray, ncodes: int, ls: LevelSet, values, what: str, pad_code: int = 0):
    kind = f"{ncodes} values given" if values is not None else f"level set {ls.name!r}"
    bad = np.argwhere(x >= ncodes)
    if not len(bad):  # only the pad code can have been read
        raise ShapeError(f"{what}: pad code {pad_code} is not a code of {kind} (codes 0..{ncodes - 1})")
    idx = tuple(int(i) for i in bad[0])
    raise ShapeError(f"{what}: x[{', '.join(map(str, idx))}] = {int(x[idx])} is not a code of {kind} "
                     f"(codes 0..{ncodes - 1})")


def _pack(x4: np.ndarray, kernel, stride, padding, pad_code: int, ls: LevelSet, weights_levels, values,
          num_threads, what: str, src_for_errors: np.ndarray) -> PackedLevels:
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, h, w, c = x4.shape
    oh = _out_size(h, kh, sh, ph, what, "height")
    ow = _out_size(w, kw, sw, pw, what, "width")
    rows, k = n * oh * ow, kh * kw * c
    table, ncodes = _code_map(ls, values, what)
    if isinstance(pad_code, bool) or not isinstance(pad_code, (int, np.integer)) or not 0 <= pad_code < ncodes:
        raise ShapeError(f"{what}: pad_code must be a code 0..{ncodes - 1}, got {pad_code!r}")
    planes = _use_planes(ls, weights_levels, rows)
    sums = np.empty(rows, np.int32)
    nt = resolve_threads(num_threads)
    path = path_id(active_path())
    if (c > 1 and x4.strides[3] != 1) or (w > 1 and x4.strides[2] != c):
        x4 = np.ascontiguousarray(x4)
    a8 = dst = None
    inplace = (not planes and table is None and kh == kw == h == w == 1 and k % QG_KALIGN == 0
               and rows == n and (c <= 1 or x4.strides[3] == 1))
    if inplace:  # the int8 kernel reads the rows where they are: the pass only sums them
        a8 = x4.reshape(n, k)  # a view: made read-only here, the caller's array stays as it is
    elif planes:
        dst = np.empty((rows, _bitgemm.qg_plane_words(k, ls.bits)), np.uint64)
    else:
        a8 = dst = np.empty((rows, _bitgemm.qg_a8_stride(k)), np.uint8)
    top = _bitgemm.kc_pack(x4, (kh, kw), (sh, sw), (ph, pw), int(pad_code), table, ls.bits if planes else 0,
                           dst, sums, path, nt)
    if top > 255:
        raise MemoryError(f"{what}: out of memory for a row buffer")
    if rows and top >= ncodes:
        _raise_bad_code(src_for_errors, ncodes, ls, values, what)
    if planes:
        return PackedLevels._wrap(ls, rows, k, sums, planes=dst)
    return PackedLevels._wrap(ls, rows, k, sums, a8=a8)


# ---- packing ----------------------------------------------------------------------------------------------


def conv_output_shape(x_shape, kernel, stride=1, padding=0) -> tuple:
    """(N, OH, OW) of a conv with this window over an (N, H, W, C) input (as PyTorch's, floor mode)."""
    n, h, w = (int(d) for d in x_shape[:3])
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel, "kernel", 1), _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    return n, _out_size(h, kh, sh, ph, "conv", "height"), _out_size(w, kw, sw, pw, "conv", "width")


def pack_conv_levels(x, kernel, stride=1, padding=0, pad_code: int = 0, levels="u2", *, weights_levels=None,
                     values=None, num_threads=None) -> PackedLevels:
    """The im2col rows of a conv over NHWC codes, packed for :func:`~lowbit.kernels.quant_matmul_packed`.

    Row ``(n * OH + oy) * OW + ox`` holds the ``kh * kw * C`` codes of the window at output ``(oy, ox)`` of
    image ``n`` in ``(ky, kx, c)`` order (the weights' order after ``w.transpose(0, 2, 3, 1)``), taps outside
    the image taking ``pad_code``: the same operand as ``pack_levels(im2col(x).reshape(rows, K), ...)``, made
    in one pass without the patches matrix.

    Args:
        x: uint8 codes (N, H, W, C); pixels must have contiguous codes (else it is copied once).
        kernel, stride, padding: integers or (height, width) pairs (kernel, stride >= 1; padding >= 0).
        pad_code: the input code of out-of-image taps.
        levels: the level set the GEMM reads these activations as (e.g. ``"u2"``). Without ``values`` an
            input code is that set's code (value ``step * code + offset``).
        weights_levels: the weights' level set: picks the layout the product will read (int8 rows when the
            pair runs on the ``int8`` kernel on the active path, else bit planes), as :func:`pack_levels`.
        values: optional integer value of each input code (1-D, at most 256, each in ``levels``): input
            code ``c`` stands for ``values[c]`` (a code table that is no affine image of 0..L-1).
        num_threads: threads (default :func:`~lowbit.kernels.get_num_threads`).

    Raises:
        ShapeError: not a 4-D uint8 array, a window that does not fit, a pad code or input code outside
            the level set (or past ``values``), unknown level set.
    """
    what = "pack_conv_levels"
    arr = _codes_array(x, 4, what)
    ls = level_set(levels)
    return _pack(arr, _pair(kernel, "kernel", 1), _pair(stride, "stride", 1), _pair(padding, "padding", 0), pad_code,
                 ls, weights_levels, values, num_threads, what, arr)


def pack_dense_levels(x, levels, *, weights_levels=None, values=None, num_threads=None) -> PackedLevels:
    """(rows, K) uint8 codes packed for :func:`~lowbit.kernels.quant_matmul_packed` in one pass.

    Same operand as :func:`~lowbit.kernels.pack_levels` of the codes' values, but from codes, with the code
    check and the row sums in the same pass; when the int8 kernel reads the pair (``weights_levels``), K is
    a multiple of 16, rows are contiguous and no ``values`` map applies, the operand *is* ``x`` (no copy:
    do not change ``x`` while the packed operand is in use). Arguments and errors as
    :func:`pack_conv_levels`.
    """
    what = "pack_dense_levels"
    arr = _codes_array(x, 2, what)
    ls = level_set(levels)
    rows, k = arr.shape
    if k > 1 and arr.strides[1] != 1:
        arr = np.ascontiguousarray(arr)
    x4 = np.lib.stride_tricks.as_strided(arr, (rows, 1, 1, k), (arr.strides[0] if rows > 1 else k, k, k, 1),
                                         writeable=False)
    return _pack(x4, (1, 1), (1, 1), (0, 0), 0, ls, weights_levels, values, num_threads, what, arr)


# ---- epilogue ---------------------------------------------------------------------------------------------


def _int32(a, name: str, what: str) -> np.ndarray:
    arr = _to_numpy(a, name)
    if arr.dtype.kind not in "iu":
        raise ShapeError(f"{what}: {name} must be an integer array, got dtype {arr.dtype}")
    if arr.dtype != np.int32:
        if arr.size and (arr.min() < -(2**31) or arr.max() > 2**31 - 1):
            raise ShapeError(f"{what}: {name} has values outside the int32 range")
        arr = arr.astype(np.int32)
    return np.ascontiguousarray(arr)


def threshold_codes(acc, sign, signed_thresholds, *, mul: int = 1, border=None, pool=None, out: str = "codes",
                    num_threads=None) -> np.ndarray:
    """int32 accumulators -> k-bit codes (or packed bits) by per-channel multi-thresholds, in one pass.

    For each output position and channel ``c``: ``v = acc * mul + border`` at each position of the pooling
    window (``border`` optional, per (position, channel)), the max of those (no ``pool``: the one
    position), then ``code = #{j : sign[c] * v >= signed_thresholds[c, j]}``, all in int32 arithmetic that
    wraps like NumPy's (``signed_thresholds`` is ``sign * t`` for thresholds ``t``, as
    :func:`~lowbit.kernels.threshold_pack` takes them).

    Args:
        acc: int32 (N, H, W, C) accumulators (or (M, C): then no pool, and border (C,)).
        sign: C values, each +1 or -1.
        signed_thresholds: integer (C, L-1), 1 <= L-1 <= 255.
        mul: int32 factor of ``acc`` (the graph runtime's fixed-point pad correction).
        border: int32 (H, W, C) added after ``acc * mul``, or None.
        pool: None, or ``(kernel, stride, padding)`` of a max-pool (each an integer or a pair; padded
            positions never win, as PyTorch's).
        out: ``"codes"`` -> uint8 (N, OH, OW, C); ``"bits"`` (one threshold) -> uint64
            (N, OH, OW, ceil(C / 64)), bit 1 where the code is 0 (the runtime's -1), channel pad bits 0.
        num_threads: threads (default :func:`~lowbit.kernels.get_num_threads`).

    Raises:
        ShapeError: wrong shapes or dtypes, a sign other than +-1, values outside int32, a pooling window
            that does not fit, ``out="bits"`` with more than one threshold.
    """
    what = "threshold_codes"
    arr4, flat, mul, border, window = _acc_operands(acc, mul, border, pool, what)
    n, h, w, c = arr4.shape
    sign = _int32(sign, "sign", what)
    if sign.shape != (c,):
        raise ShapeError(f"{what}: sign must have {c} entries (one per channel), got shape {sign.shape}")
    if c and not np.all((sign == 1) | (sign == -1)):
        raise ShapeError(f"{what}: sign must hold only +1/-1 values")
    t = _int32(signed_thresholds, "signed_thresholds", what)
    if t.ndim != 2 or t.shape[0] != c or not 1 <= t.shape[1] <= 255:
        raise ShapeError(f"{what}: signed_thresholds must be (C={c}, 1..255), got shape {t.shape}")
    if out not in ("codes", "bits"):
        raise ShapeError(f"{what}: out must be 'codes' or 'bits', got {out!r}")
    if out == "bits" and t.shape[1] != 1:
        raise ShapeError(f"{what}: out='bits' needs one threshold per channel, got {t.shape[1]}")
    res = epilogue(arr4, mul, border, window, np.ascontiguousarray(t.T), sign, bool((sign < 0).any()), out,
                   num_threads)
    return res.reshape(n, -1) if flat else res


def _out_array(n: int, oh: int, ow: int, c: int, out: str) -> np.ndarray:
    if out == "bits":
        return np.empty((n, oh, ow, (c + 63) // 64), np.uint64)
    return np.empty((n, oh, ow, c), np.float32 if out == "float" else np.uint8)


def epilogue(acc4: np.ndarray, mul: int, border, window, thr_t: np.ndarray, sign, flip: bool, out: str,
             num_threads=None) -> np.ndarray:
    """The unchecked core of :func:`threshold_codes` / :func:`affine_epilogue` for callers that prepared its
    operands once (the graph runtime): acc4 int32 (N, H, W, C) contiguous, border int32 (H, W, C) or None,
    window None or (kh, kw, sh, sw, ph, pw); ``out`` "codes" / "bits": thr_t int32 (L-1, C) contiguous and
    sign int32 (C,); "float": thr_t float32 (2, C), the scale and bias rows, and sign None."""
    n, h, w, c = acc4.shape
    oh, ow = _pooled(h, w, window)
    res = _out_array(n, oh, ow, c, out)
    _bitgemm.kc_epilogue(acc4, mul, border, window, thr_t, sign, flip, res, path_id(active_path()),
                         resolve_threads(num_threads))
    return res


def _acc_operands(acc, mul, border, pool, what: str):
    """Checked (acc4, flat, mul, border, window) of an epilogue's accumulators."""
    arr = _to_numpy(acc, "acc")
    if arr.dtype != np.int32:
        raise ShapeError(f"{what}: acc must hold int32 accumulators, got dtype {arr.dtype}")
    flat = arr.ndim == 2
    if arr.ndim not in (2, 4):
        raise ShapeError(f"{what}: acc must be (N, H, W, C) or (M, C), got shape {arr.shape}")
    arr4 = np.ascontiguousarray(arr).reshape((arr.shape[0], 1, 1, arr.shape[1]) if flat else arr.shape)
    n, h, w, c = arr4.shape
    if isinstance(mul, bool) or not isinstance(mul, (int, np.integer)) or not -(2**31) <= mul < 2**31:
        raise ShapeError(f"{what}: mul must be an int32 integer, got {mul!r}")
    if border is not None:
        b = _int32(border, "border", what)
        want = (c,) if flat else (h, w, c)
        if b.shape != want:
            raise ShapeError(f"{what}: border must have shape {want}, got {b.shape}")
        border = b.reshape(1, 1, c) if flat else b
    window = None
    if pool is not None:
        if flat:
            raise ShapeError(f"{what}: pooling needs (N, H, W, C) accumulators")
        window = _window(pool, h, w, what)
    return arr4, flat, int(mul), border, window


def _window(pool, h: int, w: int, what: str) -> tuple:
    try:
        pk, ps, pp = pool
    except (TypeError, ValueError):
        raise ShapeError(f"{what}: pool must be (kernel, stride, padding), got {pool!r}") from None
    (kh, kw), (sh, sw), (ph, pw) = _pair(pk, "pool kernel", 1), _pair(ps, "pool stride", 1), _pair(pp, "pool padding", 0)
    _out_size(h, kh, sh, ph, what, "height")
    _out_size(w, kw, sw, pw, what, "width")
    return kh, kw, sh, sw, ph, pw


def _scale_bias(scale, bias, c: int, what: str) -> np.ndarray:
    rows = []
    for name, v in (("scale", scale), ("bias", bias)):
        a = np.asarray(_to_numpy(v, name))
        if a.dtype != np.float32 or a.shape != (c,):
            raise ShapeError(f"{what}: {name} must be float32 ({c},) (one per channel), got {a.dtype} {a.shape}")
        rows.append(a)
    return np.ascontiguousarray(np.stack(rows))


def affine_epilogue(acc, scale, bias, *, mul: int = 1, border=None, pool=None, num_threads=None) -> np.ndarray:
    """int32 accumulators -> float32 ``v * scale + bias`` per channel (a layer whose output is real: logits, or
    the value a residual add reads), after ``v = acc * mul + border`` and the max-pool as in
    :func:`threshold_codes`; the float32 product and sum round as NumPy's ``v.astype(np.float32) * scale +
    bias`` do (no fused multiply-add). ``scale``, ``bias``: float32 (C,)."""
    what = "affine_epilogue"
    arr4, flat, mul, border, window = _acc_operands(acc, mul, border, pool, what)
    sb = _scale_bias(scale, bias, arr4.shape[3], what)
    res = epilogue(arr4, mul, border, window, sb, None, False, "float", num_threads)
    return res.reshape(arr4.shape[0], -1) if flat else res


# ---- a whole conv layer -----------------------------------------------------------------------------------


def conv_levels(x, weights: PackedLevels, kernel, stride=1, padding=0, pad_code: int = 0, levels="u2", *,
                values=None, sign=None, signed_thresholds=None, scale=None, bias=None, mul: int = 1, border=None,
                pool=None, out: str = "acc", num_threads=None) -> np.ndarray:
    """A k-bit conv layer in one threaded pass: :func:`pack_conv_levels`, the product with ``weights`` and
    its epilogue, done band by band of the output so that neither the im2col rows nor the int32
    accumulators of the whole layer are ever in memory.

    Args:
        x, kernel, stride, padding, pad_code, levels, values: the input and the conv, as
            :func:`pack_conv_levels`.
        weights: the (Cout, K) weights from :func:`~lowbit.kernels.prepare_levels` (K = kh * kw * C in the
            input's (ky, kx, c) order).
        out: ``"acc"`` -> the exact int32 product (N, OH, OW, Cout), as
            ``quant_matmul_packed(pack_conv_levels(...), weights)``; ``"codes"`` / ``"bits"`` -> that product
            through :func:`threshold_codes` with ``sign``, ``signed_thresholds``, ``mul``, ``border``
            ((OH, OW, Cout) or None) and ``pool``; ``"float"`` -> through :func:`affine_epilogue` with
            ``scale``, ``bias``, ``mul``, ``border`` and ``pool``.
        num_threads: threads (default :func:`~lowbit.kernels.get_num_threads`).

    Raises:
        ShapeError: as :func:`pack_conv_levels`, :func:`~lowbit.kernels.quant_matmul_packed`,
            :func:`threshold_codes` and :func:`affine_epilogue`.
    """
    from .quant import _check_bound

    what = "conv_levels"
    arr = _codes_array(x, 4, what)
    ls = level_set(levels)
    if not isinstance(weights, PackedLevels):
        raise ShapeError(f"{what}: weights must be a PackedLevels (from prepare_levels), got {type(weights).__name__}")
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel, "kernel", 1), _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    n, h, w, c = arr.shape
    k = kh * kw * c
    if weights.k != k:
        raise ShapeError(f"{what}: weights have K={weights.k}, the conv reads K = {kh} * {kw} * {c} = {k}")
    oh, ow = _out_size(h, kh, sh, ph, what, "height"), _out_size(w, kw, sw, pw, what, "width")
    _check_bound(k, ls, weights.levels)
    cout = weights.rows
    if out not in ("acc", "codes", "bits", "float"):
        raise ShapeError(f"{what}: out must be 'acc', 'codes', 'bits' or 'float', got {out!r}")
    window = thr_t = sign32 = None
    flip = False
    if out != "acc":
        # the checks of the epilogue functions, on a stand-in for the accumulators (same shape rules)
        _, _, mul, border, window = _acc_operands(np.zeros((0, oh, ow, cout), np.int32), mul, border, pool, what)
    if out == "float":
        if scale is None or bias is None:
            raise ShapeError(f"{what}: out='float' needs scale and bias")
        thr_t = _scale_bias(scale, bias, cout, what)
    elif out != "acc":
        if sign is None or signed_thresholds is None:
            raise ShapeError(f"{what}: out={out!r} needs sign and signed_thresholds")
        sign32 = _int32(sign, "sign", what)
        if sign32.shape != (cout,) or (cout and not np.all((sign32 == 1) | (sign32 == -1))):
            raise ShapeError(f"{what}: sign must be {cout} values of +1/-1, got shape {sign32.shape}")
        t = _int32(signed_thresholds, "signed_thresholds", what)
        if t.ndim != 2 or t.shape[0] != cout or not 1 <= t.shape[1] <= 255:
            raise ShapeError(f"{what}: signed_thresholds must be (Cout={cout}, 1..255), got shape {t.shape}")
        if out == "bits" and t.shape[1] != 1:
            raise ShapeError(f"{what}: out='bits' needs one threshold per channel, got {t.shape[1]}")
        thr_t = np.ascontiguousarray(t.T)
        flip = bool((sign32 < 0).any())
    table, ncodes = _code_map(ls, values, what)
    if isinstance(pad_code, bool) or not isinstance(pad_code, (int, np.integer)) or not 0 <= pad_code < ncodes:
        raise ShapeError(f"{what}: pad_code must be a code 0..{ncodes - 1}, got {pad_code!r}")
    return conv_core(arr, weights, (kh, kw), (sh, sw), (ph, pw), int(pad_code), ls, table, ncodes, out, int(mul),
                     border, window, thr_t, sign32, flip, num_threads, what)


def conv_core(x4: np.ndarray, pb: PackedLevels, kernel, stride, padding, pad_code: int, ls: LevelSet, table,
              ncodes: int, out: str, mul: int, border, window, thr_t, sign, flip: bool, num_threads=None,
              what: str = "conv") -> np.ndarray:
    """The unchecked core of :func:`conv_levels` (the graph runtime prepares its operands once): x4 uint8
    (N, H, W, C), ``table`` a 256-entry code map or None, ``window`` None or (kh, kw, sh, sw, ph, pw), thr_t
    and sign as :func:`epilogue` takes them for ``out``. The product must not run on the ``xnor`` kernel."""
    from .quant import _KIND_ID, _b_store

    lb = pb.levels
    n, h, w, c = x4.shape
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    kind = choose_kernel(ls, lb, rows=n * oh * ow)
    if kind == "xnor":
        raise ShapeError(f"{what}: {ls.name} x {lb.name} runs on the xnor kernel, which conv_levels does not fuse")
    if (c > 1 and x4.strides[3] != 1) or (w > 1 and x4.strides[2] != c):
        x4 = np.ascontiguousarray(x4)
    cout = pb.rows
    nt = resolve_threads(num_threads)
    if kind == "int8":
        store, zb = _b_store(lb)
        b_op = pb._layout(("panels", store, zb), nt)
    else:
        store, zb = 8, 0
        b_op = pb._planes(nt)
    if out == "acc":
        res = np.empty((n * oh * ow, cout), np.int32)
    else:
        res = _out_array(n, *_pooled(oh, ow, window), cout, out)
    top = _bitgemm.kc_conv(x4, (kh, kw), (sh, sw), (ph, pw), pad_code, table, _KIND_ID[kind], b_op, ls.bits, lb.bits,
                           store, cout, ls.step, ls.offset, lb.step, lb.offset, zb, pb.sums, mul, border, window,
                           thr_t, sign, flip, res, path_id(active_path()), nt)
    if n and top >= ncodes:
        _raise_bad_code(x4, ncodes, ls, table is not None or None, what, pad_code)
    return res.reshape(n, oh, ow, cout) if out == "acc" else res


def _pooled(oh: int, ow: int, window) -> tuple:
    if window is None:
        return oh, ow
    kh, kw, sh, sw, ph, pw = window
    return (oh + 2 * ph - kh) // sh + 1, (ow + 2 * pw - kw) // sw + 1


# ---- float values in and out --------------------------------------------------------------------------------


def threshold_floats(x, thresholds, *, sign=None, out: str = "codes", num_threads=None) -> np.ndarray:
    """float32 values -> codes by per-channel thresholds (a quantizer after a float op), in one pass:
    ``code = #{j : sign[c] * x >= thresholds[c, j]}`` over the last axis (float32 compares: NaN passes no
    threshold), uint8 codes of x's shape, or for one threshold packed bits (..., ceil(C / 64)) uint64, bit 1
    where the code is 0.

    Args:
        x: float32 (..., C). thresholds: float32 (C, L-1), 1 <= L-1 <= 255. sign: None (all +1) or float32
            (C,) of +-1 values.

    Raises:
        ShapeError: wrong dtypes or shapes, ``out="bits"`` with more than one threshold.
    """
    what = "threshold_floats"
    arr = _to_numpy(x, "x")
    if arr.dtype != np.float32 or arr.ndim < 1:
        raise ShapeError(f"{what}: x must be a float32 array (..., C), got {arr.dtype} {arr.shape}")
    c = arr.shape[-1]
    t = np.asarray(_to_numpy(thresholds, "thresholds"))
    if t.dtype != np.float32 or t.ndim != 2 or t.shape[0] != c or not 1 <= t.shape[1] <= 255:
        raise ShapeError(f"{what}: thresholds must be float32 (C={c}, 1..255), got {t.dtype} {t.shape}")
    if sign is not None:
        sign = np.asarray(_to_numpy(sign, "sign"))
        if sign.dtype != np.float32 or sign.shape != (c,) or not np.all((sign == 1) | (sign == -1)):
            raise ShapeError(f"{what}: sign must be float32 ({c},) of +1/-1 values")
    if out not in ("codes", "bits"):
        raise ShapeError(f"{what}: out must be 'codes' or 'bits', got {out!r}")
    if out == "bits" and t.shape[1] != 1:
        raise ShapeError(f"{what}: out='bits' needs one threshold per channel, got {t.shape[1]}")
    return float_thresholds(arr, np.ascontiguousarray(t.T), None if sign is None else np.ascontiguousarray(sign),
                            out == "bits", num_threads)


def float_thresholds(x: np.ndarray, thr_t: np.ndarray, sign, bits: bool, num_threads=None) -> np.ndarray:
    """The unchecked core of :func:`threshold_floats`: thr_t float32 (L-1, C) contiguous, sign float32 or None."""
    lead, c = x.shape[:-1], x.shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    x2 = x.reshape(rows, c)
    if c > 1 and x2.strides[1] != 4:
        x2 = np.ascontiguousarray(x2)
    out = np.empty((rows, (c + 63) // 64), np.uint64) if bits else np.empty((rows, c), np.uint8)
    _bitgemm.kc_fthreshold(x2, thr_t, sign, out, path_id(active_path()), resolve_threads(num_threads))
    return out.reshape(*lead, -1)


def add_thresholds(x: np.ndarray, add: np.ndarray, table, thr_t: np.ndarray, sign, bits: bool, num_threads=None):
    """:func:`float_thresholds` of ``x + add`` (float32, ``add`` float32) or of ``x + table[add]`` (``add``
    uint8 codes, ``table`` float32 (256,)): a residual add and the quantizer after it in one pass, the sum
    rounded to float32 once as NumPy's. Returns (codes or bits, the largest code of ``add``; 0 for a float
    addend). Unchecked core: x and add of one shape, C last."""
    lead, c = x.shape[:-1], x.shape[-1]
    rows = int(np.prod(lead, dtype=np.int64))
    x2 = np.ascontiguousarray(x).reshape(rows, c)
    a2 = np.ascontiguousarray(add).reshape(rows, c)
    out = np.empty((rows, (c + 63) // 64), np.uint64) if bits else np.empty((rows, c), np.uint8)
    top = _bitgemm.kc_fthreshold(x2, thr_t, sign, out, path_id(active_path()), resolve_threads(num_threads), a2,
                                 table)
    return out.reshape(*lead, -1), top


def maxpool(x: np.ndarray, kernel, stride, padding, num_threads=None) -> np.ndarray:
    """Max-pooling of an NHWC float32 (NaN wins, as NumPy's maximum) or uint8 map in one C pass; padded
    positions never win. Unchecked core: padding < kernel."""
    x = np.ascontiguousarray(x)
    n, oh, ow = conv_output_shape(x.shape, kernel, stride, padding)
    out = np.empty((n, oh, ow, x.shape[3]), x.dtype)
    _bitgemm.kc_maxpool(x, kernel, stride, padding, out, resolve_threads(num_threads))
    return out


def decode_codes(codes, table, *, num_threads=None) -> np.ndarray:
    """``table[codes]`` (float32) in one C pass: uint8 codes of any shape, table float32 (L,), L <= 256.

    Raises:
        ShapeError: wrong dtypes, or a code >= L (naming its position).
    """
    what = "decode_codes"
    arr = _to_numpy(codes, "codes")
    t = np.asarray(_to_numpy(table, "table"))
    if arr.dtype != np.uint8:
        raise ShapeError(f"{what}: codes must be uint8, got {arr.dtype}")
    if t.dtype != np.float32 or t.ndim != 1 or not 1 <= len(t) <= 256:
        raise ShapeError(f"{what}: table must be float32 with 1..256 entries, got {t.dtype} {t.shape}")
    full = np.zeros(256, np.float32)
    full[: len(t)] = t
    out, top = decode(arr, full, num_threads)
    if arr.size and top >= len(t):
        idx = tuple(int(i) for i in np.argwhere(arr >= len(t))[0])
        raise ShapeError(f"{what}: codes[{', '.join(map(str, idx))}] = {int(arr[idx])} has no table entry "
                         f"(table of {len(t)})")
    return out


def im2col_decode(x4: np.ndarray, tables: np.ndarray, kernel, stride, padding, fill: float, num_threads=None):
    """The patches of a float conv whose input is ``tables[c][code]`` of uint8 NHWC codes, each value looked
    up: (float32 (N, OH, OW, kh*kw*C) im2col rows padded with ``fill``, the largest code of x). For windows
    that read each pixel less than once (:func:`float_conv_codes`). Unchecked core: shapes as stated."""
    x4 = np.ascontiguousarray(x4)
    n, oh, ow = conv_output_shape(x4.shape, kernel, stride, padding)
    (kh, kw), c = kernel, x4.shape[3]
    out = np.empty((n * oh * ow, kh * kw * c), np.float32)
    top = _bitgemm.kc_im2col_decode(x4, kernel, stride, padding, np.ascontiguousarray(tables, np.float32),
                                    float(fill), out, resolve_threads(num_threads))
    return out.reshape(n, oh, ow, kh * kw * c), top


def decode_map(x4: np.ndarray, tables: np.ndarray, padding, fill: float, num_threads=None):
    """(float32 (N, H + 2 ph, W + 2 pw, C) = ``tables[c][code]`` of uint8 NHWC codes, ``fill`` around, the
    largest code of x): the padded map a float conv on codes reads. Unchecked core: shapes as stated."""
    x4 = np.ascontiguousarray(x4)
    n, h, w, c = x4.shape
    (ph, pw) = padding
    out = np.empty((n, h + 2 * ph, w + 2 * pw, c), np.float32)
    top = _bitgemm.kc_decode_map(x4, (ph, pw), np.ascontiguousarray(tables, np.float32), float(fill), out,
                                 resolve_threads(num_threads))
    return out, top


def float_conv_codes(x4: np.ndarray, tables: np.ndarray, w, kernel, stride, padding, fill: float,
                     num_threads=None):
    """A float conv whose input is ``tables[c][code]`` of uint8 NHWC codes (a first layer's decode + per-channel
    normalization, or a real-valued shortcut conv on k-bit codes), with weights ``w``
    (:func:`lowbit.kernels.prepare_float`): (float32 (N, OH, OW, N_out), the largest code of x). The input
    is decoded once into a padded map the conv reads its windows from; windows that read each pixel less
    than once (1x1 stride 2) take their patches by lookup instead. Unchecked core: shapes as stated."""
    from .floatmm import float_conv2d

    (kh, kw), (sh, sw) = kernel, stride
    if kh * kw < sh * sw:
        patches, top = im2col_decode(x4, tables, kernel, stride, padding, fill, num_threads)
        return float_conv2d(patches, w, (1, 1), (1, 1), num_threads), top
    xmap, top = decode_map(x4, tables, padding, fill, num_threads)
    return float_conv2d(xmap, w, kernel, stride, num_threads), top


def decode(codes: np.ndarray, table256: np.ndarray, num_threads=None):
    """The unchecked core of :func:`decode_codes`: (table256[codes] float32, the largest code)."""
    codes = np.ascontiguousarray(codes)
    out = np.empty(codes.shape, np.float32)
    top = _bitgemm.kc_decode(codes, table256, out, path_id(active_path()), resolve_threads(num_threads))
    return out, top
