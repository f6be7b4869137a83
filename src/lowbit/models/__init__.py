"""The networks lowbit trains, registered by name (:data:`lowbit.registry.MODELS`).

    image       the QNN paper's MLP and ConvNets as plain ``nn.Sequential`` ("mlp", "convnet")
    imagenet    QNN AlexNet ("alexnet_qnn") and ResNet-18 with PACT + SAWB ("resnet18_pact_sawb")
    resnet      binary ResNet with real-valued shortcuts, Bi-Real / ReActNet style ("binary_resnet")
    lm          word / character language models on quantized recurrent layers ("rnn_lm")

A recipe or a checkpoint names a model and its keyword arguments; :func:`build_model` makes it.
"""
from __future__ import annotations

from torch import nn

from ..errors import ConfigError
from ..registry import MODELS
from . import image, imagenet, lm, resnet  # noqa: F401  (register the built-in models)
from .image import convnet, mlp  # noqa: F401
from .lm import RNNLanguageModel  # noqa: F401
from .resnet import binary_resnet  # noqa: F401


def build_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model by name with keyword arguments (what recipes and checkpoints store)."""
    builder = MODELS.get(name)
    try:
        return builder(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"model {name!r}: bad arguments: {exc}") from None
