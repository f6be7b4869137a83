"""The paper's architectures, built from lowbit's quantized layers.

Every model is a plain ``nn.Sequential`` of a few module kinds (``QuantLinear``, ``QuantConv2d``,
``MaxPool2d``, ``BatchNorm1d/2d``, ``QuantAct``, ``Dropout``, ``Flatten``), so the exporter of the
deployment runtime can walk it layer by layer. Models take raw 8-bit pixels (as floats in [0, 255]); the
first layer (``pixel_input=True``) sees them scaled to 2p/255 - 1, as in the paper's code, computed in an
integer-exact form; it has quantized weights and real-valued inputs. The last layer is followed by a batch
norm whose output is the logits (paper style). Input dropout therefore drops pixels to 0 (black).

Widths are arguments, so the same builders give the full paper models and the small ones used in tests.
The QNN variants are arguments too: k-bit quantizers by name (``weight_quantizer="linear:bits=2"``),
``grad_quantizer="grad:bits=6"`` (quantized gradients in every quantized layer) and ``norm="shift_bn"``
(shift-based batch norm, :mod:`lowbit.norm`, in place of every ``BatchNorm``).
"""

from __future__ import annotations

from typing import List, Sequence, Union

from torch import nn

from ..errors import ConfigError
from ..registry import MODELS
from ..nn.layers import QuantAct, QuantConv2d, QuantLinear
from ..nn.norm import batch_norm, check_norm
from ..quant.base import QuantizerSpec


def _bn1d(n, eps, momentum, norm="bn"):
    return batch_norm(norm, 1, n, eps=eps, momentum=momentum)


def mlp(
    in_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    hidden: int = 4096,
    depth: int = 3,
    weight_quantizer: QuantizerSpec = "ste_sign",
    act_quantizer: QuantizerSpec = "ste_sign",
    dropout_in: float = 0.0,
    dropout_hidden: float = 0.0,
    bn_eps: float = 1e-4,
    bn_momentum: float = 0.1,
    grad_quantizer: QuantizerSpec = None,
    norm: str = "bn",
    init: str = "reference",
) -> nn.Sequential:
    """The BNN MNIST MLP: 784 -> depth x (quantized FC(hidden) -> BN -> QuantAct) -> FC(10) -> BN.

    Paper: hidden 4096, depth 3, dropout 0.2 on the input and 0.5 on hidden layers (Theano).
    ``grad_quantizer`` goes to every quantized layer; ``norm`` is ``"bn"`` or ``"shift_bn"``.
    """
    if depth < 1 or hidden < 1:
        raise ConfigError(f"mlp: depth and hidden must be >= 1, got depth={depth} hidden={hidden}")
    check_norm("mlp", norm)
    in_features = 1
    for d in in_shape:
        in_features *= int(d)
    layers: List[nn.Module] = [nn.Flatten()]
    if dropout_in > 0:
        layers.append(nn.Dropout(dropout_in))
    width = in_features
    for d in range(depth):
        layers += [
            QuantLinear(width, hidden, bias=False, weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer, init=init,
                        pixel_input=d == 0),
            _bn1d(hidden, bn_eps, bn_momentum, norm),
            QuantAct(act_quantizer),
        ]
        if dropout_hidden > 0:
            layers.append(nn.Dropout(dropout_hidden))
        width = hidden
    layers += [
        QuantLinear(width, num_classes, bias=False, weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer, init=init),
        _bn1d(num_classes, bn_eps, bn_momentum, norm),
    ]
    return nn.Sequential(*layers)


ChannelSpec = Sequence[Union[int, str]]


def convnet(
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    channels: ChannelSpec = (128, 128, "M", 256, 256, "M", 512, 512, "M"),
    fc: Sequence[int] = (1024, 1024),
    kernel_size: int = 3,
    weight_quantizer: QuantizerSpec = "ste_sign",
    act_quantizer: QuantizerSpec = "ste_sign",
    pad_value: float = 1.0,
    dropout_hidden: float = 0.0,
    bn_eps: float = 1e-4,
    bn_momentum: float = 0.1,
    grad_quantizer: QuantizerSpec = None,
    norm: str = "bn",
    init: str = "reference",
) -> nn.Sequential:
    """The BNN ConvNet: ``channels`` lists conv widths, ``"M"`` a 2x2 max-pool after the preceding conv.

    Each block is QuantConv(k, padding k//2) -> [MaxPool2] -> BN -> QuantAct (batch norm after pooling, as
    in the paper), then ``fc`` hidden FC blocks and FC(num_classes) -> BN. Hidden convs pad with
    ``pad_value`` (+1: no correction term in the bit-packed runtime); the first conv pads with -1, a black
    pixel after the input scaling.

    Paper CIFAR-10: 2x128C3-MP2-2x256C3-MP2-2x512C3-MP2-2x1024FC-10; SVHN: half the conv widths.
    ``grad_quantizer`` goes to every quantized layer; ``norm`` is ``"bn"`` or ``"shift_bn"``.
    """
    check_norm("convnet", norm)
    spec = list(channels)
    if not spec or spec[0] == "M":
        raise ConfigError(f"convnet: channels must start with a conv width, got {spec}")
    c, h, w = (int(d) for d in in_shape)
    layers: List[nn.Module] = []
    first = True
    i = 0
    while i < len(spec):
        width = spec[i]
        if isinstance(width, str):
            raise ConfigError(f"convnet: 'M' must follow a conv width, got {spec}")
        width = int(width)
        layers.append(
            QuantConv2d(
                c, width, kernel_size, padding=kernel_size // 2, bias=False,
                weight_quantizer=weight_quantizer, pad_value=-1.0 if first else pad_value,
                grad_quantizer=grad_quantizer, init=init, pixel_input=first,
            )
        )
        first = False
        if i + 1 < len(spec) and spec[i + 1] == "M":
            layers.append(nn.MaxPool2d(2))
            h, w = h // 2, w // 2
            i += 1
        layers += [batch_norm(norm, 2, width, eps=bn_eps, momentum=bn_momentum), QuantAct(act_quantizer)]
        c = width
        i += 1
    layers.append(nn.Flatten())
    width = c * h * w
    for f in fc:
        layers += [
            QuantLinear(width, int(f), bias=False, weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer, init=init),
            _bn1d(int(f), bn_eps, bn_momentum, norm),
            QuantAct(act_quantizer),
        ]
        if dropout_hidden > 0:
            layers.append(nn.Dropout(dropout_hidden))
        width = int(f)
    layers += [
        QuantLinear(width, num_classes, bias=False, weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer, init=init),
        _bn1d(num_classes, bn_eps, bn_momentum, norm),
    ]
    return nn.Sequential(*layers)


MODELS.register("mlp", obj=mlp)
MODELS.register("convnet", obj=convnet)
