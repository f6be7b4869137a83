"""Export a language model (``rnn_lm``: embedding -> LSTM/GRU/RNN layers -> decoder) to a standard ONNX graph.

    lowbit export runs/ptb-lstm/checkpoint.pt -o lm.onnx

With full-precision activations (``model.act_bits=32``: the "float LSTM" with quantized weights) the
recurrent layers become ONNX's own ``LSTM`` / ``GRU`` / ``RNN`` ops (one per layer), with the *quantized*
weight matrices as constant initializers (``weight_quantizer`` of the trained layer: per-matrix scale times
k-bit levels) and the biases in full precision.

ONNX's recurrent ops have no place for a quantizer inside the recurrence, so a layer with quantized
activations (the recipes' W4A4) is unrolled instead: its input projections of all steps are one ``MatMul``
(as ``QuantRNNBase._loop`` computes them), and a ``Scan`` over time runs lowbit's own quantized cell
(``QuantRNNBase._cell``) op for op: ``MatMul``/``Add``/``Tanh``/``Sigmoid``/``Mul``/``Split`` with each
activation quantizer written out in its exact arithmetic (k-bit ``linear``: ``Mul``, ``Clip``, ``Floor``,
``Clip``, ``Mul``, ``Add``, ``Div``; ``ste_sign``: ``Where(x >= 0, 1, -1)``), on the LSTM's gates (sigmoid
gates as tanh(x / 2), mapped back by (u + 1) / 2) and hidden state, the GRU's gates (through 2 s - 1),
candidate and hidden state, the RNN's hidden state. The levels are PyTorch's bit for bit (the logits are
equal; the LSTM's float cell state may differ in the last bit, from torch's fused multiply-add). Not as
``QuantizeLinear``/``DequantizeLinear``: the symmetric k-bit levels (2 j + 1) / (2^k - 1) have no zero, which
a Q/DQ pair needs, and QuantizeLinear rounds half to even where lowbit floors.

Graph: inputs ``tokens`` int64 (seq, batch), ``h0`` (and for an LSTM ``c0``) float32 (layers, batch, hidden);
outputs ``logits`` (seq, batch, vocab), ``hn`` (and ``cn``). Sequence length and batch are dynamic, and the
state outputs feed the next segment's state inputs (truncated-BPTT evaluation, as ``lowbit eval`` does).

Gate order: torch LSTM (i, f, g, o) -> ONNX (i, o, f, c); torch GRU (r, z, n) -> ONNX (z, r, h) with
``linear_before_reset=1`` (torch applies the reset gate after the hidden projection).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..quant.base import Identity
from .onnx import OPSET, _Graph, _quantizer, _save

LSTM_ORDER = [0, 3, 1, 2]  # torch (i, f, g, o) -> ONNX (i, o, f, c)
GRU_ORDER = [1, 0, 2]  # torch (r, z, n) -> ONNX (z, r, h)
GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}  # input projections per hidden unit


def _gates(a: np.ndarray, order, hidden: int) -> np.ndarray:
    return np.concatenate([a[k * hidden:(k + 1) * hidden] for k in order], axis=0)


def _np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().float().cpu().numpy().astype(np.float32)


def _linear_weight(m: nn.Module) -> np.ndarray:
    with torch.no_grad():
        q = getattr(m, "weight_quantizer", None)
        return _np(q(m.weight) if q is not None else m.weight)


def _slice_state(g: _Graph, name: str, layer: int) -> str:
    """Layer ``layer``'s (1, batch, hidden) slice of a state input."""
    starts = g.const(np.array([layer], np.int64), "start", dtype=np.int64)
    ends = g.const(np.array([layer + 1], np.int64), "end", dtype=np.int64)
    axes = g.const(np.array([0], np.int64), "axes", dtype=np.int64)
    return g.op("Slice", [name, starts, ends, axes], f"{name}_l{layer}")


