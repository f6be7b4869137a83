"""k-bit quantizers of the QNN paper: uniform ("linear") and logarithmic levels, and gradient quantization.

Notation as in :mod:`lowbit.quantizers` (``g_q``: gradient arriving at the quantized output, ``g_r``: gradient
passed to the real-valued input), plus ``AP2(x) = sign(x) * 2^round(log2|x|)``, the approximate power of two
that turns a multiplication into a shift (used by logarithmic quantization, shift-based batch norm and
shift-based AdaMax).

Rounding convention, shared by every quantizer here: round to the nearest level, **ties go up** (towards
+inf), ``floor(v + 1/2)`` rather than ``torch.round``'s ties-to-even. With it the 1-bit linear quantizer is
exactly the paper's sign (0 -> +1), and a tie never depends on the parity of a level's index.
Stochastic rounding goes up with probability equal to the fractional position between the two neighbouring
levels, ``floor(v + u)``, ``u ~ U[0, 1)``: unbiased, ``E[q] = x`` inside the range.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction
from typing import Optional

import torch

from ..errors import ConfigError
from .base import Quantizer, register_quantizer

# --------------------------------------------------------------------------------------------------------
# AP2
# --------------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _sqrt_half_ceiling(dtype: torch.dtype) -> float:
    """The smallest value of ``dtype`` that is >= 2^(-1/2) (decided exactly, with rationals)."""
    c = torch.tensor(math.sqrt(0.5), dtype=dtype)
    if Fraction(float(c)) ** 2 < Fraction(1, 2):
        c = torch.nextafter(c, torch.tensor(1.0, dtype=dtype))
    return float(c)


def ap2(x: torch.Tensor) -> torch.Tensor:
    """Approximate power of two: AP2(x) = sign(x) * 2^round(log2|x|), AP2(0) = 0.

    Computed from the float's own exponent, not from ``log2`` (whose last-bit errors would move values that
    sit next to a rounding boundary): ``|x| = m 2^e`` with ``|m|`` in [1/2, 1) (``frexp``), and
    ``round(log2|x|) = e`` if ``|m| >= 2^(-1/2)`` (compared exactly against the first float of x's dtype at
    or above 2^(-1/2)), else ``e - 1``. The boundary ``2^(n + 1/2)`` is irrational, so no float is a tie.
    No gradient (use :func:`ap2_ste` inside a differentiable computation).
    """
    m, e = torch.frexp(x)
    e = e - (m.abs() < _sqrt_half_ceiling(x.dtype)).to(e.dtype)
    return torch.sign(x) * torch.exp2(e.to(x.dtype))


def ap2_ste(x: torch.Tensor) -> torch.Tensor:
    """AP2 with the straight-through gradient: forward AP2(x), backward g_r = g_q (dAP2(x)/dx := 1).

    AP2(x) / x lies in [2^-1/2, 2^1/2], so the identity is an estimate of the local slope within a factor
    1.41 either way, and it never vanishes (the true derivative of the staircase is 0 almost everywhere).
    """
    return x + (ap2(x) - x).detach()


def ap2_scalar(x: float) -> float:
    """AP2 of a Python float (for step sizes), same rounding as :func:`ap2`."""
    if x == 0 or not math.isfinite(x):
        return float(x)
    m, e = math.frexp(abs(x))
    if m * m < 0.5:
        e -= 1
    return math.copysign(math.ldexp(1.0, e), x)


# --------------------------------------------------------------------------------------------------------
# Linear (uniform) quantization
# --------------------------------------------------------------------------------------------------------

LINEAR_MODES = ("symmetric", "unsigned")
ROUNDINGS = ("nearest", "stochastic")


def _check_bits(name: str, bits, lo: int = 1, hi: int = 8) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, float)) or int(bits) != bits or not lo <= bits <= hi:
        raise ConfigError(f"{name}: bits must be an integer in {lo}..{hi}, got {bits!r}")
    return int(bits)


def _uniform_levels(x: torch.Tensor, bits: int, max_value, signed: bool, stochastic: bool,
                    generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Forward of linear quantization (no autograd). ``max_value`` may be a float or a 0-dim tensor > 0.

    symmetric: 2^k levels a*(2j+1)/(2^k-1), j = -2^(k-1) .. 2^(k-1)-1 (no zero level), step bw = 2a/(2^k-1);
               nearest: j = floor(x/bw), i.e. LinearQuant on the grid shifted by bw/2.
    unsigned:  2^k levels a*j/(2^k-1), j = 0 .. 2^k-1, step bw = a/(2^k-1); nearest: j = floor(x/bw + 1/2),
               i.e. exactly the paper's clip(round(x/bw)*bw, 0, a).
    """
    n = 2 ** bits - 1
    a = max_value
    # In place on one fresh tensor: this runs on every forward (and, for gradients, every backward).
    if signed:
        v = x * (n / (2.0 * a))  # = x / bw, then clip x to [-a, a]
        v.clamp_(-n / 2.0, n / 2.0)
        if stochastic:
            v.sub_(0.5).add_(torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype))
        half = 2 ** (bits - 1)
        v.floor_().clamp_(-half, half - 1)  # j
        return v.mul_(2.0).add_(1.0).div_(n).mul_(a)  # a (2j + 1) / n
    v = x * (n / a)  # = x / bw, then clip x to [0, a]
    v.clamp_(0.0, float(n))
    if stochastic:
        v.add_(torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype))
    else:
        v.add_(0.5)
    v.floor_().clamp_(0, n)  # j
    return v.div_(n).mul_(a)  # a j / n


