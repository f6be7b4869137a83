"""Quantized recurrent layers, text loaders, the language-model task (lowbit.nn.recurrent, lowbit.train.tasks.lm)."""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO, SHARED_DATA, subprocess_env
from lowbit.train.config import TrainConfig, apply_overrides, get_recipe
from lowbit.errors import ConfigError, DataError, ShapeError
from lowbit.models.lm import RNNLanguageModel
from lowbit.nn.recurrent import QuantGRU, QuantLSTM, QuantRNN
from lowbit.models.lm import LM_SETTINGS
from lowbit.quant.recurrent import make_quantizer, quantize_gate
from lowbit.data.text import (
    EOS, Vocabulary, batchify, encode_file, load_char_corpus, load_ptb, read_tokens, unigram_entropy_bits,
)
from lowbit.registry import TASKS
from lowbit.train import run

from datapaths import SHARED_DATA as DATA  # noqa: E402  ($LOWBIT_DATA first)
REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---- full precision == torch ---------------------------------------------------------------------------

CASES = [
    (QuantLSTM, torch.nn.LSTM, {}),
    (QuantGRU, torch.nn.GRU, {}),
    (QuantRNN, torch.nn.RNN, {}),
    (QuantRNN, torch.nn.RNN, {"nonlinearity": "relu"}),
]


def _flat(h):
    return torch.cat([h[0], h[1]]) if isinstance(h, tuple) else h


@pytest.mark.parametrize("cls,tcls,kw", CASES, ids=["lstm", "gru", "rnn_tanh", "rnn_relu"])
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_full_precision_matches_torch(cls, tcls, kw, batch_first, bidirectional):
    torch.manual_seed(0)
    ref = tcls(5, 7, num_layers=3, batch_first=batch_first, bidirectional=bidirectional, **kw)
    ours = cls(5, 7, num_layers=3, batch_first=batch_first, bidirectional=bidirectional, **kw)
    assert list(ours.state_dict()) == list(ref.state_dict())  # same names and order
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(4, 6, 5)
    d = 2 if bidirectional else 1
    h0 = torch.randn(3 * d, 6 if not batch_first else 4, 7)
    hx = (h0, torch.randn_like(h0)) if tcls is torch.nn.LSTM else h0
    out_ref, h_ref = ref(x, hx)
    for force_loop in (False, True):  # the fused ATen call and the step loop of quantized activations
        out, h = ours._forward_impl(x, hx, force_loop=force_loop)
        assert out.shape == out_ref.shape
        assert torch.allclose(out, out_ref, atol=1e-5, rtol=0)
        assert torch.allclose(_flat(h), _flat(h_ref), atol=1e-5, rtol=0)
    # gradients agree too (loop path)
    x1 = x.clone().requires_grad_(True)
    x2 = x.clone().requires_grad_(True)
    ref(x1, hx)[0].square().sum().backward()
    ours._forward_impl(x2, hx, force_loop=True)[0].square().sum().backward()
    assert torch.allclose(x1.grad, x2.grad, atol=1e-5, rtol=0)
    # and the state dict goes back into torch
    ref2 = tcls(5, 7, num_layers=3, batch_first=batch_first, bidirectional=bidirectional, **kw)
    ref2.load_state_dict(ours.state_dict())


def test_unbatched_input_and_dropout_between_layers():
    torch.manual_seed(1)
    ref = torch.nn.LSTM(3, 4, num_layers=2)
    ours = QuantLSTM(3, 4, num_layers=2)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(5, 3)
    (o1, (h1, c1)), (o2, (h2, c2)) = ref(x), ours(x)
    assert o2.shape == (5, 4) and h2.shape == (2, 4)
    assert torch.allclose(o1, o2, atol=1e-5) and torch.allclose(c1, c2, atol=1e-5)
    drop = QuantLSTM(3, 4, num_layers=2, dropout=0.5, act_bits=4).train()
    a = drop(torch.randn(6, 2, 3))[0]
    drop.eval()
    b1, b2 = drop(torch.ones(6, 2, 3))[0], drop(torch.ones(6, 2, 3))[0]
    assert torch.equal(b1, b2) and a.shape == (6, 2, 4)


# ---- k-bit layers ---------------------------------------------------------------------------------------