def _onnx_rnn_layer(g: _Graph, rnn, layer: int, x: str, params, h0: str, c0: Optional[str]):
    """One layer with float activations as ONNX's own LSTM/GRU/RNN op: ``(y (T, B, H), h_n, c_n)`` with the
    states (1, B, H) (``c_n`` None but for an LSTM)."""
    from onnx import helper

    mode, H = rnn.mode, rnn.hidden_size
    w_ih, w_hh, b_ih, b_hh = params
    order = {"LSTM": LSTM_ORDER, "GRU": GRU_ORDER}.get(mode, [0])
    inputs = [x, g.const(_gates(w_ih, order, H)[None], f"W_l{layer}"), g.const(_gates(w_hh, order, H)[None], f"R_l{layer}")]
    inputs.append("" if b_ih is None else g.const(
        np.concatenate([_gates(b_ih, order, H), _gates(b_hh, order, H)])[None], f"B_l{layer}"))
    inputs += ["", h0]  # no sequence_lens: every column has the full length
    attrs = dict(hidden_size=H)
    if mode == "LSTM":
        inputs.append(c0)
        op = "LSTM"
    elif mode == "GRU":
        op, attrs["linear_before_reset"] = "GRU", 1
    else:
        op, attrs["activations"] = "RNN", ["Tanh" if mode == "RNN_TANH" else "Relu"]
    outs = [g.name(f"{op.lower()}_l{layer}_{k}") for k in ("y", "h", "c")[:3 if mode == "LSTM" else 2]]
    g.nodes.append(helper.make_node(op, inputs, outs, name=g.name(f"{op.lower()}_l{layer}"), **attrs))
    y = g.op("Squeeze", [outs[0], g.const(np.array([1], np.int64), "axes", dtype=np.int64)], f"y_l{layer}")
    return y, outs[1], outs[2] if mode == "LSTM" else None


# ---- quantized activations: the recurrence unrolled by Scan, its quantizers explicit --------------------


def _lstm_cell(b: _Graph, rnn, xp: str, h: str, c: str, w_t: str) -> Tuple[str, str]:
    """QuantRNNBase._cell's LSTM: sigmoid gates quantized as tanh(x / 2) and mapped back by (u + 1) / 2."""
    from onnx import helper

    like = torch.zeros(1)
    mult, (aa, bb) = _np(rnn._gate_mult(like)), (_np(t) for t in rnn._gate_affine(like))
    q = rnn.act_quantizer
    gates = b.op("Add", [xp, b.op("MatMul", [h, w_t])], "gates")
    u = _quantizer(b, q, b.op("Tanh", [b.op("Mul", [gates, b.const(mult, "gate_mult")])]), "LSTM gates", "arith")
    gate = b.op("Add", [b.op("Mul", [u, b.const(aa, "gate_a")]), b.const(bb, "gate_b")], "gate")
    i, f, g_, o = (b.name(k) for k in "ifgo")
    b.nodes.append(helper.make_node("Split", [gate], [i, f, g_, o], name=b.name("split"), axis=1, num_outputs=4))
    c = b.op("Add", [b.op("Mul", [f, c]), b.op("Mul", [i, g_])], "c")
    h = _quantizer(b, q, b.op("Mul", [o, b.op("Tanh", [c])]), "LSTM hidden state", "arith")
    return h, c


def _gru_cell(b: _Graph, rnn, xp: str, h: str, w_t: str, b_hh: Optional[np.ndarray]) -> str:
    """QuantRNNBase._cell's GRU: gates quantized through 2 s - 1, r times (W_hn h + b_hn), h = q(lerp(n, h, z))."""
    from onnx import helper

    q = rnn.act_quantizer
    hp = b.op("MatMul", [h, w_t])
    if b_hh is not None:
        hp = b.op("Add", [hp, b.const(b_hh, "b_hh")])
    xr, xz, xn, hr, hz, hn = (b.name(k) for k in ("xr", "xz", "xn", "hr", "hz", "hn"))
    split = lambda src, outs: b.nodes.append(helper.make_node("Split", [src], list(outs), name=b.name("split"),
                                                                  axis=1, num_outputs=3))
    split(xp, (xr, xz, xn))
    split(hp, (hr, hz, hn))
    s = b.op("Sigmoid", [b.op("Concat", [b.op("Add", [xr, hr]), b.op("Add", [xz, hz])], axis=1)])
    if not isinstance(q, Identity):  # quantize_gate: (q(2 s - 1) + 1) / 2
        u = _quantizer(b, q, b.op("Sub", [b.op("Mul", [s, b.const(2.0)]), b.const(1.0)]), "GRU gates", "arith")
        s = b.op("Mul", [b.op("Add", [u, b.const(1.0)]), b.const(0.5)], "rz")
    r, z = b.name("r"), b.name("z")
    b.nodes.append(helper.make_node("Split", [s], [r, z], name=b.name("split"), axis=1, num_outputs=2))
    n = _quantizer(b, q, b.op("Tanh", [b.op("Add", [xn, b.op("Mul", [r, hn])])]), "GRU candidate", "arith")
    lerp = b.op("Add", [n, b.op("Mul", [z, b.op("Sub", [h, n])])], "lerp")  # (1 - z) n + z h
    return _quantizer(b, q, lerp, "GRU hidden state", "arith")


