"""Issue 16: the first-hour traps and reliability findings, one test each (what a new user hits first)."""
from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pytest

from lowbit.cli import main
from lowbit.data import load_dataset
from lowbit.data.idx import write_idx
from lowbit.errors import DataError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = ["--set", "train_subset=300", "--set", "test_subset=200", "--set", "model.hidden=32", "--no-progress"]


def _default_data_dir(monkeypatch, tmp_path):
    """No --data-dir, no $LOWBIT_DATA, and a home without ~/.cache/lowbit/data."""
    monkeypatch.delenv("LOWBIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _write_mnist(d: Path, split: str, n: int = 4) -> None:
    rng = np.random.default_rng(0)
    stem = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
            "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}[split]
    d.mkdir(parents=True, exist_ok=True)
    write_idx(d / stem[0], rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
    write_idx(d / stem[1], rng.integers(0, 10, n).astype(np.uint8))


# ------------------------------------------------------------------------------------------------- data

def test_mistyped_data_dir_is_an_error_and_is_not_created(tmp_path, capsys):
    typo = tmp_path / "dtaa"
    rc = main(["train", "mnist-mlp", "--epochs", "1", "--data-dir", str(typo), "--out", str(tmp_path / "o"), *TINY])
    err = capsys.readouterr().err
    assert rc == 2 and str(typo) in err and "does not exist" in err
    assert not typo.exists() and not (tmp_path / "o" / "checkpoint.pt").exists()


def test_lowbit_data_naming_a_missing_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LOWBIT_DATA", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="LOWBIT_DATA.*missing.*does not exist"):
        load_dataset("mnist", "test", allow_sample=True)
    assert not (tmp_path / "missing").exists()


def test_a_named_directory_without_mnist_does_not_fall_back_to_the_sample(tmp_path):
    with pytest.raises(DataError, match="t10k-images"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False, allow_sample=True)


def test_only_the_missing_default_directory_falls_back_to_the_sample(tmp_path, monkeypatch):
    _default_data_dir(monkeypatch, tmp_path)
    ds = load_dataset("mnist", "test", download=False, allow_sample=True)
    assert ds.is_sample and len(ds) == 1000
    assert not (tmp_path / "home").exists()  # nothing created


def test_data_dir_pointing_at_a_regular_file_is_an_error(tmp_path):
    f = tmp_path / "data.txt"
    f.write_text("x")
    with pytest.raises(DataError, match="data.txt.*is not a directory"):
        load_dataset("mnist", "train", data_dir=f, allow_sample=True)


@pytest.mark.parametrize("kind", ["directory", "dangling symlink"])
def test_broken_idx_file_is_an_error_naming_it_not_the_sample(tmp_path, monkeypatch, kind):
    _default_data_dir(monkeypatch, tmp_path)
    d = tmp_path / "home" / ".cache" / "lowbit" / "data" / "mnist"
    _write_mnist(d, "test")
    bad = d / "t10k-images-idx3-ubyte"
    bad.unlink()
    if kind == "directory":
        bad.mkdir()
    else:
        bad.symlink_to(tmp_path / "gone")
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "test", download=False, allow_sample=True)
    assert str(bad) in str(e.value)


def test_directory_named_ptb_train_is_an_error_not_training_on_valid(tmp_path):
    from lowbit.data.text import load_ptb

    ptb = tmp_path / "ptb"
    ptb.mkdir()
    (ptb / "ptb.valid.txt").write_text("a b c\nb c a\n")
    (ptb / "ptb.test.txt").write_text("a b\n")
    assert load_ptb(tmp_path).files["train"].endswith("ptb.valid.txt")  # the documented fallback
    (ptb / "ptb.train.txt").mkdir()
    with pytest.raises(DataError, match="ptb.train.txt.*not a regular file"):
        load_ptb(tmp_path)


def test_tests_find_real_data_through_lowbit_data(tmp_path, monkeypatch):
    import datapaths

    monkeypatch.setenv("LOWBIT_DATA", str(tmp_path))
    assert importlib.reload(datapaths).SHARED_DATA == tmp_path
    monkeypatch.delenv("LOWBIT_DATA")
    assert importlib.reload(datapaths).SHARED_DATA == datapaths.REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def sample_run(tmp_path_factory):
    """A tiny mnist-mlp trained on the embedded sample (default data directory missing)."""
    tmp = tmp_path_factory.mktemp("sample_run")
    mp = pytest.MonkeyPatch()
    mp.delenv("LOWBIT_DATA", raising=False)
    mp.setenv("HOME", str(tmp / "home"))
    mp.setenv("LOWBIT_NO_DOWNLOAD", "1")
    try:
        assert main(["train", "mnist-mlp", "--epochs", "1", "--out", str(tmp / "run"), *TINY]) == 0
    finally:
        mp.undo()
    return tmp / "run"


def test_eval_falls_back_to_the_sample_like_train(sample_run, tmp_path, monkeypatch, capsys):
    _default_data_dir(monkeypatch, tmp_path)
    capsys.readouterr()
    assert main(["eval", str(sample_run / "checkpoint.pt")]) == 0
    out = capsys.readouterr().out
    assert "NOTE" in out and "embedded sample" in out and "/1000)" in out
    # a named directory still must hold the data
    assert main(["eval", str(sample_run / "checkpoint.pt"), "--data-dir", str(tmp_path)]) == 2


# ---------------------------------------------------------------------------------------------- runtime

@pytest.fixture(scope="module")
def small_net():
    """A binarized convnet with random BN statistics, exported and loaded in the runtime (no training)."""
    import torch

    from lowbit.bench import randomize_bn
    from lowbit.export.image import export_model
    from lowbit.models import convnet
    from lowbit.runtime.engine import BinaryNetwork

    torch.manual_seed(3)
    model = convnet(in_shape=(1, 12, 12), channels=[16, "M", 16, "M"], fc=[24])
    randomize_bn(model, 5)
    model.eval()
    meta, arrays = export_model(model, (1, 12, 12), 10)
    return BinaryNetwork(meta, arrays)


def test_runtime_wrong_pixel_values_raise_input_error_not_shape_error(small_net):
    from lowbit.errors import InputError, LowbitError, ShapeError

    for bad in (np.full((2, 1, 12, 12), 300), np.full((2, 1, 12, 12), 0.5), np.full((2, 1, 12, 12), np.nan)):
        with pytest.raises(InputError, match="8-bit") as e:
            small_net.predict(bad)
        assert isinstance(e.value, (LowbitError, ValueError)) and not isinstance(e.value, ShapeError)
    with pytest.raises(ShapeError):  # a wrong shape is still a shape error
        small_net.predict(np.zeros((2, 3, 12, 12), np.uint8))


def test_runtime_refuses_complex_input(small_net):
    from lowbit.errors import InputError

    with pytest.raises(InputError, match="complex"):
        small_net.predict(np.ones((2, 1, 12, 12), np.complex64))


def test_runtime_empty_batch_gives_an_empty_result(small_net):
    out = small_net.predict(np.zeros((0, 1, 12, 12), np.uint8))
    assert out.shape == (0, 10) and out.dtype == np.float32
    assert small_net.classify(np.zeros((0, 144), np.uint8)).shape == (0,)


def test_runtime_processes_big_batches_in_chunks(small_net, monkeypatch):
    x = np.random.default_rng(0).integers(0, 256, (23, 1, 12, 12)).astype(np.uint8)
    whole = small_net.predict(x)
    seen = []
    layer0 = small_net.layers[0]
    orig = type(layer0).run

    def spy(self, k, h):
        if self is layer0:
            seen.append(len(h))
        return orig(self, k, h)

    monkeypatch.setattr(type(layer0), "run", spy)
    monkeypatch.setattr(small_net, "batch_chunk", 5)
    chunked = small_net.predict(x.astype(np.int64))  # the value check runs per chunk too
    assert seen == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(chunked, whole)


def test_int_lstm_runtime_empty_batch_and_complex_input(tmp_path):
    import torch

    from lowbit.errors import InputError
    from lowbit.export.lstm import export_int_lstm
    from lowbit.models.lm import RNNLanguageModel
    from lowbit.runtime import load

    torch.manual_seed(0)
    bare = torch.nn.LSTM(6, 8)
    export_int_lstm(bare, [torch.randn(5, 2, 6)], tmp_path / "bare.lbt")
    for backend in ("numpy", "c"):
        m = load(tmp_path / "bare.lbt", backend=backend)
        y, _ = m.run_float(np.zeros((4, 0, 6), np.float32))
        assert y.shape == (4, 0, 8)
        with pytest.raises(InputError, match="complex"):
            m.run_float(np.ones((2, 1, 6), np.complex64))
    lm = RNNLanguageModel(40, emb_size=8, hidden_size=8, num_layers=1).eval()
    stream = np.random.default_rng(0).integers(0, 40, 400).astype(np.int64)
    export_int_lstm(lm, stream, tmp_path / "lm.lbt", max_batches=1, batch_size=2)
    for backend in ("numpy", "c"):
        m = load(tmp_path / "lm.lbt", backend=backend)
        assert m.log_probs(np.zeros((3, 0), np.int64))[0].shape == (3, 0, 40)
        assert m.log_probs(np.zeros((0, 2), np.int64))[0].shape == (0, 2, 40)


# ------------------------------------------------------------------------------------------ command line

def test_version(capsys):
    from lowbit import __version__

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.strip() == f"lowbit {__version__}"


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_output_files_follow_the_umask(tmp_path, umask):
    from lowbit.fileio import atomic_write

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "f.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(old)
    assert (tmp_path / "f.bin").stat().st_mode & 0o777 == 0o666 & ~umask


def test_stale_temp_files_of_the_target_are_cleaned(tmp_path):
    import time

    from lowbit.fileio import atomic_write

    stale = tmp_path / ".checkpoint.pt.abc123.tmp"
    fresh = tmp_path / ".checkpoint.pt.def456.tmp"   # may belong to a writer still running
    other = tmp_path / ".metrics.json.xyz.tmp"       # another target's
    for p in (stale, fresh, other):
        p.write_bytes(b"partial")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    os.utime(other, (old, old))
    atomic_write(tmp_path / "checkpoint.pt", lambda f: f.write(b"new"))
    assert not stale.exists() and fresh.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([fresh.name, other.name, "checkpoint.pt"])


def test_resume_removes_a_killed_run_s_temp_files(sample_run, tmp_path, monkeypatch):
    import shutil

    _default_data_dir(monkeypatch, tmp_path)
    run = tmp_path / "run"
    shutil.copytree(sample_run, run)
    leftover = run / ".checkpoint.pt.k1ll3d.tmp"
    leftover.write_bytes(b"partial")  # just now: a kill's leftover is garbage once this run owns --out
    assert main(["train", "mnist-mlp", "--epochs", "2", "--out", str(run), "--resume", *TINY]) == 0
    assert not leftover.exists() and not [p for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("rank,printed", [("0", True), ("1", False)])
def test_train_reports_the_result_on_rank_zero_only(monkeypatch, capsys, tmp_path, rank, printed):
    import lowbit.train

    monkeypatch.setattr(lowbit.train, "run", lambda *a, **k: {"test_accuracy": 0.5})
    monkeypatch.setenv("RANK", rank)
    assert main(["train", "mnist-mlp", "--out", str(tmp_path)]) == 0
    assert ("final test accuracy 0.5000" in capsys.readouterr().out) == printed


def test_recipes_show_describes_every_setting(capsys):
    import dataclasses

    from lowbit.train.config import FIELD_DOCS, TrainConfig, get_recipe

    assert set(FIELD_DOCS) == {f.name for f in dataclasses.fields(TrainConfig)}
    assert main(["recipes", "--show", "mnist-mlp"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]  # after the heading
    cfg = get_recipe("mnist-mlp").to_dict()
    for key in set(cfg) - {"model_args"}:
        line = next(l for l in lines if l.split()[0] == key)
        assert FIELD_DOCS[key] in line, line
    assert any(l.split()[0] == "model.hidden" for l in lines)
    import json

    assert main(["recipes", "--show", "mnist-mlp", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == cfg


# ------------------------------------------------------------------------------------------------ summary

def test_summary_counts_macs_per_precision_and_numbers_layers_like_export(capsys):
    from lowbit.errors import CheckpointError
    from lowbit.export.image import export_model
    from lowbit.summary import summarize
    from lowbit.train.checkpoint import model_from_config
    from lowbit.train.config import apply_overrides, get_recipe

    h = 16
    cfg = apply_overrides(get_recipe("mnist-mlp-qnn"), [
        f"model.hidden={h}", "model.weight_quantizer=sawb:bits=2", "model.act_quantizer=pact:bits=2,alpha=3.0"])
    model = model_from_config(cfg.to_dict())
    s = summarize(model, (1, 28, 28))
    t = s["totals"]
    # every weight layer is k-bit x k-bit (2-bit weights; 8-bit pixels, then 2-bit activations)
    assert t["int8_macs"] == t["macs"] == 784 * h + 2 * h * h + h * 10
    assert t["binary_macs"] == t["float_macs"] == t["int8_x_binary_macs"] == 0
    first = next(r for r in s["layers"] if r["type"] == "QuantLinear")
    assert (first["weight_bits"], first["input_bits"], first["int8_macs"]) == (2, 8, 784 * h)
    with pytest.raises(CheckpointError, match=rf"layer {first['layer']} \(QuantLinear\) has 2-bit weights"):
        export_model(model.eval(), (1, 28, 28), 10)
    # the paper MLP: the 8-bit first layer has its own column
    s = summarize(model_from_config(get_recipe("mnist-mlp").to_dict()), (1, 28, 28))
    assert s["totals"]["int8_x_binary_macs"] == 784 * 4096 and s["layers"][0]["int8_x_binary_macs"] == 784 * 4096
    assert main(["summary", "mnist-mlp"]) == 0
    out = capsys.readouterr().out
    header = next(l for l in out.splitlines() if l.startswith("layer"))
    assert "8x1-bit MACs" in header and "k-bit MACs" in header and "float MACs" in header
    row = next(l for l in out.splitlines() if l.startswith(f"{s['layers'][0]['layer']} "))
    assert row.split()[-4:] == ["0", "3.21M", "0", "0"]  # 1x1, 8x1, k-bit, float MAC columns


# ------------------------------------------------------------------------ crafted checkpoints, config ranges

def _crafted(sample_run):
    import copy

    import torch

    good = torch.load(sample_run / "checkpoint.pt", weights_only=True)

    def edit(fn):
        d = copy.deepcopy(good)
        fn(d)
        return d

    nan_state = edit(lambda d: d["model_state"]["3.running_var"].__setitem__(0, float("nan")))
    return good, {
        "format_version string": (edit(lambda d: d.__setitem__("format_version", "1")), "format_version is '1'"),
        "no config": (edit(lambda d: d.pop("config")), "missing 'config'"),
        "config a list": (edit(lambda d: d.__setitem__("config", [1, 2])), "'config' is a list"),
        "model_args a string": (edit(lambda d: d["config"].__setitem__("model_args", "x")), "model_args"),
        "model_state a list": (edit(lambda d: d.__setitem__("model_state", [1])), "'model_state' is a list"),
        "state entry not a tensor": (edit(lambda d: d["model_state"].__setitem__("2.weight", 3)), "2.weight"),
        "negative epoch": (edit(lambda d: d.__setitem__("epoch", -1)), "'epoch' is -1"),
        "history a dict": (edit(lambda d: d.__setitem__("history", {})), "'history' is a dict"),
        "huge hidden": (edit(lambda d: d["config"]["model_args"].__setitem__("hidden", 10 ** 6)), "different model"),
        "unknown model arg": (edit(lambda d: d["config"]["model_args"].__setitem__("bogus", 1)), "bogus"),
        "nan batch-norm statistic": (nan_state, "3.running_var holds non-finite"),
    }


def test_crafted_checkpoints_give_named_errors_not_tracebacks(sample_run, tmp_path, capsys):
    import torch

    _, cases = _crafted(sample_run)
    for name, (data, message) in cases.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        torch.save(data, path)
        commands = [["export", str(path), "-o", str(tmp_path / "m.lbt")]]
        if name != "nan batch-norm statistic":  # summary and eval may look at a diverged model
            commands += [["summary", str(path)], ["eval", str(path)]]
        for cmd in commands:
            capsys.readouterr()
            assert main(cmd) == 2, (name, cmd)
            err = capsys.readouterr().err
            assert message in err and err.count("\n") == 1 and "upgrade" not in err, (name, cmd, err)
        assert not (tmp_path / "m.lbt").exists()


def test_resume_refuses_damaged_run_state(sample_run, tmp_path, monkeypatch, capsys):
    import shutil

    import torch

    _default_data_dir(monkeypatch, tmp_path)
    good, _ = _crafted(sample_run)
    for key, value, message in (("epoch", -3, "'epoch' is -3"), ("optimizer_state", None, "optimizer_state"),
                                ("rng_state", "x", "rng_state"), ("optimizer_state", {"state": 1}, "optimizer")):
        run = tmp_path / f"run_{key}_{value}"
        shutil.copytree(sample_run, run)
        d = dict(good)
        d[key] = value
        torch.save(d, run / "checkpoint.pt")
        capsys.readouterr()
        assert main(["train", "mnist-mlp", "--epochs", "2", "--out", str(run), "--resume", *TINY]) == 2, key
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, err


@pytest.mark.parametrize("setting,message", [
    ("model.dropout_in=2.0", "dropout probability"), ("model.dropout_hidden=-0.1", "dropout probability"),
    ("model.hidden=99999999999", "outside the sizes"), ("model.hidden=1000000", "GiB"),
    ("lr_start=inf", "finite"), ("lr_end=nan", "finite"), ("pact_l2=inf", "pact_l2"),
])
def test_out_of_range_settings_are_refused(setting, message, tmp_path, capsys):
    rc = main(["train", "mnist-mlp", "--set", setting, "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_eval_batch_size_zero_is_refused(sample_run, capsys):
    assert main(["eval", str(sample_run / "checkpoint.pt"), "--batch-size", "0"]) == 2
    assert "--batch-size must be >= 1" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------- curves

def test_history_records_smoothed_per_step_curves(sample_run):
    import json

    history = json.loads((sample_run / "metrics.json").read_text())["epochs"]
    steps = history[0]["steps"]
    # 300 images in batches of 100: 3 steps, each sampled; fractional epochs up to exactly 1
    assert [s[0] for s in steps] == pytest.approx([1 / 3, 2 / 3, 1.0], abs=1e-5)
    # bias-corrected EMA: the first point is the first batch's loss itself; all are finite, accuracy in [0, 1]
    assert all(np.isfinite(s[1]) and 0.0 <= s[2] <= 1.0 for s in steps)


def test_curve_smoothing_by_hand():
    from lowbit.train.plotting import StepCurve

    c = StepCurve(epoch=2, steps_per_epoch=4, points=2, decay=0.5)
    for loss, acc in ((4.0, 0.0), (2.0, 1.0), (1.0, 1.0), (1.0, 0.5)):
        c.update(loss, acc)
    # every 2 steps; EMA with decay 0.5, bias-corrected: after 2 steps (0.5*4*0.5 + 0.5*2) / 0.75
    assert c.samples[0] == pytest.approx([2.5, (0.25 * 4 + 0.5 * 2) / 0.75, 0.5 / 0.75])
    assert c.samples[1][0] == 3.0 and len(c.samples) == 2


def test_one_epoch_curve_is_a_line_on_integer_epochs_with_the_data_source(sample_run, tmp_path, monkeypatch):
    import json

    import matplotlib.pyplot as plt

    from lowbit.train import plotting

    figs = []
    real = plotting.curves_figure
    monkeypatch.setattr(plotting, "curves_figure", lambda *a, **k: figs.append(real(*a, **k)) or figs[-1])
    monkeypatch.setattr(plt, "close", lambda fig=None: None)
    _default_data_dir(monkeypatch, tmp_path)
    out = tmp_path / "run"
    assert main(["train", "mnist-mlp", "--epochs", "1", "--out", str(out), *TINY]) == 0
    assert (out / "curves.png").stat().st_size > 1000
    fig = figs[-1]
    ax_loss, ax_acc = fig.axes[:2]
    assert "embedded sample" in fig._suptitle.get_text() and "mnist-mlp" in fig._suptitle.get_text()
    steps = json.loads((out / "metrics.json").read_text())["epochs"][0]["steps"]
    train_line = ax_loss.lines[0]
    assert list(train_line.get_xdata()) == [s[0] for s in steps] and len(steps) == 3
    ticks = [t for t in ax_loss.get_xticks() if ax_loss.get_xlim()[0] <= t <= ax_loss.get_xlim()[1]]
    assert ticks and all(float(t).is_integer() for t in ticks) and ax_loss.get_xlim() == (0.0, 1.0)
    assert any("test" in l.get_label() for l in ax_acc.lines)
    for f in figs:
        plt.close(f)


def test_language_model_curves_use_the_reported_unit():
    from lowbit.train.plotting import curves_figure
    import matplotlib.pyplot as plt

    history = [{"epoch": 1, "train_loss": 1.0, "train_bpc": 1.0 / np.log(2), "test_bpc": 2.0, "train_accuracy": 0.5,
                "test_accuracy": 0.4, "steps": [[0.5, np.log(2) * 3, 0.3], [1.0, np.log(2) * 2, 0.5]]}]
    fig = curves_figure(history, "lm", ("train_accuracy", "test_accuracy"), ("train_bpc", "test_bpc"),
                        "bits per character", lambda loss: loss / np.log(2))
    ax = fig.axes[0]
    assert ax.get_ylabel() == "bits per character"
    np.testing.assert_allclose(ax.lines[0].get_ydata(), [3.0, 2.0])     # per-step nats shown as bits
    assert [l.get_ydata()[0] for l in ax.lines[1:]] == [2.0]             # test point in bits per character
    plt.close(fig)


def test_kernels_take_misaligned_packed_operands_and_refuse_aliased_out():
    from lowbit import kernels
    from lowbit.errors import ShapeError

    rng = np.random.default_rng(0)
    a = rng.choice([-1, 1], (8, 200)).astype(np.int8)
    b = rng.choice([-1, 1], (5, 200)).astype(np.int8)
    pa, pb = kernels.pack_signs(a), kernels.pack_signs(b)
    buf = np.zeros(pa.nbytes + 8, np.uint8)
    misaligned = buf[4:4 + pa.nbytes].view(np.uint64).reshape(pa.shape)  # 4 bytes off an 8-byte boundary
    misaligned[...] = pa
    assert not misaligned.flags.aligned
    np.testing.assert_array_equal(kernels.binary_matmul_packed(misaligned, pb, 200), a.astype(np.int32) @ b.T)
    x = rng.integers(0, 4, (6, 16)).astype(np.int32)
    with pytest.raises(ShapeError, match="overlaps input operand 1"):
        kernels.quant_matmul(x, x[:4], "u2", "u2", out=x[:, :4])
    acc = np.zeros((8, 5), np.int32)
    with pytest.raises(ShapeError, match="overlaps"):
        kernels.binary_matmul_packed(pa, pb, 200, out=pa.view(np.int32).reshape(-1)[:40].reshape(8, 5))
    assert kernels.binary_matmul_packed(pa, pb, 200, out=acc) is acc
