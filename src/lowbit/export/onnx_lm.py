"""Export a language model (``rnn_lm``: embedding -> LSTM/GRU/RNN layers -> decoder) to a standard ONNX graph.

    lowbit export runs/ptb-lstm/checkpoint.pt -o lm.onnx

The recurrent layers become ONNX's own ``LSTM`` / ``GRU`` / ``RNN`` ops (one per layer), with the *quantized*
weight matrices as constant initializers (``weight_quantizer`` of the trained layer: per-matrix scale times
k-bit levels) and the biases in full precision. ONNX's recurrent ops have no place for a quantizer inside the
recurrence, so the model's activations must be full precision (``model.act_bits=32``: the "float LSTM" with
quantized weights); a model with quantized gate/hidden activations is refused with a message (its deployed
form is the integer LSTM, ``-o model.lbt``).

Graph: inputs ``tokens`` int64 (seq, batch), ``h0`` (and for an LSTM ``c0``) float32 (layers, batch, hidden);
outputs ``logits`` (seq, batch, vocab), ``hn`` (and ``cn``). Sequence length and batch are dynamic, and the
state outputs feed the next segment's state inputs (truncated-BPTT evaluation, as ``lowbit eval`` does).

Gate order: torch LSTM (i, f, g, o) -> ONNX (i, o, f, c); torch GRU (r, z, n) -> ONNX (z, r, h) with
``linear_before_reset=1`` (torch applies the reset gate after the hidden projection).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Union

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from .onnx import OPSET, _Graph, _save

LSTM_ORDER = [0, 3, 1, 2]  # torch (i, f, g, o) -> ONNX (i, o, f, c)
GRU_ORDER = [1, 0, 2]  # torch (r, z, n) -> ONNX (z, r, h)


def _gates(a: np.ndarray, order, hidden: int) -> np.ndarray:
    return np.concatenate([a[k * hidden:(k + 1) * hidden] for k in order], axis=0)


def _np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().float().cpu().numpy().astype(np.float32)


def _linear_weight(m: nn.Module) -> np.ndarray:
    with torch.no_grad():
        q = getattr(m, "weight_quantizer", None)
        return _np(q(m.weight) if q is not None else m.weight)


def export_lm_onnx_model(model: nn.Module, opset: int = OPSET, doc: str = "", metadata: Optional[Dict[str, str]] = None):
    """The ONNX graph (``onnx.ModelProto``) of an eval-mode ``RNNLanguageModel``; see the module docstring."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:  # pragma: no cover - depends on the environment
        raise CheckpointError("ONNX export needs the 'onnx' package: pip install 'lowbit[onnx]'") from None
    model = model.eval()
    rnn = model.rnn
    mode = rnn.mode
    if getattr(rnn, "activations_quantized", False):
        raise CheckpointError(
            f"ONNX export: this {mode} quantizes its activations ({rnn.act_bits}-bit gates and hidden state); "
            f"ONNX's {mode.split('_')[0]} op computes them in float. Export a model trained with model.act_bits=32 "
            f"(float activations, quantized weights), or deploy this one as the integer LSTM (-o model.lbt)"
        )
    if getattr(rnn, "num_directions", 1) != 1 or getattr(rnn, "batch_first", False):
        raise CheckpointError("ONNX export: only unidirectional, sequence-first recurrent layers are supported")
    if mode not in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
        raise CheckpointError(f"ONNX export: recurrent mode {mode!r} has no ONNX form")
    H, L = rnn.hidden_size, rnn.num_layers
    g = _Graph()
    with torch.no_grad():
        emb = _np(model.encoder.quantized_weight if hasattr(model.encoder, "quantized_weight") else model.encoder.weight)
    x = g.op("Gather", [g.const(emb, "embedding"), "tokens"], "embed", axis=0)
    h_out, c_out = [], []
    for layer in range(L):
        with torch.no_grad():
            w_ih, w_hh, b_ih, b_hh = (_np(t) for t in rnn.layer_params(layer))
        order = {"LSTM": LSTM_ORDER, "GRU": GRU_ORDER}.get(mode, [0])
        W = _gates(w_ih, order, H)[None]
        R = _gates(w_hh, order, H)[None]
        starts = g.const(np.array([layer], np.int64), "start", dtype=np.int64)
        ends = g.const(np.array([layer + 1], np.int64), "end", dtype=np.int64)
        axes = g.const(np.array([0], np.int64), "axes", dtype=np.int64)
        h0 = g.op("Slice", ["h0", starts, ends, axes], f"h0_l{layer}")
        inputs = [x, g.const(W, f"W_l{layer}"), g.const(R, f"R_l{layer}")]
        inputs.append("" if b_ih is None else g.const(
            np.concatenate([_gates(b_ih, order, H), _gates(b_hh, order, H)])[None], f"B_l{layer}"))
        inputs += ["", h0]  # no sequence_lens: every column has the full length
        attrs = dict(hidden_size=H)
        if mode == "LSTM":
            inputs.append(g.op("Slice", ["c0", starts, ends, axes], f"c0_l{layer}"))
            op = "LSTM"
        elif mode == "GRU":
            op, attrs["linear_before_reset"] = "GRU", 1
        else:
            op, attrs["activations"] = "RNN", ["Tanh" if mode == "RNN_TANH" else "Relu"]
        n_out = 3 if mode == "LSTM" else 2
        outs = [g.name(f"{op.lower()}_l{layer}_{k}") for k in ("y", "h", "c")[:n_out]]
        g.nodes.append(helper.make_node(op, inputs, outs, name=g.name(f"{op.lower()}_l{layer}"), **attrs))
        x = g.op("Squeeze", [outs[0], g.const(np.array([1], np.int64), "axes", dtype=np.int64)], f"y_l{layer}")
        h_out.append(outs[1])
        if mode == "LSTM":
            c_out.append(outs[2])
    dec = model.decoder
    y = g.op("MatMul", [x, g.const(np.ascontiguousarray(_linear_weight(dec).T), "decoder_weight_t")], "decode")
    if dec.bias is not None:
        y = g.op("Add", [y, g.const(_np(dec.bias), "decoder_bias")], "decode_bias")
    g.nodes.append(helper.make_node("Identity", [y], ["logits"], name="logits"))
    g.nodes.append(helper.make_node("Concat", h_out, ["hn"], name="hn", axis=0) if L > 1
                   else helper.make_node("Identity", h_out, ["hn"], name="hn"))
    state = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [L, "batch", H])
    inputs = [helper.make_tensor_value_info("tokens", TensorProto.INT64, ["seq", "batch"]), state("h0")]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["seq", "batch", int(emb.shape[0])]),
               state("hn")]
    if mode == "LSTM":
        g.nodes.append(helper.make_node("Concat", c_out, ["cn"], name="cn", axis=0) if L > 1
                       else helper.make_node("Identity", c_out, ["cn"], name="cn"))
        inputs.append(state("c0"))
        outputs.append(state("cn"))
    graph = helper.make_graph(g.nodes, "lowbit_lm", inputs, outputs, initializer=g.inits)
    from .._version import __version__

    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="lowbit",
                              producer_version=__version__, doc_string=doc)
    proto.ir_version = min(proto.ir_version, 10)
    for k, v in (metadata or {}).items():
        proto.metadata_props.add(key=str(k), value=str(v))
    onnx.checker.check_model(proto, full_check=True)
    return proto


def export_lm_onnx_checkpoint(checkpoint: Union[str, Path], out: Union[str, Path]) -> Dict:
    """``lowbit export LM_CHECKPOINT -o lm.onnx``: the ONNX graph of a language-model checkpoint (its
    vocabulary in the metadata, key ``vocab``)."""
    from ..train.checkpoint import load_model_state, model_from_config, read_checkpoint

    data = read_checkpoint(checkpoint)
    cfg = data["config"]
    model = model_from_config(cfg)
    load_model_state(model, data["model_state"], str(checkpoint))
    proto = export_lm_onnx_model(model, doc=f"lowbit {cfg.get('recipe', '')} exported from {Path(checkpoint).name}",
                                 metadata={"recipe": cfg.get("recipe", ""), "dataset": cfg.get("dataset", ""),
                                           "vocab": json.dumps(data.get("vocab", {}))})
    return _save(proto, out, model)
