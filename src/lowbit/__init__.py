"""lowbit: train quantized neural networks in PyTorch, deploy them to a bit-packed CPU runtime.

Map of the package (see docs/architecture.md):
    quantizers  registry of quantizers (ste_sign, stochastic_sign, identity, ...)
    layers      QuantLinear, QuantConv2d, QuantAct, PixelScale
    optim       LR scaling, latent-weight clipping, schedules
    models      the paper's MLP and ConvNets
    data        dataset loaders (MNIST, Fashion-MNIST, CIFAR-10, SVHN)
    train       the training loop; checkpoint: atomic save, safe load
    kernels     native XNOR-popcount kernels; runtime: export and torch-free inference
    cli         the `lowbit` command
"""

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DataError, LowbitError, ShapeError  # noqa: F401


def load_checkpoint(path, map_location="cpu"):
    """The trained ``nn.Module`` stored in a training checkpoint, in evaluation mode (loaded safely)."""
    from .checkpoint import load_checkpoint as _load

    return _load(path, map_location)
