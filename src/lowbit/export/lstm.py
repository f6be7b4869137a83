"""Post-training calibration and export of an LSTM, GRU or tanh RNN to the integer-only runtime
(:mod:`lowbit.runtime.int_lstm`, :mod:`lowbit.runtime.int_rnn`).

    from lowbit.export.lstm import export_int_lstm, export_int_rnn
    export_int_lstm("runs/ptb-lstm/checkpoint.pt", "ptb.valid.txt", "ptb_lstm.lbt")   # kind "int_lstm"
    export_int_rnn("runs/ptb-gru/checkpoint.pt", "ptb.valid.txt", "ptb_gru.lbt")      # any cell: int_gru here
    m = lowbit.runtime.load("ptb_lstm.lbt")

What is exported: an :class:`~lowbit.models.lm.RNNLanguageModel` (embedding -> recurrent layers -> decoder;
dropout is inactive at inference) with an LSTM, a GRU or a tanh RNN, or a bare recurrent layer
(``torch.nn.LSTM/GRU/RNN`` or :class:`~lowbit.nn.QuantLSTM` / ``QuantGRU`` / ``QuantRNN``: input floats ->
hidden floats). Refused, by name: bidirectional layers, LSTM projections, relu RNNs (no bound for the
fixed-point hidden format). A quantized (QAT) model exports its *quantized* weights (what its forward pass
uses); its activation quantizers are replaced by the integer formats of the runtime, calibrated on its own
activations.

Calibration runs the float model over a few batches of sample data (``calibration_data``) and records, per
layer, the range of the hidden output h (-> int8 asymmetric scale and zero point), max|c| of an LSTM's cell
state (-> the power-of-two cell scale 2^-cs, cs = 15 - ceil(log2 max|c|), clamped to 0..25) and, for the
record, max|pre-activation|. The input of the first layer takes the range of the embedding table (every token
may occur) or of the calibration inputs (bare layer). Weights are quantized per output row to int8 symmetric
(scale max|row| / 127), biases to int32 at the input scale times the row's weight scale with the zero-point
terms folded in (the GRU's b_hn, which r multiplies, at the recurrent scale), and the decoder to int8 per
row (its int32 products are turned into float logits for the log-softmax: the output layer's final
dequantization is the one float step).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, DataError, ShapeError
from ..models.lm import RNNLanguageModel
from ..nn.recurrent import QuantRNNBase, make_recurrent
from ..runtime import int_lstm as il
from ..runtime import int_rnn as ir

PathLike = Union[str, Path]


# ---- the source model ----------------------------------------------------------------------------------


# the exported cells: QuantRNNBase.mode -> (cell name, runtime model class)
CELLS = {"LSTM": ("lstm", il.IntLSTM), "GRU": ("gru", ir.IntGRU), "RNN_TANH": ("rnn_tanh", ir.IntRNN)}


def _as_quant_rnn(rnn: nn.Module) -> QuantRNNBase:
    """The recurrent layer as a :class:`QuantRNNBase` in eval mode (a torch layer is copied into one);
    ConfigError naming what the integer runtime cannot represent."""
    if isinstance(rnn, QuantRNNBase):
        q = rnn
    elif isinstance(rnn, (nn.LSTM, nn.GRU, nn.RNN)):
        if getattr(rnn, "proj_size", 0):
            raise ConfigError("integer export does not support LSTM projections (proj_size > 0)")
        cell = ("lstm" if isinstance(rnn, nn.LSTM) else "gru" if isinstance(rnn, nn.GRU)
                else f"rnn_{getattr(rnn, 'nonlinearity', 'tanh')}")
        q = make_recurrent(cell, rnn.input_size, rnn.hidden_size, rnn.num_layers, bias=rnn.bias,
                           batch_first=rnn.batch_first, bidirectional=rnn.bidirectional)
        q.load_state_dict(rnn.state_dict())
    else:
        raise ConfigError(f"integer export takes a recurrent language model or a recurrent layer (LSTM, GRU, tanh RNN), "
                          f"got {type(rnn).__name__}")
    if q.mode == "RNN_RELU":
        raise ConfigError("integer export supports tanh RNNs only: a relu RNN's hidden state has no bound for the "
                          "runtime's fixed-point formats (nonlinearity='relu')")
    if q.mode not in CELLS:
        raise ConfigError(f"integer export: unsupported recurrent mode {q.mode!r}")
    if q.bidirectional:
        raise ConfigError(f"integer export supports unidirectional layers only (a bidirectional {q.mode})")
    return q.eval()


def _resolve_model(checkpoint_or_model):
    """(recurrent layer as QuantRNNBase, embedding weight or None, decoder (W, b) or None, vocab or None,
    source info)."""
    vocab = None
    source: Dict[str, Any] = {}
    model = checkpoint_or_model
    if isinstance(model, (str, Path)):
        from ..train.tasks.lm import load_lm_checkpoint

        model, vocab, data = load_lm_checkpoint(model)
        source = {"checkpoint": str(checkpoint_or_model), "recipe": data["config"].get("recipe"),
                  "epoch": data.get("epoch")}
    if isinstance(model, RNNLanguageModel):
        model = model.eval()
        rnn = _as_quant_rnn(model.rnn)
        with torch.no_grad():
            emb = model.encoder.quantized_weight.detach().float().cpu()
            dec = model.decoder
            w = dec.quantized_weight if hasattr(dec, "quantized_weight") else dec.weight
            decoder = (w.detach().float().cpu(), dec.bias.detach().float().cpu())
        source.setdefault("model", "rnn_lm")
        return rnn, emb, decoder, vocab, source
    rnn = _as_quant_rnn(model)
    source.setdefault("model", type(model).__name__)
    return rnn, None, None, None, source


# ---- calibration ---------------------------------------------------------------------------------------


def _batches(data, has_embedding: bool, vocab, batch_size: int, bptt: int, max_batches: int) -> List[torch.Tensor]:
    """The calibration batches: (T, B) int64 ids (language model) or (T, B, I) floats (bare layer)."""
    if isinstance(data, (str, Path)):
        if not has_embedding or vocab is None:
            raise ConfigError("calibration from a text file needs a language-model checkpoint with its vocabulary")
        from ..data.text import encode_file

        data = encode_file(data, vocab)
    if isinstance(data, (np.ndarray, torch.Tensor)):
        data = [data]
    out = []
    for item in data:
        t = torch.as_tensor(np.asarray(item) if not isinstance(item, torch.Tensor) else item)
        if has_embedding:
            if t.is_floating_point():
                raise DataError("calibration data of a language model must be integer token ids")
            if t.dim() == 1:
                from ..data.text import batchify

                cols = torch.from_numpy(batchify(t.numpy(), batch_size))
                out += [cols[i:i + bptt] for i in range(0, cols.size(0), bptt)]
            elif t.dim() == 2:
                out.append(t)
            else:
                raise ShapeError(f"calibration token ids must be 1-D (a stream) or 2-D (seq, batch), got {tuple(t.shape)}")
        else:
            if t.dim() == 2:
                t = t.unsqueeze(1)
            if t.dim() != 3:
                raise ShapeError(f"calibration inputs of a recurrent layer must be (seq, batch, features), got {tuple(t.shape)}")
            out.append(t.float())
        if len(out) >= max_batches:
            break
    if not out:
        raise DataError("no calibration data")
    return out[:max_batches]


@torch.no_grad()
def calibrate_int_rnn(rnn: QuantRNNBase, inputs: Sequence[torch.Tensor], embedding: Optional[torch.Tensor] = None,
                      carry_state: bool = True) -> Dict[str, Any]:
    """Ranges of the float model (LSTM, GRU or RNN) on the calibration batches: per layer ``h_min``,
    ``h_max``, ``c_absmax`` (LSTM; 0 otherwise), ``gate_absmax`` (max |pre-activation|, for the record); and
    ``x_min``/``x_max`` of the first layer's input."""
    L = rnn.num_layers
    stats = [{"h_min": 0.0, "h_max": 0.0, "c_absmax": 0.0, "gate_absmax": 0.0} for _ in range(L)]

    def observe(k: int, name: str, t: torch.Tensor) -> None:
        s = stats[k]
        if name == "h":
            s["h_min"] = min(s["h_min"], float(t.min()))
            s["h_max"] = max(s["h_max"], float(t.max()))
        elif name == "c":
            s["c_absmax"] = max(s["c_absmax"], float(t.abs().max()))
        elif name == "gates":
            s["gate_absmax"] = max(s["gate_absmax"], float(t.abs().max()))

    x_min, x_max = math.inf, -math.inf
    hidden = None
    tokens = 0
    for batch in inputs:
        if embedding is not None:
            from ..nn.recurrent import check_token_ids

            check_token_ids(batch, embedding.size(0), "calibration data")
            x = embedding[batch]
        else:
            x = batch
            if x.size(-1) != rnn.input_size:
                raise ShapeError(f"calibration inputs have {x.size(-1)} features, the layer expects {rnn.input_size}")
            x_min, x_max = min(x_min, float(x.min())), max(x_max, float(x.max()))
        if rnn.batch_first:
            x = x.transpose(0, 1)
        if hidden is not None and (hidden[0] if isinstance(hidden, tuple) else hidden).size(1) != x.size(1):
            hidden = None  # (num_layers, batch, H): another batch size starts afresh
        was_bf = rnn.batch_first
        rnn.batch_first = False
        try:
            _, hidden = rnn._forward_impl(x, hidden if carry_state else None, force_loop=True, observer=observe)
        finally:
            rnn.batch_first = was_bf
        tokens += x.size(0) * x.size(1)
    if embedding is not None:
        x_min, x_max = float(embedding.min()), float(embedding.max())
    return {"layers": stats, "x_min": x_min, "x_max": x_max, "tokens": tokens, "batches": len(inputs)}


