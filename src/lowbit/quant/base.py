"""Quantizers: the functions that map real values to a few levels, with their training-time gradients.

Each quantizer is a small pure function whose forward and backward are given in its docstring, plus an
``nn.Module`` wrapper so it can sit in a model (it then knows ``self.training``, holds learnable
parameters where a method needs them, and shows in ``repr``). Layers take a quantizer by registry name
(``"ste_sign"``), as a module, or as any callable ``x -> x_q``.

Notation: ``1{.}`` is the indicator; ``g_q`` the gradient arriving at the quantized output, ``g_r`` the one
passed to the real-valued input (the straight-through estimator, STE).
"""

from __future__ import annotations

from typing import Callable, Optional, Union

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import QUANTIZERS

# --------------------------------------------------------------------------------------------------------
# Pure functions
# --------------------------------------------------------------------------------------------------------


def sign(x: torch.Tensor) -> torch.Tensor:
    """The paper's sign: +1 where x >= 0, -1 elsewhere (``torch.sign`` maps 0 to 0, which is not a bit)."""
    # sign -> {-1, 0, +1}; + 0.5 -> {-0.5, 0.5, 1.5}; sign -> {-1, +1, +1}. One allocation, then in place:
    # on a 4096x4096 weight this is several times faster than torch.where with two constant tensors.
    return torch.sign(x).add_(0.5).sign_()


def _ste_mask_grad(x: torch.Tensor, grad: torch.Tensor, clip_value: float) -> torch.Tensor:
    """g * 1{|x| <= clip}; when every |x| is inside (always so for clipped latent weights) the mask is all
    ones and the gradient passes without allocating a mask the size of the weights."""
    lo, hi = torch.aminmax(x)
    if float(lo) >= -clip_value and float(hi) <= clip_value:
        return grad
    return torch.where(x.abs() <= clip_value, grad, torch.zeros((), dtype=grad.dtype, device=grad.device))


class _SteSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, clip_value):
        ctx.save_for_backward(x)
        ctx.clip_value = clip_value
        return sign(x)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        # Gradient cancellation: |x| <= clip passes, beyond it the gradient is zero (the QNN paper reports
        # that keeping it "significantly worsens performance"). Equality passes, as in 1{|r| <= 1}.
        return _ste_mask_grad(x, grad_output, ctx.clip_value), None


def ste_sign(x: torch.Tensor, clip_value: float = 1.0) -> torch.Tensor:
    """Deterministic binarization with the straight-through estimator.

    forward:  q = +1 if x >= 0 else -1
    backward: g_r = g_q * 1{|x| <= clip_value}
    """
    return _SteSign.apply(x, float(clip_value))


def hard_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """hard_sigmoid(x) = clip((x + 1) / 2, 0, 1)."""
    return ((x + 1.0) * 0.5).clamp(0.0, 1.0)


class _StochasticSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, clip_value, generator):
        ctx.save_for_backward(x)
        ctx.clip_value = clip_value
        u = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        return sign(hard_sigmoid(x) - u)  # +1 with probability hard_sigmoid(x) (u < p; p - u = 0 has measure 0)

    @staticmethod
    def backward(ctx, grad_output):
        (x,) = ctx.saved_tensors
        return _ste_mask_grad(x, grad_output, ctx.clip_value), None, None


def stochastic_sign(
    x: torch.Tensor, clip_value: float = 1.0, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Stochastic binarization (training only; evaluation uses ``ste_sign``).

    forward:  q = +1 with probability hard_sigmoid(x) = clip((x + 1) / 2, 0, 1), else -1
    backward: g_r = g_q * 1{|x| <= clip_value}
    """
    return _StochasticSign.apply(x, float(clip_value), generator)


# --------------------------------------------------------------------------------------------------------
# Modules and registry
# --------------------------------------------------------------------------------------------------------


class Quantizer(nn.Module):
    """Base class. ``bits`` is the precision of the output (32 = full precision); ``binary`` tells the
    runtime and the summary that the output is exactly {-1, +1}."""

    bits: int = 32
    binary: bool = False


def register_quantizer(*names: str):
    """Class decorator: make a quantizer available to layers under each of ``names``
    (:data:`lowbit.registry.QUANTIZERS`)."""
    return QUANTIZERS.register(*names)


@register_quantizer("identity", "fp32", "none")
class Identity(Quantizer):
    """Full precision: q = x, g_r = g_q. Lets every layer run at 32 bits for comparison."""

    bits = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@register_quantizer("ste_sign", "sign", "binary")
class SteSign(Quantizer):
    """Deterministic binarization; see :func:`ste_sign`."""

    bits = 1
    binary = True

    def __init__(self, clip_value: float = 1.0):
        super().__init__()
        if not clip_value > 0:
            raise ConfigError(f"ste_sign: clip_value must be > 0, got {clip_value}")
        self.clip_value = float(clip_value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return ste_sign(x, self.clip_value)

    def extra_repr(self) -> str:
        return f"clip_value={self.clip_value}"


@register_quantizer("stochastic_sign", "stochastic_binary")
class StochasticSign(SteSign):
    """Stochastic binarization while training, deterministic ``ste_sign`` at evaluation; see
    :func:`stochastic_sign`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return stochastic_sign(x, self.clip_value)
        return ste_sign(x, self.clip_value)


QuantizerSpec = Union[None, str, nn.Module, Callable[[torch.Tensor], torch.Tensor]]


class _Lambda(Quantizer):
    """Wraps a plain callable so it can live in a module tree."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn
        self.bits = getattr(fn, "bits", 32)
        self.binary = getattr(fn, "binary", False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


def _parse_spec_value(text: str):
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text.strip()


def parse_quantizer_spec(spec: str):
    """``"name:key=value,key=value"`` -> (name, kwargs), values parsed as int, float, bool, None or str.

    This is how a configuration (a recipe, ``--set model.weight_quantizer=linear:bits=2``, a checkpoint)
    names a quantizer with arguments in one string.
    """
    name, _, rest = spec.partition(":")
    kwargs = {}
    for item in rest.split(","):
        if not item.strip():
            continue
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"quantizer {spec!r}: arguments must be written key=value, got {item!r}")
        kwargs[key.strip()] = _parse_spec_value(value)
    return name, kwargs


def get_quantizer(spec: QuantizerSpec, **kwargs) -> nn.Module:
    """Resolve a quantizer given by name (``"ste_sign"``), module, callable, or ``None`` (identity).

    Keyword arguments are passed to the registered class when ``spec`` is a name; a name may carry them
    itself as ``"name:key=value,..."`` (e.g. ``"linear:bits=2,rounding=stochastic"``).
    """
    if spec is None:
        return Identity()
    if isinstance(spec, str) and ":" in spec:
        spec, inline = parse_quantizer_spec(spec)
        kwargs = {**inline, **kwargs}
    if isinstance(spec, str):
        cls = QUANTIZERS.get(spec)
        try:
            return cls(**kwargs)
        except TypeError as exc:
            raise ConfigError(f"quantizer {spec!r}: bad arguments {kwargs}: {exc}") from None
    if kwargs:
        raise ConfigError("quantizer keyword arguments are only accepted with a registry name")
    if isinstance(spec, nn.Module):
        return spec
    if callable(spec):
        return _Lambda(spec)
    raise ConfigError(f"a quantizer must be a name, a module or a callable, got {type(spec).__name__}")


def quantizer_bits(q: nn.Module) -> int:
    """Precision of a quantizer's output, 32 for anything that does not say."""
    return int(getattr(q, "bits", 32))


def is_binary(q: nn.Module) -> bool:
    return bool(getattr(q, "binary", False))

