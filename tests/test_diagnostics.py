"""Training diagnostics (issue 14): flip ratio of binary weights and latent-weight histograms per epoch."""

import json

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.cli import main
from lowbit.nn.layers import QuantAct, QuantLinear
from lowbit.train.diagnostics import WeightDiagnostics, quantized_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model():
    torch.manual_seed(0)
    return nn.Sequential(QuantLinear(6, 5, bias=False), QuantAct(), QuantLinear(5, 4, bias=False, weight_quantizer="linear:bits=2"),
                         nn.Linear(4, 3))


def test_flip_ratio_by_hand():
    model = _model()
    assert [n for n, _, _ in quantized_weights(model)] == ["0.weight", "2.weight"]  # nn.Linear: no quantizer
    d = WeightDiagnostics(model)
    assert [n for n, _ in d.binary] == ["0.weight"]  # only the binary tensor has a flip ratio
    # an optimizer step with LR 0 changes nothing
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    model(torch.randn(3, 6)).sum().backward()
    opt.step()
    assert d.epoch()["flip_ratio"] == {"0.weight": 0.0}
    with torch.no_grad():
        model[0].weight.neg_()  # every sign flipped by construction (no weight is exactly 0)
    assert d.epoch()["flip_ratio"] == {"0.weight": 1.0}
    with torch.no_grad():
        model[0].weight[:2].neg_()  # back again for 2 of 5 rows: 12 of 30 weights
    assert d.epoch()["flip_ratio"]["0.weight"] == pytest.approx(12 / 30)
    with torch.no_grad():
        model[0].weight[0, 0] = -0.25
    d.epoch()
    with torch.no_grad():
        model[0].weight[0, 0] = 0.0  # 0 counts as +1 (the paper's sign): a flip
    assert d.epoch()["flip_ratio"]["0.weight"] == pytest.approx(1 / 30)


def test_histograms_and_saturation_by_hand():
    model = _model()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([-1.0, -0.999, -0.5, 0.0, 0.5, 1.0]).repeat(5, 1))
    rec = WeightDiagnostics(model, bins=4).epoch()
    h = rec["weight_histogram"]["0.weight"]
    assert h["range"] == [-1.0, 1.0] and h["counts"] == [10, 5, 5, 10]  # bins [-1,-.5) [-.5,0) [0,.5) [.5,1]
    assert rec["weight_saturation"]["0.weight"] == pytest.approx(3 / 6)  # -1, -0.999, 1 are within 1% of the clip
    assert sum(rec["weight_histogram"]["2.weight"]["counts"]) == 20
    json.dumps(rec)  # goes into metrics.json as it is


def test_training_records_diagnostics_and_plots(tmp_path, shared_data):
    out = tmp_path / "run"
    assert main(["train", "mnist-mlp", "--epochs", "2", "--data-dir", str(shared_data), "--out", str(out),
                 "--set", "model.hidden=32", "--set", "model.depth=1", "--set", "train_subset=500",
                 "--set", "test_subset=200", "--no-progress"]) == 0
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    first = next(iter(epochs[0]["flip_ratio"]))  # the first QuantLinear (784 -> 32)
    for rec in epochs:
        assert len(rec["flip_ratio"]) == 2 and set(rec["weight_histogram"]) == set(rec["flip_ratio"])
        assert all(0.0 <= r <= 1.0 for r in rec["flip_ratio"].values())
        assert sum(rec["weight_histogram"][first]["counts"]) == 784 * 32
    assert epochs[0]["flip_ratio"][first] > 0  # lr 3e-3 with the Glorot scale moves many signs
    assert (out / "flips.png").stat().st_size > 0 and (out / "weights.png").stat().st_size > 0


def test_tensorboard_without_the_package_is_a_clear_error(tmp_path, shared_data, monkeypatch, capsys):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name == "tensorboard" or name.startswith("tensorboard."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    assert main(["train", "mnist-mlp", "--epochs", "1", "--data-dir", str(shared_data), "--out", str(tmp_path / "r"),
                 "--set", "model.hidden=8", "--set", "train_subset=100", "--tensorboard", str(tmp_path / "tb"),
                 "--no-progress"]) == 2
    assert "--tensorboard needs the 'tensorboard' package" in capsys.readouterr().err


def test_tensorboard_logging_writes_scalars_and_histograms():
    from lowbit.train.diagnostics import log_tensorboard

    class Writer:
        def __init__(self):
            self.scalars, self.hists = {}, {}

        def add_scalar(self, tag, value, step):
            self.scalars[tag, step] = value

        def add_histogram(self, tag, values, step):
            self.hists[tag, step] = values

        def flush(self):
            pass

    model, w = _model(), Writer()
    record = {"epoch": 3, "train_loss": 0.5, "test_accuracy": 0.9, "lr": 1e-3, **WeightDiagnostics(model).epoch()}
    log_tensorboard(w, record, model)
    assert w.scalars[("train/loss", 3)] == 0.5 and w.scalars[("test/accuracy", 3)] == 0.9 and ("lr", 3) in w.scalars
    assert w.scalars[("flip_ratio/0.weight", 3)] == 0.0
    assert set(w.hists) == {("latent_weights/0.weight", 3), ("latent_weights/2.weight", 3)}


def test_tensorboard_training_run_writes_an_event_file_tensorboard_reads(tmp_path, shared_data):
    """The real --tensorboard path: train 2 short epochs, read the event file back with TensorBoard's own
    reader, and find each epoch's metrics (equal to metrics.json) and the latent-weight histograms."""
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install tensorboard, or the "
                                              "'test' extra): the real --tensorboard path cannot run")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, tb = tmp_path / "r", tmp_path / "tb"
    assert main(["train", "mnist-mlp", "--epochs", "2", "--data-dir", str(shared_data), "--out", str(out),
                 "--set", "model.hidden=16", "--set", "model.depth=1", "--set", "train_subset=300",
                 "--set", "test_subset=200", "--tensorboard", str(tb), "--no-progress"]) == 0
    assert list(tb.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    history = json.loads((out / "metrics.json").read_text())["epochs"]
    for key, tag in (("train_loss", "train/loss"), ("test_accuracy", "test/accuracy"), ("lr", "lr")):
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [1, 2]
        np.testing.assert_allclose([e.value for e in events], [h[key] for h in history], rtol=1e-6)
    assert {f"flip_ratio/{n}" for n in history[-1]["flip_ratio"]} <= set(tags["scalars"])
    hists = [t for t in tags["histograms"] if t.startswith("latent_weights/")]
    assert len(hists) == 2  # the binary hidden layer and the binary output layer
    h = acc.Histograms(hists[0])[-1].histogram_value
    assert h.num == 784 * 16 and -1.0 <= h.min <= h.max <= 1.0  # every latent weight, clipped to [-1, 1]
