"""Quantizer plumbing for recurrent layers: resolving specs, k-bit defaults, weight scaling, gate mapping.

Every value a recurrent layer quantizes lives in, or is mapped to, the interval [-1, 1]:

* tanh outputs and the LSTM hidden state ``o * tanh(c)`` are in (-1, 1) already;
* sigmoid gates ``s`` in (0, 1) are quantized through the equivalent ``2 s - 1`` (note
  ``sigmoid(x) = (1 + tanh(x / 2)) / 2``): ``s_q = (q(2 s - 1) + 1) / 2``, so any quantizer on [-1, 1] serves
  both, and a k-bit quantizer gives the gates the k-bit grid ``{j / (2^k - 1)}`` including exactly 0 and 1
  (``ste_sign`` gives binary gates {0, 1});
* weights ``w`` are scaled into [-1, 1] per matrix: ``w_q = s * q(w / s)`` with ``s = max|w|`` (detached,
  the straight-through estimator passes through ``q`` only), so a k-bit weight matrix takes the levels
  ``s * levels(q)``. Without this scale, a fixed [-1, 1] grid would give every weight of a 650-wide layer
  (|w| ~ 0.04) the same few values. ``weight_scale="none"`` uses ``q(w)`` as it is.

A quantizer is given as anything :func:`lowbit.quant.get_quantizer` accepts (a registry name such as
``"ste_sign"``, a module, a callable), optionally with keyword arguments (``weight_quantizer_args``), or by
a bit count alone: ``bits=k < 32`` with no name selects the registry's ``"linear"`` quantizer (k bits,
symmetric on [-1, 1]: the 2^k levels (2 j + 1) / (2^k - 1), no 0, ties up).
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import QUANTIZERS
from .base import Identity, QuantizerSpec, get_quantizer, quantizer_bits


def make_quantizer(spec: QuantizerSpec = None, bits: Optional[int] = None,
                   args: Optional[Dict[str, Any]] = None) -> nn.Module:
    """Resolve a quantizer for a recurrent layer.

    ``spec`` given: ``get_quantizer(spec, **args)`` (``bits`` is passed as ``args["bits"]`` when the spec is a
    name whose class takes ``bits``, ``bits < 32`` and ``args`` has none). No spec (or ``"auto"``): identity
    for ``bits`` None or >= 32, else ``"linear"`` with ``bits``.
    """
    args = dict(args or {})
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "auto")):
        if bits is None or int(bits) >= 32:
            if args:
                raise ConfigError(f"quantizer arguments {args} given without a quantizer name")
            return Identity()
        return get_quantizer("linear", bits=int(bits), **args)
    if isinstance(spec, str) and bits is not None and int(bits) < 32 and "bits" not in args and _takes_bits(spec):
        args["bits"] = int(bits)
    q = get_quantizer(spec, **args) if isinstance(spec, str) else get_quantizer(spec)
    if bits is not None and int(bits) < 32 and quantizer_bits(q) not in (int(bits), 32):
        raise ConfigError(f"quantizer {spec!r} has {quantizer_bits(q)} bits, but bits={bits} was asked for")
    return q


def _takes_bits(name: str) -> bool:
    """Whether the registered quantizer ``name`` has a ``bits`` argument."""
    import inspect

    base, _, inline = name.partition(":")
    if "bits=" in inline.replace(" ", ""):
        return False  # "linear:bits=3" carries its own bit count
    cls = QUANTIZERS.get(base.strip().lower())
    if cls is None:
        return False
    try:
        return "bits" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return False


def is_identity(q: nn.Module) -> bool:
    return isinstance(q, Identity) or isinstance(q, nn.Identity)


class ScaledWeightQuantizer(nn.Module):
    """``w -> s * q(w / s)`` with ``s = max|w|`` per tensor (detached), or ``q(w)`` for ``scale="none"``.

    ``bits``/``binary`` are those of ``q``; identity ``q`` returns ``w`` unchanged (exactly).
    """

    def __init__(self, quantizer: nn.Module, scale: str = "max"):
        super().__init__()
        if scale not in ("max", "none"):
            raise ConfigError(f"weight_scale must be 'max' or 'none', got {scale!r}")
        self.quantizer = quantizer
        self.scale = scale
        self.bits = quantizer_bits(quantizer)
        self.binary = bool(getattr(quantizer, "binary", False))

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if is_identity(self.quantizer):
            return w
        if self.scale == "none":
            return self.quantizer(w)
        s = torch.clamp(w.detach().abs().max(), min=1e-8)
        return s * self.quantizer(w / s)

    def extra_repr(self) -> str:
        return f"scale={self.scale}"


def quantize_gate(q: nn.Module, s: torch.Tensor) -> torch.Tensor:
    """A sigmoid gate ``s`` in (0, 1) quantized on [-1, 1]: ``(q(2 s - 1) + 1) / 2``."""
    if is_identity(q):
        return s
    return (q(2.0 * s - 1.0) + 1.0) * 0.5


def describe(q: nn.Module) -> str:
    inner = getattr(q, "quantizer", None) if isinstance(q, ScaledWeightQuantizer) else q
    name = getattr(inner, "registry_name", None) or type(inner).__name__
    bits = quantizer_bits(inner)
    return name if bits >= 32 else f"{name}({bits} bits)"
