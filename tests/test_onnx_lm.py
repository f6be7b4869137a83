"""ONNX export of language models (issue 14): ONNX LSTM/GRU/RNN ops with quantized weights, equal to PyTorch."""

import math

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from lowbit.cli import main  # noqa: E402
from lowbit.errors import CheckpointError  # noqa: E402
from lowbit.export.onnx_lm import export_lm_onnx_model  # noqa: E402
from lowbit.models.lm import rnn_lm  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _session(proto):
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def _ort_step(sess, cell, layers, hidden):
    def step(x, state):
        if state is None:
            state = [np.zeros((layers, x.shape[1], hidden), np.float32)] * (2 if cell == "lstm" else 1)
        feeds = {"tokens": x.astype(np.int64), "h0": state[0]}
        if cell == "lstm":
            feeds["c0"] = state[1]
        out = sess.run(None, feeds)
        return out[0], out[1:]
    return step


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh"])
def test_lm_graph_equals_pytorch_with_state_carried(cell):
    torch.manual_seed(0)
    model = rnn_lm(vocab_size=50, cell=cell, emb_size=12, hidden_size=16, num_layers=2, weight_bits=4,
                   act_bits=32, dropout=0.0).eval()
    proto = export_lm_onnx_model(model)
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count({"lstm": "LSTM", "gru": "GRU", "rnn_tanh": "RNN"}[cell]) == 2
    # the recurrent weights are the 4-bit ones: at most 16 levels per matrix (times its scale)
    W = [onnx.numpy_helper.to_array(t) for t in proto.graph.initializer if t.name.startswith(("W_l", "R_l"))]
    assert len(W) == 4 and all(len(np.unique(w)) <= 16 for w in W)
    step = _ort_step(_session(proto), cell, 2, 16)
    ids = np.random.default_rng(0).integers(0, 50, size=(13, 3))
    state, hidden = None, None
    for seg in (ids[:6], ids[6:]):  # two segments: the state outputs feed the next inputs
        out, state = step(seg, state)
        with torch.no_grad():
            ref, hidden = model(torch.from_numpy(seg), hidden)
        np.testing.assert_allclose(out, ref.numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("act", ["act_bits=4", "act_bits=2", "ste_sign"])
def test_quantized_activations_are_explicit_in_a_scan_and_equal_pytorch(cell, act):
    """k-bit gates and hidden state: each layer is a Scan over time whose body is lowbit's quantized cell
    with its quantizers as Floor/Clip (k-bit) or Where (sign) ops; logits equal PyTorch's bit for bit,
    with the state carried between segments."""
    torch.manual_seed(1)
    kw = {"act_quantizer": "ste_sign"} if act == "ste_sign" else {"act_bits": int(act.split("=")[1])}
    model = rnn_lm(vocab_size=40, cell=cell, emb_size=10, hidden_size=12, num_layers=2, weight_bits=4,
                   dropout=0.0, **kw).eval()
    proto = export_lm_onnx_model(model)
    scans = [n for n in proto.graph.node if n.op_type == "Scan"]
    assert len(scans) == 2 and not {"LSTM", "GRU", "RNN"} & {n.op_type for n in proto.graph.node}
    body_ops = {n.op_type for n in scans[0].attribute[0].g.node}
    assert ({"Where", "GreaterOrEqual"} if act == "ste_sign" else {"Floor", "Clip"}) <= body_ops
    step = _ort_step(_session(proto), cell.split("_")[0] if cell == "lstm" else cell, 2, 12)
    ids = np.random.default_rng(1).integers(0, 40, size=(11, 4))
    state, hidden = None, None
    for seg in (ids[:5], ids[5:]):
        out, state = step(seg, state)
        with torch.no_grad():
            ref, hidden = model(torch.from_numpy(seg), hidden)
        np.testing.assert_array_equal(out, ref.numpy())
        ref_state = hidden if isinstance(hidden, tuple) else (hidden,)
        np.testing.assert_array_equal(state[0], ref_state[0].numpy())  # h: quantized, so exact
        for got, want in zip(state[1:], ref_state[1:]):  # the LSTM cell state: up to torch's fused addcmul
            np.testing.assert_allclose(got, want.numpy(), rtol=1e-6, atol=1e-7)


def test_activation_quantizer_without_onnx_form_is_refused_by_name():
    model = rnn_lm(vocab_size=20, cell="lstm", emb_size=8, hidden_size=8, num_layers=1, weight_bits=4,
                   act_quantizer="log:bits=3").eval()
    with pytest.raises(CheckpointError, match=r"LSTM gates: quantizer 'log' has no ONNX form"):
        export_lm_onnx_model(model)


@pytest.mark.parametrize("act_bits", [32, 4])
def test_ptb_perplexity_through_onnxruntime_within_0_1_percent(tmp_path, shared_data, act_bits):
    """A small 4-bit-weight LSTM trained 40 steps on PTB (float activations: ONNX LSTM ops; 4-bit activations,
    the ptb-lstm recipe's W4A4: Scan with explicit quantizers): onnxruntime's perplexity on the PTB test set
    (first 20k tokens, 10 columns, BPTT 35, state carried) equals PyTorch's within 0.1%."""
    if not (shared_data / "ptb" / "ptb.test.txt").is_file():
        pytest.skip("PTB not found")
    d = tmp_path / "ptb"
    assert main(["train", "ptb-lstm", "--epochs", "1", "--data-dir", str(shared_data), "--out", str(d),
                 "--set", f"model.act_bits={act_bits}", "--set", "model.hidden_size=32", "--set", "model.emb_size=32",
                 "--set", "train_subset=14001", "--set", "test_subset=2000", "--no-progress"]) == 0
    assert main(["export", str(d / "checkpoint.pt"), "-o", str(d / "lm.onnx")]) == 0
    from lowbit.data.text import batchify, read_tokens
    from lowbit.train.tasks.lm import load_lm_checkpoint

    model, vocab, _ = load_lm_checkpoint(d / "checkpoint.pt")
    cols = batchify(vocab.encode(read_tokens(shared_data / "ptb" / "ptb.test.txt", "word"))[:20000], 10)
    step = _ort_step(ort.InferenceSession(str(d / "lm.onnx"), providers=["CPUExecutionProvider"]), "lstm", 2, 32)

    def torch_step(x, state):
        with torch.no_grad():
            out, state = model(torch.from_numpy(x), state)
        return out.numpy(), state

    def perplexity(run):
        state, total, count = None, 0.0, 0
        for i in range(0, cols.shape[0] - 1, 35):
            seq = min(35, cols.shape[0] - 1 - i)
            logits, state = run(cols[i:i + seq], state)
            lp = torch.log_softmax(torch.from_numpy(logits).double(), -1).numpy()
            total -= np.take_along_axis(lp, cols[i + 1:i + 1 + seq][..., None], -1).sum()
            count += seq * cols.shape[1]
        return math.exp(total / count)

    ref, out = perplexity(torch_step), perplexity(step)
    assert abs(out - ref) / ref < 1e-3
    assert ("Scan" in {n.op_type for n in onnx.load(str(d / "lm.onnx")).graph.node}) == (act_bits < 32)