class _LinearQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits, max_value, signed, stochastic, generator):
        ctx.save_for_backward(x)
        ctx.lo = -max_value if signed else 0.0
        ctx.hi = max_value
        return _uniform_levels(x, bits, max_value, signed, stochastic, generator)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        inside = (x >= ctx.lo) & (x <= ctx.hi)
        return grad_output * inside.to(grad_output.dtype), None, None, None, None, None


def linear_quantize(x: torch.Tensor, bits: int, max_value: float = 1.0, mode: str = "symmetric",
                    rounding: str = "nearest", generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """k-bit uniform quantization over a stated range, with the cancelled straight-through gradient.

    forward:  symmetric (weights; activations in [-a, a]), a = max_value, n = 2^k - 1:
                  q = a (2j + 1) / n,  j = clamp(floor(x n / (2a)), -2^(k-1), 2^(k-1) - 1)
              -> 2^k levels evenly spaced over [-a, a], both ends included, no zero: k=1 {-a, a} (the sign,
                 0 -> +a), k=2 {-a, -a/3, a/3, a}, k=3 {-a, -5a/7, ..., 5a/7, a}. Every code is used,
                 and the levels are symmetric, so the deployed dot product is
                 sum w x = a/n * (2 sum j' x - n sum x) with integer codes j' = j + 2^(k-1) in 0..n.
              unsigned (activations in [0, a], e.g. after a ReLU):
                  q = a j / n,  j = clamp(floor(x n / a + 1/2), 0, n)
              -> 2^k levels {0, a/n, ..., a}: the paper's LinearQuant(x, bw) = clip(round(x/bw) bw, 0, a) with
                 bw = a / n.
              Ties go up; ``rounding="stochastic"`` replaces floor(v + 1/2) by floor(v + u), u ~ U[0, 1),
              which is unbiased: E[q] = clip(x).
    backward: g_r = g_q * 1{lo <= x <= hi}  ([lo, hi] = [-a, a] or [0, a]; the range ends pass, as in
              ste_sign's 1{|x| <= 1}; beyond them the gradient is cancelled).
    """
    bits, max_value = _check_linear_args(bits, max_value, mode, rounding)
    return _LinearQuant.apply(x, bits, max_value, mode == "symmetric", rounding == "stochastic", generator)


def _check_linear_args(bits, max_value, mode: str, rounding: str):
    """(bits, float max_value) after checking every argument of the linear quantizer."""
    bits = _check_bits("linear", bits)
    if mode not in LINEAR_MODES:
        raise ConfigError(f"linear: mode must be one of {LINEAR_MODES}, got {mode!r}")
    if rounding not in ROUNDINGS:
        raise ConfigError(f"linear: rounding must be one of {ROUNDINGS}, got {rounding!r}")
    if not (isinstance(max_value, (int, float)) and math.isfinite(max_value) and max_value > 0):
        raise ConfigError(f"linear: max_value must be a finite number > 0, got {max_value!r}")
    return bits, float(max_value)


@register_quantizer("linear", "kbit")
class LinearQuant(Quantizer):
    """k-bit uniform quantization of weights or activations; see :func:`linear_quantize`.

    Args:
        bits: 1..8.
        max_value: the range ``a``: levels over [-a, a] (``mode="symmetric"``) or [0, a] (``"unsigned"``).
            The default 1.0 matches the latent-weight clip and the hardtanh range of the BNN models, so
            ``linear:bits=1`` is exactly ``ste_sign``.
        mode: ``"symmetric"`` (weights, or activations after a hardtanh-like clip) or ``"unsigned"``.
        rounding: ``"nearest"`` (ties up) or ``"stochastic"`` (training only; evaluation rounds to nearest,
            as :class:`lowbit.quantizers.StochasticSign` does).
    """

    roles = frozenset({"weight", "activation"})

    def __init__(self, bits: int = 2, max_value: float = 1.0, mode: str = "symmetric", rounding: str = "nearest"):
        super().__init__()
        self.bits, self.max_value = _check_linear_args(bits, max_value, mode, rounding)
        self.mode = mode
        self.rounding = rounding
        self.binary = self.bits == 1 and mode == "symmetric" and self.max_value == 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rounding = self.rounding if self.training else "nearest"
        return linear_quantize(x, self.bits, self.max_value, self.mode, rounding)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, max_value={self.max_value}, mode={self.mode}, rounding={self.rounding}"


# --------------------------------------------------------------------------------------------------------
# Logarithmic quantization
# --------------------------------------------------------------------------------------------------------


def log_range(bits: int, max_value: float = 1.0):
    """(minV, maxV) of k-bit logarithmic quantization: 1 sign bit and k-1 exponent bits, i.e. 2^(k-1)
    magnitudes 2^e, e = e_max - 2^(k-1) + 1 .. e_max, with maxV = 2^e_max = AP2(max_value)."""
    bits = _check_bits("log", bits)
    if not (isinstance(max_value, (int, float)) and math.isfinite(max_value) and max_value > 0):
        raise ConfigError(f"log: max_value must be a finite number > 0 (a zero range has no levels), got {max_value!r}")
    max_v = ap2_scalar(float(max_value))
    min_v = math.ldexp(max_v, -(2 ** (bits - 1) - 1))
    if min_v == 0.0:
        raise ConfigError(f"log: max_value {max_value} with {bits} bits has a smallest level that underflows to 0")
    return min_v, max_v


class _LogQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, min_v, max_v):
        ctx.save_for_backward(x)
        ctx.max_v = max_v
        mag = ap2(x.abs()).clamp(min_v, max_v)
        return torch.where(x >= 0, mag, -mag)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return grad_output * (x.abs() <= ctx.max_v).to(grad_output.dtype), None, None


