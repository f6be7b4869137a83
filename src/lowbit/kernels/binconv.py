"""Binary (+-1) 2-D convolution on packed NHWC activations, by XNOR + popcount, without im2col.

**Layout** (the runtime's, :mod:`lowbit.runtime.engine`): activations are an (N, H, W, words) uint64 array,
each pixel's C channels packed into ``words = ceil(C/64)`` words (channel ``c`` is bit ``c % 64`` of word
``c // 64``, bit 1 = -1, bit 0 = +1, as :func:`~lowbit.kernels.pack_signs` packs a row). Weights are packed the
same way per kernel position: (out, kh, kw, words), i.e. PyTorch's (out, C, kh, kw) transposed to
(out, kh, kw, C) and packed along C.

**Result.** For output pixel (n, oy, ox) and output channel j::

    out[n, oy, ox, j] = sum over dy < kh, dx < kw, c < in_channels of  x[n, oy*sh + dy - ph, ox*sw + dx - pw, c] * w[j, dy, dx, c]

in +-1 values, where positions outside the image count as +1 (bit 0: the exact pad of a binary conv, as
``QuantConv2d(pad_value=1.0)`` trains with) and bits at or past ``in_channels`` in a pixel's last word are
ignored. ``in_channels`` defaults to every bit (``64 * words``), the runtime's convention: there, zero pad
bits of activations and weights match and add ``kh * kw * (64 * words - C)`` to every output, which its
epilogue subtracts (``pad_bits``).

**Fused threshold.** With ``thresholds=(sign, signed_threshold)`` the kernel returns the packed sign bits of
the next binary layer instead, ``sign[j] * (out - pad_bits) < signed_threshold[j]`` per channel (int32) --
exactly :func:`~lowbit.kernels.threshold_pack` of the int32 result, computed in the tile's registers: the
int32 map never exists. The int32 variant is for layers followed by a max-pool or a float epilogue.

**Kernels.** An implicit GEMM: each tile reads its patches in place from a zero-bordered copy of the input
(kh runs of kw * words contiguous words), output channels across the vector lanes (so a lane's running
popcount is its output: no horizontal reduction), on every kernel path -- ``portable`` / ``popcnt``
(scalar), ``avx2`` (nibble-split ``vpshufb`` popcount), ``avx512`` / ``avx512vnni`` (``vpopcntq``) -- chosen
at run time like the GEMM's (:mod:`lowbit.kernels.dispatch`), threaded over output pixels. See
``csrc/bitconv.h``.
"""
from __future__ import annotations

import threading

import numpy as np

from ..errors import ShapeError
from .binary import _INT32_MAX, _aligned_bytes, _integer, _int32_vector, _to_numpy
from .dispatch import active_path, path_id, resolve_threads
from .native import bitgemm as _bitgemm


