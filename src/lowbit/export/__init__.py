"""The bridge between the halves: a trained PyTorch network -> a runtime model file.

    lowbit export runs/x/checkpoint.pt -o model.lbt        (the command line)
    from lowbit.export import export_checkpoint            (the same in Python)

    graph   any image classifier (:func:`export_model`, for your own model too): a graph of ops, k-bit and
            binary layers on integer kernels, BN + quantizers folded into integer thresholds
    image   the version-1 exporter of plain binarized stacks (kept for the ``binary_sequential`` kind)
    lstm    post-training calibration of an LSTM, GRU or tanh-RNN language model to the integer-only
            LSTM, GRU or RNN of the runtime
    onnx    image classifiers -> a standard ONNX graph (quantized constant weights, exact sign/k-bit arithmetic),
            or its QONNX dialect (BipolarQuant/Quant nodes, for Brevitas/FINN tools)

This is the one place that imports both halves (torch models in, NumPy model files out); the runtime it
writes for never imports from here.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional, Union

PathLike = Union[str, Path]


FORMATS = ("lbt", "onnx", "qonnx")


def export_format(output: PathLike, format: Optional[str] = None) -> str:
    """The format asked for, else the one the output's extension names (``.onnx``; anything else: ``lbt``)."""
    if format is None:
        return "onnx" if Path(output).suffix.lower() == ".onnx" else "lbt"
    if format not in FORMATS:
        from ..errors import ConfigError

        raise ConfigError(f"export: format must be one of {', '.join(FORMATS)}, got {format!r}")
    return format


def export_checkpoint(checkpoint: PathLike, output: PathLike, data_dir: Optional[PathLike] = None,
                      calibration_batches: int = 8, format: Optional[str] = None,
                      onnx_activations: str = "arith", onnx_weights: str = "float",
                      onnx_int2: Optional[bool] = None) -> Dict[str, Any]:
    """Export a ``lowbit train`` checkpoint to a model file, choosing the exporter by its format (see
    :func:`export_format`) and task (language models -> integer LSTM, GRU or RNN by their cell, calibrated on ``calibration_batches``
    batches of its training text; image classifiers -> binarized network; ``onnx`` -> an ONNX graph, with
    ``onnx_activations`` / ``onnx_weights`` ``"qdq"`` as QuantizeLinear/DequantizeLinear, 2-bit codes in int2
    per ``onnx_int2``: see :func:`lowbit.export.onnx.export_onnx_model`).
    Returns a report (file, sizes)."""
    from ..train.checkpoint import read_checkpoint

    fmt = export_format(output, format)
    cfg = read_checkpoint(checkpoint)["config"]
    if fmt == "onnx" and cfg.get("task") == "lm":
        from .onnx_lm import export_lm_onnx_checkpoint

        return export_lm_onnx_checkpoint(checkpoint, output)
    if fmt in ("onnx", "qonnx"):
        if cfg.get("task") == "lm":
            from ..errors import CheckpointError

            raise CheckpointError("QONNX export: language models are exported to plain ONNX only (--format onnx)")
        from .onnx import export_onnx_checkpoint

        return export_onnx_checkpoint(checkpoint, output, activations=onnx_activations, dialect=fmt,
                                      weights=onnx_weights, int2=onnx_int2)
    if cfg.get("task") == "lm":
        from .lstm import export_int_rnn_checkpoint

        return export_int_rnn_checkpoint(checkpoint, output, data_dir=data_dir, batches=calibration_batches)
    from .graph import export_checkpoint as export_image

    return export_image(checkpoint, output)


def export_model(model, example_input, path: PathLike, meta: Optional[Dict] = None) -> Dict[str, Any]:
    """Export any network built from lowbit's layers (and PyTorch's conv/linear/BN/pooling/ReLU, residual
    adds) to a runtime model file: ``lowbit.runtime.load(path).predict(uint8_images)`` then gives its
    logits without torch. ``example_input``: a batch (N, C, H, W) of 8-bit images (as floats 0..255). Returns
    a report: file size, fp32 size, the kernel of every layer. See :mod:`lowbit.export.graph`."""
    from .graph import export_model as _export

    return _export(model, example_input, path, meta=meta)