def _levels(q, lo=-1.5, hi=1.5):
    """The values a quantizer takes, found by running it over a dense grid."""
    with torch.no_grad():
        return torch.unique(q(torch.linspace(lo, hi, 200001)))


def _on(values, levels, atol=1e-6):
    d = (values.detach().reshape(-1, 1) - levels.reshape(1, -1)).abs().min(dim=1).values
    return bool((d <= atol).all())


@pytest.mark.parametrize("cls", [QuantLSTM, QuantGRU, QuantRNN])
@pytest.mark.parametrize("wbits,abits", [(2, 2), (2, 3), (3, 4)])
def test_kbit_outputs_on_level_sets(cls, wbits, abits):
    torch.manual_seed(0)
    layer = cls(6, 8, num_layers=2, weight_bits=wbits, act_bits=abits)
    assert layer.weight_bits == wbits and layer.act_bits == abits
    levels = _levels(layer.act_quantizer)
    assert len(levels) == 2 ** abits
    out, h = layer(torch.randn(7, 3, 6) * 3)
    assert _on(out, levels)
    if cls is QuantLSTM:
        assert _on(h[0], levels)
        assert not _on(h[1], levels)  # the cell state is full precision
    else:
        assert _on(h, levels)
    # weights: per matrix, s * levels with s = max|w|
    wq = make_quantizer(None, wbits)
    wlev = _levels(wq)
    for name in ("weight_ih_l0", "weight_hh_l1"):
        w = getattr(layer, name)
        q = layer.weight_quantizer(w)
        s = w.detach().abs().max()
        assert _on(q / s, wlev)
        assert len(torch.unique(q)) <= 2 ** wbits
    # quantized weights with float activations take the fused kernel; same result as the step loop
    wonly = cls(6, 8, num_layers=2, weight_bits=wbits)
    x = torch.randn(5, 2, 6)
    assert torch.allclose(wonly(x)[0], wonly._forward_impl(x, force_loop=True)[0], atol=1e-5)
    # straight-through gradients reach the latent weights
    out.square().sum().backward()
    assert layer.weight_ih_l0.grad is not None and layer.weight_ih_l0.grad.abs().sum() > 0


def test_lstm_gates_on_level_sets():
    """The gate outputs of a k-bit LSTM: i, f, o on {j / (2^k - 1)}, g on the quantizer's levels."""
    torch.manual_seed(0)
    layer = QuantLSTM(4, 5, act_bits=3)
    seen = {}
    orig = layer.act_quantizer.forward

    def spy(x):
        y = orig(x)
        seen.setdefault("calls", []).append(y.detach())
        return y

    layer.act_quantizer.forward = spy
    layer._forward_impl(torch.randn(3, 2, 4) * 4, reference=True)  # the _cell loop calls the module
    gates = seen["calls"][0]  # first call of a step: the four gates (u = q(tanh(.)))
    levels = torch.tensor([-7.0, -5.0, -3.0, -1.0, 1.0, 3.0, 5.0, 7.0]) / 7.0  # 3-bit symmetric, written out
    assert torch.equal(_levels(make_quantizer(None, 3)), levels.float())
    assert gates.shape == (2, 20) and _on(gates, levels)
    mapped = (levels + 1) / 2
    assert torch.allclose(mapped, torch.arange(8) / 7.0, atol=1e-6)
    s = torch.sigmoid(torch.randn(1000) * 3)
    assert _on(quantize_gate(make_quantizer(None, 3), s), mapped)


def test_quantizer_specs_resolve_through_the_registry():
    assert isinstance(make_quantizer(None, None), torch.nn.Module)
    q = make_quantizer("linear", 3)
    assert q.bits == 3
    assert make_quantizer("ste_sign", 1).bits == 1
    with pytest.raises(ConfigError):
        make_quantizer("ste_sign", 4)  # a 1-bit quantizer asked for 4 bits
    with pytest.raises(ConfigError):
        make_quantizer("no_such_quantizer", 2)
    layer = QuantLSTM(3, 4, weight_quantizer="ste_sign", act_quantizer="linear", act_bits=2)
    assert layer.weight_bits == 1 and layer.act_bits == 2
    # a bit count alone is the QNN paper's k-bit uniform quantizer on [-1, 1]: -1 + 2 round((x + 1) / 2 * n) / n,
    # n = 2^k - 1, ties up (float64 reference written from the formula)
    x = torch.linspace(-1.3, 1.3, 10001)
    xd = x.double()
    for bits in (1, 2, 3, 4):
        n = 2 ** bits - 1
        ref = -1.0 + 2.0 * torch.floor(((xd.clamp(-1, 1) + 1) * n + 1) / 2).clamp(0, n) / n
        assert torch.allclose(make_quantizer(None, bits)(x).double(), ref, atol=1e-6)