def _scan_layer(g: _Graph, rnn, layer: int, x: str, params, h0: str, c0: Optional[str]):
    """One layer with quantized activations: the input projections of all steps as one MatMul (as
    QuantRNNBase._loop), then a ``Scan`` over time whose body is the quantized cell, op for op."""
    from onnx import TensorProto, helper

    mode, H = rnn.mode, rnn.hidden_size
    w_ih, w_hh, b_ih, b_hh = params
    xp = g.op("MatMul", [x, g.const(np.ascontiguousarray(w_ih.T), f"w_ih_t_l{layer}")], "xproj")
    if b_ih is not None:
        xp = g.op("Add", [xp, g.const(b_ih, f"b_ih_l{layer}")], "xproj")
        if mode != "GRU":  # the GRU keeps b_hn inside r * (W_hn h + b_hn)
            xp = g.op("Add", [xp, g.const(b_hh, f"b_hh_l{layer}")], "xproj")
            b_hh = None
    b = _Graph(prefix=f"scan{layer}_")
    lstm = mode == "LSTM"
    state_in = [b.name("h_in")] + ([b.name("c_in")] if lstm else [])
    xp_t = b.name("xp_t")
    w_t = b.const(np.ascontiguousarray(w_hh.T), "w_hh_t")
    if lstm:
        h, c = _lstm_cell(b, rnn, xp_t, state_in[0], state_in[1], w_t)
        new_state = [h, c]
    elif mode == "GRU":
        new_state = [_gru_cell(b, rnn, xp_t, state_in[0], w_t, b_hh)]
    else:
        pre = b.op("Add", [xp_t, b.op("MatMul", [state_in[0], w_t])], "pre")
        act = b.op("Tanh" if mode == "RNN_TANH" else "Relu", [pre])
        new_state = [_quantizer(b, rnn.act_quantizer, act, "RNN hidden state", "arith")]
    # Scan's body outputs: the new states, then the step's output (h again: a graph output needs its own name)
    outs = [b.op("Identity", [v], k) for v, k in zip(new_state, ("h_out", "c_out"))] + [b.op("Identity", [new_state[0]], "y_t")]
    info = lambda name, width: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])
    body = helper.make_graph(b.nodes, f"{mode.lower()}_cell_l{layer}",
                             [info(n, H) for n in state_in] + [info(xp_t, GATES[mode] * H)],
                             [info(n, H) for n in outs], initializer=b.inits)
    squeeze_axes = g.const(np.array([0], np.int64), "axes", dtype=np.int64)
    init = [g.op("Squeeze", [s, squeeze_axes], "state0") for s in ([h0, c0] if lstm else [h0])]
    results = [g.name(k) for k in (["h_n", "c_n"] if lstm else ["h_n"])] + [g.name(f"y_l{layer}")]
    g.nodes.append(helper.make_node("Scan", init + [xp], results, name=g.name(f"scan_l{layer}"), body=body,
                                    num_scan_inputs=1))
    unsqueeze = lambda s: g.op("Unsqueeze", [s, squeeze_axes], "state")
    return results[-1], unsqueeze(results[0]), unsqueeze(results[1]) if lstm else None


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
    if getattr(rnn, "num_directions", 1) != 1 or getattr(rnn, "batch_first", False):
        raise CheckpointError("ONNX export: only unidirectional, sequence-first recurrent layers are supported")
    if mode not in ("LSTM", "GRU", "RNN_TANH", "RNN_RELU"):
        raise CheckpointError(f"ONNX export: recurrent mode {mode!r} has no ONNX form")
    layer_fn = _scan_layer if rnn.activations_quantized else _onnx_rnn_layer
    H, L = rnn.hidden_size, rnn.num_layers
    g = _Graph()
    with torch.no_grad():
        emb = _np(model.encoder.quantized_weight if hasattr(model.encoder, "quantized_weight") else model.encoder.weight)
    x = g.op("Gather", [g.const(emb, "embedding"), "tokens"], "embed", axis=0)
    h_out, c_out = [], []
    for layer in range(L):
        with torch.no_grad():
            params = tuple(_np(t) for t in rnn.layer_params(layer))
        c0 = _slice_state(g, "c0", layer) if mode == "LSTM" else None
        x, h, c = layer_fn(g, rnn, layer, x, params, _slice_state(g, "h0", layer), c0)
        h_out.append(h)
        if c is not None:
            c_out.append(c)
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
