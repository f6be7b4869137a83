"""Quantized layers: drop-in replacements for ``nn.Linear`` and ``nn.Conv2d``, and quantized activations.

A quantized layer keeps *real-valued latent weights* (``self.weight``): they are what the optimizer
updates and what is saved; the forward pass uses ``weight_quantizer(weight)`` and
``input_quantizer(input)``. Latent weights are clipped to ``[-weight_clip, weight_clip]`` after every
optimizer step by the hook that :func:`lowbit.optim.build_optimizer` installs (BinaryConnect: beyond the
clip a latent weight would only drift away from the point where its sign can flip).

With a ``grad_quantizer`` (e.g. ``"grad:bits=6"``, :class:`lowbit.quant.kbit.GradQuant`) a layer also quantizes
its gradients: the gradient w.r.t. its output before it enters the two backward products (so with low-bit
weights and inputs, every product of the forward and the backward pass has low-bit operands), and, as the
gradient quantizer says, the weight gradient and the gradient passed to its input.
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..quant.base import Identity, QuantizerSpec, get_quantizer, is_binary, quantizer_bits


def _describe(q: nn.Module) -> str:
    return getattr(q, "registry_name", type(q).__name__)


def check_quantizer_role(q: nn.Module, role: str, where: str) -> None:
    """Refuse a quantizer that declares ``roles`` (e.g. PACT: activations only; SAWB: weights only; a
    gradient quantizer: gradients only) where it cannot work. Quantizers without ``roles`` fit anywhere."""
    roles = getattr(q, "roles", None)
    if roles is not None and role not in roles:
        raise ConfigError(
            f"{where}: quantizer {_describe(q)!r} cannot quantize {role}s "
            f"(it is for {' and '.join(sorted(r + 's' for r in roles))} only)"
        )



def full_precision(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 when autocast left it in bfloat16/float16 (exact), so quantizers compute their
    levels in float32 whatever precision the GEMMs run in (``TrainConfig.amp``)."""
    return x.float() if x.dtype in (torch.bfloat16, torch.float16) else x

class QuantLayerMixin:
    """What every quantized weight layer shares: quantizers, latent-weight clip, Glorot LR scale."""

    weight: nn.Parameter
    weight_quantizer: nn.Module
    input_quantizer: nn.Module
    weight_clip: Optional[float]
    grad_quantizer: Optional[nn.Module]

    def _layer_name(self) -> str:
        w = self.weight
        return f"{type(self).__name__}({w.shape[1]}, {w.shape[0]})"

    def _init_quant(self, weight_quantizer, input_quantizer, weight_clip, grad_quantizer=None, init="reference"):
        if init not in ("reference", "glorot"):
            raise ConfigError(f"{type(self).__name__}: init must be 'reference' or 'glorot', got {init!r}")
        self.init = init
        self.weight_quantizer = get_quantizer(weight_quantizer)
        self.input_quantizer = get_quantizer(input_quantizer)
        check_quantizer_role(self.weight_quantizer, "weight", f"{self._layer_name()} weight_quantizer")
        check_quantizer_role(self.input_quantizer, "activation", f"{self._layer_name()} input_quantizer")
        # None keeps the module tree (and state dict) exactly as without gradient quantization.
        self.grad_quantizer = None if grad_quantizer is None else get_quantizer(grad_quantizer)
        if self.grad_quantizer is not None:
            if getattr(self.grad_quantizer, "roles", None) != frozenset({"gradient"}):
                raise ConfigError(
                    f"{self._layer_name()} grad_quantizer: {_describe(self.grad_quantizer)!r} is not a gradient "
                    f"quantizer (use e.g. 'grad:bits=6')"
                )
        if weight_clip == "auto":
            weight_clip = None if isinstance(self.weight_quantizer, Identity) else 1.0
        if weight_clip is not None and not weight_clip > 0:
            raise ConfigError(f"{type(self).__name__}: weight_clip must be > 0 or None, got {weight_clip}")
        self.weight_clip = None if weight_clip is None else float(weight_clip)

    @property
    def quantized_weight(self) -> torch.Tensor:
        """The weights the forward pass uses (e.g. exactly +-1 for a binary layer)."""
        return self.weight_quantizer(self.weight)

    @property
    def weight_bits(self) -> int:
        return quantizer_bits(self.weight_quantizer)

    @property
    def grad_bits(self) -> int:
        return 32 if self.grad_quantizer is None else quantizer_bits(self.grad_quantizer)

    def _quant_operands(self, x: torch.Tensor):
        """(input_quantizer(x), weight_quantizer(W)) for the forward product. A gradient quantizer sits in
        front of each quantizer (identity forward): backward, the gradient first goes through the
        quantizer's STE, then is quantized, so what reaches x and W takes only the k-bit levels."""
        w = self.weight
        x = full_precision(x)
        gq = self.grad_quantizer
        if gq is not None:
            if getattr(gq, "input_grad", True):
                x = gq(x)
            if getattr(gq, "weight_grad", True):
                w = gq.weight_gradient(w) if hasattr(gq, "weight_gradient") else gq(w)
        return self.input_quantizer(x), self.weight_quantizer(w)

    def _quant_output(self, y: torch.Tensor) -> torch.Tensor:
        """Quantize the gradient w.r.t. the output before it enters the backward products."""
        return y if self.grad_quantizer is None else self.grad_quantizer(y)

    @property
    def input_bits(self) -> int:
        return quantizer_bits(self.input_quantizer)

    def fans(self):
        w = self.weight
        receptive = w[0][0].numel() if w.dim() > 2 else 1
        return w.shape[1] * receptive, w.shape[0] * receptive

    @property
    def glorot_lr_scale(self) -> float:
        """BinaryConnect's per-layer learning-rate scale 1 / sqrt(1.5 / (fan_in + fan_out)); conv fans count
        the kernel window (fan_in = k*k*C_in, fan_out = k*k*C_out)."""
        fan_in, fan_out = self.fans()
        return 1.0 / math.sqrt(1.5 / (fan_in + fan_out))

    def _reset_latent(self):
        """Latent-weight initialisation (``self.init``):

        * ``"reference"`` (default): as the BinaryNet Theano code (``H = 1.``, ``binary_net.py``): binary
          weights start uniform in [-H, H] = [-1, 1], the clip range; only their signs enter the product, so
          the start's scale only sets how far a weight is from flipping (with the Glorot LR scale, which that
          code also uses, a step moves it by about lr * 1/H_glorot). k-bit weights keep the Glorot range even
          here: their values enter the product, and U[-1, 1] would make a layer's outputs sqrt(fan_in / 3)
          times larger than Glorot's and saturate the next activation quantizer.
        * ``"glorot"``: BinaryConnect's "Glorot" initialisation for every quantized weight: uniform in
          [-H, H], H = sqrt(1.5 / (fan_in + fan_out)), the same H whose inverse is the LR scale.
        """
        if isinstance(self.weight_quantizer, Identity):
            return False
        h = 1.0 / self.glorot_lr_scale
        if self.init == "reference" and is_binary(self.weight_quantizer):
            h = float(self.weight_clip) if self.weight_clip is not None else 1.0
        with torch.no_grad():
            self.weight.uniform_(-h, h)
            if self.bias is not None:
                self.bias.zero_()
        return True

    def _quant_repr(self) -> str:
        text = (
            f"weight_quantizer={_describe(self.weight_quantizer)}, "
            f"input_quantizer={_describe(self.input_quantizer)}, weight_clip={self.weight_clip}"
        )
        if self.grad_quantizer is not None:
            text += f", grad_quantizer={_describe(self.grad_quantizer)}{self.grad_bits}"
        return text