calibrate_int_lstm = calibrate_int_rnn  # its first name


# ---- quantization ----------------------------------------------------------------------------------------


def _per_row_int8(w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(int8 weights, float64 scale per row): symmetric, q in [-127, 127]."""
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / 127.0, 1.0 / 127.0)
    q = np.clip(np.rint(w / scale[:, None]), -127, 127).astype(np.int8)
    return q, scale


def _multipliers(real: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    m0 = np.zeros(real.shape, np.int32)
    sh = np.zeros(real.shape, np.int32)
    for i, r in enumerate(real.ravel()):
        m0.flat[i], sh.flat[i] = il.quantize_multiplier(float(r))
    return m0, sh


def _cell_frac_bits(c_absmax: float) -> int:
    if not c_absmax > 0:
        return 15
    m = math.ceil(math.log2(c_absmax))
    return int(min(max(15 - m, 0), 25))


def _gate_arrays(k: int, w_ih: np.ndarray, w_hh: np.ndarray, b_x: np.ndarray, b_h: np.ndarray,
                 s_in: float, z_in: int, s_h: float, z_h: int) -> Dict[str, np.ndarray]:
    """The gate rows of layer ``k``, any cell: int8 weights per row, int32 effective biases (``b_x`` at the
    input scale, ``b_h`` at the recurrent one, zero points folded in) and the Q3.12 multipliers."""
    gate_scale = 2.0 ** -il.GATE_FRAC_BITS
    q_ih, sw_ih = _per_row_int8(w_ih)
    q_hh, sw_hh = _per_row_int8(w_hh)
    rows_ih = q_ih.astype(np.int64).sum(axis=1)
    rows_hh = q_hh.astype(np.int64).sum(axis=1)
    bias_x = np.rint(b_x / (s_in * sw_ih)) - z_in * rows_ih
    bias_h = np.rint(b_h / (s_h * sw_hh)) - z_h * rows_hh
    lim = il.BIAS_LIMIT
    if np.abs(bias_x).max(initial=0) > lim or np.abs(bias_h).max(initial=0) > lim:
        raise ConfigError(f"layer {k}: a bias does not fit the int32 accumulator at its scale "
                          f"(degenerate weight or input scale)")
    m0x, shx = _multipliers(s_in * sw_ih / gate_scale)
    m0h, shh = _multipliers(s_h * sw_hh / gate_scale)
    return {f"l{k}.w_ih": q_ih, f"l{k}.w_hh": q_hh,
            f"l{k}.bias_x": bias_x.astype(np.int32), f"l{k}.bias_h": bias_h.astype(np.int32),
            f"l{k}.qmul": np.stack([m0x, shx, m0h, shh]).astype(np.int32),
            f"l{k}.w_ih_scale": sw_ih.astype(np.float32), f"l{k}.w_hh_scale": sw_hh.astype(np.float32)}


def _split_biases(mode: str, H: int, b_ih: np.ndarray, b_hh: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(input-side, recurrent-side) biases of a cell: all in the input part, but the GRU's b_hn, which r
    multiplies (n = tanh(W_in x + b_in + r (W_hn h + b_hn)))."""
    if mode != "GRU":
        return b_ih + b_hh, np.zeros_like(b_hh)
    b_h = np.zeros_like(b_hh)
    b_h[2 * H:] = b_hh[2 * H:]
    return b_ih + b_hh - b_h, b_h


def build_int_rnn_arrays(rnn: QuantRNNBase, stats: Dict[str, Any], x_scale: float, x_zero: int,
                         cell_clip: float = 0.0) -> Tuple[List[Dict[str, Any]], Dict[str, np.ndarray]]:
    """Layer constants (meta) and arrays of the integer LSTM, GRU or RNN (``cell_clip``: LSTM only)."""
    metas, arrays = [], {}
    s_in, z_in = x_scale, x_zero
    lstm = rnn.mode == "LSTM"
    for k in range(rnn.num_layers):
        w_ih, w_hh, b_ih, b_hh = rnn.layer_params(k, 0, quantized=True)
        w_ih = w_ih.detach().double().cpu().numpy()
        w_hh = w_hh.detach().double().cpu().numpy()
        H = rnn.hidden_size
        b_x = b_h = np.zeros(w_ih.shape[0])
        if b_ih is not None:
            b_x, b_h = _split_biases(rnn.mode, H, b_ih.detach().double().cpu().numpy(),
                                     b_hh.detach().double().cpu().numpy())
        st = stats["layers"][k]
        s_h, z_h = il.asymmetric_params(st["h_min"], st["h_max"])
        arrays.update(_gate_arrays(k, w_ih, w_hh, b_x, b_h, s_in, z_in, s_h, z_h))
        meta = {"s_in": float(s_in), "z_in": int(z_in), "s_h": float(s_h), "z_h": int(z_h)}
        if lstm:  # o tanh(c): Q0.30 -> int8
            cs = _cell_frac_bits(st["c_absmax"])
            clip = int(min(32767, round(cell_clip * 2.0 ** cs))) if cell_clip and cell_clip > 0 else 0
            meta.update(cell_frac_bits=cs, cell_clip=clip)
            arrays[f"l{k}.lut_cell"] = il.cell_lut(cs)
            hid = 2.0 ** -30 / s_h
        else:  # GRU state h / RNN tanh output: Q0.15 -> int8
            hid = 2.0 ** -15 / s_h
        meta["hid_m0"], meta["hid_shift"] = (int(v) for v in il.quantize_multiplier(hid))
        meta["calibration"] = {kk: float(v) for kk, v in st.items()}
        metas.append(meta)
        s_in, z_in = s_h, z_h
    sig, th = il.standard_luts()
    arrays["lut_sigmoid"], arrays["lut_tanh"] = sig, th
    return metas, arrays


build_int_lstm_arrays = build_int_rnn_arrays  # its first name


def export_int_rnn(checkpoint_or_model, calibration_data, path: Optional[PathLike] = None, *,
                   max_batches: int = 8, batch_size: int = 10, bptt: int = 35, cell_clip: float = 0.0,
                   backend: str = "auto", evaluation: Optional[Dict[str, Any]] = None,
                   cells: Optional[Sequence[str]] = None) -> il.IntRecurrentModel:
    """Calibrate a trained LSTM, GRU or tanh RNN and write it as an integer-only model file (kind
    ``"int_lstm"``, ``"int_gru"`` or ``"int_rnn"``, by the cell). ``evaluation`` (optional) is stored in the
    file so ``lowbit eval`` scores the model on the split its training used: ``{"data": LM data settings,
    "batch_size": ..., "bptt": ...}``.

    Args:
        checkpoint_or_model: a language-model checkpoint path (``lowbit train ptb-lstm``, ``ptb-gru``,
            ``ptb-rnn``), an :class:`RNNLanguageModel`, or a bare ``torch.nn.LSTM/GRU/RNN`` /
            :class:`QuantLSTM` / ``QuantGRU`` / ``QuantRNN``. Refused (ConfigError naming the reason):
            bidirectional layers, LSTM projections, relu RNNs.
        calibration_data: language model: a token-id stream (1-D), a (seq, batch) id batch, a list of
            batches, or a text file path (encoded with the checkpoint's vocabulary); bare layer: float
            (seq, batch, features) batches. A few batches suffice (``max_batches``); a stream is cut into
            ``batch_size`` columns read ``bptt`` steps at a time, with the state carried.
        path: the ``.lbt`` file to write (None: only return the model).
        cell_clip: LSTM only: optional cell-state clip (in real units, 0: none).
        cells: the cells accepted ("lstm", "gru", "rnn_tanh"; None: all), any other refused.
    Returns the loaded model (:class:`~lowbit.runtime.int_lstm.IntLSTM`, :class:`~lowbit.runtime.int_rnn.IntGRU`
    or :class:`~lowbit.runtime.int_rnn.IntRNN`; the same as ``lowbit.runtime.load(path)``).
    """
    rnn, emb, decoder, vocab, source = _resolve_model(checkpoint_or_model)
    cell, cls = CELLS[rnn.mode]
    if cells is not None and cell not in cells:
        raise ConfigError(f"this export takes {' or '.join(c.upper() for c in cells)} layers only, got a "
                          f"{type(rnn).__name__} (export_int_rnn exports every cell)")
    if cell_clip and cell != "lstm":
        raise ConfigError(f"cell_clip applies to an LSTM's cell state; a {cell} has none")
    inputs = _batches(calibration_data, emb is not None, vocab, batch_size, bptt, max_batches)
    stats = calibrate_int_rnn(rnn, inputs, embedding=emb)
    x_scale, x_zero = il.asymmetric_params(stats["x_min"], stats["x_max"])
    metas, arrays = build_int_rnn_arrays(rnn, stats, x_scale, x_zero, cell_clip)
    if emb is not None:
        arrays["embedding"] = il.quantize_asymmetric(emb.double().numpy(), x_scale, x_zero)
    if decoder is not None:
        w, b = decoder
        q, sw = _per_row_int8(w.double().numpy())
        last = metas[-1]
        arrays["decoder.weight"] = q
        arrays["decoder.bias_int"] = (-last["z_h"] * q.astype(np.int64).sum(axis=1)).astype(np.int32)
        arrays["decoder.scale"] = (sw * last["s_h"]).astype(np.float32)
        arrays["decoder.bias"] = b.numpy().astype(np.float32)
    meta = {
        cls.VERSION_KEY: cls.FORMAT_VERSION,
        "cell": cell,
        "num_layers": rnn.num_layers, "input_size": rnn.input_size, "hidden_size": rnn.hidden_size,
        "layers": metas,
        "gate_frac_bits": il.GATE_FRAC_BITS,
        "lut": {"segments": il.LUT_SEGMENTS, "entry_frac_bits": il.LUT_FRAC_BITS},
        "input": {"scale": x_scale, "zero_point": x_zero},
        "vocab": vocab.to_dict() if vocab is not None else None,
        "calibration": {"batches": stats["batches"], "tokens": stats["tokens"],
                        "x_min": stats["x_min"], "x_max": stats["x_max"]},
        "source": source,
        "weights": {"bits": getattr(rnn, "weight_bits", 32), "act_bits": getattr(rnn, "act_bits", 32)},
        "evaluation": evaluation,
    }
    model = cls(meta, arrays, backend=backend, source=str(path) if path else "exported model")
    if path is not None:
        model.save(path)
    return model


def export_int_lstm(checkpoint_or_model, calibration_data, path: Optional[PathLike] = None, *,
                    max_batches: int = 8, batch_size: int = 10, bptt: int = 35, cell_clip: float = 0.0,
                    backend: str = "auto", evaluation: Optional[Dict[str, Any]] = None) -> il.IntLSTM:
    """:func:`export_int_rnn` for LSTMs only (kind ``"int_lstm"``; any other cell is refused): calibrate a
    trained LSTM (language-model checkpoint, :class:`RNNLanguageModel` with an LSTM, or a bare
    ``torch.nn.LSTM`` / :class:`QuantLSTM`) and write it. Returns the loaded
    :class:`lowbit.runtime.int_lstm.IntLSTM` (same as ``lowbit.runtime.load(path)``)."""
    return export_int_rnn(checkpoint_or_model, calibration_data, path, max_batches=max_batches,
                          batch_size=batch_size, bptt=bptt, cell_clip=cell_clip, backend=backend,
                          evaluation=evaluation, cells=("lstm",))


def export_int_rnn_checkpoint(checkpoint: PathLike, output: PathLike, data_dir: Optional[PathLike] = None,
                              batches: int = 8) -> Dict[str, Any]:
    """``lowbit export`` of a language-model checkpoint (LSTM, GRU or tanh RNN): calibrate on ``batches``
    batches of the run's own training text (found under ``data_dir`` as in training), write ``output``;
    returns a report (``model_file``, ``bytes``, ``fp32_state_dict_bytes``, ``ratio``, ``kind``,
    ``calibration``). A checkpoint the integer runtime cannot represent is refused (ConfigError naming the
    reason) before any data is read."""
    from ..models.lm import split_model_args
    from ..train.checkpoint import check_finite, read_checkpoint
    from ..train.config import TrainConfig
    from ..train.tasks.lm import load_lm_data

    data = read_checkpoint(checkpoint)
    check_finite(data["model_state"], str(checkpoint))
    try:
        cfg = TrainConfig.from_dict(data["config"])
    except TypeError as exc:  # a field the checkpoint lacks
        raise CheckpointError(f"{checkpoint}: incomplete training configuration ({exc})") from None
    cell = str(cfg.model_args.get("cell", "lstm")).strip().lower()
    if cell not in ("lstm", "gru", "rnn", "rnn_tanh"):
        raise ConfigError(f"{checkpoint}: integer export supports LSTM, GRU and tanh RNN language models, not "
                          f"cell {cell!r}" + (" (a relu RNN's hidden state has no bound for the runtime's "
                                              "fixed-point formats)" if cell == "rnn_relu" else ""))
    corpus = load_lm_data(cfg, data_dir)
    settings = split_model_args(cfg.model_args)[1]
    bptt = int(settings["bptt"])
    model = export_int_rnn(checkpoint, corpus.train, output, max_batches=batches, batch_size=cfg.eval_batch_size,
                           bptt=bptt, evaluation={"data": settings, "batch_size": cfg.eval_batch_size, "bptt": bptt})
    fp32 = sum(int(t.numel()) * 4 for t in data["model_state"].values() if torch.is_tensor(t) and t.is_floating_point())
    size = Path(output).stat().st_size
    return {"model_file": str(output), "bytes": size, "fp32_state_dict_bytes": fp32, "ratio": fp32 / max(size, 1),
            "kind": model.KIND, "calibration": model.meta["calibration"]}


export_int_lstm_checkpoint = export_int_rnn_checkpoint  # its first name (every cell since the GRU and RNN)
