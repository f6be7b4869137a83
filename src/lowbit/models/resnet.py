"""Binary ResNet with real-valued shortcuts (Bi-Real Net / ReActNet style): ``binary_resnet``.

Bi-Real Net (Liu et al., ECCV 2018) keeps the information a sign() throws away by adding a *real-valued*
shortcut around every binary convolution: each block is

    out = BN(BinConv3x3(sign(x))) + shortcut(x)

where ``x`` (and therefore ``out``) is real-valued. Only the 3x3 convolutions are binary (weights and
inputs +-1); the sign is taken at the input of each binary convolution, the addition is in floating point.
``shortcut`` is the identity, or, where a block halves the resolution or changes the width, a real-valued
``AvgPool2d(2) -> Conv2d 1x1 -> BatchNorm`` (the Bi-Real / ReActNet downsampling shortcut; the average pool
is left out when only the width changes).

Layout (``nn.Sequential``, names in brackets)::

    [stem]     QuantConv2d(C, widths[0], 3, stride=stem_stride, padding=1) on 8-bit pixels
               (binary weights; pads with a black pixel)
    [stem_bn]  BatchNorm2d
    [stage1]   blocks[0] x BinaryBlock(widths[0]), the first one at stride strides[0] (default 1)
    [stage2]   blocks[1] x BinaryBlock(widths[1]), the first one at stride strides[1] (default 2)
    ...
    [pool]     AdaptiveAvgPool2d(1)
    [flatten]  Flatten
    [fc]       Linear(widths[-1], num_classes)               (real-valued: the logits)

As every lowbit image model, it takes raw 8-bit pixels as floats in [0, 255]; the first layer sees them as
2p/255 - 1 in an integer-exact form (``pixel_input=True``). Hidden binary convolutions pad with ``pad_value``
(+1 by default: what a packed bit of 0 stands for, so the bit-packed runtime needs no correction term).

The block's forward is straight-line code (no control flow on tensors), so ``torch.fx`` traces the model
with lowbit's ``QuantConv2d`` / ``QuantAct`` kept as leaf modules: the graph exporter relies on it. (With
``norm="shift_bn"`` keep ``ShiftBatchNorm2d`` a leaf too: its forward checks ``x.dim()``.)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.layers import QuantAct, QuantConv2d
from ..nn.norm import batch_norm, check_norm
from ..quant.base import QuantizerSpec
from ..registry import MODELS
from .imagenet import _fresh


class BinaryBlock(nn.Module):
    """One Bi-Real block: ``bn(conv(act(x))) + shortcut(x)``, ``x`` real-valued.

    ``act`` is a :class:`QuantAct` (``"ste_sign"``: +-1), ``conv`` a 3x3 :class:`QuantConv2d` with quantized
    (binary) weights, stride ``stride``, padding 1 filled with ``pad_value``; ``bn`` a batch norm (``norm``:
    ``"bn"`` or ``"shift_bn"``). ``shortcut`` is ``nn.Identity()`` when the shape is kept, else a real-valued
    ``Sequential(AvgPool2d(2), Conv2d(cin, cout, 1, bias=False), BatchNorm2d)`` (no pool at stride 1).
    """

    def __init__(self, cin: int, cout: int, stride: int = 1, weight_quantizer: QuantizerSpec = "ste_sign",
                 act_quantizer: QuantizerSpec = "ste_sign", norm: str = "bn", grad_quantizer: QuantizerSpec = None,
                 init: str = "reference", pad_value: float = 1.0, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        if stride not in (1, 2):
            raise ConfigError(f"BinaryBlock: stride must be 1 or 2, got {stride}")
        self.act = QuantAct(_fresh(act_quantizer), float_activation="hardtanh")
        self.conv = QuantConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, weight_quantizer=weight_quantizer,
                                pad_value=pad_value, grad_quantizer=grad_quantizer, init=init)
        self.bn = batch_norm(norm, 2, cout, eps=bn_eps, momentum=bn_momentum)
        if stride == 1 and cin == cout:
            self.shortcut: nn.Module = nn.Identity()
        else:
            parts: List[nn.Module] = [nn.AvgPool2d(2)] if stride == 2 else []
            parts += [nn.Conv2d(cin, cout, 1, bias=False), batch_norm(norm, 2, cout, eps=bn_eps, momentum=bn_momentum)]
            self.shortcut = nn.Sequential(*parts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(self.act(x)))
        return y + self.shortcut(x)


def binary_resnet(
    in_shape: Sequence[int] = (3, 32, 32),
    num_classes: int = 10,
    widths: Sequence[int] = (64, 128, 256, 512),
    blocks: Sequence[int] = (4, 4, 4, 4),
    strides: Sequence[int] = (),
    stem_stride: int = 1,
    weight_quantizer: QuantizerSpec = "ste_sign",
    act_quantizer: QuantizerSpec = "ste_sign",
    pad_value: float = 1.0,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
    grad_quantizer: QuantizerSpec = None,
    norm: str = "bn",
    init: str = "reference",
) -> nn.Sequential:
    """Bi-Real-style binary ResNet: binary stem on pixels, ``blocks[i]`` single-conv :class:`BinaryBlock`s of
    width ``widths[i]`` per stage, global average pool and a real-valued ``Linear`` giving the logits.

    Defaults are Bi-Real-18 on 32x32 images: widths (64, 128, 256, 512), 4 blocks per stage (16 binary 3x3
    convolutions, each with its own real-valued shortcut). ``strides[i]`` is the stride of stage i's first
    block (default: 1 for the first stage, 2 for the others); ``stem_stride`` (1 or 2) that of the stem, as
    Bi-Real's ImageNet stem halves the resolution before the first stage (the MNIST recipe uses it to stay
    cheap). ``weight_quantizer`` quantizes the stem and every block's 3x3 convolution, ``act_quantizer`` the
    input of every block's convolution (``"identity"`` for both gives the float twin with hardtanh);
    ``grad_quantizer`` goes to every quantized layer; ``norm`` is ``"bn"`` or ``"shift_bn"`` (every batch
    norm, shortcuts included); ``init`` is the latent-weight start of the quantized layers. The 1x1 shortcut
    convolutions and the last layer stay real-valued. A stride-2 stage needs an even feature-map size there
    (refused otherwise: the shortcut's 2x2 average pool and the strided convolution would disagree on the
    output size).
    """
    check_norm("binary_resnet", norm)
    if len(in_shape) != 3 or any(int(d) < 1 for d in in_shape):
        raise ConfigError(f"binary_resnet: in_shape must be (channels, height, width), got {list(in_shape)}")
    if (len(widths) != len(blocks) or not widths or any(int(v) < 1 for v in widths)
            or any(int(v) < 1 for v in blocks)):
        raise ConfigError(f"binary_resnet: widths and blocks must be equally long lists of positive integers, "
                          f"got {list(widths)} and {list(blocks)}")
    strides = [int(v) for v in strides] or [1] + [2] * (len(widths) - 1)
    if len(strides) != len(widths) or any(v not in (1, 2) for v in strides):
        raise ConfigError(f"binary_resnet: strides must give 1 or 2 for each of the {len(widths)} stages, "
                          f"got {list(strides)}")
    stem_stride = int(stem_stride)
    if stem_stride not in (1, 2):
        raise ConfigError(f"binary_resnet: stem_stride must be 1 or 2, got {stem_stride}")
    c, h, w = (int(d) for d in in_shape)
    if stem_stride == 2:
        h, w = (h + 1) // 2, (w + 1) // 2
    widths = [int(v) for v in widths]
    common = dict(weight_quantizer=weight_quantizer, act_quantizer=act_quantizer, norm=norm,
                  grad_quantizer=grad_quantizer, init=init, pad_value=pad_value, bn_eps=bn_eps, bn_momentum=bn_momentum)
    layers: "OrderedDict[str, nn.Module]" = OrderedDict()
    layers["stem"] = QuantConv2d(c, widths[0], 3, stride=stem_stride, padding=1, bias=False,
                                 weight_quantizer=weight_quantizer, pad_value=-1.0, grad_quantizer=grad_quantizer,
                                 init=init, pixel_input=True)
    layers["stem_bn"] = batch_norm(norm, 2, widths[0], eps=bn_eps, momentum=bn_momentum)
    cin = widths[0]
    for i, (width, n) in enumerate(zip(widths, (int(b) for b in blocks))):
        stage: List[nn.Module] = []
        for b in range(n):
            stride = strides[i] if b == 0 else 1
            if stride == 2:
                if h % 2 or w % 2:
                    raise ConfigError(f"binary_resnet: stage {i + 1} halves a {h}x{w} feature map; stride-2 "
                                      f"stages need even sizes (use fewer stages or another in_shape)")
                h, w = h // 2, w // 2
            stage.append(BinaryBlock(cin, width, stride, **common))
            cin = width
        layers[f"stage{i + 1}"] = nn.Sequential(*stage)
    layers["pool"] = nn.AdaptiveAvgPool2d(1)
    layers["flatten"] = nn.Flatten()
    layers["fc"] = nn.Linear(cin, num_classes)
    return nn.Sequential(layers)


MODELS.register("binary_resnet", obj=binary_resnet)
