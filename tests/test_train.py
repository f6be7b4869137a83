"""End-to-end training: real MNIST, resume equivalence, torchrun, bad input through the CLI."""

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import lowbit
from lowbit.cli import main

FAST_MLP = ["--set", "model.hidden=512", "--set", "model.depth=2", "--set", "model.dropout_in=0",
            "--set", "model.dropout_hidden=0", "--set", "lr_start=0.01", "--set", "lr_end=0.001"]


def test_short_real_mnist_run_reaches_90_percent(shared_data, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "mnist-mlp", "--epochs", "2", "--data-dir", str(shared_data), "--out", str(out),
               "--set", "train_subset=20000", "--no-progress", *FAST_MLP])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_accuracy"] >= 0.90
    assert metrics["wall_time"] < 60
    assert len(metrics["epochs"]) == 2
    assert metrics["config"]["model_args"]["hidden"] == 512
    assert set(metrics["epochs"][0]) >= {"train_loss", "train_accuracy", "test_accuracy", "wall_time"}
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the checkpoint gives back the trained model, in eval mode, with the same test accuracy
    model = lowbit.load_checkpoint(out / "checkpoint.pt")
    assert not model.training
    from lowbit.data import load_dataset
    test = load_dataset("mnist", "test", data_dir=shared_data)
    with torch.no_grad():
        pred = model(torch.from_numpy(test.images).float()).argmax(1).numpy()
    assert (pred == test.labels).mean() == pytest.approx(metrics["test_accuracy"])


def _tiny_args(shared_data, out, epochs):
    return ["train", "mnist-mlp", "--epochs", str(epochs), "--data-dir", str(shared_data), "--out", str(out),
            "--no-progress", "--set", "train_subset=1000", "--set", "test_subset=500",
            "--set", "model.hidden=64", "--set", "model.depth=2", "--set", "batch_size=50",
            # dropout and stochastic activations make the run depend on the global RNG state
            "--set", "model.dropout_hidden=0.2", "--set", "model.act_quantizer=stochastic_sign"]


