"""The runtime's op kinds and weight formats: each a small class with ``prepare`` (once, at load) and ``run``.

A layer of an exported network is three pieces, each looked up in a table:

    reduction (by weight format)  ->  optional 2x2 max-pool  ->  epilogue (by output kind)

**Weight formats** (:data:`FORMATS`, one entry per format, as ggml's ``type_traits``): how the weights are
packed once at load time, the GEMM that turns a batch of input rows into int32 accumulators, and the value
an im2col pad takes (convolutions of the ``bits`` format skip im2col: see :class:`Conv2d`):

| format   | input rows              | weights        | GEMM                                          | pad          |
|----------|-------------------------|----------------|-----------------------------------------------|--------------|
| ``u8``   | 8-bit pixels            | +-1            | ``kernels.u8_matmul`` (AVX2), else float32 (exact: K*255 < 2^24) | black pixel 0 |
| ``bits`` | packed +-1 (bit 1 = -1) | packed +-1     | XNOR-popcount, ``K - 2 popcount(x ^ w)``      | zero word = +1 |

**Epilogues** (:data:`EPILOGUES`): ``bits`` folds BN + sign into one integer comparison per channel and packs
the result straight back to bits (in one C pass, ``kernels.threshold_pack``, when no pooling comes
between; inside the convolution kernel itself for binary convs); ``logits`` applies the last BN's affine map
in float32.

Adding a weight format is one :class:`WeightFormat` entry; adding an output kind one :class:`Epilogue`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, Callable, Dict

import numpy as np

from ..errors import CheckpointError, ShapeError

F32_EXACT_LIMIT = 1 << 24


# ---- packing helpers -------------------------------------------------------------------------------------


def pack_last_axis(bits_minus: np.ndarray, words: int) -> np.ndarray:
    """Pack a boolean array (True = -1) along its last axis into ``words`` uint64 words (zero padded)."""
    *lead, n = bits_minus.shape
    if n != words * 64:
        padded = np.zeros((*lead, words * 64), dtype=bool)
        padded[..., :n] = bits_minus
        bits_minus = padded
    return np.packbits(bits_minus, axis=-1, bitorder="little").view(np.uint64)


def im2col(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, fill) -> np.ndarray:
    """(N, H, W, C) -> (N, OH, OW, kh*kw*C) patches, padded with ``fill``."""
    n, h, w, c = x.shape
    if ph or pw:
        xp = np.full((n, h + 2 * ph, w + 2 * pw, c), fill, dtype=x.dtype)
        xp[:, ph:ph + h, pw:pw + w] = x
    else:
        xp = x
    oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
    s = xp.strides
    view = np.lib.stride_tricks.as_strided(
        xp, shape=(n, oh, ow, kh, kw, c), strides=(s[0], s[1] * sh, s[2] * sw, s[1], s[2], s[3]), writeable=False)
    return np.ascontiguousarray(view).reshape(n, oh, ow, kh * kw * c)


def maxpool2(a: np.ndarray) -> np.ndarray:
    """2x2 max-pooling (stride 2, floor) of an (N, H, W, C) accumulator map."""
    n, h, w, c = a.shape
    h2, w2 = h // 2, w // 2
    a = a[:, :h2 * 2, :w2 * 2]
    return a.reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


def image_batch(x: np.ndarray, input_shape) -> np.ndarray:
    """``x`` as an (N, C, H, W) batch of a model's ``input_shape`` (C, H, W): flat rows of C*H*W values and, for
    one channel, (N, H, W) images are accepted too (the input check of both runtimes)."""
    c, h, w = input_shape
    if x.ndim == 2 and x.shape[1] == c * h * w:
        x = x.reshape(len(x), c, h, w)
    if x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
        x = x[:, None]
    if x.ndim != 4 or x.shape[1:] != (c, h, w):
        raise ShapeError(f"model expects images of shape (N, {c}, {h}, {w}), got {x.shape}")
    return x


# ---- weight formats --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WeightFormat:
    """One weight format: ``prepare(kernels, packed_bits, k, where) -> state`` once at load,
    ``gemm(kernels, rows, state) -> int32 (rows, out)``, ``pad`` the im2col fill value, and whether its
    accumulators still hold the pad bits of a packed K (subtracted by the epilogue)."""

    name: str
    prepare: Callable[..., Any]
    gemm: Callable[..., np.ndarray]
    pad: int
    has_pad_bits: bool


def _prepare_u8(kernels, bits: np.ndarray, k: int, where: str):
    if k * 255 >= F32_EXACT_LIMIT or k > bits.shape[1] * 64:
        raise CheckpointError(f"{where}: first layer of {k} inputs cannot run exactly in float32")
    minus = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :k].astype(bool)
    w_t = np.ascontiguousarray(np.where(minus, -1.0, 1.0).astype(np.float32).T)  # (K, out), the float fallback
    w_u8 = kernels.prepare_u8_weights(np.where(minus, -1, 1).astype(np.int8))  # vpmaddubsw: ~2.5x the sgemm
    return w_t, w_u8


def _gemm_u8(kernels, rows: np.ndarray, state) -> np.ndarray:
    w_t, w_u8 = state
    if rows.dtype == np.uint8 and kernels.u8_matmul_is_fast():
        return kernels.u8_matmul(rows, w_u8)
    return (rows.astype(np.float32) @ w_t).astype(np.int32)  # integer sums below 2^24: exact in float32


def _prepare_bits(kernels, bits: np.ndarray, k: int, where: str):
    # the weights in the GEMM kernel's native layout, made once here instead of on every call
    return kernels.prepare_packed(bits, bits.shape[1] * 64)


def _gemm_bits(kernels, rows: np.ndarray, state) -> np.ndarray:
    return kernels.binary_matmul_packed(rows, state, rows.shape[1] * 64)


FORMATS: Dict[str, WeightFormat] = {
    "pixels": WeightFormat("u8", _prepare_u8, _gemm_u8, pad=0, has_pad_bits=False),
    "bits": WeightFormat("bits", _prepare_bits, _gemm_bits, pad=0, has_pad_bits=True),
}


# ---- reductions ------------------------------------------------------------------------------------------


class Dense:
    """(N, K) rows -> (N, out) int32 accumulators."""

    def __init__(self, fmt: WeightFormat, state):
        self.fmt, self.state = fmt, state

    def run(self, kernels, x: np.ndarray) -> np.ndarray:
        if x.ndim == 4:
            x = x.reshape(len(x), -1)  # flatten (N, H, W, words): the export laid the weights out to match
        return self.fmt.gemm(kernels, x, self.state)


class Conv2d(Dense):
    """(N, H, W, C) NHWC input -> (N, OH, OW, out) int32 accumulators.

    ``bits`` weights run the native binary convolution (``kernels.binary_conv2d``: an implicit GEMM on the
    packed words, no im2col matrix, +1 padding; its weights laid out once, here), which can also apply the
    layer's threshold epilogue itself (:meth:`run_threshold`); other formats, or ``use_native = False``, run
    im2col + the format's GEMM (:meth:`run_im2col`). Both give the same accumulators, pad bits included."""

    def __init__(self, fmt: WeightFormat, state, kernel, stride, padding):
        super().__init__(fmt, state)
        (self.kh, self.kw), (self.sh, self.sw), (self.ph, self.pw) = kernel, stride, padding
        self.native = _native_conv_weights(fmt, state, self.kh, self.kw)
        #: run the native convolution (when the format has one); False: the NumPy im2col + GEMM path
        self.use_native = self.native is not None

    @property
    def fuses_threshold(self) -> bool:
        """Whether :meth:`run_threshold` can compute the thresholded output bits directly."""
        return self.use_native and self.native is not None

    def run(self, kernels, x: np.ndarray) -> np.ndarray:
        if self.fuses_threshold:
            return kernels.binary_conv2d(x, self.native, stride=(self.sh, self.sw), padding=(self.ph, self.pw))
        return self.run_im2col(kernels, x)

    def run_threshold(self, kernels, x: np.ndarray, epilogue: "ThresholdBits", pad: int) -> np.ndarray:
        """The packed output bits of ``epilogue`` applied to this convolution, in one native call."""
        return kernels.binary_conv2d(x, self.native, stride=(self.sh, self.sw), padding=(self.ph, self.pw),
                                     thresholds=(epilogue.sign, epilogue.signed_threshold), pad_bits=pad)

    def run_im2col(self, kernels, x: np.ndarray) -> np.ndarray:
        """im2col (NumPy, padded with the format's pad value) + the format's GEMM."""
        patches = im2col(x, self.kh, self.kw, self.sh, self.sw, self.ph, self.pw, fill=self.fmt.pad)
        n, oh, ow, k = patches.shape
        return self.fmt.gemm(kernels, patches.reshape(-1, k), self.state).reshape(n, oh, ow, -1)


