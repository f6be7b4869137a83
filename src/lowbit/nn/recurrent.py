"""Quantized recurrent layers: ``QuantLSTM``, ``QuantGRU``, ``QuantRNN``, and ``QuantEmbedding``.

The layers are drop-in replacements for ``torch.nn.LSTM/GRU/RNN``: the same constructor arguments
(``input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional``), the same parameter
names and layout (``weight_ih_l{k}[_reverse]`` of shape (G*H, in), ``weight_hh_l{k}``, ``bias_ih_l{k}``,
``bias_hh_l{k}``, gates in torch's order: LSTM (i, f, g, o), GRU (r, z, n)), the same initialisation
(uniform in +-1/sqrt(H)) and the same call convention (``output, h_n`` / ``output, (h_n, c_n)``, unbatched
2-D input accepted). So ``load_state_dict`` from a torch module works both ways and, with the default
full-precision quantizers, the outputs are the torch ones (the fused ATen kernel is used then).

Quantization (QNN paper: k-bit weights and activations of recurrent nets):

* weights: every weight matrix goes through ``weight_quantizer`` scaled per matrix (``s * q(w / s)``,
  ``s = max|w|``, see :mod:`lowbit.quant.recurrent`); biases stay full precision;
* activations: the gate outputs and the hidden state go through ``act_quantizer``:
  LSTM ``i, f, o = qg(sigmoid(.))``, ``g = q(tanh(.))``, ``c = f c + i g`` (the cell state is an accumulator
  and stays full precision), ``h = q(o tanh(c))``; GRU ``r, z = qg(sigmoid(.))``, ``n = q(tanh(.))``,
  ``h = q((1 - z) n + z h)``; RNN ``h = q(tanh(.))`` (``relu`` is quantized as it is); ``qg`` is the gate
  mapping ``(q(2 s - 1) + 1) / 2`` of :func:`lowbit.quant.recurrent.quantize_gate`.

With quantized activations the recurrence runs as a Python loop over time steps (input projections of the
whole sequence are one matmul first); with full-precision activations (weights quantized or not) it is one
call of the fused ATen kernel with the quantized weights.
"""

from __future__ import annotations

import math
from typing import Callable, List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError, ShapeError
from ..quant.base import QuantizerSpec
from ..quant.recurrent import ScaledWeightQuantizer, describe, is_identity, make_quantizer, quantize_gate
from .recurrence import GRURecurrence, LSTMRecurrence, RNNRecurrence, fast_act

try:  # the fused kernels torch.nn.LSTM/GRU/RNN call
    from torch import _VF
except ImportError:  # pragma: no cover
    _VF = None

Observer = Callable[[int, str, torch.Tensor], None]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}


