"""Language-model recipes (task ``"lm"``): ``ptb-lstm``, ``ptb-gru``, ``ptb-rnn``, ``shakespeare-lstm``.

The PTB recipes train 4-bit weights and 4-bit activations (the QNN paper's recurrent setting; change with
``--set model.weight_bits=2 --set model.act_bits=3``, 32 for full precision). Data settings are model
arguments (:data:`lowbit.rnn.models.LM_SETTINGS`): offline there is no ``ptb.train.txt``, and
``model.train_file=auto`` then trains on ``ptb.valid.txt`` and tests on ``ptb.test.txt`` (metrics.json says
so under ``data.note``); ``--set model.train_file=ptb.valid.txt --set model.valid_file=`` chooses that
explicitly. Tiny Shakespeare uses a 90/10 split of ``<data>/tinyshakespeare/input.txt``.
"""

from __future__ import annotations

from ..config import TrainConfig, recipe
from . import models as _models  # noqa: F401  (registers the "rnn_lm" model)
from .models import LM_SETTINGS


def _ptb(name: str, cell: str) -> TrainConfig:
    return TrainConfig(
        recipe=name, dataset="ptb", model="rnn_lm", task="lm", loss="cross_entropy",
        model_args=dict(
            vocab_size=0, cell=cell, emb_size=300, hidden_size=300, num_layers=2, dropout=0.5,
            tie_weights=False, weight_bits=4, act_bits=4, weight_quantizer="auto", act_quantizer="auto",
            weight_scale="max", quantize_embedding=False, quantize_decoder=False, init="torch",
            **{**LM_SETTINGS, "level": "word", "bptt": 35, "clip_grad": 0.25},
        ),
        epochs=12, batch_size=20, eval_batch_size=10, optimizer="adam", lr_start=2e-3, lr_end=2e-4,
        lr_scale=False,
    )


@recipe("ptb-lstm")
def ptb_lstm() -> TrainConfig:
    """PTB word LM, 2x300 LSTM, 4-bit weights and activations (train on valid offline)."""
    return _ptb("ptb-lstm", "lstm")


@recipe("ptb-gru")
def ptb_gru() -> TrainConfig:
    """PTB word LM, 2x300 GRU, 4-bit weights and activations (train on valid offline)."""
    return _ptb("ptb-gru", "gru")


@recipe("ptb-rnn")
def ptb_rnn() -> TrainConfig:
    """PTB word LM, 2x300 tanh RNN, 4-bit weights and activations (train on valid offline)."""
    cfg = _ptb("ptb-rnn", "rnn")
    cfg.lr_start, cfg.lr_end = 1e-3, 1e-4
    return cfg


@recipe("shakespeare-lstm")
def shakespeare_lstm() -> TrainConfig:
    """Tiny Shakespeare char LM, 2x256 LSTM, 4-bit weights and activations, 90/10 split."""
    return TrainConfig(
        recipe="shakespeare-lstm", dataset="tinyshakespeare", model="rnn_lm", task="lm", loss="cross_entropy",
        model_args=dict(
            vocab_size=0, cell="lstm", emb_size=64, hidden_size=256, num_layers=2, dropout=0.1,
            tie_weights=False, weight_bits=4, act_bits=4, weight_quantizer="auto", act_quantizer="auto",
            weight_scale="max", quantize_embedding=False, quantize_decoder=False, init="torch",
            **{**LM_SETTINGS, "level": "char", "bptt": 100, "clip_grad": 1.0},
        ),
        epochs=4, batch_size=32, eval_batch_size=32, optimizer="adam", lr_start=3e-3, lr_end=3e-4,
        lr_scale=False,
    )
