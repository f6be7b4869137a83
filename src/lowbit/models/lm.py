"""``RNNLanguageModel``: embedding -> dropout -> quantized recurrent layers -> dropout -> decoder.

Registered as model ``"rnn_lm"`` (``lowbit.models.build_model("rnn_lm", vocab_size=..., cell="lstm", ...)``).
Its configuration (``TrainConfig.model_args``) also carries the language-model data and training settings
(:data:`LM_SETTINGS`: files, vocabulary rule, BPTT length, gradient clip), so ``--set model.bptt=70`` works
like any model argument; the builder accepts and ignores those keys, and refuses any other unknown key.
"""

from __future__ import annotations

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, ShapeError
from ..registry import MODELS
from ..nn.layers import QuantLinear
from ..nn.recurrent import QuantEmbedding, check_token_ids, make_recurrent
from ..quant.recurrent import ScaledWeightQuantizer, is_identity, make_quantizer

# model_args keys that configure the data and the training loop, not the network
LM_SETTINGS = {
    "level": "word",          # "word" (PTB) or "char" (plain text)
    "train_file": "auto",     # word level: file under <data>/ptb ("auto": ptb.train.txt, else ptb.valid.txt)
    "valid_file": "auto",     # "" for none
    "test_file": "ptb.test.txt",
    "vocab_from": "auto",     # "train", "all" (union of the files' types) or "auto"
    "text_file": "tinyshakespeare/input.txt",  # char level: file under <data>
    "split": 0.9,             # char level: training fraction
    "bptt": 35,               # truncated BPTT length
    "clip_grad": 0.25,        # gradient-norm clip (0: none)
}

Hidden = Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]