class QuantLinear(QuantLayerMixin, nn.Linear):
    """``y = input_quantizer(x) @ weight_quantizer(W).T + b`` with latent real weights ``W``.

    Args:
        weight_quantizer: registry name, module or callable (default ``"ste_sign"``: binary weights).
        input_quantizer: likewise for the input (default ``None``: the input is used as it comes, e.g. the
            +-1 output of a preceding :class:`QuantAct`, or real pixels in a first layer).
        weight_clip: latent weights are kept in ``[-weight_clip, weight_clip]``; ``"auto"`` means 1.0 for a
            quantized weight and no clip for a full-precision one.
        grad_quantizer: a gradient quantizer (``"grad:bits=6"``) or ``None`` (default: gradients stay
            full precision); see the module docstring.
        init: latent-weight initialisation, ``"reference"`` (BinaryNet's U[-1, 1] for binary weights) or
            ``"glorot"`` (BinaryConnect's Glorot range); see :meth:`_reset_latent`.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_quantizer: QuantizerSpec = "ste_sign",
        input_quantizer: QuantizerSpec = None,
        weight_clip: Union[float, str, None] = "auto",
        device=None,
        dtype=None,
        grad_quantizer: QuantizerSpec = None,
        pixel_input: bool = False,
        init: str = "reference",
    ):
        nn.Linear.__init__(self, in_features, out_features, bias=bias, device=device, dtype=dtype)
        self._init_quant(weight_quantizer, input_quantizer, weight_clip, grad_quantizer, init)
        self.pixel_input = bool(pixel_input)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # nn.Linear/nn.Conv2d call this before the quantizers exist; the constructor calls it again after.
        if "weight_quantizer" not in self._modules or not self._reset_latent():
            super().reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._quant_operands(x)
        if self.pixel_input:
            # x holds 8-bit pixels p; the layer sees 2p/255 - 1, computed as (2/255) (p . w) - sum(w): with
            # +-1 weights the product of integers is exact in float32, so eval mode agrees with the runtime.
            y = F.linear(x, w) * PIXEL_GAIN - w.sum(1)
            return self._quant_output(y if self.bias is None else y + self.bias)
        return self._quant_output(F.linear(x, w, self.bias))

    def extra_repr(self) -> str:
        extra = ", pixel_input=True" if self.pixel_input else ""
        return f"{super().extra_repr()}, {self._quant_repr()}{extra}"


class QuantConv2d(QuantLayerMixin, nn.Conv2d):
    """2-D convolution with quantized weights and inputs; see :class:`QuantLinear`.

    ``pad_value`` is the value that zero-padding is replaced by. A binary network should not pad with 0,
    which is no +-1 value: lowbit's recipes pad hidden binary layers with +1 (the value a packed bit of 0
    stands for, so the bit-packed runtime needs no correction term) and a first layer on pixels with the
    value of a black pixel (-1 after the 2x/255 - 1 input scaling, i.e. 0 as an 8-bit integer).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size,
        stride=1,
        padding=0,
        bias: bool = True,
        weight_quantizer: QuantizerSpec = "ste_sign",
        input_quantizer: QuantizerSpec = None,
        weight_clip: Union[float, str, None] = "auto",
        pad_value: float = 0.0,
        device=None,
        dtype=None,
        grad_quantizer: QuantizerSpec = None,
        pixel_input: bool = False,
        init: str = "reference",
    ):
        nn.Conv2d.__init__(
            self, in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=bias,
            device=device, dtype=dtype,
        )
        self._init_quant(weight_quantizer, input_quantizer, weight_clip, grad_quantizer, init)
        self.pixel_input = bool(pixel_input)
        self.reset_parameters()
        if isinstance(self.padding, str):
            raise ConfigError("QuantConv2d: give padding as integers (string padding modes are not supported)")
        self.pad_value = float(pad_value)

    def reset_parameters(self) -> None:
        # nn.Linear/nn.Conv2d call this before the quantizers exist; the constructor calls it again after.
        if "weight_quantizer" not in self._modules or not self._reset_latent():
            super().reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, w = self._quant_operands(x)
        ph, pw = self.padding
        if self.pixel_input:
            # Integer-exact form of conv(2p/255 - 1, w), as in QuantLinear; pad_value is in the scaled
            # domain, so the padded pixel is (pad_value + 1) * 255 / 2 (0, a black pixel, for -1).
            if ph or pw:
                x = F.pad(x, (pw, pw, ph, ph), value=(self.pad_value + 1.0) / PIXEL_GAIN)
            y = F.conv2d(x, w, None, self.stride, 0, self.dilation, self.groups) * PIXEL_GAIN
            y = y - w.sum((1, 2, 3)).view(1, -1, 1, 1)
            return self._quant_output(y if self.bias is None else y + self.bias.view(1, -1, 1, 1))
        if self.pad_value != 0.0 and (ph or pw):
            x = F.pad(x, (pw, pw, ph, ph), value=self.pad_value)
            return self._quant_output(F.conv2d(x, w, self.bias, self.stride, 0, self.dilation, self.groups))
        return self._quant_output(F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups))

    def extra_repr(self) -> str:
        extra = ", pixel_input=True" if self.pixel_input else ""
        return f"{super().extra_repr()}, {self._quant_repr()}, pad_value={self.pad_value}{extra}"


