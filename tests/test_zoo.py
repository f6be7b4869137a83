"""The model zoo (issue 14): the shipped files load, both engines reproduce the stated figures on the first
1000 test images (a language model: its first test tokens), the runtime predicts what PyTorch predicts, the
compact checkpoint is lossless for the eval forward, and bad names or damaged files are clear errors."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from conftest import run_without_torch
from lowbit import zoo
from lowbit.cli import main
from lowbit.errors import CheckpointError, ConfigError
from lowbit.zoo.compact import eval_weights, model_from_compact, read_compact, write_compact

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENTRIES = zoo.entries()
IMAGES = sorted(n for n, e in ENTRIES.items() if e["task"] == "image classification")
LMS = sorted(n for n, e in ENTRIES.items() if e["task"] == "language model")


def test_the_zoo_has_the_issue_entries_small_and_described():
    assert {"mnist-mlp", "mnist-cnn", "mnist-cnn-pact-sawb", "ptb-lstm"} <= set(ENTRIES)
    for name, e in ENTRIES.items():
        assert e["command"].startswith("lowbit train ") and e["recipe"] in e["command"], name
        assert e["trained_on"] and e["date"] and e["machine"] and e["description"], name
        assert zoo.total_bytes(e) < 3e6, name  # a few hundred KB to ~2.6 MB (3x2048 MLP: 1 bit a weight, twice)
        for kind in zoo.KINDS:
            assert zoo.file_path(name, kind).stat().st_size == e["files"][kind]["bytes"]


@pytest.fixture(scope="module")
def mnist_test(shared_data):
    from lowbit.data import load_dataset

    return load_dataset("mnist", "test", data_dir=shared_data)


@pytest.mark.parametrize("name", IMAGES)
def test_image_entry_reproduces_its_accuracy_on_the_first_1000_images(name, mnist_test):
    """PyTorch model and runtime model file: the stated accuracy on the first 1000 test images, exactly,
    and identical predictions."""
    e = ENTRIES[name]
    n = e["check"]["count"]
    x, labels = mnist_test.images[:n], mnist_test.labels[:n]
    model = zoo.load(name)
    assert isinstance(model, torch.nn.Module) and not model.training
    with torch.no_grad():
        torch_pred = model(torch.from_numpy(x).float()).argmax(1).numpy()
    runtime_pred = zoo.load_runtime(name).classify(x)
    assert np.array_equal(runtime_pred, torch_pred)
    assert int((torch_pred == labels).sum()) == round(e["check"]["pytorch"] * n)
    assert int((runtime_pred == labels).sum()) == round(e["check"]["runtime"] * n)
    assert e["metric"]["differing_predictions"] == 0 and e["metric"]["pytorch"] > 0.95


@pytest.mark.parametrize("name", LMS)
def test_language_model_entry_reproduces_its_perplexity(name, shared_data):
    """PyTorch perplexity of the compact checkpoint and the integer LSTM's, on the first test tokens
    (columns and BPTT as stated), against the table; the integer model within 2% of the float one."""
    from lowbit.data.text import Vocabulary, load_corpus
    from lowbit.models.lm import split_model_args
    from lowbit.train.tasks.lm import evaluate_lm, lm_columns

    e = ENTRIES[name]
    c = e["check"]
    model, meta = zoo.load_with_metadata(name)
    net = zoo.load_runtime(name)
    corpus = load_corpus(split_model_args(meta["config"]["model_args"])[1], shared_data)
    assert corpus.vocab.tokens == Vocabulary.from_dict(meta["vocab"]).tokens == net.vocab.tokens
    ids = corpus.test[:c["count"]]
    loss, _ = evaluate_lm(model, lm_columns(ids, c["batch_size"]), c["bptt"], "cpu")
    assert math.exp(loss) == pytest.approx(c["pytorch"], rel=1e-4)
    runtime = math.exp(net.perplexity(ids, batch_size=c["batch_size"], bptt=c["bptt"])["loss"])
    assert runtime == pytest.approx(c["runtime"], rel=1e-6)  # integer arithmetic: the same on every CPU
    assert abs(runtime / math.exp(loss) - 1) < 0.02


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_stored_quantized_weights_are_fixed_points_of_their_quantizers(name):
    """Why the compact checkpoint is lossless: each weight stored as its quantized values is mapped to itself
    by its layer's quantizer, so the eval forward uses the training run's quantized weights exactly."""
    model = zoo.load(name)
    meta, state = read_compact(zoo.file_path(name, "pytorch"))
    replaced = eval_weights(model)
    palettes = {k for k, v in meta["tensors"].items() if v["encoding"] == "palette"}
    assert palettes and palettes <= set(replaced) | {k for k in state if state[k].numel() <= 16}
    for key, wq in replaced.items():
        assert torch.equal(wq, state[key]), key


def test_compact_checkpoint_equals_the_training_model_bit_for_bit(tmp_path):
    """Independent of the shipped files: train a W1A1 net, a 2-bit SAWB+PACT net and a W4A4 LSTM a few
    steps, write and read the compact checkpoint, compare outputs with the original model's."""
    from lowbit.models.image import convnet, mlp
    from lowbit.models.lm import rnn_lm

    torch.manual_seed(0)
    cases = [
        (mlp(in_shape=(1, 8, 8), hidden=32, depth=2), {"model": "mlp", "model_args": {"in_shape": [1, 8, 8], "hidden": 32, "depth": 2}}),
        (convnet(in_shape=(1, 8, 8), channels=(4, "M"), fc=(8,), weight_quantizer="sawb:bits=2",
                 act_quantizer="pact:bits=2,alpha=3"),
         {"model": "convnet", "model_args": {"in_shape": [1, 8, 8], "channels": [4, "M"], "fc": [8],
                                             "weight_quantizer": "sawb:bits=2", "act_quantizer": "pact:bits=2,alpha=3"}}),
    ]
    lm_args = dict(vocab_size=30, emb_size=8, hidden_size=8, num_layers=2, weight_bits=4, act_bits=4,
                   quantize_embedding=True, quantize_decoder=True)
    cases.append((rnn_lm(**lm_args), {"model": "rnn_lm", "model_args": lm_args, "task": "lm"}))
    for i, (model, cfg) in enumerate(cases):
        opt = torch.optim.Adam(model.parameters(), 1e-2)
        for _ in range(3):  # move the latent weights and BN statistics off their initial values
            x = torch.randint(0, 30, (5, 4)) if cfg.get("task") == "lm" else torch.rand(16, 1, 8, 8) * 255
            out = model(x)[0] if cfg.get("task") == "lm" else model(x)
            opt.zero_grad()
            out.float().pow(2).mean().backward()
            opt.step()
        model.eval()
        path = tmp_path / f"m{i}.safetensors"
        layout = write_compact(model, cfg, path)
        back, _ = model_from_compact(path)
        with torch.no_grad():
            if cfg.get("task") == "lm":
                ids = torch.randint(0, 30, (7, 3))
                assert torch.equal(back(ids)[0], model(ids)[0])
            else:
                x = torch.rand(20, 1, 8, 8).mul(255).floor()
                assert torch.equal(back(x), model(x))
        encodings = {v["encoding"] for v in layout.values()}
        assert "palette" in encodings and "raw" in encodings  # quantized weights coded, BN statistics kept
        weights = {k: v for k, v in layout.items() if k.rsplit(".", 1)[-1].startswith("weight") and len(v["shape"]) > 1}
        if i == 0:  # binary weights: one bit each
            assert weights and all(v["encoding"] == "palette" and v["bits"] == 1 for v in weights.values())
        if i == 1:  # SAWB's levels depend on the latent tensor: no fixed point, the latent weights are kept
            assert weights and all(v["encoding"] == "raw" for v in weights.values())
        if i == 2:  # max-scaled 4-bit embedding, LSTM and decoder weights: 4-bit codes
            assert len(weights) == 6 and all(v["encoding"] == "palette" and v["bits"] == 4 for v in weights.values())