class RNNLanguageModel(nn.Module):
    """Word- or character-level language model with k-bit recurrent layers.

    Args:
        vocab_size: number of tokens.
        cell: ``"lstm"``, ``"gru"``, ``"rnn"`` (tanh) or ``"rnn_relu"``.
        emb_size, hidden_size, num_layers: sizes.
        dropout: on the embedding output, between recurrent layers and before the decoder.
        tie_weights: share the embedding table with the decoder (needs ``emb_size == hidden_size``).
        init: ``"torch"`` (default): every module keeps torch's own initialisation, drawn in the order a plain
            ``nn.Embedding -> nn.LSTM -> nn.Linear`` model draws it (embedding N(0, 1), recurrent weights
            U(+-1/sqrt(H)), decoder weight and bias U(+-1/sqrt(H))), so with one seed a 32-bit model starts
            from the weights of the plain PyTorch model; with ``tie_weights`` the shared table is U(+-0.1).
            ``"uniform"``: the PyTorch word-language-model example's embedding and decoder U(+-0.1), decoder
            bias 0 (lowbit's init before issue 17; with a 64-wide embedding its inputs are ~15x smaller than
            torch's and a one-epoch Tiny Shakespeare run ends ~0.2 bits per character worse).
        weight_bits, act_bits, weight_quantizer, act_quantizer, *_quantizer_args, weight_scale: the
            recurrent layers' quantization (see :class:`lowbit.nn.QuantLSTM`).
        quantize_embedding, quantize_decoder: give the embedding table / the decoder weights the same weight
            quantizer (default: full precision, like the first and last layer of the QNN paper's networks).

    ``forward(ids (T, B) int64, hidden=None) -> (logits (T, B, V), hidden)``.
    """

    def __init__(
        self,
        vocab_size: int,
        cell: str = "lstm",
        emb_size: int = 200,
        hidden_size: int = 200,
        num_layers: int = 2,
        dropout: float = 0.0,
        tie_weights: bool = False,
        weight_bits: Optional[int] = 32,
        act_bits: Optional[int] = 32,
        weight_quantizer=None,
        act_quantizer=None,
        weight_quantizer_args: Optional[dict] = None,
        act_quantizer_args: Optional[dict] = None,
        weight_scale: str = "max",
        quantize_embedding: bool = False,
        quantize_decoder: bool = False,
        init: str = "torch",
    ):
        super().__init__()
        if not isinstance(vocab_size, int) or vocab_size < 1:
            raise ConfigError(f"rnn_lm: vocab_size must be >= 1 (training fills it from the data), got {vocab_size!r}")
        if tie_weights and emb_size != hidden_size:
            raise ConfigError(f"rnn_lm: tie_weights needs emb_size == hidden_size, got {emb_size} and {hidden_size}")
        if init not in ("torch", "uniform"):
            raise ConfigError(f"rnn_lm: init must be 'torch' or 'uniform', got {init!r}")
        self.vocab_size = vocab_size
        self.cell = str(cell).lower()
        wq = dict(weight_quantizer=weight_quantizer, weight_bits=weight_bits,
                  weight_quantizer_args=weight_quantizer_args, weight_scale=weight_scale)
        none = dict(weight_quantizer=None, weight_bits=None, weight_quantizer_args=None, weight_scale=weight_scale)
        self.encoder = QuantEmbedding(vocab_size, emb_size, **(wq if quantize_embedding else none))
        self.drop = nn.Dropout(dropout)
        self.rnn = make_recurrent(
            self.cell, emb_size, hidden_size, num_layers, dropout=dropout if num_layers > 1 else 0.0,
            act_quantizer=act_quantizer, act_bits=act_bits, act_quantizer_args=act_quantizer_args, **wq)
        if quantize_decoder:
            q = ScaledWeightQuantizer(make_quantizer(weight_quantizer, weight_bits, weight_quantizer_args), weight_scale)
            if is_identity(q.quantizer):
                self.decoder = nn.Linear(hidden_size, vocab_size)
            else:
                self.decoder = QuantLinear(hidden_size, vocab_size, bias=True, weight_quantizer=q, weight_clip=None)
        else:
            self.decoder = nn.Linear(hidden_size, vocab_size)
        if init == "uniform":
            with torch.no_grad():  # the PyTorch word-language-model example's initialisation
                self.encoder.weight.uniform_(-0.1, 0.1)
                self.decoder.weight.uniform_(-0.1, 0.1)
                self.decoder.bias.zero_()
        elif tie_weights:
            with torch.no_grad():  # N(0, 1) would give logits of size sqrt(H) through the shared table
                self.encoder.weight.uniform_(-0.1, 0.1)
        if tie_weights:
            self.decoder.weight = self.encoder.weight
        self.tie_weights = bool(tie_weights)

    @property
    def hidden_size(self) -> int:
        return self.rnn.hidden_size

    @property
    def num_layers(self) -> int:
        return self.rnn.num_layers

    def init_hidden(self, batch_size: int, device=None) -> Hidden:
        shape = (self.rnn.num_layers * self.rnn.num_directions, batch_size, self.rnn.hidden_size)
        z = torch.zeros(shape, device=device)
        return (z, z.clone()) if self.rnn.mode == "LSTM" else z

    @staticmethod
    def detach_hidden(hidden: Hidden) -> Hidden:
        """Cut the graph between truncated-BPTT segments (the values carry over)."""
        if isinstance(hidden, tuple):
            return tuple(h.detach() for h in hidden)
        return hidden.detach()

    def forward(self, ids: torch.Tensor, hidden: Optional[Hidden] = None):
        if not isinstance(ids, torch.Tensor) or ids.dim() != 2:
            raise ShapeError(f"RNNLanguageModel: token ids must be a 2-D (seq, batch) tensor, got "
                             f"{tuple(ids.shape) if isinstance(ids, torch.Tensor) else type(ids).__name__}")
        check_token_ids(ids, self.vocab_size, "RNNLanguageModel input")
        emb = self.drop(self.encoder(ids))
        out, hidden = self.rnn(emb, hidden)
        return self.decoder(self.drop(out)), hidden

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy (nats/token)."""
        return F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))


def rnn_lm(**kwargs) -> RNNLanguageModel:
    """Builder for ``build_model("rnn_lm", ...)``: drops the :data:`LM_SETTINGS` keys."""
    model_kwargs = {k: v for k, v in kwargs.items() if k not in LM_SETTINGS}
    return RNNLanguageModel(**model_kwargs)


def split_model_args(model_args: dict):
    """``(network arguments, LM settings with defaults filled)``."""
    settings = dict(LM_SETTINGS)
    settings.update({k: v for k, v in model_args.items() if k in LM_SETTINGS})
    return {k: v for k, v in model_args.items() if k not in LM_SETTINGS}, settings


MODELS.register("rnn_lm", obj=rnn_lm)