def test_resume_gives_the_same_result_as_an_uninterrupted_run(shared_data, tmp_path, monkeypatch):
    import lowbit.train.engine

    full, part = tmp_path / "full", tmp_path / "part"
    assert main(_tiny_args(shared_data, full, 3)) == 0
    real_save = lowbit.train.engine.save_checkpoint

    def save_then_die(path, state):  # the process is killed right after epoch 1's checkpoint
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(lowbit.train.engine, "save_checkpoint", save_then_die)
    assert main(_tiny_args(shared_data, part, 3)) == 130
    monkeypatch.undo()
    assert torch.load(part / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert main(_tiny_args(shared_data, part, 3) + ["--resume"]) == 0   # continued
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(part / "checkpoint.pt", weights_only=True)
    assert b["epoch"] == 3
    for key in a["model_state"]:
        assert torch.equal(a["model_state"][key], b["model_state"][key]), key
    ma = json.loads((full / "metrics.json").read_text())["epochs"]
    mb = json.loads((part / "metrics.json").read_text())["epochs"]
    for ra, rb in zip(ma, mb):
        assert ra["train_loss"] == rb["train_loss"] and ra["test_accuracy"] == rb["test_accuracy"]


def test_bn_recalibration_changes_only_the_running_statistics(shared_data, tmp_path):
    """Recalibration before each evaluation leaves the training trajectory alone (training batches use
    their own statistics; no RNG is drawn): same weights as a run without it; the running statistics are
    those recomputed from the weights over the fixed image draw, and the recorded accuracy is theirs."""
    from lowbit.data import load_dataset
    from lowbit.nn.norm import recalibrate_batch_norm

    plain, recal = tmp_path / "plain", tmp_path / "recal"
    assert main(_tiny_args(shared_data, plain, 2)) == 0
    assert main(_tiny_args(shared_data, recal, 2) + ["--set", "bn_recalibrate=300"]) == 0
    a = torch.load(plain / "checkpoint.pt", weights_only=True)["model_state"]
    b = torch.load(recal / "checkpoint.pt", weights_only=True)["model_state"]
    stats = [k for k in a if "running" in k]
    assert stats
    for key in a:
        if "running" not in key and "num_batches" not in key:
            assert torch.equal(a[key], b[key]), key
    assert any(not torch.allclose(a[k], b[k]) for k in stats)

    model = lowbit.load_checkpoint(plain / "checkpoint.pt")
    train = load_dataset("mnist", "train", data_dir=shared_data)
    images = torch.from_numpy(train.images[:1000])[torch.randperm(1000, generator=torch.Generator().manual_seed(0))[:300]]
    recalibrate_batch_norm(model, images, batch_size=50)
    for key in stats:
        torch.testing.assert_close(model.state_dict()[key], b[key], rtol=1e-5, atol=1e-6)
    test = load_dataset("mnist", "test", data_dir=shared_data)
    with torch.no_grad():
        pred = model(torch.from_numpy(test.images[:500]).float()).argmax(1).numpy()
    recorded = json.loads((recal / "metrics.json").read_text())["test_accuracy"]
    assert (pred == test.labels[:500]).mean() == pytest.approx(recorded)


def test_validation_split_keeps_the_best_validation_epoch(shared_data, tmp_path, capsys):
    """valid_size holds out the last training images (BinaryNet: 50k/10k); best.pt is the model of the
    epoch with the highest validation accuracy (the latest among equals) and metrics.json reports that
    epoch's test accuracy. Both are recomputed here from best.pt on the raw files."""
    from lowbit.data import load_dataset

    out = tmp_path / "run"
    assert main(_tiny_args(shared_data, out, 4) + ["--set", "train_subset=1200", "--set", "valid_size=200"]) == 0
    assert "train 1000 / valid 200 (the last training images) / test 500" in capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    valid = [e["valid_accuracy"] for e in metrics["epochs"]]
    best = max(i for i, v in enumerate(valid) if v == max(valid))
    assert metrics["best_epoch"] == best + 1
    assert metrics["valid_accuracy_at_best_valid"] == valid[best]
    assert metrics["test_accuracy_at_best_valid"] == metrics["epochs"][best]["test_accuracy"]
    assert metrics["test_accuracy"] == metrics["epochs"][-1]["test_accuracy"]

    saved = torch.load(out / "best.pt", weights_only=True)
    assert saved["epoch"] == best + 1 and "optimizer_state" not in saved
    model = lowbit.load_checkpoint(out / "best.pt")
    train = load_dataset("mnist", "train", data_dir=shared_data)
    test = load_dataset("mnist", "test", data_dir=shared_data)
    with torch.no_grad():
        for images, labels, recorded in ((train.images[1000:1200], train.labels[1000:1200], valid[best]),
                                         (test.images[:500], test.labels[:500], metrics["test_accuracy_at_best_valid"])):
            pred = model(torch.from_numpy(images).float()).argmax(1).numpy()
            assert (pred == labels).mean() == pytest.approx(recorded)


def test_validation_split_must_leave_training_images(shared_data, tmp_path, capsys):
    assert main(_tiny_args(shared_data, tmp_path, 1) + ["--set", "valid_size=1000"]) == 2
    assert "valid_size=1000 holds out every training image (mnist has 1000 with train_subset)" in capsys.readouterr().err


def test_resume_refuses_a_checkpoint_of_another_recipe(shared_data, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(_tiny_args(shared_data, out, 1)) == 0
    rc = main(["train", "mnist-mlp", "--epochs", "2", "--data-dir", str(shared_data), "--out", str(out),
               "--resume", "--set", "model.hidden=32", "--no-progress"])
    assert rc == 2
    assert "different run" in capsys.readouterr().err
    rc = main(["train", "mnist-mlp", "--epochs", "2", "--out", str(tmp_path / "empty"), "--resume"])
    assert rc == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_checkpoint_is_written_atomically(tmp_path, monkeypatch):
    from lowbit.train.checkpoint import read_checkpoint, save_checkpoint

    path = tmp_path / "c.pt"
    cfg1, cfg2 = ({"model": "mlp", "model_args": {"a": a}} for a in (1, 2))  # the structure read_checkpoint checks
    save_checkpoint(path, {"config": cfg1, "model_state": {"w": torch.ones(3)}})

    def explode(obj, f):
        f.write(b"partial garbage")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"config": cfg2, "model_state": {"w": torch.zeros(3)}})
    monkeypatch.undo()
    data = read_checkpoint(path)
    assert data["config"] == cfg1 and torch.equal(data["model_state"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_load_checkpoint_rejects_foreign_and_corrupt_files(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(lowbit.CheckpointError, match="not a readable lowbit checkpoint"):
        lowbit.load_checkpoint(bad)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    with pytest.raises(lowbit.CheckpointError, match="not a lowbit checkpoint"):
        lowbit.load_checkpoint(foreign)
    with pytest.raises(lowbit.CheckpointError, match="does not exist"):
        lowbit.load_checkpoint(tmp_path / "missing.pt")


def test_torchrun_two_processes_write_one_metrics_file(shared_data, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
           "-m", "lowbit", *_tiny_args(shared_data, out, 1)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert len(metrics["epochs"]) == 1 and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "curves.png", "flips.png", "metrics.json",
                                                      "weights.png"]
    assert lowbit.load_checkpoint(out / "checkpoint.pt") is not None


@pytest.mark.parametrize("args,message", [
    (["train", "no-such-recipe"], "unknown recipe 'no-such-recipe'"),
    (["train", "mnist-mlp", "--set", "model.weight_quantizer=ste_sgn"], "unknown quantizer 'ste_sgn'"),
    (["train", "mnist-mlp", "--set", "model.widht=3"], "has no argument 'widht'"),
    (["train", "mnist-mlp", "--set", "learning_rate=3"], "no such setting"),
    (["train", "mnist-mlp", "--set", "epochs=many"], "expected a value of type int"),
    (["train", "mnist-mlp", "--set", "epochs"], "key=value"),
    (["train", "mnist-mlp", "--set", "loss=hinge", "--epochs", "1"], "unknown loss 'hinge'"),
    (["train", "mnist-mlp", "--set", "bn_recalibrate=-5"], "bn_recalibrate must be >= 0"),
    (["train", "mnist-mlp", "--set", "valid_size=-1"], "valid_size must be >= 0"),
])
def test_bad_configuration_gives_one_line_errors(args, message, tmp_path, capsys, shared_data):
    rc = main(args + ["--out", str(tmp_path), "--data-dir", str(shared_data), "--no-progress",
                      "--set", "train_subset=100", "--set", "test_subset=100", "--set", "model.hidden=8"])
    assert rc == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_bn_recalibration_refused_by_tasks_without_it():
    from lowbit.train.config import apply_overrides, get_recipe, validate
    from lowbit.errors import ConfigError

    for name in ("ptb-lstm", "imagenet-alexnet"):
        with pytest.raises(ConfigError, match=f"bn_recalibrate is supported by the image task only; recipe '{name}'"):
            validate(apply_overrides(get_recipe(name), ["bn_recalibrate=100"]))
        with pytest.raises(ConfigError, match=f"valid_size is supported by the image task only; recipe '{name}'"):
            validate(apply_overrides(get_recipe(name), ["valid_size=100"]))


def test_labels_out_of_range_for_the_model(shared_data, tmp_path, capsys):
    rc = main(["train", "mnist-mlp", "--epochs", "1", "--data-dir", str(shared_data), "--out", str(tmp_path),
               "--set", "model.num_classes=5", "--set", "model.hidden=8", "--no-progress"])
    assert rc == 2
    assert "but the model has 5 classes" in capsys.readouterr().err


def test_corrupt_dataset_file_through_the_cli(tmp_path, capsys, shared_data):
    d = tmp_path / "data" / "mnist"
    d.mkdir(parents=True)
    for name in ["train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]:
        (d / name).write_bytes((shared_data / "mnist" / name).read_bytes())
    raw = gzip.decompress((shared_data / "mnist" / "train-images-idx3-ubyte.gz").read_bytes())
    (d / "train-images-idx3-ubyte").write_bytes(raw[: len(raw) // 2])  # truncated
    rc = main(["train", "mnist-mlp", "--epochs", "1", "--data-dir", str(tmp_path / "data"),
               "--out", str(tmp_path / "o"), "--no-progress"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "train-images-idx3-ubyte" in err and "Traceback" not in err


def test_help_texts_explain_commands():
    for argv in (["lowbit", "--help"], ["lowbit", "train", "--help"]):
        proc = subprocess.run([sys.executable, "-m", *argv], capture_output=True, text=True)
        assert proc.returncode == 0
    out = subprocess.run([sys.executable, "-m", "lowbit", "train", "--help"], capture_output=True, text=True).stdout
    for word in ("--epochs", "--data-dir", "--set", "--resume", "torchrun", "mnist-mlp", "cifar10-cnn"):
        assert word in out


def test_bf16_autocast_keeps_the_quantizers_exact():
    """Under amp=bf16 the GEMMs run in bfloat16 but the quantizers stay float32: binary activations are
    exactly +-1, 2-bit PACT codes exactly alpha * j / 3, and the binary weights those of the fp32 model."""
    from lowbit.nn import QuantAct, QuantLinear
    from lowbit.train.config import TrainConfig
    from lowbit.train.engine import mixed_precision

    torch.manual_seed(0)
    model = torch.nn.Sequential(QuantLinear(20, 16, bias=False), torch.nn.BatchNorm1d(16), QuantAct("ste_sign"),
                                QuantLinear(16, 8, bias=False), torch.nn.BatchNorm1d(8), QuantAct("pact:bits=2,alpha=2"))
    x = torch.randn(32, 20)
    cfg = TrainConfig(recipe="t", dataset="mnist", model="mlp", amp="bf16")
    seen = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, k=k: seen.__setitem__(k, o)) for k, m in enumerate(model)]
    with mixed_precision(cfg, torch.device("cpu")):
        model(x)
    assert seen[0].dtype == torch.bfloat16  # the GEMM did run in bf16
    assert seen[2].dtype == torch.float32 and set(seen[2].unique().tolist()) <= {-1.0, 1.0}
    codes = seen[5] / 2.0 * 3.0
    assert seen[5].dtype == torch.float32 and torch.equal(codes, codes.round()) and codes.min() >= 0 and codes.max() <= 3
    assert torch.equal(model[0].quantized_weight, torch.where(model[0].weight >= 0, 1.0, -1.0))
    for h in hooks:
        h.remove()


def test_amp_and_compile_options_train(shared_data, tmp_path):
    """amp=bf16 trains (finite loss, learns); compile with the eager backend gives the uncompiled run's result."""
    base = _tiny_args(shared_data, tmp_path / "plain", 1)
    assert main(base) == 0
    assert main(_tiny_args(shared_data, tmp_path / "compiled", 1) + ["--set", "compile=eager"]) == 0
    assert main(_tiny_args(shared_data, tmp_path / "bf16", 1) + ["--set", "amp=bf16"]) == 0
    plain, compiled, bf16 = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("plain", "compiled", "bf16"))
    assert compiled["epochs"][0]["train_loss"] == plain["epochs"][0]["train_loss"]
    assert np.isfinite(bf16["epochs"][0]["train_loss"]) and abs(bf16["test_accuracy"] - plain["test_accuracy"]) < 0.1
    assert main(_tiny_args(shared_data, tmp_path / "x", 1) + ["--set", "amp=fp8"]) == 2


def test_channels_last_trains_the_same_values_and_writes_a_usable_checkpoint(shared_data, tmp_path, capsys):
    """channels_last only changes memory layout: one step of a binary ConvNet gives the outputs and
    gradients of the NCHW model (float64, so no summation-order noise), and a CLI run with it (and bf16)
    writes a checkpoint that a plain NCHW model loads and evaluates to the accuracy the run recorded."""
    from lowbit.models.image import convnet
    from lowbit.train.tasks.image import classify
    from lowbit.train.losses import get_loss

    torch.manual_seed(0)
    args = dict(in_shape=[1, 12, 12], num_classes=10, channels=[8, "M", 16, "M"], fc=[32])
    nchw = convnet(**args).double()
    nhwc = convnet(**args).double()
    nhwc.load_state_dict(nchw.state_dict())
    nhwc = nhwc.to(memory_format=torch.channels_last)
    assert nhwc[0].weight.is_contiguous(memory_format=torch.channels_last)
    x, y = torch.rand(20, 1, 12, 12, dtype=torch.float64) * 2 - 1, torch.randint(0, 10, (20,))
    loss_fn = get_loss("square_hinge")
    l1, _, c1 = classify(nchw, x, y, loss_fn)
    l2, _, c2 = classify(nhwc, x, y, loss_fn, channels_last=True)
    l1.backward()
    l2.backward()
    assert l1.item() == pytest.approx(l2.item(), rel=1e-12) and c1 == c2
    for (name, p), q in zip(nchw.named_parameters(), nhwc.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12), name

    out = tmp_path / "cl"
    assert main(["train", "mnist-cnn", "--epochs", "1", "--data-dir", str(shared_data), "--out", str(out),
                 "--no-progress", "--set", "train_subset=2000", "--set", "test_subset=500",
                 "--set", "model.channels=8,M,16,M", "--set", "model.fc=32",
                 "--set", "channels_last=true", "--set", "amp=bf16"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    model = lowbit.load_checkpoint(out / "checkpoint.pt")
    from lowbit.data import load_dataset
    test = load_dataset("mnist", "test", data_dir=shared_data)
    with torch.no_grad():
        pred = model(torch.from_numpy(test.images[:500]).float()).argmax(1).numpy()
    assert (pred == test.labels[:500]).mean() == pytest.approx(metrics["test_accuracy"])
    assert metrics["test_accuracy"] > 0.5
    for bad in (["ptb-lstm", "--set", "channels_last=true"], ["mnist-cnn", "--set", "channels_last=maybe"]):
        capsys.readouterr()
        assert main(["train", bad[0], "--epochs", "1", "--data-dir", str(shared_data),
                     "--out", str(tmp_path / "x"), *bad[1:]]) == 2
        assert "channels_last" in capsys.readouterr().err


def _shifted(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """img (C, H, W) moved down by dy and right by dx, zeros shifted in: written with slices, no padding."""
    out = np.zeros_like(img)
    h, w = img.shape[1:]
    out[:, max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = img[:, max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def test_random_shift_moves_each_image_by_one_offset_in_range():
    from lowbit.train.tasks.image import random_shift

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.integers(1, 256, size=(300, 3, 7, 9), dtype=np.uint8))  # no zero pixel
    out = random_shift(images, 2, torch.Generator().manual_seed(1)).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    seen = set()
    for img, moved in zip(images.numpy(), out):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if np.array_equal(_shifted(img, dy, dx), moved)]
        assert len(matches) == 1, matches
        seen.add(matches[0])
    assert len(seen) == 25  # every offset in [-2, 2]^2 drawn among 300 images
    again = random_shift(images, 2, torch.Generator().manual_seed(1)).numpy()
    assert np.array_equal(out, again)  # the same generator state gives the same shifts (resume)
    assert np.array_equal(random_shift(images, 0, torch.Generator()).numpy(), images.numpy())


def test_random_shift_trains_and_is_refused_outside_image_tasks(shared_data, tmp_path, capsys):
    out = tmp_path / "aug"
    assert main(["train", "mnist-mlp", "--epochs", "1", "--data-dir", str(shared_data), "--out", str(out),
                 "--no-progress", "--set", "train_subset=3000", "--set", "test_subset=500",
                 "--set", "random_shift=2", *FAST_MLP]) == 0
    assert json.loads((out / "metrics.json").read_text())["test_accuracy"] > 0.7
    for bad in (["ptb-lstm", "--set", "random_shift=2"], ["mnist-mlp", "--set", "random_shift=-1"]):
        capsys.readouterr()
        assert main(["train", bad[0], "--epochs", "1", "--data-dir", str(shared_data),
                     "--out", str(tmp_path / "x"), *bad[1:]]) == 2
        assert "random_shift" in capsys.readouterr().err