def _pair(value, name: str, minimum: int):
    """An int or a pair of ints -> (a, b), each >= minimum (ShapeError naming ``name`` otherwise)."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ShapeError(f"{name} must be an integer or a pair of integers, got {value!r}")
        a, b = (_integer(v, name, "an integer or a pair of integers") for v in value)
    else:
        a = b = _integer(value, name, "an integer or a pair of integers")
    if a < minimum or b < minimum:
        raise ShapeError(f"{name} must be >= {minimum}, got {value!r}")
    return a, b


def _words_array(x, name: str, ndim: int, what: str) -> np.ndarray:
    arr = _to_numpy(x, name)
    if arr.ndim != ndim:
        raise ShapeError(f"{name} must be a {ndim}-D array {what}, got {arr.ndim}-D with shape {arr.shape}")
    if arr.dtype not in (np.uint64, np.int64):
        raise ShapeError(f"{name} has dtype {arr.dtype}; packed bits must be uint64 words (as pack_signs returns)")
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    arr = arr.view(np.uint64) if arr.dtype == np.int64 else arr
    if not arr.flags.c_contiguous or not arr.flags.aligned:
        arr = np.ascontiguousarray(arr)
    return arr


class PreparedConvWeights:
    """Binary conv weights in the kernel's native layout (made by :func:`prepare_conv_weights`).

    Attributes:
        packed: (out, kh, kw, words) uint64, a private read-only copy.
        out_channels, kh, kw, words, in_channels: the geometry (``in_channels``: bits of a pixel that count).
        path, native: the kernel path the native layout is for and that layout (64-byte aligned bytes); remade
            once if the active path changes (results never depend on it).
    """

    __slots__ = ("packed", "out_channels", "kh", "kw", "words", "in_channels", "path", "native", "_lock")

    def __init__(self, packed: np.ndarray, in_channels: int):
        self.packed = np.array(packed, dtype=np.uint64, order="C", copy=True)
        self.packed.flags.writeable = False
        self.out_channels, self.kh, self.kw, self.words = self.packed.shape
        self.in_channels = in_channels
        self.path = None
        self.native = None
        self._lock = threading.Lock()
        self._native_for(active_path())

    @property
    def k(self) -> int:
        """Values per output: kh * kw * in_channels."""
        return self.kh * self.kw * self.in_channels

    @property
    def nbytes(self) -> int:
        return self.packed.nbytes + (0 if self.native is None else self.native.nbytes)

    def _native_for(self, path: str):
        with self._lock:
            if self.path != path:
                pid = path_id(path)
                kwords = self.kh * self.kw * self.words
                native = _aligned_bytes(_bitgemm.conv_prepared_bytes(pid, self.out_channels, kwords))
                _bitgemm.conv_prepare(self.packed.reshape(self.out_channels, kwords), self.kh, self.kw, self.words,
                                      self.in_channels, native, pid)
                native.flags.writeable = False
                self.path, self.native = path, native
            return self.path, self.native

    def __reduce__(self):
        return (PreparedConvWeights, (self.packed, self.in_channels))

    def __repr__(self) -> str:
        return (f"PreparedConvWeights(out={self.out_channels}, kernel=({self.kh}, {self.kw}), words={self.words}, "
                f"in_channels={self.in_channels}, path={self.path!r})")


def prepare_conv_weights(w, kh=None, kw=None, *, in_channels=None) -> PreparedConvWeights:
    """Lay packed binary conv weights out once for :func:`binary_conv2d`.

    Args:
        w: uint64 words (int64 accepted), (out, kh, kw, words) -- or (out, kh * kw * words) with ``kh`` and
            ``kw`` given (the runtime's ``weight_bits``). Copied.
        kh, kw: the kernel size (required for 2-D ``w``; checked against a 4-D one).
        in_channels: input channels that count, ``64 * words - 63 .. 64 * words`` (default ``64 * words``:
            every bit); bits past it in each position's last word are ignored.

    Raises:
        ShapeError: not uint64 words, a shape that does not split into (kh, kw, words), bad ``in_channels``.
    """
    arr = _to_numpy(w, "weights")
    if arr.ndim == 2:
        if kh is None or kw is None:
            raise ShapeError("2-D weights (out, kh*kw*words) need kh and kw")
        kh_, kw_ = _integer(kh, "kh"), _integer(kw, "kw")
        if kh_ < 1 or kw_ < 1:
            raise ShapeError(f"kernel size must be >= 1, got ({kh_}, {kw_})")
        if arr.shape[1] % (kh_ * kw_) or arr.shape[1] == 0:
            raise ShapeError(f"weights have {arr.shape[1]} words per output, not a multiple of kh*kw = {kh_ * kw_}")
        arr = arr.reshape(arr.shape[0], kh_, kw_, arr.shape[1] // (kh_ * kw_))
    arr = _words_array(arr, "weights", 4, "(out, kh, kw, words)")
    out, wkh, wkw, words = arr.shape
    for given, have, name in ((kh, wkh, "kh"), (kw, wkw, "kw")):
        if given is not None and _integer(given, name) != have:
            raise ShapeError(f"{name}={given} does not match the weights, whose kernel is ({wkh}, {wkw})")
    if out < 1 or wkh < 1 or wkw < 1 or words < 1:
        raise ShapeError(f"weights of shape {arr.shape}: every dimension (out, kh, kw, words) must be >= 1")
    cin = 64 * words if in_channels is None else _integer(in_channels, "in_channels")
    if not 64 * words - 63 <= cin <= 64 * words:
        raise ShapeError(f"in_channels={cin} does not fill the weights' {words} word(s) per position: "
                         f"need {64 * words - 63}..{64 * words}")
    if wkh * wkw * cin > _INT32_MAX:
        raise ShapeError(f"kh*kw*in_channels = {wkh * wkw * cin} is too large: results are int32")
    return PreparedConvWeights(arr, cin)


def conv_output_size(h: int, w: int, kernel, stride=1, padding=0):
    """(OH, OW) of a convolution: ``(H + 2 ph - kh) // sh + 1``, likewise for W."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel, "kernel", 1), _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    return (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1


def binary_conv2d(x, weights, kh=None, kw=None, stride=1, padding=0, *, thresholds=None, pad_bits=0,
                  in_channels=None, num_threads=None) -> np.ndarray:
    """Binary convolution of packed NHWC activations (see the module docstring for the exact result).

    Args:
        x: (N, H, W, words) uint64 (int64 accepted) packed activations; copied if not C-contiguous.
        weights: a :class:`PreparedConvWeights` (from :func:`prepare_conv_weights`, made once) or packed
            (out, kh, kw, words) uint64 weights (prepared on every call).
        kh, kw: the kernel size; optional, checked against the weights when given.
        stride: int or (sh, sw), >= 1.
        padding: int or (ph, pw), >= 0; padded positions count as +1.
        thresholds: None for the int32 result, or ``(sign, signed_threshold)`` (out values each: +-1, and
            int32 thresholds) for packed output bits ``sign * (acc - pad_bits) < signed_threshold``.
        pad_bits: integer subtracted from every accumulator before the threshold (fused variant only).
        in_channels: only with raw weights: passed to :func:`prepare_conv_weights`.
        num_threads: threads (default :func:`~lowbit.kernels.get_num_threads`); small convolutions run on fewer.

    Returns:
        int32 (N, OH, OW, out), or with ``thresholds`` uint64 (N, OH, OW, ceil(out/64)) (bits past ``out`` 0).

    Raises:
        ShapeError: wrong dtype / dimensions, words per pixel that differ from the weights', a kernel size,
            stride or padding that is not valid, an input smaller than the kernel, bad thresholds.
    """
    if isinstance(weights, PreparedConvWeights):
        if in_channels is not None and _integer(in_channels, "in_channels") != weights.in_channels:
            raise ShapeError(f"in_channels={in_channels} does not match the prepared weights "
                             f"(in_channels={weights.in_channels})")
        wp = weights
        for given, have, name in ((kh, wp.kh, "kh"), (kw, wp.kw, "kw")):
            if given is not None and _integer(given, name) != have:
                raise ShapeError(f"{name}={given} does not match the weights, whose kernel is ({wp.kh}, {wp.kw})")
    else:
        warr = _to_numpy(weights, "weights")
        if warr.ndim != 4:
            raise ShapeError(f"weights must be PreparedConvWeights or a 4-D array (out, kh, kw, words), got "
                             f"{warr.ndim}-D with shape {warr.shape}")
        wp = prepare_conv_weights(warr, kh, kw, in_channels=in_channels)
    x = _words_array(x, "x", 4, "(N, H, W, words)")
    n, h, w, words = x.shape
    if words != wp.words:
        raise ShapeError(f"x has {words} word(s) per pixel ({64 * words} channel bits) but the weights have "
                         f"{wp.words}: the input channels do not match")
    (sh, sw), (ph, pw) = _pair(stride, "stride", 1), _pair(padding, "padding", 0)
    if h + 2 * ph < wp.kh or w + 2 * pw < wp.kw:
        raise ShapeError(f"input of {h}x{w} pixels (padding {ph}, {pw}) is smaller than the {wp.kh}x{wp.kw} kernel")
    oh, ow = (h + 2 * ph - wp.kh) // sh + 1, (w + 2 * pw - wp.kw) // sw + 1
    nout = wp.out_channels
    nthreads = resolve_threads(num_threads)
    if thresholds is None:
        if pad_bits != 0:
            raise ShapeError("pad_bits is for the fused threshold: pass thresholds=(sign, signed_threshold)")
        out = np.empty((n, oh, ow, nout), dtype=np.int32)
        sign = thr = None
        bias = 0
    else:
        if not isinstance(thresholds, (tuple, list)) or len(thresholds) != 2:
            raise ShapeError("thresholds must be a pair (sign, signed_threshold) of per-channel arrays")
        sign = _int32_vector(thresholds[0], nout, "sign")
        if nout and not np.all((sign == 1) | (sign == -1)):
            raise ShapeError("sign must hold only +1/-1 values")
        thr = _int32_vector(thresholds[1], nout, "signed_threshold")
        bias = _integer(pad_bits, "pad_bits")
        if not -(2**31) <= bias <= _INT32_MAX:
            raise ShapeError(f"pad_bits={bias} does not fit int32")
        out = np.empty((n, oh, ow, (nout + 63) // 64), dtype=np.uint64)
    if out.size == 0:
        return out
    path, native = wp._native_for(active_path())
    _bitgemm.conv2d(x, native, nout, wp.kh, wp.kw, sh, sw, ph, pw, wp.in_channels, sign, thr, bias, out,
                    path_id(path), nthreads)
    return out


def conv_planned_threads(n: int, oh: int, ow: int, out_channels: int, kwords: int, num_threads=None) -> int:
    """Threads :func:`binary_conv2d` would use for N x OH x OW output pixels of ``out_channels`` channels and
    ``kwords = kh * kw * words`` words per patch, on the active path."""
    return _bitgemm.conv_plan_threads(int(n) * int(oh) * int(ow), int(out_channels), int(kwords),
                                      path_id(active_path()), resolve_threads(num_threads))
