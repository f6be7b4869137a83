"""ImageNet models of the QNN and PACT/SAWB papers: QNN AlexNet and ResNet-18 with PACT + SAWB.

Both take raw 8-bit RGB pixels (as floats): the ImageNet mean/std normalization is their first module
(:class:`Normalize`), so it is saved with the model. Their data pipeline is :mod:`lowbit.data.imagenet`,
their training task :mod:`lowbit.train.tasks.imagenet`, their recipes ``imagenet-alexnet`` and
``imagenet-resnet18-pact-sawb`` (:mod:`lowbit.train.recipes`).
"""

from __future__ import annotations

import copy
from typing import List, Sequence

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.layers import QuantAct, QuantConv2d, QuantLinear
from ..nn.norm import batch_norm
from ..quant.base import QuantizerSpec, get_quantizer
from ..registry import MODELS

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# --------------------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------------------


class Normalize(nn.Module):
    """8-bit RGB pixels p in [0, 255] (as floats) -> (p / 255 - mean) / std per channel (ImageNet's)."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1) * 255.0, persistent=False)
        self.register_buffer("inv_std", 1.0 / (torch.tensor(std).view(1, -1, 1, 1) * 255.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std


def _fresh(spec: QuantizerSpec) -> nn.Module:
    """A new quantizer for each place it is used (a PACT alpha belongs to one layer)."""
    return copy.deepcopy(spec) if isinstance(spec, nn.Module) else get_quantizer(spec)


def alexnet_qnn(
    num_classes: int = 1000,
    widths: Sequence[int] = (192, 576, 1152, 768, 256),
    fc: Sequence[int] = (4096, 4096),
    weight_quantizer: QuantizerSpec = "ste_sign",
    act_quantizer: QuantizerSpec = "linear:bits=2",
    pad_value: float = 0.0,
    norm: str = "bn",
    grad_quantizer: QuantizerSpec = None,
    bn_eps: float = 1e-5,
    bn_momentum: float = 0.1,
    init: str = "reference",
) -> nn.Sequential:
    """The QNN paper's ImageNet AlexNet: BinaryNet.pytorch's AlexNet widened x3.

    Normalize -> QConv11/4(192) -> MP3/2 -> BN -> act -> QConv5(576) -> MP3/2 -> BN -> act -> QConv3(1152)
    -> BN -> act -> QConv3(768) -> BN -> act -> QConv3(256) -> MP3/2 -> BN -> act -> 2 x (QFC(4096) -> BN ->
    act) -> QFC(num_classes) -> BN (the logits).

    Every weight is quantized (default binary), activations are k-bit (default 2-bit: ``linear`` over
    [-1, 1], whose STE is the hardtanh gradient of BinaryNet.pytorch); the first layer takes the real-valued
    normalized image. Convolutions pad with ``pad_value`` (0, as BinaryNet.pytorch). An adaptive average
    pool to 6 x 6 (the identity at 224 x 224 inputs) lets smaller images through.
    """
    if len(widths) != 5 or any(int(w) < 1 for w in widths):
        raise ConfigError(f"alexnet_qnn: widths must be 5 positive conv widths, got {list(widths)}")
    w = [int(v) for v in widths]

    def conv(cin, cout, k, stride=1, padding=0):
        return QuantConv2d(cin, cout, k, stride=stride, padding=padding, bias=False, weight_quantizer=weight_quantizer,
                           pad_value=pad_value, grad_quantizer=grad_quantizer, init=init)

    def act():
        return QuantAct(_fresh(act_quantizer), float_activation="hardtanh")

    def bn2(c):
        return batch_norm(norm, 2, c, eps=bn_eps, momentum=bn_momentum)

    layers: List[nn.Module] = [
        Normalize(),
        conv(3, w[0], 11, stride=4, padding=2), nn.MaxPool2d(3, 2), bn2(w[0]), act(),
        conv(w[0], w[1], 5, padding=2), nn.MaxPool2d(3, 2), bn2(w[1]), act(),
        conv(w[1], w[2], 3, padding=1), bn2(w[2]), act(),
        conv(w[2], w[3], 3, padding=1), bn2(w[3]), act(),
        conv(w[3], w[4], 3, padding=1), nn.MaxPool2d(3, 2), bn2(w[4]), act(),
        nn.AdaptiveAvgPool2d(6), nn.Flatten(),
    ]
    width = w[4] * 36
    for f in fc:
        layers += [
            QuantLinear(width, int(f), bias=False, weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer, init=init),
            batch_norm(norm, 1, int(f), eps=bn_eps, momentum=bn_momentum), act(),
        ]
        width = int(f)
    layers += [
        QuantLinear(width, num_classes, bias=False, weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer, init=init),
        batch_norm(norm, 1, num_classes, eps=bn_eps, momentum=bn_momentum),
    ]
    return nn.Sequential(*layers)


class BasicBlock(nn.Module):
    """ResNet basic block: QConv3 -> BN -> act -> QConv3 -> BN, + shortcut, -> act.

    The two 3x3 convolutions are quantized (weights by ``weight_quantizer``, their inputs are the outputs of
    the quantized activations); the shortcut (identity, or a 1x1 conv + BN where the shape changes) stays
    full precision, as the SAWB paper recommends.
    """

    def __init__(self, cin: int, cout: int, stride: int, weight_quantizer, act_quantizer, norm: str, grad_quantizer,
                 init: str = "reference"):
        super().__init__()
        self.conv1 = QuantConv2d(cin, cout, 3, stride=stride, padding=1, bias=False,
                                 weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer, init=init)
        self.bn1 = batch_norm(norm, 2, cout)
        self.act1 = QuantAct(_fresh(act_quantizer), float_activation="relu")
        self.conv2 = QuantConv2d(cout, cout, 3, stride=1, padding=1, bias=False,
                                 weight_quantizer=weight_quantizer, grad_quantizer=grad_quantizer, init=init)
        self.bn2 = batch_norm(norm, 2, cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), batch_norm(norm, 2, cout))
        self.act2 = QuantAct(_fresh(act_quantizer), float_activation="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with basic blocks; full-precision stem (7x7/2 conv) and classifier, quantized blocks."""

    def __init__(self, num_classes, widths, blocks, weight_quantizer, act_quantizer, norm, grad_quantizer,
                 init: str = "reference"):
        super().__init__()
        self.normalize = Normalize()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False), batch_norm(norm, 2, widths[0]),
            QuantAct(_fresh(act_quantizer), float_activation="relu"), nn.MaxPool2d(3, 2, 1),
        )
        stages, cin = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for b in range(n):
                stride = 2 if (i > 0 and b == 0) else 1
                stages.append(BasicBlock(cin, width, stride, weight_quantizer, act_quantizer, norm, grad_quantizer, init))
                cin = width
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(self.normalize(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def resnet18_pact_sawb(
    num_classes: int = 1000,
    widths: Sequence[int] = (64, 128, 256, 512),
    blocks: Sequence[int] = (2, 2, 2, 2),
    weight_quantizer: QuantizerSpec = "sawb:bits=2",
    act_quantizer: QuantizerSpec = "pact:bits=2,alpha=10.0",
    norm: str = "bn",
    grad_quantizer: QuantizerSpec = None,
    init: str = "reference",
) -> ResNet:
    """ResNet-18 with 2-bit SAWB weights and 2-bit PACT activations in every block; full-precision first
    convolution, last (fully connected) layer and shortcuts. ``weight_quantizer="identity"`` and
    ``act_quantizer="identity"`` give the float ResNet-18 (ReLU)."""
    if len(widths) != len(blocks) or not widths or any(int(v) < 1 for v in list(widths) + list(blocks)):
        raise ConfigError(f"resnet18_pact_sawb: widths and blocks must be equally long lists of positive "
                          f"integers, got {list(widths)} and {list(blocks)}")
    return ResNet(num_classes, [int(v) for v in widths], [int(v) for v in blocks], weight_quantizer,
                  act_quantizer, norm, grad_quantizer, init)


MODELS.register("alexnet_qnn", obj=alexnet_qnn)
MODELS.register("resnet18_pact_sawb", obj=resnet18_pact_sawb)
