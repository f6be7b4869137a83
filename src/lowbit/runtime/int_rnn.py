"""Integer-only GRU and vanilla (tanh) RNN inference, built the way the integer LSTM is: NumPy + C, no torch.

    from lowbit.runtime import load
    m = load("ptb_gru.lbt")                      # kind "int_gru" or "int_rnn", written by `lowbit export`
    m.perplexity(m.encode_file("ptb.test.txt"))  # {"perplexity": ..., "loss": ..., "tokens": ...}
    logp, state = m.log_probs(ids)               # ids (T, B) int -> (T, B, V) float32 log-probabilities

The pieces are those of :mod:`lowbit.runtime.int_lstm` (read its docstring first): int8 asymmetric inputs and
hidden outputs, int8 per-row symmetric weights, int32 effective biases with the zero points folded in,
int8 x int8 -> int32 GEMMs (all input projections of a sequence at once, then one recurrent GEMM per
step), every rescale an int32 multiplier with one rounding right shift, gate pre-activations int16 Q3.12 and
gate outputs int16 Q0.15 from the same interpolated sigmoid/tanh tables. What differs is the cell.

GRU (kind ``"int_gru"``; lowbit's and PyTorch's gate convention, gates (r, z, n), rows 3H)
------------------------------------------------------------------------------------------
Float cell (:class:`lowbit.nn.QuantGRU`)::

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))     h' = (1 - z) n + z h = n + z (h - n)

Integer cell (per batch row; ``gx`` = input part, ``gh`` = recurrent part, both Q3.12)::

    gx[r] = sat16(rescale(W_ih[r] x + bias_x[r], M_x[r]))   bias_x holds b_i* and b_hr, b_hz (not b_hn)
    gh[r] =        rescale(W_hh[r] hq + bias_h[r], M_h[r])   bias_h holds b_hn in the n rows (r * (W_hn h + b_hn))
    r = sigmoid(sat16(gh_r + gx_r)) ; z = sigmoid(sat16(gh_z + gx_z))                       Q0.15
    n = tanh(sat16(gx_n + rshr(r * sat16(gh_n), 15)))                 Q0.15 x Q3.12 = Q3.27 -> Q3.12
    h = sat16(n + rshr(z * (h - n), 15))                              Q0.15: the state, int16
    hq = clamp8(rescale(h, M_o) + z_h),  M_o = 2^-15 / s_h           int8: the GEMM operand and the output

The state of a layer is h alone, kept in int16 Q0.15 (a GRU's hidden state is a convex mix of tanh outputs
and the initial 0, so |h| <= 1): it is the cell's memory, as the LSTM's cell state is, and an update
``(1 - z)(n - h)`` with z near 1 can be smaller than half an int8 step, which an int8 state would drop at
every step (slow-moving units would freeze). On the small models measured so far (a 2x128 Tiny Shakespeare
GRU, the tests' models) an int8 state gave the same perplexity; the int16 one costs a byte more per unit.
The int8 ``hq`` (scale ``s_h``, zero point ``z_h`` from the calibrated range of h) is what the recurrent
GEMM, the next layer and the decoder read; it is recomputed from h at each step (and at the start of a
call, from the state passed in). ``h - n`` spans 17 bits and ``z (h - n)`` < 2^31; the result lies
between n and h, so the saturation never acts.

Vanilla RNN (kind ``"int_rnn"``; tanh only, rows H)
--------------------------------------------------
Float ``h' = tanh(W_ih x + b_ih + W_hh h + b_hh)``; integer::

    pre = sat16(rescale(W_hh hq + bias_h, M_h) + gx)                 Q3.12 (both biases in bias_x)
    hq  = clamp8(rescale(tanh(pre), M_o) + z_h),  M_o = 2^-15 / s_h  int8: the state and the output

The state of a layer is the int8 hq (as the LSTM's h). ``nonlinearity="relu"`` is not exported: its
output has no bound for the fixed Q0.15 format (the exporter refuses it by name).

The C kernels (:func:`lowbit.kernels.intlstm.gru_layer`, :func:`~lowbit.kernels.intlstm.rnn_layer`) run the
integer LSTM's int8 GEMM on the path of every lowbit kernel and the element-wise step in plain C; they give
the same integers as the NumPy references here, bit for bit (tested).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Tuple, Union

import numpy as np

from .int_lstm import (IntRecurrentLayer, IntRecurrentModel, lut_apply, rescale, rshift_round, sat16)

GRU_KIND = "int_gru"
RNN_KIND = "int_rnn"
CELLS = {"gru": GRU_KIND, "rnn_tanh": RNN_KIND}

PathLike = Union[str, Path]


# ======================================================================================================
# Layers
# ======================================================================================================


class IntGRULayer(IntRecurrentLayer):
    """One integer GRU layer: gates (r, z, n), 3H rows; ``bias_h`` holds ``b_hn`` in its n rows. State:
    h int16 Q0.15. ``hid_m0, hid_shift``: M_o = 2^-15 / s_h (h -> int8 hq)."""

    GATES = 3
    STATE = (("h", np.int16),)


class IntRNNLayer(IntRecurrentLayer):
    """One integer tanh RNN layer: H rows, both biases in ``bias_x``. State: h int8 (the hidden output).
    ``hid_m0, hid_shift``: M_o = 2^-15 / s_h (tanh output Q0.15 -> int8)."""

    GATES = 1
    STATE = (("h", np.int8),)


# ======================================================================================================
# NumPy references
# ======================================================================================================


def _input_part(layer: IntRecurrentLayer, x: np.ndarray) -> np.ndarray:
    """int64 (T, B, G H): sat16(rescale(W_ih x + bias_x, M_x)), the Q3.12 input part of every step."""
    T, B, _ = x.shape
    acc = x.reshape(T * B, layer.input_size).astype(np.int64) @ layer.w_ih.astype(np.int64).T + layer.bias_x
    gx = sat16(rescale(acc, layer.qmul[0].astype(np.int64), layer.qmul[1].astype(np.int64)))
    return gx.reshape(T, B, layer.GATES * layer.hidden_size)


def _recurrent_part(layer: IntRecurrentLayer, hq: np.ndarray, w_hh: np.ndarray) -> np.ndarray:
    """int64 (B, G H): rescale(W_hh hq + bias_h, M_h) (int32 range, not saturated)."""
    return rescale(hq @ w_hh.T + layer.bias_h, layer.qmul[2].astype(np.int64), layer.qmul[3].astype(np.int64))


def _requantize(layer: IntRecurrentLayer, v: np.ndarray) -> np.ndarray:
    """Q0.15 -> int8 hidden output: clamp8(rescale(v, M_o) + z_h)."""
    return np.clip(rescale(v, layer.hid_m0, layer.hid_shift) + layer.z_h, -128, 127)


def gru_layer_reference(layer: IntGRULayer, x: np.ndarray, h: np.ndarray, lut_sig: np.ndarray,
                        lut_tanh: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The integer GRU over a sequence, in NumPy: ``x`` int8 (T, B, I), ``h`` int16 Q0.15 (B, H) ->
    (y int8 (T, B, H), h_T int16). The arithmetic of the module docstring, step by step."""
    T, B, _ = x.shape
    H = layer.hidden_size
    gx = _input_part(layer, x)
    w_hh = layer.w_hh.astype(np.int64)
    h = h.astype(np.int64)
    hq = _requantize(layer, h)
    y = np.empty((T, B, H), dtype=np.int8)
    for t in range(T):
        gh = _recurrent_part(layer, hq, w_hh)
        r = lut_apply(lut_sig, sat16(gh[:, :H] + gx[t, :, :H]))
        z = lut_apply(lut_sig, sat16(gh[:, H:2 * H] + gx[t, :, H:2 * H]))
        n = lut_apply(lut_tanh, sat16(gx[t, :, 2 * H:] + rshift_round(r * sat16(gh[:, 2 * H:]), 15)))
        h = sat16(n + rshift_round(z * (h - n), 15))
        hq = _requantize(layer, h)
        y[t] = hq
    return y, h.astype(np.int16)


