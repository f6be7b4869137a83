"""Quantized recurrent networks and language models, and the integer-only LSTM.

    from lowbit.rnn import QuantLSTM, QuantGRU, QuantRNN, RNNLanguageModel
    from lowbit.rnn import export_int_lstm, load_int_lstm

Modules:
    quant           quantizer plumbing (k-bit uniform on [-1, 1], per-matrix weight scale, gate mapping)
    layers          QuantLSTM / QuantGRU / QuantRNN (torch-compatible), QuantEmbedding
    models          RNNLanguageModel, registered as model "rnn_lm"
    text            PTB word-level and plain-text character-level corpora (NumPy only)
    lm              the training loop (task "lm"), perplexity / bits-per-character evaluation
    recipes         ptb-lstm, ptb-gru, ptb-rnn, shakespeare-lstm
    int_lstm        integer-only LSTM runtime: fixed-point arithmetic, NumPy reference, C kernel wrapper,
                    load_int_lstm (NumPy + the extension; no torch)
    int_lstm_export calibration and export_int_lstm (torch)

Attributes load lazily, so ``import lowbit.rnn.int_lstm`` does not import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "QuantLSTM": "layers", "QuantGRU": "layers", "QuantRNN": "layers", "QuantRNNBase": "layers",
    "QuantEmbedding": "layers", "make_recurrent": "layers",
    "SymmetricUniform": "quant",
    "RNNLanguageModel": "models",
    "Vocabulary": "text", "TextCorpus": "text", "load_ptb": "text", "load_char_corpus": "text",
    "load_shakespeare": "text", "encode_file": "text", "batchify": "text",
    "train_lm": "lm", "evaluate_lm": "lm", "load_lm_checkpoint": "lm",
    "load_int_lstm": "int_lstm", "IntLSTM": "int_lstm",
    "export_int_lstm": "int_lstm_export", "calibrate_int_lstm": "int_lstm_export",
    "export_int_lstm_checkpoint": "int_lstm_export",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
