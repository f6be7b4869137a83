"""Torch-free inference of any exported network: a graph of op kinds over three kinds of tensor.

A model file of kind ``graph`` holds ``meta["graph"]``: named values and a list of nodes, each reading
named inputs and writing named outputs, so residual branches and shortcuts are plain edges. Every value
is one of three representations, fixed at export time:

| repr    | array                                   | meaning                                            |
|---------|-----------------------------------------|----------------------------------------------------|
| ``float`` | float32 (N, H, W, C) or (N, F)        | real values                                        |
| ``codes`` | uint8 (N, H, W, C) or (N, F)          | k-bit codes of a quantizer; the value of code c is ``unit * table[c]`` (integers in ``table``) |
| ``bits``  | uint64 (N, H, W, words) or (N, words) | binary codes packed 64 to a word, bit 1 = -1, channel pad bits 0 (= +1) |

Layouts are NHWC: channels last, so a conv's im2col rows are contiguous and packed channel words stay
whole. The op kinds (:data:`OPS`):

``gemm``
    dense or conv2d: reduction (by weight format: ``bits`` XNOR-popcount, ``codes`` the k-bit GEMM of
    :mod:`lowbit.kernels.quant`, ``float`` float32 BLAS), an optional max-pool of the accumulators, an
    optional integer border map (``acc * mul + border``: the exact correction where the trained layer padded
    with a value that is no code), then an epilogue: ``threshold`` (BN + quantizer folded into per-channel
    thresholds: output code = number of thresholds t with ``sign * acc >= sign * t``; ``bits`` or ``codes``
    out) or ``affine`` (``acc * scale + bias``, float out: the logits, or a value a residual add reads).
    How it runs (:mod:`lowbit.kernels.codes`, bit-identical to the NumPy passes it replaced): a ``codes``
    conv is one C pass over bands of its output (im2col + pack, GEMM, border / pool / epilogue per band in
    cache); a ``codes`` dense layer packs its rows in place, then the GEMM, then one C epilogue pass; the
    integer epilogue of a ``bits`` layer with a pool or border is that C pass too.
``quantize``  float -> codes/bits by the same thresholds (a quantizer after a float op, e.g. after an add).
``decode``    codes/bits -> float (``table[c] * unit``).
``affine``    float per-channel ``x * scale + bias`` (a standalone BN, an input normalization).
``maxpool`` / ``avgpool`` / ``global_avgpool`` / ``flatten`` / ``add`` / ``clamp``: as in PyTorch, on NHWC.

Every field is validated when the file is loaded (:class:`GraphNetwork`), before any kernel runs.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np

from ..errors import CheckpointError, InputError, ShapeError
from .ops import FORMATS, _native_conv_weights, im2col, image_batch, pack_last_axis

KIND = "graph"
REPRS = ("float", "codes", "bits")


# ---- field validation --------------------------------------------------------------------------------------


class _Fields:
    """Typed access to one node's JSON fields; every failure names the file, the node and the field."""

    def __init__(self, spec: Dict, where: str):
        if not isinstance(spec, dict):
            raise CheckpointError(f"{where}: a graph node must be an object, got {type(spec).__name__}")
        self.spec, self.where = spec, f"{where}: node {spec.get('name', '?')!r}"

    def fail(self, what: str):
        raise CheckpointError(f"{self.where}: {what}")

    def get(self, key, default=KeyError):
        if key not in self.spec:
            if default is KeyError:
                self.fail(f"lacks the field {key!r}")
            return default
        return self.spec[key]

    def int(self, key, lo=None, hi=None, default=KeyError) -> int:
        v = self.get(key, default)
        if isinstance(v, bool) or not isinstance(v, int) or (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(f"field {key!r} must be an integer in [{lo}, {hi}], got {v!r}")
        return v

    def pair(self, key, lo=0, default=KeyError) -> tuple:
        v = self.get(key, default)
        if (not isinstance(v, list) or len(v) != 2 or any(isinstance(e, bool) or not isinstance(e, int) or e < lo
                                                             for e in v)):
            self.fail(f"field {key!r} must be two integers >= {lo}, got {v!r}")
        return tuple(v)

    def choice(self, key, options, default=KeyError):
        v = self.get(key, default)
        if v not in options:
            self.fail(f"field {key!r} must be one of {list(options)}, got {v!r}")
        return v


def _array(arrays: Dict[str, np.ndarray], name: str, f: _Fields, dtype=None, shape=None) -> np.ndarray:
    if name not in arrays:
        f.fail(f"its array {name!r} is missing from the file")
    a = arrays[name]
    if dtype is not None and a.dtype != np.dtype(dtype):
        f.fail(f"array {name!r} has dtype {a.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(a.shape) != tuple(shape):
        f.fail(f"array {name!r} has shape {tuple(a.shape)}, expected {tuple(shape)}")
    return np.ascontiguousarray(a)


def unpack_codes(packed: np.ndarray, bits: int, k: int) -> np.ndarray:
    """The inverse of the exporter's ``pack_codes``: (N, bytes) -> (N, k) codes, ``8 / bits`` a byte."""
    per = 8 // bits
    shifts = (bits * np.arange(per, dtype=np.uint8))
    codes = (packed[:, :, None] >> shifts) & np.uint8((1 << bits) - 1)
    return codes.reshape(len(packed), -1)[:, :k]


def _pooled(shape, kernel, stride, padding, f: "_Fields"):
    """(H, W, C) after a pooling window; padding at most half the window, as PyTorch allows."""
    if len(shape) != 3:
        f.fail(f"pooling needs (H, W, C) input, got {shape}")
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if 2 * ph > kh or 2 * pw > kw:
        f.fail(f"pool padding {list(padding)} exceeds half the window {list(kernel)}")
    return (_out_size(shape[0], kh, sh, ph, f), _out_size(shape[1], kw, sw, pw, f), shape[2])


def _out_size(size: int, k: int, s: int, p: int, f: _Fields) -> int:
    o = (size + 2 * p - k) // s + 1
    if o < 1:
        f.fail(f"a window of {k} (stride {s}, padding {p}) does not fit an input of size {size}")
    return o


# ---- the pieces a node is made of -------------------------------------------------------------------------


def _windows(a: np.ndarray, kernel, stride, padding, fill, combine) -> np.ndarray:
    """Combine (elementwise ``combine(out, win, out=out)``) every window tap of an (N, H, W, C) map padded
    with ``fill``: the strided-slice loop every pooling here shares."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, h, w, c = a.shape
    if ph or pw:
        p = np.full((n, h + 2 * ph, w + 2 * pw, c), fill, a.dtype)
        p[:, ph:ph + h, pw:pw + w] = a
        a = p
    oh, ow = (a.shape[1] - kh) // sh + 1, (a.shape[2] - kw) // sw + 1
    out = None
    for i in range(kh):
        for j in range(kw):
            win = a[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            out = win.copy() if out is None else combine(out, win, out=out)
    return out


def maxpool_nhwc(a: np.ndarray, kernel, stride, padding, fill) -> np.ndarray:
    """Max-pooling of an (N, H, W, C) map; padded positions hold ``fill`` (a value no window prefers)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    if (kh, kw) == (sh, sw) == (2, 2) and (ph, pw) == (0, 0):  # the common case: one reshape
        n, h, w, c = a.shape
        a = a[:, :h // 2 * 2, :w // 2 * 2]
        return a.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
    return _windows(a, kernel, stride, padding, fill, np.maximum)


def _maxpool_map(a: np.ndarray, window, fill) -> np.ndarray:
    """Max-pooling of a float32 or uint8 (codes) map: one C pass (kernels.codes.maxpool), NumPy for other types."""
    (kh, kw), _, (ph, pw) = window
    if a.dtype in (np.float32, np.uint8) and a.ndim == 4 and ph < kh and pw < kw:
        from ..kernels.codes import maxpool

        return maxpool(a, *window)
    return maxpool_nhwc(a, *window, fill=fill)


def maxpool_bits(a: np.ndarray, kernel, stride, padding) -> np.ndarray:
    """Max-pooling of packed +-1 codes: the max is -1 (bit 1) only where every input is -1, a bitwise AND.
    Padded positions are all ones (-1), which never wins."""
    return _windows(a, kernel, stride, padding, np.uint64(0xFFFFFFFFFFFFFFFF), np.bitwise_and)


def avgpool_nhwc(a: np.ndarray, kernel, stride, padding, count_include_pad: bool) -> np.ndarray:
    """Average pooling of a float32 (N, H, W, C) map (PyTorch's rule for padded windows)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    n, h, w, c = a.shape
    ones = np.ones((1, h, w, 1), np.float32)
    if ph or pw:
        p = np.zeros((n, h + 2 * ph, w + 2 * pw, c), np.float32)
        p[:, ph:ph + h, pw:pw + w] = a
        a = p
        q = np.zeros((1, h + 2 * ph, w + 2 * pw, 1), np.float32)
        q[:, ph:ph + h, pw:pw + w] = 1
        ones = q
    oh, ow = (a.shape[1] - kh) // sh + 1, (a.shape[2] - kw) // sw + 1
    total = np.zeros((n, oh, ow, c), np.float32)
    count = np.zeros((1, oh, ow, 1), np.float32)
    for i in range(kh):
        for j in range(kw):
            total += a[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
            count += ones[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
    return total / (float(kh * kw) if count_include_pad else count)


class Thresholds:
    """Per-channel monotone quantization: code = #{j : sign * x >= sign * t_j}, packed to bits for 2 levels.

    ``t`` is (C, L-1) (int32 for integer accumulators, float32 for float inputs) and ``sign`` (C,) +-1:
    a channel whose quantizer input falls as x rises (a negative BN scale) counts ``x <= t_j`` instead."""

    def __init__(self, t: np.ndarray, sign: np.ndarray, out: str):
        self.sign = sign.astype(t.dtype if t.dtype.kind == "f" else np.int32)
        self.any_flip = bool((sign < 0).any())
        self.signed_t = (t * self.sign[:, None]).astype(t.dtype)  # saturated at export: no overflow
        self.channels, self.levels = t.shape[0], t.shape[1] + 1
        self.out = out
        self.words = (self.channels + 63) // 64
        self.fusable = out == "bits" and t.dtype == np.int32
        self._t0 = np.ascontiguousarray(self.signed_t[:, 0]) if self.levels == 2 else None
        # integer thresholds also run in one C pass (kernels.codes), fused with border and max-pool: there
        # they are read as (L-1, C), threshold j of every channel contiguous
        self.native = t.dtype == np.int32
        self.thr_t = np.ascontiguousarray(self.signed_t.T) if self.native else None
        # float32 thresholds (a quantizer after a float op) in one C pass too
        self.thr_f = np.ascontiguousarray(self.signed_t.T) if t.dtype == np.float32 else None

    def run(self, kernels, x: np.ndarray) -> np.ndarray:
        if self.fusable and x.dtype == np.int32:
            lead = x.shape[:-1]
            return kernels.threshold_pack(x.reshape(-1, self.channels), self.sign, self._t0, 0).reshape(*lead, self.words)
        if (self.thr_f is not None and x.dtype == np.float32 and x.ndim >= 1 and x.shape[-1] == self.channels
                and (self.out == "codes" or self.levels == 2)):
            from ..kernels.codes import float_thresholds

            return float_thresholds(x, self.thr_f, self.sign if self.any_flip else None, self.out == "bits")
        if self.any_flip:
            x = x * self.sign
        if self.levels == 2:
            ge = x >= self.signed_t[:, 0]
            return pack_last_axis(~ge, self.words) if self.out == "bits" else ge.view(np.uint8)
        codes = np.zeros(x.shape, np.uint8)
        for j in range(self.levels - 1):
            codes += x >= self.signed_t[:, j]
        return codes


class Affine:
    """float32 ``x * scale + bias`` per channel (last axis)."""

    def __init__(self, scale: np.ndarray, bias: np.ndarray):
        self.scale, self.bias = scale.astype(np.float32), bias.astype(np.float32)
        self.rows = np.ascontiguousarray(np.stack([self.scale, self.bias]))  # the C epilogue's (2, C) operand
        self._tiled = {}  # width -> (scale, bias) tiled W times

    def run(self, kernels, x: np.ndarray) -> np.ndarray:
        x = x.astype(np.float32, copy=False)
        c = len(self.scale)
        if c < 64 and x.ndim >= 2 and x.flags.c_contiguous:
            # few channels (a first layer's 3): NumPy's broadcast inner loop of length c is slow; the same
            # two float32 operations per element over rows of W * c with the vectors tiled
            w = x.shape[-2]
            scale, bias = self._tiled.get(w) or self._tiled.setdefault(w, (np.tile(self.scale, w), np.tile(self.bias, w)))
            return (x.reshape(-1, w * c) * scale + bias).reshape(x.shape)
        return x * self.scale + self.bias


# ---- nodes ------------------------------------------------------------------------------------------------


class Node:
    """One op of the graph: ``run(kernels, *inputs) -> output``; built from its JSON record by ``build``."""

    inputs: List[str]
    output: str

    def describe(self) -> str:
        return ""


class Gemm(Node):
    """dense / conv2d -> [max-pool of the accumulators] -> [border] -> threshold or affine epilogue."""

    def __init__(self, f: _Fields, arrays, values):
        s = f.spec
        self.name = s["name"]
        self.layer = f.choice("kind", ("dense", "conv2d"))
        self.fmt = f.choice("format", ("bits", "codes", "float"))
        x_info = values[self.inputs[0]]
        expected_repr = {"bits": "bits", "codes": "codes", "float": "float"}[self.fmt]
        if x_info["repr"] != expected_repr:
            f.fail(f"format {self.fmt!r} needs a {expected_repr} input, got a {x_info['repr']} value")
        self.out_channels = f.int("out_channels", 1)
        self.k = f.int("k", 1)
        n = self.out_channels
        wname = self.name + ".weight"
        if self.fmt == "bits":
            words = (self.k + 63) // 64
            bits = _array(arrays, wname, f, np.uint64, (n, words))
            self.state = FORMATS["bits"].prepare(self._k, bits, self.k, f.where)
        elif self.fmt == "codes":
            from ..kernels.levels import LEVEL_SETS

            self.a_levels = f.choice("a_levels", LEVEL_SETS)
            self.b_levels = f.choice("b_levels", LEVEL_SETS)
            table = f.get("a_table", None)
            self.a_table = None if table is None else np.asarray(table, np.int64).astype(np.int8)
            store = f.choice("weight_bits", (1, 2, 4, 8))
            ls = LEVEL_SETS[self.b_levels]
            if ls.bits > store:
                f.fail(f"weight_bits {store} cannot hold {self.b_levels!r} codes")
            packed = _array(arrays, self.name + ".weight_codes", f, np.uint8, (n, -(-self.k * store // 8)))
            w = ls.decode(unpack_codes(packed, store, self.k)).astype(np.int16)
            try:
                self.state = self._k.prepare_levels(w, self.b_levels, self.a_levels)
            except ShapeError as exc:
                f.fail(f"weights do not fit level set {self.b_levels!r}: {exc}")
        else:
            self.state = self._k.prepare_float(_array(arrays, wname, f, np.float32, (self.k, n)))
        self.pad_fill = 0
        self._conv_codes = None
        #: (tables, decode node, affine node or None) when this float conv reads the codes before them
        #: (GraphNetwork._fuse_float_convs_on_codes)
        self.codes_input = None
        #: a binary conv's weights laid out for kernels.binary_conv2d (no im2col matrix; pad bit 0 = +1, as here)
        self.native_bits = None
        if self.layer == "conv2d":
            self.kernel, self.stride, self.padding = f.pair("kernel", 1), f.pair("stride", 1), f.pair("padding", 0)
            if self.fmt == "bits":
                self.native_bits = _native_conv_weights(FORMATS["bits"], self.state, *self.kernel)
            if self.fmt == "codes":
                self.pad_fill = f.int("pad_code", 0, 255, default=0)
            elif self.fmt == "float":
                self.pad_fill = float(f.get("pad_value", 0.0))
        pool = f.get("pool", None)
        self.pool = None
        if pool is not None:
            pf = _Fields(dict(pool, name=self.name + ".pool"), f.where)
            self.pool = (pf.pair("kernel", 1), pf.pair("stride", 1), pf.pair("padding", 0))
        self.mul = f.int("mul", 1, 2**30, default=1)
        self.border = None
        if self.name + ".border" in arrays:
            self.border = _array(arrays, self.name + ".border", f)
        epi = f.get("epilogue")
        ef = _Fields(dict(epi, name=self.name + ".epilogue"), f.where)
        self.epilogue_kind = ef.choice("kind", ("threshold", "affine"))
        float_border = self.border is not None and self.border.dtype == np.float32
        if self.border is not None and self.border.dtype not in (np.int32, np.float32):
            f.fail(f"array {self.name + '.border'!r} must be int32 or float32, got {self.border.dtype}")
        acc_dtype = np.float32 if self.fmt == "float" or float_border else np.int32
        if self.epilogue_kind == "threshold":
            levels = ef.int("levels", 2, 256)
            t = _array(arrays, self.name + ".thresholds", f, acc_dtype, (n, levels - 1))
            sign = _array(arrays, self.name + ".sign", f, np.int8, (n,))
            self.epilogue = Thresholds(t, sign, ef.choice("out", ("bits", "codes")))
        else:
            self.epilogue = Affine(_array(arrays, self.name + ".scale", f, np.float32, (n,)),
                                   _array(arrays, self.name + ".bias", f, np.float32, (n,)))

    def infer(self, f: _Fields, shapes, out_repr: str):
        (shape,) = shapes
        per = 64 if self.fmt == "bits" else 1  # a packed word holds 64 of K
        if self.layer == "dense":
            if len(shape) != 1 or shape[0] * per != self.k:
                f.fail(f"dense of K={self.k} cannot read an input of (packed) shape {shape}")
            out = (self.out_channels,)
        else:
            if len(shape) != 3:
                f.fail(f"conv2d needs (H, W, C) input, got {shape}")
            (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
            if kh * kw * shape[2] * per != self.k:
                f.fail(f"conv2d of K={self.k} cannot read {kh}x{kw} patches of {shape[2]} channels")
            if ph >= kh or pw >= kw:
                f.fail(f"padding {self.padding} is not smaller than the kernel {self.kernel}")
            out = (_out_size(shape[0], kh, sh, ph, f), _out_size(shape[1], kw, sw, pw, f), self.out_channels)
        if self.border is not None and self.border.shape not in ((self.out_channels,), out):
            f.fail(f"border map has shape {self.border.shape}, expected {out}")
        if self.pool is not None:
            if len(out) != 3:
                f.fail("a pool needs a conv2d")
            out = _pooled(out, *self.pool, f)
        produced = self.epilogue.out if self.epilogue_kind == "threshold" else "float"
        if produced != out_repr:
            f.fail(f"writes {produced} values, but its output is declared {out_repr}")
        return out[:-1] + ((out[-1] + 63) // 64,) if produced == "bits" else out

    def _rows(self, x: np.ndarray):
        """The GEMM's input rows and the lead shape of its output."""
        if self.layer == "dense":
            x = x.reshape(len(x), -1)
            return x, (len(x),)
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        patches = im2col(x, kh, kw, sh, sw, ph, pw, fill=self.pad_fill)
        return patches.reshape(-1, patches.shape[-1]), patches.shape[:3]

    def fuse_codes_input(self, decode: "Decode", affine: Optional["AffineNode"]):
        """Take the codes before ``decode [-> affine]`` as this float conv's input: one C pass makes the padded
        map from per-channel tables of the decoded (normalized) values (made here, with the same float32
        operations in the same order, so the map is bit-identical to the unfused ops' output)."""
        t = np.broadcast_to(decode._table256, (decode.channels, 256))
        if affine is not None:
            t = t * affine.a.scale[:, None] + affine.a.bias[:, None]
        self.codes_input = (np.ascontiguousarray(t, np.float32), decode, affine)
        self.inputs = list(decode.inputs)

    def _float_conv(self, kernels, x: np.ndarray) -> np.ndarray:
        """A float conv (NHWC float32 input, or codes when fused with their decode) on the native float kernel."""
        if self.codes_input is None:
            return kernels.float_conv2d(kernels.pad_map(x, self.padding, self.pad_fill), self.state, self.kernel,
                                        self.stride)
        from ..kernels.codes import float_conv_codes

        tables, decode, affine = self.codes_input
        acc, top = float_conv_codes(x, tables, self.state, self.kernel, self.stride, self.padding, self.pad_fill)
        if x.size and top >= len(decode.table):  # a code past the table: the unfused ops raise their error
            y = decode.run(self._k, x)
            return self._float_conv(kernels, y if affine is None else affine.run(self._k, y))
        return acc

    def _codes_conv(self):
        """(level set, code map, number of codes) of a k-bit conv's input, made on first use."""
        if self._conv_codes is None:
            from ..kernels.codes import _code_map
            from ..kernels.levels import level_set

            ls = level_set(self.a_levels)
            self._conv_codes = (ls,) + _code_map(ls, self.a_table, f"layer {self.name!r}")
        return self._conv_codes

    def _fused(self, kernels) -> bool:
        """Whether this k-bit conv runs as one pass of pack + GEMM + epilogue (kernels.codes.conv_core): any
        pair of level sets but binary x binary, which the xnor kernel multiplies."""
        return self.fmt == "codes" and self.layer == "conv2d" and kernels.choose_kernel(self.a_levels, self.b_levels) != "xnor"

    def _conv(self, kernels, x: np.ndarray, out: str, epilogue=None):
        from ..kernels.codes import conv_core

        ls, table, ncodes = self._codes_conv()
        mul, border, window, thr_t, sign, flip = epilogue or (1, None, None, None, None, False)
        return conv_core(x, self.state, self.kernel, self.stride, self.padding, self.pad_fill, ls, table, ncodes,
                         out, mul, border, window, thr_t, sign, flip, what=f"layer {self.name!r}")

    def reduce(self, kernels, x: np.ndarray) -> np.ndarray:
        if self.fmt == "codes":  # im2col fused into the packing of the GEMM's operand (one C pass)
            if self._fused(kernels):
                return self._conv(kernels, x, "acc")
            if self.layer == "dense":
                x = x.reshape(len(x), -1)
                pa = kernels.pack_dense_levels(x, self.a_levels, weights_levels=self.b_levels, values=self.a_table)
                lead = (len(x),)
            else:
                pa = kernels.pack_conv_levels(x, self.kernel, self.stride, self.padding, self.pad_fill, self.a_levels,
                                              weights_levels=self.b_levels, values=self.a_table)
                lead = kernels.conv_output_shape(x.shape, self.kernel, self.stride, self.padding)
            return kernels.quant_matmul_packed(pa, self.state).reshape(*lead, -1)
        if self.native_bits is not None and x.ndim == 4:
            return kernels.binary_conv2d(x, self.native_bits, stride=self.stride, padding=self.padding)
        if self.fmt == "float" and self.layer == "conv2d":
            return self._float_conv(kernels, x)
        rows, lead = self._rows(x)
        if self.fmt == "bits":
            acc = FORMATS["bits"].gemm(kernels, rows, self.state)
        else:
            acc = kernels.float_matmul_prepared(rows, self.state)
        return acc.reshape(*lead, -1)

    def _native_epilogue(self, shape, dtype) -> bool:
        """Whether border, pool and the thresholds or affine map run as one C pass (kernels.codes) on
        accumulators of this shape and dtype."""
        ep = self.epilogue
        if dtype != np.int32 or len(shape) not in (2, 4):
            return False
        if isinstance(ep, Thresholds):
            if not ep.native or (ep.out == "bits" and ep.levels != 2):
                return False
            if self.fmt == "bits" and self.pool is None and self.border is None:
                return False  # kernels.threshold_pack, in Thresholds.run
        elif not isinstance(ep, Affine):
            return False
        if self.border is not None and (self.border.dtype != np.int32 or self.border.shape != tuple(shape[1:])):
            return False
        if self.pool is not None:
            (kh, kw), _, (ph, pw) = self.pool
            if len(shape) != 4 or shape[1] + 2 * ph < kh or shape[2] + 2 * pw < kw:
                return False
        return True

    def _epilogue_operands(self):
        """(mul, border, window, thresholds or scale/bias, sign, flip) as kernels.codes.epilogue takes them."""
        ep = self.epilogue
        window = None if self.pool is None else tuple(v for pair in self.pool for v in pair)  # kh, kw, sh, ...
        mul = self.mul if self.border is not None else 1
        if isinstance(ep, Affine):
            return mul, self.border, window, ep.rows, None, False
        return mul, self.border, window, ep.thr_t, ep.sign, ep.any_flip

    def _out_kind(self) -> str:
        return "float" if isinstance(self.epilogue, Affine) else self.epilogue.out

    def run(self, kernels, x: np.ndarray) -> np.ndarray:
        ep = self.epilogue
        if (self.native_bits is not None and x.ndim == 4 and self.pool is None and self.border is None
                and isinstance(ep, Thresholds) and ep.fusable and ep.levels == 2):
            # binary conv + sign threshold: packed bits to packed bits in one native call
            return kernels.binary_conv2d(x, self.native_bits, stride=self.stride, padding=self.padding,
                                         thresholds=(ep.sign, ep._t0))
        if self._fused(kernels) and x.ndim == 4:
            lead = kernels.conv_output_shape(x.shape, self.kernel, self.stride, self.padding)
            if self._native_epilogue(lead + (self.out_channels,), np.int32):  # the whole layer in one pass
                return self._conv(kernels, x, self._out_kind(), self._epilogue_operands())
        acc = self.reduce(kernels, x)
        if self._native_epilogue(acc.shape, acc.dtype):
            from ..kernels.codes import epilogue

            flat = acc.ndim == 2
            acc4 = np.ascontiguousarray(acc).reshape((len(acc), 1, 1, acc.shape[1]) if flat else acc.shape)
            mul, border, window, thr_t, sign, flip = self._epilogue_operands()
            border = None if border is None else border.reshape(acc4.shape[1:])
            out = epilogue(acc4, mul, border, window, thr_t, sign, flip, self._out_kind())
            return out.reshape(len(acc), -1) if flat else out
        if self.border is not None:
            acc = acc.astype(self.border.dtype, copy=False) * self.border.dtype.type(self.mul) + self.border
        if self.pool is not None:
            acc = _maxpool_map(acc, self.pool, fill=np.iinfo(np.int32).min if acc.dtype == np.int32 else -np.inf)
        return self.epilogue.run(kernels, acc)

    def describe(self) -> str:
        if self.codes_input is not None:
            fused = "decode + affine" if self.codes_input[2] is not None else "decode"
            return f"{self.layer} -> {self.out_channels} [float32 implicit GEMM on the codes; {fused} in one pass]"
        kernel = {"bits": "xnor-popcount", "float": "float32"}.get(self.fmt)
        if kernel is None:
            kernel = f"{self._k.choose_kernel(self.a_levels, self.b_levels)} ({self.a_levels} x {self.b_levels})"
        return f"{self.layer} -> {self.out_channels} [{kernel}]"


class Node1(Node):
    """A node whose output has its input's shape (channels last), unless it overrides ``infer``."""

    same_repr = False  # output repr = input repr (pooling, flatten), else the declared one is checked

    def infer(self, f: _Fields, shapes, out_repr: str):
        return shapes[0]


class Quantize(Node1):
    def __init__(self, f: _Fields, arrays, values):
        levels = f.int("levels", 2, 256)
        out = f.choice("out", ("bits", "codes"))
        channels = values[self.inputs[0]]["shape"][-1]
        t = _array(arrays, f.spec["name"] + ".thresholds", f, np.float32)
        if t.ndim != 2 or t.shape[1] != levels - 1 or t.shape[0] not in (1, channels):
            f.fail(f"thresholds must be (1 or {channels}, {levels - 1}), got {t.shape}")
        t = np.broadcast_to(t, (channels, levels - 1))
        sign = np.ones(channels, np.int8)
        self.q = Thresholds(np.ascontiguousarray(t), sign, out)
        self.channels = channels

    def infer(self, f, shapes, out_repr):
        if self.q.out != out_repr or shapes[0][-1] != self.channels:
            f.fail(f"quantizes {shapes[0]} to {self.q.out}, declared {out_repr} with {self.channels} channels")
        return shapes[0][:-1] + ((self.channels + 63) // 64,) if out_repr == "bits" else shapes[0]

    def run(self, kernels, x):
        return self.q.run(kernels, x)

    def describe(self) -> str:
        return f"float -> {self.q.levels}-level {self.q.out}"


class Decode(Node1):
    def __init__(self, f: _Fields, arrays, values):
        self.table = _array(arrays, f.spec["name"] + ".table", f, np.float32)
        self.bits_in = values[self.inputs[0]]["repr"] == "bits"
        self.channels = values[self.inputs[0]]["shape"][-1]
        if self.bits_in and self.table.shape != (2,):
            f.fail("decoding bits needs a table of 2 values")
        if self.table.ndim != 1 or not 2 <= len(self.table) <= 256:
            f.fail(f"a decode table has 2..256 entries, got shape {self.table.shape}")
        self._table256 = np.zeros(256, np.float32)
        self._table256[:len(self.table)] = self.table

    def infer(self, f, shapes, out_repr):
        words = (self.channels + 63) // 64 if self.bits_in else self.channels
        if shapes[0][-1] != words:
            f.fail(f"decodes {shapes[0][-1]} columns, expected {words} for {self.channels} channels")
        return shapes[0][:-1] + (self.channels,)

    def run(self, kernels, x):
        if self.bits_in:
            minus = np.unpackbits(x.view(np.uint8), axis=-1, bitorder="little")[..., :self.channels]
            return self.table[1 - minus]  # bit 1 = code 0 (-1)
        if x.dtype == np.uint8 and self.table.ndim == 1 and 1 <= len(self.table) <= 256:
            from ..kernels.codes import decode

            out, top = decode(x, self._table256)
            if top < len(self.table):
                return out
        return self.table[x]  # (a code past the table raises IndexError here, as it always did)

    def describe(self) -> str:
        return f"{len(self.table)}-level {'bits' if self.bits_in else 'codes'} -> float"


class AffineNode(Node1):
    def __init__(self, f: _Fields, arrays, values):
        c = values[self.inputs[0]]["shape"][-1]
        if isinstance(c, bool) or not isinstance(c, int) or c < 1:
            f.fail(f"its input declares {c!r} channels")
        name = f.spec["name"]
        self.a = Affine(_array(arrays, name + ".scale", f, np.float32, (c,)), _array(arrays, name + ".bias", f, np.float32, (c,)))

    def run(self, kernels, x):
        return self.a.run(kernels, x)


class MaxPool(Node1):
    def __init__(self, f: _Fields, arrays, values):
        self.window = (f.pair("kernel", 1), f.pair("stride", 1), f.pair("padding", 0))
        self.repr = values[self.inputs[0]]["repr"]

    def infer(self, f, shapes, out_repr):
        return _pooled(shapes[0], *self.window, f)

    def run(self, kernels, x):
        if self.repr == "bits":
            return maxpool_bits(x, *self.window)
        return _maxpool_map(x, self.window, fill=0 if self.repr == "codes" else -np.inf)


class AvgPool(Node1):
    def __init__(self, f: _Fields, arrays, values):
        self.window = (f.pair("kernel", 1), f.pair("stride", 1), f.pair("padding", 0))
        self.count_include_pad = bool(f.get("count_include_pad", True))

    def infer(self, f, shapes, out_repr):
        return _pooled(shapes[0], *self.window, f)

    def run(self, kernels, x):
        return avgpool_nhwc(x, *self.window, self.count_include_pad)


class GlobalAvgPool(Node1):
    def __init__(self, f, arrays, values):
        pass

    def infer(self, f, shapes, out_repr):
        if len(shapes[0]) != 3:
            f.fail(f"global average pooling needs (H, W, C) input, got {shapes[0]}")
        return (1, 1, shapes[0][2])

    def run(self, kernels, x):
        return x.mean(axis=(1, 2), dtype=np.float32, keepdims=True)


class Flatten(Node1):
    def __init__(self, f, arrays, values):
        pass

    def infer(self, f, shapes, out_repr):
        return (int(np.prod(shapes[0])),)

    def run(self, kernels, x):
        return x.reshape(len(x), -1)


class Add(Node1):
    def __init__(self, f, arrays, values):
        pass

    def infer(self, f, shapes, out_repr):
        if shapes[0] != shapes[1]:
            f.fail(f"adds values of different shapes {shapes[0]} and {shapes[1]}")
        return shapes[0]

    def run(self, kernels, a, b):
        return a + b


class AddQuantize(Node1):
    """add -> quantize (a residual block's sum and the activation after it), made by GraphNetwork's fusion pass,
    not read from files: one C pass (kernels.codes.add_thresholds) instead of two, and with a decode of codes
    feeding the add (an identity shortcut on k-bit codes), three. Bit-identical: the same float32 sum."""

    def __init__(self, add: Add, quantize: Quantize, decode: Optional["Decode"]):
        self.add, self.quantize, self.decode = add, quantize, decode
        if decode is None:
            self.inputs = list(add.inputs)
        else:  # (the other float input, the decode's codes): float32 addition is commutative
            self.inputs = [v for v in add.inputs if v != decode.output] + [decode.inputs[0]]
        self.output, self.op, self.name, self._k = quantize.output, "add+quantize", quantize.name, quantize._k

    def run(self, kernels, x, y):
        from ..kernels.codes import add_thresholds

        q = self.quantize.q
        sign = q.sign if q.any_flip else None
        d = self.decode
        if d is None:
            return add_thresholds(x, y, None, q.thr_f, sign, q.out == "bits")[0]
        out, top = add_thresholds(x, y, d._table256, q.thr_f, sign, q.out == "bits")
        if y.size and top >= len(d.table):  # a code past the table: the unfused ops raise their error
            return self.quantize.run(kernels, self.add.run(kernels, x, d.run(kernels, y)))
        return out

    def describe(self) -> str:
        what = "decode + add" if self.decode is not None else "add"
        return f"{what} + {self.quantize.describe()} in one pass"


class Clamp(Node1):
    def __init__(self, f, arrays, values):
        lo, hi = f.get("min", None), f.get("max", None)
        self.lo = None if lo is None else np.float32(lo)
        self.hi = None if hi is None else np.float32(hi)

    def run(self, kernels, x):
        return np.clip(x, self.lo, self.hi)


#: op kind -> (node class, input representations it accepts, output representation or None = from the values)
OPS = {
    "gemm": (Gemm, None),
    "quantize": (Quantize, ("float",)),
    "decode": (Decode, ("codes", "bits")),
    "affine": (AffineNode, ("float",)),
    "maxpool": (MaxPool, ("float", "codes", "bits")),
    "avgpool": (AvgPool, ("float",)),
    "global_avgpool": (GlobalAvgPool, ("float",)),
    "flatten": (Flatten, ("float", "codes", "bits")),
    "add": (Add, ("float",)),
    "clamp": (Clamp, ("float",)),
}
ARITY = {"add": 2}


def build_node(kernels, spec: Dict, arrays, values: Dict, where: str, shapes: Dict = None, out_info=None) -> Node:
    """One node from its JSON record, every field checked (CheckpointError naming the node otherwise)."""
    try:
        return _build_node(kernels, spec, arrays, values, where, shapes, out_info)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, MemoryError) as exc:
        # a field of a type or size no check above anticipated: still the file's fault, said in one line
        name = spec.get("name") if isinstance(spec, dict) else None
        raise CheckpointError(f"{where}: node {name!r} is malformed ({type(exc).__name__}: {exc})") from None


def _build_node(kernels, spec: Dict, arrays, values: Dict, where: str, shapes: Dict = None, out_info=None) -> Node:
    f = _Fields(spec, where)
    op = f.choice("op", OPS)
    if not isinstance(f.get("name"), str):
        f.fail("field 'name' must be a string")
    inputs, outputs = f.get("inputs"), f.get("outputs")
    if (not isinstance(inputs, list) or len(inputs) != ARITY.get(op, 1) or not isinstance(outputs, list)
            or len(outputs) != 1):
        f.fail(f"op {op!r} takes {ARITY.get(op, 1)} input(s) and gives 1 output; got {inputs!r} -> {outputs!r}")
    for v in inputs:
        if v not in values:
            f.fail(f"reads {v!r}, which no earlier node writes")
    cls, accepted = OPS[op]
    if accepted is not None:
        for v in inputs:
            if values[v]["repr"] not in accepted:
                f.fail(f"op {op!r} cannot read a {values[v]['repr']} value ({v!r})")
    node = cls.__new__(cls)
    node.inputs, node.output, node.op, node._k, node.name = list(inputs), outputs[0], op, kernels, spec["name"]
    cls.__init__(node, f, arrays, values)
    if shapes is not None:
        in_shapes = [shapes[v] for v in inputs]
        node.shape = tuple(int(d) for d in node.infer(f, in_shapes, out_info["repr"]))
        levels = getattr(getattr(node, "epilogue", None), "levels", None) or getattr(getattr(node, "q", None), "levels", None)
        table = out_info.get("table")
        if levels is not None and (not isinstance(table, list) or len(table) != levels):
            f.fail(f"produces {levels}-level codes, but its output declares the table {table!r}")
        if op == "decode":
            src = values[inputs[0]].get("table")
            if not isinstance(src, list) or len(src) != len(node.table):
                f.fail(f"decodes with {len(node.table)} entries codes whose table is {src!r}")
        if isinstance(node, Node1) and op in ("maxpool", "flatten", "clamp", "add") and out_info["repr"] != values[inputs[0]]["repr"]:
            f.fail(f"op {op!r} keeps its input's representation, but its output is declared {out_info['repr']}")
    return node


# ---- the network ------------------------------------------------------------------------------------------


class GraphNetwork:
    """An exported network. ``predict(x)`` takes 8-bit images (N, C, H, W) (uint8, or integer-valued
    numbers 0..255; (N, C*H*W) also accepted) and returns float32 logits (N, classes); ``classify(x)``
    the argmax; ``layers()`` what each node runs on."""

    task = "image"
    batch_chunk = 4096  # images per pass through the graph (bounded memory for any batch)

    def __init__(self, meta: Dict, arrays: Dict[str, np.ndarray], path: str = "<memory>"):
        from .. import kernels

        self._k, self.meta, self.path = kernels, meta, path
        where = path
        try:
            graph = meta["graph"]
            self.input_shape = tuple(int(d) for d in meta["input_shape"])
            self.num_classes = int(meta["num_classes"])
            values = graph["values"]
            self.input_name, self.output_name = graph["input"], graph["output"]
            specs = graph["nodes"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{where}: model file lacks a valid graph ({exc!r}); re-export it") from None
        if not isinstance(values, dict) or not isinstance(specs, list) or len(self.input_shape) != 3:
            raise CheckpointError(f"{where}: malformed graph (values must map names, nodes be a list)")
        for name, info in values.items():
            if not isinstance(info, dict) or info.get("repr") not in REPRS or not isinstance(info.get("shape"), list):
                raise CheckpointError(f"{where}: value {name!r} has no valid repr/shape")
        if self.input_name not in values or values[self.input_name]["repr"] != "codes":
            raise CheckpointError(f"{where}: the graph input must be a codes value (8-bit pixels)")
        known = {self.input_name: values[self.input_name]}
        c, h, w = self.input_shape
        if min(c, h, w) < 1 or not 1 <= self.num_classes:
            raise CheckpointError(f"{where}: invalid input shape {self.input_shape} or class count {self.num_classes}")
        shapes = {self.input_name: (h, w, c)}  # per image, as the arrays hold them (packed words for bits)
        self.nodes: List[Node] = []
        for spec in specs:
            out_name = spec.get("outputs", [None])[0] if isinstance(spec, dict) and isinstance(spec.get("outputs"), list) and spec["outputs"] else None
            if not isinstance(out_name, str) or out_name not in values:
                raise CheckpointError(f"{where}: node {spec.get('name') if isinstance(spec, dict) else spec!r} "
                                      f"writes {out_name!r}, not declared in values")
            node = build_node(kernels, spec, arrays, known, where, shapes, values[out_name])
            shapes[node.output] = node.shape
            if node.output in known:
                raise CheckpointError(f"{where}: value {node.output!r} is written twice")
            known[node.output] = values[node.output]
            self.nodes.append(node)
        if self.output_name not in known or values[self.output_name]["repr"] != "float":
            raise CheckpointError(f"{where}: the graph output {self.output_name!r} is not a float value any node writes")
        if int(np.prod(shapes[self.output_name])) != self.num_classes:
            raise CheckpointError(f"{where}: the graph gives {shapes[self.output_name]} outputs per image, "
                                  f"the file declares {self.num_classes} classes")
        self._fuse_float_convs_on_codes()
        self._fuse_residual_adds()
        # free each intermediate once its last reader has run
        last_use = {}
        for i, node in enumerate(self.nodes):
            for v in node.inputs:
                last_use[v] = i
        self._release = [[v for v in node.inputs if last_use[v] == i and v != self.output_name]
                         for i, node in enumerate(self.nodes)]

    def _only_reader(self):
        """value -> the one node that reads it (None for a value read by several, or the graph's output)."""
        readers = {}
        for node in self.nodes:
            for v in node.inputs:
                readers.setdefault(v, []).append(node)

        def only_reader(value):
            after = readers.get(value, [])
            return after[0] if len(after) == 1 and value != self.output_name else None

        return only_reader

    def _fuse_float_convs_on_codes(self):
        """decode [-> affine] -> float conv, each the only reader of the one before (a float first layer on 8-bit
        pixels, a real-valued shortcut conv on k-bit codes): the conv reads the codes, decoded and normalized
        into its padded input map in one C pass (Gemm.fuse_codes_input) instead of two or three float passes."""
        only_reader = self._only_reader()
        for d in list(self.nodes):
            if not isinstance(d, Decode) or d.bits_in:
                continue
            a = only_reader(d.output)
            if isinstance(a, AffineNode) and len(a.a.scale) == d.channels:
                g = only_reader(a.output)
            else:
                a, g = None, a
            if isinstance(g, Gemm) and g.fmt == "float" and g.layer == "conv2d" and g.codes_input is None:
                g.fuse_codes_input(d, a)
                self.nodes = [n for n in self.nodes if n is not d and n is not a]

    def _fuse_residual_adds(self):
        """[decode ->] add -> quantize, each the only reader of the one before (a residual block's output on
        k-bit codes): one AddQuantize node, one C pass."""
        only_reader = self._only_reader()
        for a in list(self.nodes):
            if not isinstance(a, Add):
                continue
            q = only_reader(a.output)
            if not isinstance(q, Quantize) or q.q.thr_f is None or not (q.q.out == "codes" or q.q.levels == 2):
                continue
            decodes = [n for n in self.nodes if isinstance(n, Decode) and not n.bits_in and n.output in a.inputs
                       and only_reader(n.output) is a]
            d = decodes[0] if len(decodes) == 1 and a.inputs[0] != a.inputs[1] else None
            fused = AddQuantize(a, q, d)
            self.nodes = [fused if n is q else n for n in self.nodes if n is not a and n is not d]

    def predict(self, x) -> np.ndarray:
        """Float32 logits for a batch of 8-bit images."""
        x = self._check_input(x)
        n = len(x)
        if n == 0:
            return np.zeros((0, self.num_classes), np.float32)
        step = max(1, int(self.batch_chunk))
        with self._k.single_threaded_blas():  # spinning BLAS threads would slow the native kernels (floatmm)
            parts = [self._run(x[i:i + step]) for i in range(0, n, step)]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def classify(self, x) -> np.ndarray:
        return self.predict(x).argmax(axis=1)

    def _run(self, x: np.ndarray) -> np.ndarray:
        env = {self.input_name: np.ascontiguousarray(x.transpose(0, 2, 3, 1))}
        for node, free in zip(self.nodes, self._release):
            env[node.output] = node.run(self._k, *(env[v] for v in node.inputs))
            for v in free:
                del env[v]
        out = env[self.output_name]
        return out.reshape(len(out), -1).astype(np.float32, copy=False)

    def _check_input(self, x) -> np.ndarray:
        if hasattr(x, "detach") and hasattr(x, "numpy"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if np.iscomplexobj(x) or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise InputError(f"model expects 8-bit pixel values (integers 0..255), got dtype {x.dtype}")
        x = image_batch(x, self.input_shape)
        if x.dtype != np.uint8:
            if x.size and np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
                raise InputError(f"model expects 8-bit pixel values (integers 0..255), got non-finite values")
            if x.size and (x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x))):
                raise InputError(f"model expects 8-bit pixel values (integers 0..255), got dtype {x.dtype} "
                                 f"with range [{x.min()}, {x.max()}]")
            x = x.astype(np.uint8)
        return x

    def layers(self) -> List[str]:
        """One line per node: its op and the kernel it runs on."""
        return [f"{node.op} {node.name}" + (f": {node.describe()}" if node.describe() else "") for node in self.nodes]

    def __repr__(self) -> str:
        return f"GraphNetwork({self.meta.get('recipe') or self.meta.get('model')}: {len(self.nodes)} nodes)"