def rnn_layer_reference(layer: IntRNNLayer, x: np.ndarray, h: np.ndarray,
                        lut_tanh: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """The integer tanh RNN over a sequence, in NumPy: ``x`` int8 (T, B, I), ``h`` int8 (B, H) ->
    (y int8 (T, B, H), h_T int8)."""
    T, B, _ = x.shape
    gx = _input_part(layer, x)
    w_hh = layer.w_hh.astype(np.int64)
    hq = h.astype(np.int64)
    y = np.empty((T, B, layer.hidden_size), dtype=np.int8)
    for t in range(T):
        pre = sat16(_recurrent_part(layer, hq, w_hh) + gx[t])
        hq = _requantize(layer, lut_apply(lut_tanh, pre))
        y[t] = hq
    return y, hq.astype(np.int8)


# ======================================================================================================
# The models
# ======================================================================================================


class _IntSingleStateModel(IntRecurrentModel):
    """A cell whose layer state is one array (h): its NumPy reference (:attr:`REFERENCE`) and C kernel
    (:attr:`KERNEL`, a function of :mod:`lowbit.kernels.intlstm`) take the tables named in :attr:`LUTS`."""

    REFERENCE: Any = None
    KERNEL = ""
    LUTS: Tuple[str, ...] = ()

    def _run_layer(self, layer, x, state):
        k = self.kernels
        luts = [getattr(self, name) for name in self.LUTS]
        if k.ext is None:
            y, h = type(self).REFERENCE(layer, x, state[0], *luts)
            return y, (h,)
        x = np.ascontiguousarray(x, dtype=np.int8)
        h = np.array(state[0], dtype=layer.STATE[0][1], order="C", copy=True)  # updated in place
        y = np.empty((x.shape[0], x.shape[1], layer.hidden_size), dtype=np.int8)
        w_ih, w_hh = k.packed(layer)
        getattr(k.ext, self.KERNEL)(x, w_ih, w_hh, layer.bias_x, layer.bias_h, layer.qmul, *luts, h, y, z_h=layer.z_h,
                                    hid_m0=layer.hid_m0, hid_shift=layer.hid_shift, path=k.path)
        return y, (h,)


class IntGRU(_IntSingleStateModel):
    """A loaded integer GRU (kind ``"int_gru"``); the state of each layer is ``(h,)``, h int16 Q0.15 (B, H).
    Methods: those of :class:`lowbit.runtime.int_lstm.IntRecurrentModel` (log_probs, perplexity, ...)."""

    KIND, LAYER, description = GRU_KIND, IntGRULayer, "integer GRU"
    REFERENCE, KERNEL, LUTS = staticmethod(gru_layer_reference), "gru_layer", ("lut_sig", "lut_tanh")


class IntRNN(_IntSingleStateModel):
    """A loaded integer tanh RNN (kind ``"int_rnn"``); the state of each layer is ``(h,)``, h int8 (B, H).
    Methods: those of :class:`lowbit.runtime.int_lstm.IntRecurrentModel` (log_probs, perplexity, ...)."""

    KIND, LAYER, description = RNN_KIND, IntRNNLayer, "integer RNN"
    REFERENCE, KERNEL, LUTS = staticmethod(rnn_layer_reference), "rnn_layer", ("lut_tanh",)


MODELS = {GRU_KIND: IntGRU, RNN_KIND: IntRNN}


def load_int_rnn(path: PathLike, backend: str = "auto", kernel_path: str = "auto"):
    """Load an integer GRU or RNN model file (kind ``"int_gru"`` / ``"int_rnn"``, written by
    :func:`lowbit.export.lstm.export_int_rnn`); options as :func:`lowbit.runtime.int_lstm.load_int_lstm`."""
    from ..errors import CheckpointError
    from .modelfile import load_model_file

    kind, meta, arrays = load_model_file(path)
    if kind not in MODELS:
        raise CheckpointError(f"{path} holds a {kind!r} model, not an integer GRU or RNN ({', '.join(MODELS)})")
    return MODELS[kind].from_parts(meta, arrays, str(path), backend=backend, kernel_path=kernel_path)

