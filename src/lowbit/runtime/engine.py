"""Torch-free inference of an exported binarized network (NumPy + lowbit's native kernels).

Activations between layers are bits: a (N, words) uint64 matrix for dense features, an (N, H, W, words)
array for conv features (NHWC, channels packed along the last axis, bit 1 = -1, padding bits 0 = +1).
Each layer:

1. *reduction*: the first layer multiplies 8-bit pixels by +-1 weights exactly, with the uint8 x +-1
   kernel (``kernels.u8_matmul``, int32) where the CPU has AVX2, else in float32 (exact too: every partial
   sum is an integer below 2^24 for K * 255 < 2^24); hidden layers run the XNOR-popcount GEMM
   ``a = K - 2 * popcount(x XOR w)`` on packed bits (conv via im2col over packed pixel words), with the
   weights prepared once in the kernel's native layout (``kernels.prepare_packed``);
2. optional 2x2 max-pooling of the integer accumulators;
3. *threshold*: BN + sign folded into ``a >= T`` (or ``a <= T`` where the BN scale is negative), packed
   straight back to bits -- in one C pass (``kernels.threshold_pack``) for layers without max-pooling;
   or, in the last layer, the BN's affine map in float32 giving the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Union

import numpy as np

from ..errors import CheckpointError, ShapeError
from .modelfile import load_model_file

KIND = "binary_sequential"
F32_EXACT_LIMIT = 1 << 24


def _pack_last_axis(bits_minus: np.ndarray, words: int) -> np.ndarray:
    """Pack a boolean array (True = -1) along its last axis into ``words`` uint64 words (zero padded)."""
    *lead, n = bits_minus.shape
    if n != words * 64:
        padded = np.zeros((*lead, words * 64), dtype=bool)
        padded[..., :n] = bits_minus
        bits_minus = padded
    return np.packbits(bits_minus, axis=-1, bitorder="little").view(np.uint64)


def _im2col_words(x: np.ndarray, kh: int, kw: int, sh: int, sw: int, ph: int, pw: int, fill) -> np.ndarray:
    """(N, H, W, C) -> (N, OH, OW, kh*kw*C) patches, padded with ``fill`` (a zero word = +1 bits)."""
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


def _exact_int(acc: np.ndarray) -> np.ndarray:
    """float32 sums of integers below 2^24 are exact: convert them to int32 for the integer thresholds."""
    return acc.astype(np.int32)


def _pixel_matmul(kernels, op: Dict, x: np.ndarray) -> np.ndarray:
    """(rows, K) uint8 pixels times the first layer's +-1 weights -> int32 (rows, out), exactly: the
    uint8 x +-1 kernel where it is vectorized, else float32 (exact too: K * 255 < 2^24)."""
    if x.dtype == np.uint8 and kernels.u8_matmul_is_fast():
        return kernels.u8_matmul(x, op["w_u8"])
    return _exact_int(x.astype(np.float32) @ op["w_t"])


def _maxpool2(a: np.ndarray) -> np.ndarray:
    n, h, w, c = a.shape
    h2, w2 = h // 2, w // 2
    a = a[:, :h2 * 2, :w2 * 2]
    return a.reshape(n, h2, 2, w2, 2, c).max(axis=(2, 4))


class BinaryNetwork:
    """An exported binarized network. ``predict(x)`` takes uint8 pixels (N, C, H, W) (or (N, C*H*W)) and
    returns float32 logits (N, classes); ``classify(x)`` the argmax."""

    def __init__(self, meta: Dict, arrays: Dict[str, np.ndarray], path: str = "<memory>"):
        from .. import kernels  # the native extension; imported here so a missing build names itself

        self._k = kernels
        self.meta = meta
        self.path = path
        self.input_shape = tuple(meta["input_shape"])
        self.num_classes = int(meta["num_classes"])
        self.ops: List[Dict] = []
        try:
            for op in meta["ops"]:
                self.ops.append(self._prepare(dict(op), arrays))
        except KeyError as exc:
            raise CheckpointError(f"{path}: model file lacks {exc} (corrupt or from another tool)") from None

    def _prepare(self, op: Dict, arrays: Dict[str, np.ndarray]) -> Dict:
        name = op["name"]
        bits = np.ascontiguousarray(arrays[name + ".weight_bits"])
        if op["input"] == "pixels":
            k = int(op["k"])
            if k * 255 >= F32_EXACT_LIMIT or k > bits.shape[1] * 64:
                raise CheckpointError(f"{self.path}: first layer of {k} inputs cannot run exactly in float32")
            minus = np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :k].astype(bool)
            op["w_t"] = np.ascontiguousarray(np.where(minus, -1.0, 1.0).astype(np.float32).T)  # (K, out)
            # the same weights for the exact uint8 x +-1 kernel (vpmaddubsw: ~2.5x the fp32 sgemm)
            op["w_u8"] = self._k.prepare_u8_weights(np.where(minus, -1, 1).astype(np.int8))
        else:
            op["w_bits"] = bits
            # the weights in the GEMM kernel's native layout, made once here instead of on every call
            op["w_prep"] = self._k.prepare_packed(bits, bits.shape[1] * 64)
        if op["output"] == "bits":
            t = arrays[name + ".threshold"].astype(np.int64)
            flip = arrays[name + ".flip"].astype(bool)
            # One comparison for both kinds of channel: the output bit (1 = -1) is  s * a < s * T  with
            # s = -1 where the BN scale is negative (a <= T flips to -a >= -T). |a| <= K, so s * a fits int32.
            op["sign"] = np.where(flip, -1, 1).astype(np.int32)
            op["signed_threshold"] = np.clip(np.where(flip, -t, t), -(2**31) + 1, 2**31 - 1).astype(np.int32)
            op["any_flip"] = bool(flip.any())
            op["out_words"] = (t.shape[0] + 63) // 64
            # Without max-pooling the accumulators go straight to the C threshold epilogue (one pass,
            # pad_bits subtracted there); pooling needs the int32 map first, so those layers keep NumPy.
            op["fused"] = not op.get("maxpool")
        else:
            op["out_scale"] = arrays[name + ".out_scale"]
            op["out_bias"] = arrays[name + ".out_bias"]
        return op

    # ---- the layers -------------------------------------------------------------------------------------

    def _reduce(self, op: Dict, x: np.ndarray, subtract_pad: bool = True) -> np.ndarray:
        """The integer accumulators of one layer: (N, out) or (N, OH, OW, out), int32.
        ``subtract_pad=False`` leaves the binary layers' pad_bits in (the fused threshold subtracts it)."""
        if op["op"] == "conv2d":
            kh, kw = op["kernel"]
            (sh, sw), (ph, pw) = op["stride"], op["padding"]
            if op["input"] == "pixels":
                patches = _im2col_words(x, kh, kw, sh, sw, ph, pw, fill=0)  # a black pixel pads
                n, oh, ow, k = patches.shape
                acc = _pixel_matmul(self._k, op, patches.reshape(-1, k))
            else:
                patches = _im2col_words(x, kh, kw, sh, sw, ph, pw, fill=0)  # zero words = +1 padding
                n, oh, ow, words = patches.shape
                acc = self._k.binary_matmul_packed(patches.reshape(-1, words), op["w_prep"], words * 64)
                if subtract_pad:
                    acc -= op["pad_bits"]
            return acc.reshape(n, oh, ow, -1)
        if op["input"] == "pixels":
            return _pixel_matmul(self._k, op, x)
        words = x.shape[1]
        acc = self._k.binary_matmul_packed(x, op["w_prep"], words * 64)
        if subtract_pad:
            acc -= op["pad_bits"]
        return acc

    def _activate(self, op: Dict, acc: np.ndarray) -> np.ndarray:
        if op.get("maxpool"):
            acc = _maxpool2(acc)
        if op["output"] == "logits":
            return acc.astype(np.float32) * op["out_scale"] + op["out_bias"]
        if op["any_flip"]:
            acc = acc * op["sign"]
        return _pack_last_axis(acc < op["signed_threshold"], op["out_words"])

    def _layer(self, op: Dict, x: np.ndarray) -> np.ndarray:
        """One layer, input bits / pixels -> output bits / logits. Bit outputs without max-pooling take
        the fused path: accumulators (pad_bits still in) -> C threshold epilogue -> packed words,
        the same comparison as _activate (sign * (acc - pad) < signed_threshold, int32) in one pass."""
        if not op.get("fused"):
            return self._activate(op, self._reduce(op, x))
        acc = self._reduce(op, x, subtract_pad=False)
        pad = 0 if op["input"] == "pixels" else op["pad_bits"]
        lead = acc.shape[:-1]
        bits = self._k.threshold_pack(acc.reshape(-1, acc.shape[-1]), op["sign"], op["signed_threshold"], pad)
        return bits.reshape(*lead, op["out_words"])

    def predict(self, x) -> np.ndarray:
        """Float32 logits for a batch of 8-bit images (uint8 or integer-valued array, (N, C, H, W)).

        A network exported with ``binary_input`` takes +-1 values (any real: >= 0 is +1) instead, and one
        exported with ``output="bits"`` returns +-1 float32 values in (N, C, H, W) or (N, F) layout."""
        first = self.ops[0]
        if self.meta.get("input", "pixels") == "bits":
            x = self._check_shape(np.asarray(x))
            h = x.transpose(0, 2, 3, 1) if first["op"] == "conv2d" else x.reshape(len(x), -1)
            lead = h.shape[:-1]
            h = self._k.pack_signs(np.ascontiguousarray(h).reshape(-1, h.shape[-1]))
            h = h.reshape(*lead, h.shape[-1])
        else:
            x = self._check_input(x)
            h = x.transpose(0, 2, 3, 1) if first["op"] == "conv2d" else x.reshape(len(x), -1)
            h = np.ascontiguousarray(h)
        for op in self.ops:
            if op["op"] == "dense" and h.ndim == 4:
                h = h.reshape(len(h), -1)  # flatten (N, H, W, words): the export laid weights out to match
            h = self._layer(op, h)
        if self.meta.get("output", "logits") == "bits":
            return self._unpack_output(h)
        return h

    def _unpack_output(self, h: np.ndarray) -> np.ndarray:
        last = self.ops[-1]
        n_out = last.get("out_channels", last.get("out_features"))
        minus = np.unpackbits(h.view(np.uint8), axis=-1, bitorder="little")[..., :n_out]
        vals = (1 - 2 * minus.astype(np.int8)).astype(np.float32)  # bit 1 -> -1, bit 0 -> +1
        return vals.transpose(0, 3, 1, 2) if vals.ndim == 4 else vals

    def classify(self, x) -> np.ndarray:
        return self.predict(x).argmax(axis=1)

    def _check_shape(self, x: np.ndarray) -> np.ndarray:
        c, h, w = self.input_shape
        if x.ndim == 2 and x.shape[1] == c * h * w:
            x = x.reshape(len(x), c, h, w)
        if x.ndim != 4 or x.shape[1:] != (c, h, w):
            raise ShapeError(f"model expects input of shape (N, {c}, {h}, {w}), got {x.shape}")
        return x

    def _check_input(self, x) -> np.ndarray:
        if hasattr(x, "detach") and hasattr(x, "numpy"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        c, h, w = self.input_shape
        if x.ndim == 2 and x.shape[1] == c * h * w:
            x = x.reshape(len(x), c, h, w)
        if x.ndim == 3 and c == 1 and x.shape[1:] == (h, w):
            x = x[:, None]
        if x.ndim != 4 or x.shape[1:] != (c, h, w):
            raise ShapeError(f"model expects images of shape (N, {c}, {h}, {w}), got {x.shape}")
        if x.dtype != np.uint8:
            if not np.issubdtype(x.dtype, np.number) or x.size and (
                    x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x))):
                raise ShapeError(f"model expects 8-bit pixel values (integers 0..255), got dtype {x.dtype}"
                                 f"{'' if not x.size else f' with range [{x.min()}, {x.max()}]'}")
            x = x.astype(np.uint8)
        return x

    def __repr__(self) -> str:
        layers = ", ".join(f"{o['op']}({o.get('in_channels', o.get('in_features'))}->"
                           f"{o.get('out_channels', o.get('out_features'))})" for o in self.ops)
        return f"BinaryNetwork({self.meta.get('recipe')}: {layers})"


def load(path: Union[str, Path]):
    """Load a ``.lbt`` model file for inference, without torch."""
    kind, meta, arrays = load_model_file(path)
    if kind == KIND:
        return BinaryNetwork(meta, arrays, str(path))
    if kind == "int_lstm":
        from ..rnn.int_lstm import load_int_lstm  # provided by the integer-LSTM part

        return load_int_lstm(path)
    raise CheckpointError(f"{path}: unknown model kind {kind!r}")