def test_bad_shapes_and_config():
    layer = QuantLSTM(4, 5, num_layers=2)
    x = torch.randn(3, 2, 4)
    with pytest.raises(ShapeError, match="h_0 has shape"):
        layer(x, (torch.zeros(1, 2, 5), torch.zeros(1, 2, 5)))
    with pytest.raises(ShapeError, match="pair"):
        layer(x, torch.zeros(2, 2, 5))
    with pytest.raises(ShapeError, match="features"):
        layer(torch.randn(3, 2, 6))
    with pytest.raises(ShapeError):
        QuantGRU(4, 5)(x, torch.zeros(1, 3, 5))
    with pytest.raises(ConfigError):
        QuantRNN(4, 5, nonlinearity="sigmoid")
    with pytest.raises(ConfigError):
        QuantLSTM(4, 0)
    lm = RNNLanguageModel(10, emb_size=4, hidden_size=4, num_layers=1)
    with pytest.raises(DataError, match="token id 10 is outside the vocabulary"):
        lm(torch.tensor([[1, 10]]))
    with pytest.raises(DataError, match="token id -1"):
        lm(torch.tensor([[-1, 2]]))
    with pytest.raises(ShapeError):
        lm(torch.tensor([1, 2]))
    with pytest.raises(ConfigError):
        RNNLanguageModel(10, emb_size=4, hidden_size=8, tie_weights=True)


def test_language_model_quantized_embedding_and_decoder():
    torch.manual_seed(0)
    lm = RNNLanguageModel(20, cell="gru", emb_size=8, hidden_size=8, num_layers=2, weight_bits=2, act_bits=2,
                          quantize_embedding=True, quantize_decoder=True, tie_weights=True)
    emb = lm.encoder.quantized_weight
    assert len(torch.unique(emb)) <= 4
    logits, h = lm(torch.randint(0, 20, (5, 3)))
    assert logits.shape == (5, 3, 20) and h.shape == (2, 3, 8)
    lm.loss(logits, torch.randint(0, 20, (5, 3))).backward()
    assert lm.encoder.weight.grad.abs().sum() > 0


# ---- text loaders -----------------------------------------------------------------------------------------


