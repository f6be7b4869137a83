"""Torch-free inference of an exported binarized network (NumPy + lowbit's native kernels).

Activations between layers are bits: a (N, words) uint64 matrix for dense features, an (N, H, W, words)
array for conv features (NHWC, channels packed along the last axis, bit 1 = -1, padding bits 0 = +1).
Each layer is a :class:`lowbit.runtime.ops.Layer`: a reduction chosen by its weight format (8-bit pixels
x +-1 weights exactly, or XNOR-popcount on packed bits), optional 2x2 max-pooling, and an epilogue
(BN + sign as one integer threshold per channel, packed back to bits; or the last BN's float affine map
giving the logits). See :mod:`lowbit.runtime.ops` for the tables.
"""

from __future__ import annotations

from typing import Dict, List

import numpy as np

from ..errors import CheckpointError, InputError, ShapeError
from .ops import Layer, image_batch

KIND = "binary_sequential"

# byte -> its 8 bits as +-1 float32 values (bit 1 = -1, least significant bit first), each row one 32-byte item:
# unpacking output bits is then one np.take over the bytes (2x faster than unpackbits + two casts)
_PM1_OF_BYTE = np.ascontiguousarray(
    (1.0 - 2.0 * np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")).astype(np.float32)
).view(np.dtype((np.void, 32))).ravel()


class BinaryNetwork:
    """An exported binarized network. ``predict(x)`` takes uint8 pixels (N, C, H, W) (or (N, C*H*W)) and
    returns float32 logits (N, classes); ``classify(x)`` the argmax."""

    task = "image"

    #: ``predict`` runs at most this many images through the layers at once (bounded memory for any batch)
    batch_chunk = 8192

    def __init__(self, meta: Dict, arrays: Dict[str, np.ndarray], path: str = "<memory>"):
        from .. import kernels  # the native extension; imported here so a missing build names itself

        self._k = kernels
        self.meta = meta
        self.path = path
        try:
            self.input_shape = tuple(meta["input_shape"])
            self.num_classes = int(meta["num_classes"])
            self.layers: List[Layer] = [Layer.prepare(kernels, dict(op), arrays, path) for op in meta["ops"]]
        except KeyError as exc:
            raise CheckpointError(f"{path}: model file lacks {exc} (corrupt or from another tool)") from None
        self.ops = [layer.spec for layer in self.layers]

    def predict(self, x) -> np.ndarray:
        """Float32 logits for a batch of 8-bit images (uint8 or integer-valued array, (N, C, H, W)).

        A network exported with ``binary_input`` takes +-1 values (any real: >= 0 is +1) instead, and one
        exported with ``output="bits"`` returns +-1 float32 values in (N, C, H, W) or (N, F) layout."""
        bits_in = self.meta.get("input", "pixels") == "bits"
        if hasattr(x, "detach") and hasattr(x, "numpy"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if np.iscomplexobj(x):
            raise InputError(f"model expects real-valued input, got complex dtype {x.dtype}")
        x = self._check_shape(x) if bits_in else self._check_input_shape(x)
        n = len(x)
        if n == 0:  # an empty batch gives an empty result of the right shape
            return self._predict_chunk(np.zeros((1,) + x.shape[1:], x.dtype), bits_in)[:0]
        step = max(1, int(self.batch_chunk))
        if n <= step:
            return self._predict_chunk(x, bits_in)
        first = self._predict_chunk(x[:step], bits_in)
        out = np.empty((n,) + first.shape[1:], first.dtype)
        out[:step] = first
        for i in range(step, n, step):
            out[i:i + step] = self._predict_chunk(x[i:i + step], bits_in)
        return out

    def _predict_chunk(self, x: np.ndarray, bits_in: bool) -> np.ndarray:
        first = self.layers[0].spec
        if bits_in:
            h = x.transpose(0, 2, 3, 1) if first["op"] == "conv2d" else x.reshape(len(x), -1)
            lead = h.shape[:-1]
            h = self._k.pack_signs(np.ascontiguousarray(h).reshape(-1, h.shape[-1]))
            h = h.reshape(*lead, h.shape[-1])
        else:
            x = self._check_values(x)
            h = x.transpose(0, 2, 3, 1) if first["op"] == "conv2d" else x.reshape(len(x), -1)
            h = np.ascontiguousarray(h)
        for layer in self.layers:
            h = layer.run(self._k, h)
        if self.meta.get("output", "logits") == "bits":
            return self._unpack_output(h)
        return h

    def _unpack_output(self, h: np.ndarray) -> np.ndarray:
        last = self.ops[-1]
        n_out = last.get("out_channels", last.get("out_features"))
        h = np.ascontiguousarray(h)
        vals = np.take(_PM1_OF_BYTE, h.view(np.uint8)).view(np.float32).reshape(*h.shape[:-1], 64 * h.shape[-1])
        if vals.shape[-1] != n_out:
            vals = np.ascontiguousarray(vals[..., :n_out])
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

    def _check_input_shape(self, x: np.ndarray) -> np.ndarray:
        return image_batch(x, self.input_shape)

    @staticmethod
    def _check_values(x: np.ndarray) -> np.ndarray:
        if x.dtype != np.uint8:
            if not np.issubdtype(x.dtype, np.number) or x.size and (
                    not np.isfinite(x).all() if np.issubdtype(x.dtype, np.floating) else False):
                raise InputError(f"model expects 8-bit pixel values (integers 0..255), got dtype {x.dtype}"
                                 f"{'' if not x.size else ' with non-finite values'}")
            if x.size and (x.min() < 0 or x.max() > 255 or not np.array_equal(x, np.round(x))):
                raise InputError(f"model expects 8-bit pixel values (integers 0..255), got dtype {x.dtype}"
                                 f" with range [{x.min()}, {x.max()}]")
            x = x.astype(np.uint8)
        return x

    def _check_input(self, x) -> np.ndarray:
        """The checked uint8 (N, C, H, W) view of ``x`` (shape: ShapeError; values: InputError)."""
        if hasattr(x, "detach") and hasattr(x, "numpy"):
            x = x.detach().cpu().numpy()
        x = np.asarray(x)
        if np.iscomplexobj(x):
            raise InputError(f"model expects real-valued input, got complex dtype {x.dtype}")
        return self._check_values(self._check_input_shape(x))

    def __repr__(self) -> str:
        return f"BinaryNetwork({self.meta.get('recipe')}: {', '.join(map(repr, self.layers))})"