def log_quantize(x: torch.Tensor, bits: int, max_value: float = 1.0) -> torch.Tensor:
    """k-bit logarithmic quantization, LogQuant(x) = clip(AP2(x), minV, maxV) on the magnitude, sign kept.

    forward:  q = s * clip(2^round(log2|x|), minV, maxV), s = +1 if x >= 0 else -1 (the paper's sign),
              maxV = AP2(max_value), minV = maxV * 2^-(2^(k-1) - 1) (see :func:`log_range`): the code is one
              sign bit and k-1 bits of exponent, so a product with a weight is a shift. There is no zero
              code (as in binarization, which is k = 1: q = s * maxV): |x| below minV, 0 included, becomes
              s * minV. Rounding is in the log domain (the boundary between 2^e and 2^(e+1) is 2^(e+1/2)).
    backward: g_r = g_q * 1{|x| <= maxV} (cancelled beyond the range; small values keep their gradient).
    """
    min_v, max_v = log_range(bits, max_value)
    return _LogQuant.apply(x, min_v, max_v)


@register_quantizer("log", "logarithmic")
class LogQuant(Quantizer):
    """k-bit logarithmic quantization of weights or activations; see :func:`log_quantize`.

    Args: bits 1..8 (1 sign bit + bits-1 exponent bits), max_value > 0 (rounded to a power of two).
    """

    roles = frozenset({"weight", "activation"})

    def __init__(self, bits: int = 4, max_value: float = 1.0):
        super().__init__()
        self.bits = _check_bits("log", bits)
        self.min_value, self.max_value = log_range(self.bits, max_value)
        self.binary = self.bits == 1 and self.max_value == 1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _LogQuant.apply(x, self.min_value, self.max_value)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, min_value={self.min_value:g}, max_value={self.max_value:g}"


# --------------------------------------------------------------------------------------------------------
# Gradient quantization
# --------------------------------------------------------------------------------------------------------