def _native_conv_weights(fmt: WeightFormat, state, kh: int, kw: int):
    """The conv weights laid out for ``kernels.binary_conv2d`` (every bit counted, as the GEMM counts them), or
    None where the format has no native convolution."""
    if fmt.name != "bits":
        return None
    from ..kernels import PreparedMatrix, prepare_conv_weights

    if not isinstance(state, PreparedMatrix) or state.words % (kh * kw) or state.k != 64 * state.words:
        return None
    return prepare_conv_weights(state.packed, kh, kw)


# ---- epilogues -------------------------------------------------------------------------------------------


class Epilogue(abc.ABC):
    """int32 accumulators (pad bits still in, ``pad``) -> the layer's output."""

    fusable = False

    @abc.abstractmethod
    def run(self, kernels, acc: np.ndarray, pad: int) -> np.ndarray:
        """The output of accumulators ``acc`` from which ``pad`` is still to be subtracted."""


class ThresholdBits(Epilogue):
    """BN + sign folded into one comparison: the output bit (1 = -1) is ``s * (a - pad) < s * T`` with
    s = -1 where the BN scale is negative (``a <= T`` flips to ``-a >= -T``); |a| <= K, so s * a fits int32."""

    fusable = True

    def __init__(self, arrays: Dict[str, np.ndarray], name: str):
        t = arrays[name + ".threshold"].astype(np.int64)
        flip = arrays[name + ".flip"].astype(bool)
        self.sign = np.where(flip, -1, 1).astype(np.int32)
        self.signed_threshold = np.clip(np.where(flip, -t, t), -(2**31) + 1, 2**31 - 1).astype(np.int32)
        self.any_flip = bool(flip.any())
        self.channels = int(t.shape[0])
        self.out_words = (self.channels + 63) // 64

    def run(self, kernels, acc, pad):
        if pad:
            acc = acc - pad
        if self.any_flip:
            acc = acc * self.sign
        return pack_last_axis(acc < self.signed_threshold, self.out_words)

    def run_fused(self, kernels, acc, pad):
        """The same comparison in one C pass over the accumulators (pad subtracted there)."""
        lead = acc.shape[:-1]
        bits = kernels.threshold_pack(acc.reshape(-1, acc.shape[-1]), self.sign, self.signed_threshold, pad)
        return bits.reshape(*lead, self.out_words)


