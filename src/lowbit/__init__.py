"""lowbit: train quantized neural networks in PyTorch, deploy them to a bit-packed CPU runtime."""

__version__ = "0.1.0"

from .errors import CheckpointError, ConfigError, DataError, LowbitError, ShapeError  # noqa: F401