def quantize_gradient(g: torch.Tensor, bits: int, generator: Optional[torch.Generator] = None,
                      per_sample: bool = True) -> torch.Tensor:
    """DoReFa-Net's k-bit gradient quantizer ``fg`` (a function of the gradient tensor, no autograd):

        M = max|g| over every axis but the batch axis 0 (per sample; ``per_sample=False``: over the whole
            tensor; a tensor of fewer than 2 dimensions is always one sample)
        q = 2M * (Q_k(g / (2M) + 1/2) - 1/2)

    with Q_k unbiased stochastic rounding to the 2^k levels {0, 1/n, ..., 1}, n = 2^k - 1 (DoReFa adds
    U(-1/2n, 1/2n) noise and rounds: the same as floor(n y + U(0, 1)) / n). So each sample's q takes at most
    2^k values M (2j + 1) / n, j = -2^(k-1) .. 2^(k-1) - 1, and E[q] = g. An entry with |g| = M stays
    exactly +-M. A sample of zeros stays zeros (M = 0); otherwise a zero entry becomes +-M/n at random (no
    zero level, as in DoReFa-Net; unbiased all the same). Per-sample scaling keeps a sample whose gradients
    are 1000x smaller than the others' on its own grid instead of drowning it in the largest sample's noise.
    """
    bits = _check_bits("grad", bits, 1, 16)
    n = 2 ** bits - 1
    a = g.detach().abs()
    m = a.amax(dim=tuple(range(1, g.dim())), keepdim=True) if per_sample and g.dim() >= 2 else a.amax()
    # Level index k = floor((g/M + 1) n/2 + u) in 0..n, value M (2k - n) / n (the same levels and rounding
    # as _uniform_levels' symmetric stochastic mode, in fewer passes: this runs on every backward).
    p = g / torch.clamp(m, min=torch.finfo(g.dtype).tiny)
    p.mul_(n / 2).add_(n / 2)
    p.add_(torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)).floor_().clamp_(0, n)
    return p.mul_(2).sub_(n).div_(n).mul_(m)  # M = 0 (all zeros) gives zeros


class _GradQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bits, generator, per_sample):
        ctx.bits = bits
        ctx.generator = generator
        ctx.per_sample = per_sample
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output):
        return quantize_gradient(grad_output, ctx.bits, ctx.generator, ctx.per_sample), None, None, None


def grad_quantize(x: torch.Tensor, bits: int, generator: Optional[torch.Generator] = None,
                  per_sample: bool = True) -> torch.Tensor:
    """Identity in the forward pass; the gradient flowing back through it is quantized.

    forward:  y = x
    backward: g_r = quantize_gradient(g_y, bits, per_sample)  (DoReFa's fg: per-sample max scaling,
              unbiased stochastic rounding)
    """
    return _GradQuant.apply(x, _check_bits("grad", bits, 1, 16), generator, bool(per_sample))


@register_quantizer("grad", "dorefa_grad")
class GradQuant(Quantizer):
    """k-bit gradient quantizer for a layer's ``grad_quantizer`` argument; see :func:`quantize_gradient`.

    A layer that has one applies it (each time with its own scale and random draws) to

    1. the gradient w.r.t. the layer's output (the back-propagated activation gradient, which is what
       DoReFa-Net's ``fg`` quantizes), before it enters both backward products (dx = g_q W_q,
       dW = g_q^T x_q): with k-bit weights and inputs, every product of the forward and the backward pass
       then has low-bit operands (the paper's quantized-gradient experiment) -- always;
    2. the weight gradient, after those products and the weight quantizer's STE (``weight_grad=True``), so
       what the optimizer sees is k-bit too (lowbit's addition; one scale for the whole tensor: a weight has
       no batch axis);
    3. the gradient passed on to the layer's input (``input_grad=True``), so what travels between layers
       is k-bit (the next layer down quantizes its own output gradient again, after its batch norm).

    ``weight_grad=False, input_grad=False`` is DoReFa-Net's ``fg`` alone. Activation gradients (1 and 3) are
    scaled per sample by default, as ``fg`` does (``scale="tensor"``: one max over the whole tensor, lowbit's
    behaviour before).

    Args: bits 1..16 (the paper's experiment: 6), weight_grad, input_grad, scale ("sample" or "tensor").
    Forward: identity (``bits`` here is the precision of the gradient, not of a forward value).
    """

    roles = frozenset({"gradient"})

    def __init__(self, bits: int = 6, weight_grad: bool = True, input_grad: bool = True, scale: str = "sample"):
        super().__init__()
        self.bits = _check_bits("grad", bits, 1, 16)
        self.weight_grad = bool(weight_grad)
        self.input_grad = bool(input_grad)
        if scale not in ("sample", "tensor"):
            raise ConfigError(f"grad: scale must be 'sample' or 'tensor', got {scale!r}")
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize the gradient of an activation-shaped ``x`` (batch first)."""
        return _GradQuant.apply(x, self.bits, None, self.scale == "sample")

    def weight_gradient(self, w: torch.Tensor) -> torch.Tensor:
        """Quantize the gradient of a weight (one scale for the tensor)."""
        return _GradQuant.apply(w, self.bits, None, False)

    def extra_repr(self) -> str:
        return (f"bits={self.bits}, weight_grad={self.weight_grad}, input_grad={self.input_grad}, "
                f"scale={self.scale}")