class AffineLogits(Epilogue):
    """The last BN as a float32 affine map: logits = (a - pad) * scale + bias."""

    def __init__(self, arrays: Dict[str, np.ndarray], name: str):
        self.scale = arrays[name + ".out_scale"]
        self.bias = arrays[name + ".out_bias"]
        self.channels = int(self.scale.shape[-1])

    def run(self, kernels, acc, pad):
        if pad:
            acc = acc - pad
        return acc.astype(np.float32) * self.scale + self.bias


EPILOGUES = {"bits": ThresholdBits, "logits": AffineLogits}


# ---- a layer ---------------------------------------------------------------------------------------------


class Layer:
    """reduction -> optional 2x2 max-pool -> epilogue, built from one op record of the model file."""

    def __init__(self, reduction: Dense, epilogue: Epilogue, pad: int, maxpool: bool, spec: Dict):
        self.reduction, self.epilogue, self.pad, self.maxpool, self.spec = reduction, epilogue, pad, maxpool, spec

    @classmethod
    def prepare(cls, kernels, spec: Dict, arrays: Dict[str, np.ndarray], where: str) -> "Layer":
        name = spec["name"]
        fmt = FORMATS.get(spec["input"])
        epilogue_kind = EPILOGUES.get(spec["output"])
        if fmt is None or epilogue_kind is None or spec["op"] not in ("dense", "conv2d"):
            raise CheckpointError(f"{where}: layer {name!r} has an unknown kind "
                                  f"({spec['op']!r}, input {spec['input']!r}, output {spec['output']!r})")
        bits = np.ascontiguousarray(arrays[name + ".weight_bits"])
        state = fmt.prepare(kernels, bits, int(spec.get("k", bits.shape[1] * 64)), where)
        if spec["op"] == "conv2d":
            reduction = Conv2d(fmt, state, spec["kernel"], spec["stride"], spec["padding"])
        else:
            reduction = Dense(fmt, state)
        pad = int(spec.get("pad_bits", 0)) if fmt.has_pad_bits else 0
        # pooling needs the int32 map before the comparison, so pooled layers leave the C epilogue out
        return cls(reduction, epilogue_kind(arrays, name), pad, bool(spec.get("maxpool")), spec)

    def run(self, kernels, x: np.ndarray) -> np.ndarray:
        if self.epilogue.fusable and not self.maxpool and getattr(self.reduction, "fuses_threshold", False):
            # a binary conv with BN + sign after it: one native call from packed bits to packed bits
            return self.reduction.run_threshold(kernels, x, self.epilogue, self.pad)
        acc = self.reduction.run(kernels, x)
        if self.maxpool:
            # the pad is a per-layer constant: subtracting it before or after the max gives the same result
            return self.epilogue.run(kernels, maxpool2(acc), self.pad)
        if self.epilogue.fusable:
            return self.epilogue.run_fused(kernels, acc, self.pad)
        return self.epilogue.run(kernels, acc, self.pad)

    @property
    def kind(self) -> str:
        return f"{self.spec['op']}[{self.reduction.fmt.name}->{self.spec['output']}]"

    def __repr__(self) -> str:
        s = self.spec
        return f"{s['op']}({s.get('in_channels', s.get('in_features'))}->{s.get('out_channels', s.get('out_features'))})"