def test_cli_lists_the_zoo_and_evaluates_an_entry_with_both_engines(capsys, shared_data):
    assert main(["zoo"]) == 0
    out = capsys.readouterr().out
    for name, e in ENTRIES.items():
        assert name in out and e["command"] in out
    assert main(["zoo", "--show", "mnist-mlp"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "mnist-mlp"
    e = ENTRIES["mnist-mlp"]
    for engine in ("runtime", "pytorch"):
        assert main(["eval", "zoo:mnist-mlp", "--engine", engine, "--data-dir", str(shared_data)]) == 0
        line = capsys.readouterr().out
        assert f"test accuracy {e['metric'][engine]:.4f}" in line


def test_unknown_zoo_name_lists_the_known_ones(capsys):
    with pytest.raises(ConfigError, match=r"no zoo model named 'mnist-nope'; the zoo has: .*mnist-mlp"):
        zoo.load("mnist-nope")
    assert main(["eval", "zoo:mnist-nope"]) == 2
    assert "the zoo has:" in capsys.readouterr().err
    assert main(["eval", "model.lbt", "--engine", "pytorch"]) == 2
    assert "--engine is for zoo:NAME" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="kind must be one of runtime, pytorch"):
        zoo.file_path("mnist-mlp", "onnx")


def test_missing_or_corrupt_zoo_files_are_clear_errors(tmp_path, monkeypatch):
    folder = tmp_path / "files"
    shutil.copytree(zoo.FILES, folder)
    monkeypatch.setattr(zoo, "FILES", folder)
    e = ENTRIES["mnist-mlp"]
    lbt, pt = folder / e["files"]["runtime"]["file"], folder / e["files"]["pytorch"]["file"]
    blob = bytearray(pt.read_bytes())
    blob[-100] ^= 0x01  # one flipped bit in a weight
    pt.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match=r"mnist-mlp.*pytorch file .* is corrupt .*reinstall"):
        zoo.load("mnist-mlp")
    lbt.unlink()
    with pytest.raises(CheckpointError, match=r"mnist-mlp.*runtime file .* is missing"):
        zoo.load_runtime("mnist-mlp")
    # the container's own checksum, past the table's: a damaged compact checkpoint read directly
    with pytest.raises(CheckpointError, match="checksum"):
        read_compact(pt)
    (folder / zoo.INDEX).write_text("{not json")
    with pytest.raises(CheckpointError, match="table .* unreadable"):
        zoo.entries()


def test_load_runtime_needs_no_torch():
    run_without_torch("import lowbit.zoo as z\nnet = z.load_runtime('mnist-mlp')\nimport numpy as np\n"
                      "assert net.classify(np.zeros((2, 1, 28, 28), np.uint8)).shape == (2,)\n")