class QuantRNNBase(nn.Module):
    """Shared implementation; use :class:`QuantLSTM`, :class:`QuantGRU` or :class:`QuantRNN`.

    Quantization arguments (beyond torch's):
        weight_quantizer, act_quantizer: quantizer specs (registry name, module, callable; ``None``: decided
            by the bit count); see :func:`lowbit.quant.recurrent.make_quantizer`.
        weight_bits, act_bits: bit counts (``None``/32: full precision unless a quantizer is named);
            ``weight_bits=k`` alone selects the k-bit uniform quantizer on [-1, 1].
        weight_quantizer_args, act_quantizer_args: keyword arguments for named quantizers.
        weight_scale: ``"max"`` (``s * q(w / s)``, ``s = max|w|`` per matrix) or ``"none"`` (``q(w)``).
    """

    mode = "LSTM"

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        weight_quantizer: QuantizerSpec = None,
        act_quantizer: QuantizerSpec = None,
        weight_bits: Optional[int] = None,
        act_bits: Optional[int] = None,
        weight_quantizer_args: Optional[dict] = None,
        act_quantizer_args: Optional[dict] = None,
        weight_scale: str = "max",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if self.mode not in _GATES:
            raise ConfigError(f"unknown recurrent mode {self.mode!r}")
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"{type(self).__name__}: {name} must be an integer >= 1, got {v!r}")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout <= 1.0):
            raise ConfigError(f"{type(self).__name__}: dropout must be in [0, 1], got {dropout!r}")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.dropout = float(dropout)
        self.bidirectional = bool(bidirectional)
        self.proj_size = 0  # torch attribute; projections are not supported
        self.weight_quantizer = ScaledWeightQuantizer(
            make_quantizer(weight_quantizer, weight_bits, weight_quantizer_args), weight_scale)
        self.act_quantizer = make_quantizer(act_quantizer, act_bits, act_quantizer_args)
        self.use_fused = True  # full-precision activations: one call of the ATen kernel
        self.fast_recurrence = True  # quantized activations: lowbit.nn.recurrence (False: the _cell loop)

        gate_size = _GATES[self.mode] * hidden_size
        factory = {"device": device, "dtype": dtype}
        num_dir = 2 if bidirectional else 1
        self._flat_weights_names: List[str] = []
        for layer in range(num_layers):
            for d in range(num_dir):
                in_size = input_size if layer == 0 else hidden_size * num_dir
                suffix = "_reverse" if d == 1 else ""
                params = [
                    (f"weight_ih_l{layer}{suffix}", (gate_size, in_size)),
                    (f"weight_hh_l{layer}{suffix}", (gate_size, hidden_size)),
                ]
                if self.bias:
                    params += [(f"bias_ih_l{layer}{suffix}", (gate_size,)), (f"bias_hh_l{layer}{suffix}", (gate_size,))]
                for name, shape in params:
                    setattr(self, name, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    # ---- torch compatibility ------------------------------------------------------------------------

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    @property
    def _flat_weights(self) -> List[torch.Tensor]:
        return [getattr(self, n) for n in self._flat_weights_names]

    def reset_parameters(self) -> None:
        """torch's initialisation: every parameter uniform in [-1/sqrt(H), 1/sqrt(H)]."""
        stdv = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for w in self.parameters(recurse=False):
                w.uniform_(-stdv, stdv)

    def flatten_parameters(self) -> None:  # torch API; nothing to do (weights are quantized per call)
        return None

    @property
    def weight_bits(self) -> int:
        return int(getattr(self.weight_quantizer, "bits", 32))

    @property
    def act_bits(self) -> int:
        return int(getattr(self.act_quantizer, "bits", 32))

    @property
    def activations_quantized(self) -> bool:
        return not is_identity(self.act_quantizer)

    def layer_params(self, layer: int, direction: int = 0, quantized: bool = True):
        """``(w_ih, w_hh, b_ih, b_hh)`` of one layer and direction (weights quantized unless told not to;
        biases ``None`` without bias)."""
        suffix = "_reverse" if direction == 1 else ""
        w_ih = getattr(self, f"weight_ih_l{layer}{suffix}")
        w_hh = getattr(self, f"weight_hh_l{layer}{suffix}")
        if quantized:
            w_ih, w_hh = self.weight_quantizer(w_ih), self.weight_quantizer(w_hh)
        b_ih = getattr(self, f"bias_ih_l{layer}{suffix}") if self.bias else None
        b_hh = getattr(self, f"bias_hh_l{layer}{suffix}") if self.bias else None
        return w_ih, w_hh, b_ih, b_hh

    def quantized_weights(self) -> List[torch.Tensor]:
        """The flat parameter list (torch order) with every weight matrix quantized."""
        out = []
        for name in self._flat_weights_names:
            p = getattr(self, name)
            out.append(self.weight_quantizer(p) if name.startswith("weight") else p)
        return out

    # ---- forward ------------------------------------------------------------------------------------

    def _check_hx(self, hx, batch: int, unbatched: bool, ref: torch.Tensor):
        expected = (self.num_layers * self.num_directions, batch, self.hidden_size)
        shown = (expected[0], expected[2]) if unbatched else expected
        names = ("h_0", "c_0") if self.mode == "LSTM" else ("h_0",)
        if hx is None:
            z = torch.zeros(expected, dtype=ref.dtype, device=ref.device)
            return (z, z.clone()) if self.mode == "LSTM" else z
        if self.mode == "LSTM":
            if not (isinstance(hx, (tuple, list)) and len(hx) == 2):
                raise ShapeError(f"{type(self).__name__}: the initial state must be a pair (h_0, c_0)")
            states = list(hx)
        else:
            if isinstance(hx, (tuple, list)):
                raise ShapeError(f"{type(self).__name__}: the initial state must be one tensor h_0, got a {type(hx).__name__}")
            states = [hx]
        fixed = []
        for name, s in zip(names, states):
            if not isinstance(s, torch.Tensor):
                raise ShapeError(f"{type(self).__name__}: {name} must be a tensor, got {type(s).__name__}")
            if tuple(s.shape) != tuple(shown):
                raise ShapeError(
                    f"{type(self).__name__}: {name} has shape {tuple(s.shape)}, expected {tuple(shown)} "
                    f"(num_layers * num_directions, {'' if unbatched else 'batch, '}hidden_size)"
                )
            fixed.append(s.unsqueeze(1) if unbatched else s)
        return tuple(fixed) if self.mode == "LSTM" else fixed[0]

    def forward(self, input: torch.Tensor, hx=None):
        return self._forward_impl(input, hx)

    def _forward_impl(self, input: torch.Tensor, hx=None, force_loop: bool = False,
                      observer: Optional[Observer] = None, reference: bool = False):
        """``force_loop``: the step loop even with full-precision activations; ``reference``: the loop of
        :meth:`_cell` (every op recorded by autograd) rather than :mod:`lowbit.nn.recurrence` (an observer
        implies it)."""
        if not isinstance(input, torch.Tensor):
            raise ShapeError(f"{type(self).__name__}: input must be a tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ShapeError(
                f"{type(self).__name__}: input must be 3-D ({'batch, seq' if self.batch_first else 'seq, batch'}, "
                f"features) or 2-D (seq, features), got shape {tuple(input.shape)}"
            )
        if input.size(-1) != self.input_size:
            raise ShapeError(
                f"{type(self).__name__}: input has {input.size(-1)} features, the layer expects {self.input_size}"
            )
        unbatched = input.dim() == 2
        if unbatched:
            input = input.unsqueeze(0 if self.batch_first else 1)
        batch = input.size(0 if self.batch_first else 1)
        hx = self._check_hx(hx, batch, unbatched, input)

        if self.use_fused and not force_loop and not reference and observer is None and not self.activations_quantized and _VF is not None:
            output, h_n = self._fused(input, hx)
        else:
            x = input.transpose(0, 1) if self.batch_first else input
            output, h_n = self._loop(x, hx, observer, fast=False if reference else None)
            if self.batch_first:
                output = output.transpose(0, 1)
        if unbatched:
            output = output.squeeze(0 if self.batch_first else 1)
            h_n = tuple(s.squeeze(1) for s in h_n) if self.mode == "LSTM" else h_n.squeeze(1)
        return output, h_n

    def _fused(self, input, hx):
        weights = self.quantized_weights()
        args = (weights, self.bias, self.num_layers, self.dropout, self.training, self.bidirectional, self.batch_first)
        if self.mode == "LSTM":
            out = _VF.lstm(input, hx, *args)
            return out[0], (out[1], out[2])
        fn = {"GRU": _VF.gru, "RNN_TANH": _VF.rnn_tanh, "RNN_RELU": _VF.rnn_relu}[self.mode]
        out = fn(input, hx, *args)
        return out[0], out[1]

    def _loop(self, x: torch.Tensor, hx, observer: Optional[Observer], fast: Optional[bool] = None):
        lstm = self.mode == "LSTM"
        fast = (self.fast_recurrence if fast is None else fast) and observer is None
        h0_all, c0_all = (hx if lstm else (hx, None))
        layer_input = x
        h_n, c_n = [], []
        for layer in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                k = layer * self.num_directions + d
                w_ih, w_hh, b_ih, b_hh = self.layer_params(layer, d)
                seq = layer_input if d == 0 else layer_input.flip(0)
                xproj = F.linear(seq, w_ih, b_ih)  # (T, B, G*H): the input projections of all steps at once
                if b_hh is not None and self.mode != "GRU":  # GRU keeps b_hn inside r * (W_hn h + b_hn)
                    xproj = xproj + b_hh
                    b_hh = None
                h = h0_all[k]
                c = c0_all[k] if lstm else None
                act = fast_act(self.act_quantizer) if fast and xproj.size(0) > 0 else None
                if act is not None:  # one autograd node per layer and direction (lowbit.nn.recurrence)
                    out, h, c = self._fast_recurrence(xproj, h, c, w_hh, b_hh, act)
                else:  # the reference: every op of every step recorded by autograd
                    steps = []
                    for t in range(xproj.size(0)):
                        h, c = self._cell(xproj[t], h, c, w_hh, b_hh, k, observer)
                        steps.append(h)
                    out = torch.stack(steps) if steps else xproj.new_zeros(0, xproj.size(1), self.hidden_size)
                outs.append(out.flip(0) if d == 1 else out)
                h_n.append(h)
                if lstm:
                    c_n.append(c)
            layer_input = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
            if self.dropout > 0 and self.training and layer < self.num_layers - 1:
                layer_input = F.dropout(layer_input, self.dropout, True)
        hn = torch.stack(h_n)
        return layer_input, ((hn, torch.stack(c_n)) if lstm else hn)

    def _fast_recurrence(self, xproj, h, c, w_hh, b_hh, act):
        """The recurrence of one layer and direction as one :mod:`lowbit.nn.recurrence` Function: outputs
        bit for bit those of the :meth:`_cell` loop, with a hand-written backward."""
        if self.mode == "LSTM":
            mult = self._gate_mult(xproj)
            aa, bb = self._gate_affine(xproj)
            out, c = LSTMRecurrence.apply(xproj, h, c, w_hh, mult, aa, bb, act)
            return out, out[-1], c
        if self.mode == "GRU":
            out = GRURecurrence.apply(xproj, h, w_hh, b_hh, act)
        else:
            out = RNNRecurrence.apply(xproj, h, w_hh, self.mode == "RNN_RELU", act)
        return out, out[-1], None

    def _cell(self, xp, h, c, w_hh, b_hh, k, observer):
        q = self.act_quantizer
        if self.mode == "LSTM":
            # xp holds both biases. The four gates go through one quantizer call: i, f, o = sigmoid(.) are
            # quantized as 2 sigmoid(x) - 1 = tanh(x / 2) and mapped back by (u + 1) / 2, g = tanh(.) as it is.
            gates = torch.addmm(xp, h, w_hh.t())
            u = q(torch.tanh(gates * self._gate_mult(gates)))
            a, b = self._gate_affine(gates)
            i, f, g, o = torch.addcmul(b, u, a).chunk(4, 1)
            c = torch.addcmul(f * c, i, g)
            h = q(o * torch.tanh(c))
            if observer is not None:
                observer(k, "gates", gates)
                observer(k, "c", c)
                observer(k, "h", h)
            return h, c
        if self.mode == "GRU":
            hp = F.linear(h, w_hh, b_hh)
            xr, xz, xn = xp.chunk(3, 1)
            hr, hz, hn = hp.chunk(3, 1)
            rz = quantize_gate(q, torch.sigmoid(torch.cat([xr + hr, xz + hz], 1)))
            r, z = rz.chunk(2, 1)
            pre_n = torch.addcmul(xn, r, hn)
            n = q(torch.tanh(pre_n))
            h = q(torch.lerp(n, h, z))  # (1 - z) n + z h
            if observer is not None:  # every pre-activation, and W_hn h + b_hn before r scales it
                observer(k, "gates", torch.cat([xr + hr, xz + hz, pre_n, hn], 1))
        else:
            pre = torch.addmm(xp, h, w_hh.t())
            h = q(torch.tanh(pre) if self.mode == "RNN_TANH" else torch.relu(pre))
            if observer is not None:
                observer(k, "gates", pre)
        if observer is not None:
            observer(k, "h", h)
        return h, None

    def _gate_mult(self, like: torch.Tensor) -> torch.Tensor:
        """(4H,) multipliers 1/2 for the sigmoid gates (i, f, o), 1 for g: tanh(x/2) = 2 sigmoid(x) - 1."""
        key = (like.device, like.dtype)
        cache = self.__dict__.setdefault("_gate_cache", {})
        if key not in cache:
            H = self.hidden_size
            m = torch.full((4 * H,), 0.5, device=like.device, dtype=like.dtype)
            m[2 * H:3 * H] = 1.0
            a = m.clone()               # (u + 1) / 2 = 0.5 u + 0.5 for i, f, o; u for g
            b = torch.full_like(m, 0.5)
            b[2 * H:3 * H] = 0.0
            cache[key] = (m, a, b)
        return cache[key][0]

    def _gate_affine(self, like: torch.Tensor):
        self._gate_mult(like)
        _, a, b = self.__dict__["_gate_cache"][(like.device, like.dtype)]
        return a, b

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s + f", weights={describe(self.weight_quantizer)}, activations={describe(self.act_quantizer)}"


class QuantLSTM(QuantRNNBase):
    """``torch.nn.LSTM`` with k-bit weights and activations; see :class:`QuantRNNBase`."""

    mode = "LSTM"


class QuantGRU(QuantRNNBase):
    """``torch.nn.GRU`` with k-bit weights and activations; see :class:`QuantRNNBase`."""

    mode = "GRU"


class QuantRNN(QuantRNNBase):
    """``torch.nn.RNN`` (``nonlinearity`` "tanh" or "relu") with k-bit weights and activations."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, nonlinearity: str = "tanh", **kwargs):
        if nonlinearity not in ("tanh", "relu"):
            raise ConfigError(f"QuantRNN: nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        self.mode = "RNN_TANH" if nonlinearity == "tanh" else "RNN_RELU"
        super().__init__(input_size, hidden_size, num_layers, **kwargs)


def make_recurrent(cell: str, *args, **kwargs) -> QuantRNNBase:
    """``"lstm"``, ``"gru"``, ``"rnn"``/``"rnn_tanh"`` or ``"rnn_relu"`` -> the quantized layer."""
    key = str(cell).strip().lower()
    if key == "lstm":
        return QuantLSTM(*args, **kwargs)
    if key == "gru":
        return QuantGRU(*args, **kwargs)
    if key in ("rnn", "rnn_tanh"):
        return QuantRNN(*args, nonlinearity="tanh", **kwargs)
    if key == "rnn_relu":
        return QuantRNN(*args, nonlinearity="relu", **kwargs)
    raise ConfigError(f"unknown recurrent cell {cell!r}; use lstm, gru, rnn (rnn_tanh) or rnn_relu")


class QuantEmbedding(nn.Embedding):
    """``nn.Embedding`` whose table goes through a (scaled) weight quantizer; ids are range-checked.

    Token ids outside ``0 .. num_embeddings - 1`` raise :class:`lowbit.errors.DataError` naming the first
    bad id (torch would raise an opaque ``IndexError``).
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, weight_quantizer: QuantizerSpec = None,
                 weight_bits: Optional[int] = None, weight_quantizer_args: Optional[dict] = None,
                 weight_scale: str = "max", **kwargs):
        super().__init__(num_embeddings, embedding_dim, **kwargs)
        self.weight_quantizer = ScaledWeightQuantizer(
            make_quantizer(weight_quantizer, weight_bits, weight_quantizer_args), weight_scale)

    @property
    def quantized_weight(self) -> torch.Tensor:
        return self.weight_quantizer(self.weight)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        check_token_ids(ids, self.num_embeddings)
        return F.embedding(ids, self.quantized_weight, self.padding_idx, self.max_norm, self.norm_type,
                           self.scale_grad_by_freq, self.sparse)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weights={describe(self.weight_quantizer)}"


def check_token_ids(ids, vocab_size: int, where: str = "input") -> None:
    """DataError if any id lies outside ``0 .. vocab_size - 1`` (works for tensors and NumPy arrays)."""
    if isinstance(ids, torch.Tensor):
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise DataError(f"{where}: token ids must be integers, got dtype {ids.dtype}")
        if ids.numel() == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
    else:
        import numpy as np

        ids = np.asarray(ids)
        if ids.dtype.kind not in "iu":
            raise DataError(f"{where}: token ids must be integers, got dtype {ids.dtype}")
        if ids.size == 0:
            return
        lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        raise DataError(f"{where}: token id {bad} is outside the vocabulary (valid ids 0..{vocab_size - 1})")
