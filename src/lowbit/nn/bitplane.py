"""Bit-plane first layer (QNN paper, Section 2.6): 8-bit inputs times binary weights with binary operations.

An 8-bit input x = sum_{n=1..8} 2^(n-1) x^n, with x^n in {0, 1} its n-th bit (n = 1 the least significant),
so for any weights w

    s = x . w = sum_{n=1..8} 2^(n-1) (x^n . w)

exactly: eight products of a 0/1 vector with the +-1 weights, shifted and added. With the identity
x^n . w = ((2 x^n - 1) . w + sum(w)) / 2, each of them is a +-1 x +-1 product, so the first layer too runs on
the XNOR-popcount kernel (:func:`bitplane_matmul` with ``binary_matmul=``).

* :func:`bitplane_dot`, :func:`bitplane_conv2d` -- PyTorch, for training: the same numbers as ``F.linear`` /
  ``F.conv2d`` on the integer inputs, and the same weight gradient (each plane product is linear in w).
* :class:`BitPlaneLinear`, :class:`BitPlaneConv2d` -- first layers computed that way, taking raw 8-bit
  pixels (0..255, as floats or uint8).
* :func:`bitplane_matmul` -- NumPy, for the runtime.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, ShapeError
from .layers import QuantConv2d, QuantLinear

PLANES = 8


def _planes_of(x: torch.Tensor, dtype: torch.dtype):
    """The 8 bit-planes of 8-bit integers given as uint8 or as integer-valued floats in [0, 255]."""
    if x.dtype == torch.uint8:
        xi = x.to(torch.int32)
    else:
        if x.is_floating_point():
            if not bool(((x == torch.round(x)) & (x >= 0) & (x <= 255)).all()):
                raise ShapeError("bit-plane input must hold 8-bit integers (0..255)")
        elif bool(((x < 0) | (x > 255)).any()):
            raise ShapeError("bit-plane input must hold 8-bit integers (0..255)")
        xi = x.to(torch.int32)
    return [((xi >> n) & 1).to(dtype) for n in range(PLANES)]


def bitplane_dot(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """s = sum_{n=1..8} 2^(n-1) F.linear(x^n, w) for 8-bit ``x`` (..., K) and weights ``w`` (N, K) -> (..., N).

    Equal to ``F.linear(x, w)`` (exactly, in float32, while every partial sum stays below 2^24: K * 255 for
    +-1 weights); differentiable in ``w`` with the same gradient, sum_n 2^(n-1) g^T x^n = g^T x. The input
    is data (no gradient).
    """
    planes = _planes_of(x, w.dtype)
    out = F.linear(planes[0], w)
    for n in range(1, PLANES):
        out = out + (2.0 ** n) * F.linear(planes[n], w)
    return out


def bitplane_conv2d(x: torch.Tensor, w: torch.Tensor, stride=1, padding=0) -> torch.Tensor:
    """The convolution of 8-bit ``x`` (N, C, H, W) with ``w`` by bit-planes; zero padding (the integer 0,
    a black pixel). Equal to ``F.conv2d(x, w, None, stride, padding)``, same weight gradient."""
    planes = _planes_of(x, w.dtype)
    out = F.conv2d(planes[0], w, None, stride, padding)
    for n in range(1, PLANES):
        out = out + (2.0 ** n) * F.conv2d(planes[n], w, None, stride, padding)
    return out


class BitPlaneLinear(QuantLinear):
    """A first layer on raw 8-bit inputs, ``y = bitplane_dot(x, weight_quantizer(W)) + b`` (default binary
    weights): the integer product x . w_b, computed plane by plane as the runtime does. Its input is the
    data itself, so ``input_quantizer`` must stay ``None``. Follow it by a batch norm (the scale of x . w
    is that of 255 * K)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, **kwargs):
        if kwargs.get("input_quantizer") is not None:
            raise ConfigError("BitPlaneLinear: input_quantizer must be None (the input is the 8-bit data)")
        super().__init__(in_features, out_features, bias=bias, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, w = self._quant_operands(x)
        y = bitplane_dot(x, w)
        if self.bias is not None:
            y = y + self.bias
        return self._quant_output(y)


class BitPlaneConv2d(QuantConv2d):
    """A first convolution on raw 8-bit images by bit-planes (zero padding = black); see
    :class:`BitPlaneLinear`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, bias: bool = True,
                 **kwargs):
        if kwargs.get("input_quantizer") is not None:
            raise ConfigError("BitPlaneConv2d: input_quantizer must be None (the input is the 8-bit data)")
        if kwargs.get("pad_value", 0.0) != 0.0:
            raise ConfigError("BitPlaneConv2d: pad_value must be 0 (the integer 0, a black pixel)")
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias, **kwargs)
        if self.dilation != (1, 1) or self.groups != 1:
            raise ConfigError("BitPlaneConv2d: dilation and groups are not supported")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, w = self._quant_operands(x)
        y = bitplane_conv2d(x, w, self.stride, self.padding)
        if self.bias is not None:
            y = y + self.bias.view(1, -1, 1, 1)
        return self._quant_output(y)


def bitplane_matmul(x_uint8: np.ndarray, w_pm1: np.ndarray,
                    binary_matmul: Optional[Callable[[np.ndarray, np.ndarray], np.ndarray]] = None) -> np.ndarray:
    """``x_uint8 @ w_pm1`` for 8-bit ``x`` (M, K) and +-1 ``w`` (K, N) by bit-planes, as int64 (M, N):

        s = sum_{n=1..8} 2^(n-1) (x^n @ w)

    Each plane product is an integer matmul, or, with ``binary_matmul(a, b)`` (+-1 ``a`` (M, K), +-1 ``b``
    (N, K) -> a @ b.T, the convention of ``lowbit.kernels.binary_matmul``), a binary GEMM:
    x^n @ w = ((2 x^n - 1) @ w + colsum(w)) / 2.
    """
    x = np.asarray(x_uint8)
    w = np.asarray(w_pm1)
    if x.ndim != 2 or w.ndim != 2 or x.shape[1] != w.shape[0]:
        raise ShapeError(f"bitplane_matmul: expected x (M, K) and w (K, N), got {x.shape} and {w.shape}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.integer) or (x.size and (x.min() < 0 or x.max() > 255)):
            raise ShapeError(f"bitplane_matmul: x must hold 8-bit integers (uint8), got dtype {x.dtype}")
        x = x.astype(np.uint8)
    if w.size and not np.all(np.abs(w) == 1):
        raise ShapeError("bitplane_matmul: w must hold only -1 and +1")
    wi = w.astype(np.int64)
    out = np.zeros((x.shape[0], w.shape[1]), dtype=np.int64)
    if binary_matmul is not None:
        colsum = wi.sum(axis=0)
        w_t = np.ascontiguousarray(w.T.astype(np.int8))
    for n in range(PLANES):
        plane = (x >> n) & 1
        if binary_matmul is None:
            prod = plane.astype(np.int64) @ wi
        else:
            a = 2 * plane.astype(np.int8) - 1
            prod = (np.asarray(binary_matmul(a, w_t)).astype(np.int64) + colsum) // 2
        out += prod << n
    return out