def _write(path: Path, text, encoding="utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding=encoding)
    return path


def test_word_loader_on_written_files(tmp_path):
    ptb = tmp_path / "ptb"
    _write(ptb / "ptb.train.txt", " the cat sat \n the dog the \n")
    _write(ptb / "ptb.valid.txt", " the cat \n")
    _write(ptb / "ptb.test.txt", " dog sat the \n")
    c = load_ptb(tmp_path)
    assert c.vocab.tokens == ["the", EOS, "cat", "dog", "sat"]  # by count, ties alphabetical
    assert c.train.tolist() == [0, 2, 4, 1, 0, 3, 0, 1]
    assert c.valid.tolist() == [0, 2, 1] and c.test.tolist() == [3, 4, 0, 1]
    assert c.note == ""
    # a test file with words the training file never had: named in the error
    _write(ptb / "ptb.test.txt", " the zebra and the yak \n")
    with pytest.raises(DataError, match=r"ptb.test.txt: 3 word types are not in the model's vocabulary of 5 \('and', 'yak', 'zebra'\)"):
        load_ptb(tmp_path)
    # offline layout: no train file -> train on valid, test on test, closed vocabulary over both
    (ptb / "ptb.train.txt").unlink()
    c = load_ptb(tmp_path)
    assert c.valid is None and "ptb.train.txt not found" in c.note and "ptb.valid.txt, ptb.test.txt" in c.note
    assert "zebra" in c.vocab.index and c.files["train"].endswith("ptb.valid.txt")
    # a model's vocabulary against another text
    other = _write(tmp_path / "other.txt", "the cat ate a fish\n")
    with pytest.raises(DataError, match=r"other.txt: 3 word types .*'a', 'ate', 'fish'"):
        encode_file(other, c.vocab)


def test_bad_text_files(tmp_path):
    with pytest.raises(DataError, match="is empty"):
        read_tokens(_write(tmp_path / "empty.txt", ""), "word")
    with pytest.raises(DataError, match="contains no words"):
        read_tokens(_write(tmp_path / "blank.txt", "\n \n\n"), "word")
    with pytest.raises(DataError, match=r"not UTF-8 text \(byte 0xe9 at offset 3\)"):
        read_tokens(_write(tmp_path / "latin1.txt", "caf\xe9 au lait\n", encoding="latin-1"), "word")
    with pytest.raises(DataError, match="does not exist"):
        read_tokens(tmp_path / "missing.txt", "char")
    with pytest.raises(DataError, match="nowhere, does not exist"):  # a mistyped data directory
        load_ptb(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no PTB files"):
        load_ptb(tmp_path / "empty")
    with pytest.raises(DataError, match="too short"):
        load_char_corpus(_write(tmp_path / "tiny.txt", "abc"))
    with pytest.raises(ConfigError):
        load_char_corpus(_write(tmp_path / "t.txt", "abcdefgh" * 10), split=1.5)
    with pytest.raises(ConfigError):
        read_tokens(tmp_path / "t.txt", "byte")


def test_char_loader_and_batchify(tmp_path):
    text = "hello world\nhow are you\n" * 20
    c = load_char_corpus(_write(tmp_path / "t.txt", text), split=0.9)
    assert len(c.train) == int(len(text) * 0.9) and len(c.train) + len(c.test) == len(text)
    assert c.vocab.tokens == sorted(set(text)) and c.vocab.decode(c.train[:5]) == list("hello")
    b = batchify(np.arange(23), 4)
    assert b.shape == (5, 4) and b[:, 1].tolist() == [5, 6, 7, 8, 9]
    with pytest.raises(DataError):
        batchify(np.arange(5), 4)
    assert Vocabulary.from_dict(c.vocab.to_dict()) == c.vocab
    with pytest.raises(DataError, match="outside the vocabulary"):
        c.vocab.decode([len(c.vocab)])


def test_loaders_on_the_real_files():
    if not (DATA / "ptb" / "ptb.test.txt").is_file() or not (DATA / "tinyshakespeare" / "input.txt").is_file():
        pytest.skip(f"real PTB / Tiny Shakespeare files not found under {DATA}")
    c = load_ptb(DATA)
    if (DATA / "ptb" / "ptb.train.txt").is_file():
        assert len(c.vocab) == 10000
    else:
        assert c.files["train"].endswith("ptb.valid.txt") and "not found" in c.note
        assert len(c.train) == 73760 and len(c.test) == 82430  # words + one <eos> per line
        assert "<unk>" in c.vocab.index and EOS in c.vocab.index and len(c.vocab) == 7596
    s = load_char_corpus(DATA / "tinyshakespeare" / "input.txt")
    assert len(s.train) + len(s.test) == 1115394 and len(s.vocab) == 65
    assert len(s.train) == int(1115394 * 0.9)
    h = unigram_entropy_bits(s.train, len(s.vocab))
    assert 4.6 < h < 4.9  # bits per character of the unigram model


# ---- training -------------------------------------------------------------------------------------------


def _synthetic_text(path: Path) -> Path:
    rng = np.random.default_rng(0)
    words = "the cat dog sat on a mat and ran to big red house she he it was in".split()
    lines = [" ".join(rng.choice(words, size=rng.integers(3, 9))) for _ in range(1500)]
    return _write(path, "\n".join(lines) + "\n")


def _char_cfg(text: Path, epochs: int, bits: int = 4) -> TrainConfig:
    return TrainConfig(
        recipe="test-char", dataset="text", model="rnn_lm", task="lm", loss="cross_entropy",
        model_args=dict(vocab_size=0, cell="lstm", emb_size=16, hidden_size=64, num_layers=1, dropout=0.0,
                        weight_bits=bits, act_bits=bits,
                        **{**LM_SETTINGS, "level": "char", "text_file": str(text), "bptt": 25, "clip_grad": 1.0}),
        epochs=epochs, batch_size=16, eval_batch_size=16, lr_start=1e-2, lr_end=3e-3, lr_scale=False)


def test_char_training_beats_unigram_and_resumes(tmp_path, monkeypatch):
    """W4A4 LSTM, two short epochs on a written text: bits per character far below the unigram entropy;
    an interrupted run resumed from its checkpoint ends exactly where the uninterrupted one does."""
    assert "lm" in TASKS
    text = _synthetic_text(tmp_path / "text.txt")
    corpus = load_char_corpus(text)
    unigram = unigram_entropy_bits(corpus.test, len(corpus.vocab))  # ~3.75 bits
    full = run(_char_cfg(text, 2), tmp_path / "full", progress=False)
    assert full["test_bpc"] < unigram - 1.5, (full["test_bpc"], unigram)
    assert full["epochs"][1]["test_bpc"] < full["epochs"][0]["test_bpc"]
    out = tmp_path / "full"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "lm" and len(metrics["epochs"]) == 2 and "character level" in metrics["data"]["note"]
    assert {"train_bpc", "test_bpc", "test_loss", "test_accuracy", "lr", "wall_time"} <= set(metrics["epochs"][0])
    assert (out / "checkpoint.pt").is_file() and (out / "curves.png").stat().st_size > 1000
    import lowbit.train.engine

    part = tmp_path / "part"
    real_save = lowbit.train.engine.save_checkpoint

    def save_then_die(path, state):  # the process is killed right after epoch 1's checkpoint
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(lowbit.train.engine, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run(_char_cfg(text, 2), part, progress=False)
    monkeypatch.undo()
    resumed = run(_char_cfg(text, 2), part, resume=True, progress=False)
    assert [e["test_loss"] for e in resumed["epochs"]] == [e["test_loss"] for e in full["epochs"]]
    a = torch.load(out / "checkpoint.pt", weights_only=True)["model_state"]
    b = torch.load(part / "checkpoint.pt", weights_only=True)["model_state"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the checkpoint rebuilds the model (registered "rnn_lm") with its vocabulary
    from lowbit.train.tasks.lm import load_lm_checkpoint

    model, vocab, _ = load_lm_checkpoint(out / "checkpoint.pt")
    assert vocab == corpus.vocab and model.vocab_size == len(vocab)


def test_ptb_recipes_train_on_valid_offline(tmp_path):
    for name in ("ptb-lstm", "ptb-gru", "ptb-rnn", "shakespeare-lstm"):
        cfg = get_recipe(name)
        assert cfg.task == "lm" and cfg.model == "rnn_lm"
    if not (DATA / "ptb" / "ptb.test.txt").is_file():
        pytest.skip(f"PTB files not found under {DATA}")
    cfg = apply_overrides(get_recipe("ptb-gru"), [
        "epochs=1", "train_subset=3000", "test_subset=2000", "model.hidden_size=32", "model.emb_size=32",
        "model.num_layers=1", "model.weight_bits=3", "model.act_bits=3", "model.train_file=ptb.valid.txt",
        "model.valid_file=", "batch_size=10"])
    m = run(cfg, tmp_path / "ptb", data_dir=DATA, progress=False)
    assert m["test_perplexity"] > 1 and math.isfinite(m["test_perplexity"])
    assert m["data"]["files"]["train"].endswith("ptb.valid.txt") and m["data"]["files"]["test"].endswith("ptb.test.txt")
    assert "ptb.valid.txt, ptb.test.txt" in m["data"]["note"]


def test_cli_reports_bad_text_data(tmp_path):
    _write(tmp_path / "ptb" / "ptb.valid.txt", b"\xff\xfe bad bytes\n")
    _write(tmp_path / "ptb" / "ptb.test.txt", "ok\n")
    r = subprocess.run([sys.executable, "-m", "lowbit", "train", "ptb-lstm", "--data-dir", str(tmp_path),
                        "--out", str(tmp_path / "out"), "--no-progress"],
                       capture_output=True, text=True, cwd=REPO, timeout=120,
                       env=subprocess_env())
    assert r.returncode == 2, r.stderr
    assert "ptb.valid.txt is not UTF-8 text" in r.stderr and "Traceback" not in r.stderr
