"""lowbit: train quantized neural networks in PyTorch, deploy them to a bit-packed CPU runtime.

Two halves meet in the model file (see docs/architecture.md):

    training (torch)    quant -> nn -> models -> train (engine, tasks, recipes), data beside it
    bridge              export: a trained network -> a model file
    deployment (no torch)  runtime (model file, ops, engine, integer LSTM) -> kernels (native C)

    registry  the one way things are registered by name (quantizers, models, recipes, tasks, ...)
    cli       the `lowbit` command;  summary: per-layer bits/size/MACs;  bench: runtime vs PyTorch

Importing ``lowbit`` itself imports neither torch nor the kernels.
"""

from ._version import __version__  # noqa: F401

from .errors import CheckpointError, ConfigError, DataError, LowbitError, ShapeError  # noqa: F401


def load_checkpoint(path, map_location="cpu"):
    """The trained ``nn.Module`` stored in a training checkpoint, in evaluation mode (loaded safely)."""
    from .train.checkpoint import load_checkpoint as _load

    return _load(path, map_location)


def export_model(model, example_input, path, meta=None):
    """Export any network of lowbit's (and PyTorch's conv/linear/BN/pooling) layers to a runtime model file;
    see :func:`lowbit.export.export_model`. Returns a report (sizes, each layer's kernel)."""
    from .export import export_model as _export

    return _export(model, example_input, path, meta=meta)
