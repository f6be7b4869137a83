"""Deployment runtime: model files and torch-free inference on lowbit's native kernels.

    from lowbit.runtime import load
    net = load("model.lbt")            # NumPy + the compiled extension; torch is not imported
    logits = net.predict(images_uint8)  # (N, C, H, W) 8-bit pixels -> float32 logits

Every kind of model file loads through :func:`load`; :data:`MODEL_KINDS` maps the kind a file names to the
class that runs it (``binary_sequential``: :class:`BinaryNetwork`, ops in :mod:`lowbit.runtime.ops`;
``int_lstm``: :class:`lowbit.runtime.int_lstm.IntLSTM`; ``int_gru`` / ``int_rnn``:
:class:`lowbit.runtime.int_rnn.IntGRU` / :class:`~lowbit.runtime.int_rnn.IntRNN`, the integer GRU and tanh RNN
built the same way). Each has ``task`` ("image" or "lm").
``lowbit export CHECKPOINT -o MODEL.lbt`` writes the file (:mod:`lowbit.export`, which needs torch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

from ..errors import CheckpointError
from .engine import BinaryNetwork
from .graph import GraphNetwork
from . import int_lstm, int_rnn
from .modelfile import FORMAT_VERSION, load_model_file, save_model_file  # noqa: F401

MODEL_KINDS = {
    "graph": GraphNetwork,  # (meta, arrays, path): any exported image network, ops in lowbit.runtime.graph
    "binary_sequential": BinaryNetwork,  # (meta, arrays, path)
    "int_lstm": int_lstm.from_parts,  # (meta, arrays, path, backend=..., kernel_path=...)
    "int_gru": int_rnn.IntGRU.from_parts,  # (the same)
    "int_rnn": int_rnn.IntRNN.from_parts,
}


def load(path: Union[str, Path], **options):
    """Load any ``.lbt`` model file for inference, without torch. ``options`` go to the model's class
    (e.g. ``backend="numpy"`` for the reference arithmetic of the integer LSTM, GRU and RNN)."""
    kind, meta, arrays = load_model_file(path)
    if kind not in MODEL_KINDS:
        raise CheckpointError(f"{path}: unknown model kind {kind!r} (known: {', '.join(MODEL_KINDS)})")
    try:
        return MODEL_KINDS[kind](meta, arrays, str(path), **options)
    except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, MemoryError) as exc:
        if isinstance(exc, TypeError) and "keyword argument" in str(exc):
            raise  # a wrong option of the caller's, not the file's fault
        if not isinstance(meta, dict):
            raise CheckpointError(f"{path}: the model file's metadata is not an object") from None
        # a field no check of the model's class anticipated: the file is malformed, and says so in one line
        raise CheckpointError(f"{path}: malformed {kind} model file ({type(exc).__name__}: {exc})") from None