class QuantAct(nn.Module):
    """Quantized activation: ``quantizer(x)``, or ``float_activation(x)`` when the quantizer is identity.

    With the default ``"ste_sign"`` this is the BNN activation: forward sign(x), backward the gradient of
    hardtanh, i.e. exactly ``sign(hardtanh(x))`` with the STE (hardtanh keeps the sign, and 0 -> +1).
    Its full-precision twin (quantizer ``"identity"``) is ``hardtanh``, so the two networks differ only in
    the rounding.
    """

    def __init__(self, quantizer: QuantizerSpec = "ste_sign", float_activation: str = "hardtanh"):
        super().__init__()
        self.quantizer = get_quantizer(quantizer)
        check_quantizer_role(self.quantizer, "activation", "QuantAct")
        acts = {"hardtanh": nn.Hardtanh(), "relu": nn.ReLU(), "identity": nn.Identity()}
        if float_activation not in acts:
            raise ConfigError(f"QuantAct: float_activation must be one of {sorted(acts)}, got {float_activation!r}")
        self.float_activation_name = float_activation
        self.float_activation = acts[float_activation]

    @property
    def bits(self) -> int:
        return quantizer_bits(self.quantizer)

    @property
    def binary(self) -> bool:
        return is_binary(self.quantizer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.quantizer, Identity):
            return self.float_activation(x)
        return self.quantizer(full_precision(x))

    def extra_repr(self) -> str:
        if isinstance(self.quantizer, Identity):
            return f"float_activation={self.float_activation_name}"
        return f"quantizer={_describe(self.quantizer)}"


PIXEL_GAIN = 2.0 / 255.0


class PixelScale(nn.Module):
    """8-bit pixel values p in [0, 255] (as floats) -> 2p/255 - 1 in [-1, 1].

    lowbit's models do not use it: their first layer takes the raw pixels (``pixel_input=True``) and
    applies the same scaling after its product, ``sum_k w_k (2 p_k / 255 - 1) = (2/255) sum_k w_k p_k -
    sum_k w_k``, which is exact in float32 for +-1 weights and equals what the integer runtime computes.
    Kept for models that want the scaling as a separate step (the runtime exporter accepts both).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * (2.0 / 255.0) - 1.0
