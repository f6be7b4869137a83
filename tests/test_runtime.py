"""The deployment runtime: export, torch-free inference equal to PyTorch, CLI eval/export/summary, bad files."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from lowbit.cli import main
import lowbit
import lowbit.quant
from lowbit.errors import CheckpointError, InputError, ShapeError
from lowbit.nn.layers import QuantAct, QuantConv2d
from lowbit.runtime import load, load_model_file, save_model_file
from lowbit.bench import randomize_bn
from lowbit.export.image import export_model, thresholds


def _randomize_bn(model, seed=0):
    """lowbit.bench's random BN statistics, plus one channel whose output is the constant sign(beta)."""
    randomize_bn(model, seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            m.weight.data[0] = 0.0


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """A small MLP and a small ConvNet trained briefly on real MNIST, exported to .lbt files."""
    root = tmp_path_factory.mktemp("runtime")
    runs = {
        "mlp": ["mnist-mlp", "--set", "model.hidden=256", "--set", "model.depth=2"],
        "cnn": ["mnist-cnn", "--set", "model.channels=16,M,32,32,M", "--set", "model.fc=64"],
    }
    out = {}
    for name, args in runs.items():
        d = root / name
        assert main(["train", *args, "--epochs", "1", "--data-dir", str(shared_data), "--out", str(d),
                     "--set", "train_subset=4000", "--no-progress"]) == 0
        assert main(["export", str(d / "checkpoint.pt"), "-o", str(d / "model.lbt")]) == 0
        out[name] = d
    return out


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_runtime_equals_pytorch_on_all_10000_test_images(trained, name, shared_data):
    import lowbit
    from lowbit.data import load_dataset

    test = load_dataset("mnist", "test", data_dir=shared_data)
    model = lowbit.load_checkpoint(trained[name] / "checkpoint.pt")
    with torch.no_grad():
        ref = model(torch.from_numpy(test.images).float()).numpy()
    out = load(trained[name] / "model.lbt").predict(test.images)
    assert out.dtype == np.float32 and out.shape == (10000, 10)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)  # float rounding in the last layer only
    assert np.array_equal(out.argmax(1), ref.argmax(1))


def test_eval_cli_runtime_and_pytorch_give_identical_predictions(trained, shared_data, tmp_path, capsys):
    d = trained["cnn"]
    assert main(["eval", str(d / "model.lbt"), "--data-dir", str(shared_data),
                 "--save-predictions", str(tmp_path / "rt.npy")]) == 0
    assert main(["eval", str(d / "checkpoint.pt"), "--data-dir", str(shared_data),
                 "--save-predictions", str(tmp_path / "pt.npy")]) == 0
    out = capsys.readouterr().out
    assert "lowbit runtime: mnist test accuracy" in out and "PyTorch: mnist test accuracy" in out
    rt, pt = np.load(tmp_path / "rt.npy"), np.load(tmp_path / "pt.npy")
    assert rt.shape == (10000,) and np.array_equal(rt, pt)
    acc = json.loads((d / "metrics.json").read_text())["test_accuracy"]
    from lowbit.data import load_dataset
    assert (rt == load_dataset("mnist", "test", data_dir=shared_data).labels).mean() == pytest.approx(acc)


def test_runtime_does_not_import_torch(trained, tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from lowbit.runtime import load\n"
        f"net = load({str(trained['cnn'] / 'model.lbt')!r})\n"
        "print(net.predict(np.zeros((2, 1, 28, 28), np.uint8)).shape)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "(2, 10)" in proc.stdout


@pytest.mark.parametrize("kernel,stride,padding,cin", [
    (1, 1, 0, 5), (3, 1, 1, 64), (3, 2, 1, 70), (5, 1, 2, 3), (3, 1, 0, 130), (2, 2, 0, 64),
])
def test_binary_conv_layer_matches_torch_conv2d(kernel, stride, padding, cin):
    torch.manual_seed(kernel * 100 + cin)
    block = nn.Sequential(
        QuantConv2d(cin, 24, kernel, stride=stride, padding=padding, bias=False, pad_value=1.0),
        nn.BatchNorm2d(24), QuantAct())
    _randomize_bn(block, seed=cin)
    block.eval()
    meta, arrays = export_model(block, (cin, 11, 9), 10, binary_input=True, output="bits")
    x = torch.where(torch.randn(3, cin, 11, 9) >= 0, 1.0, -1.0)
    net = _roundtrip(meta, arrays)
    with torch.no_grad():
        ref = block(x).numpy()
        # independent reference: the integer accumulator from torch's conv on +-1 tensors padded with +1
        acc = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (padding,) * 4, value=1.0),
                                         torch.where(block[0].weight >= 0, 1.0, -1.0), stride=stride)
    assert np.array_equal(net.predict(x.numpy()), ref)
    # the accumulators are integers and the layer output is exactly sign(BN(acc))
    assert torch.equal(acc, acc.round())
    with torch.no_grad():
        assert np.array_equal(np.where(block[1](acc).numpy() >= 0, 1, -1), ref)


def test_maxpool_and_flatten_into_dense_match_torch():
    from lowbit.models import convnet
    torch.manual_seed(3)
    model = convnet(in_shape=(3, 12, 12), channels=[70, "M", 20, "M"], fc=[33])
    _randomize_bn(model, seed=5)
    model.eval()
    meta, arrays = export_model(model, (3, 12, 12), 10)
    x = torch.randint(0, 256, (7, 3, 12, 12)).float()
    with torch.no_grad():
        ref = model(x).numpy()
    out = _roundtrip(meta, arrays).predict(x.numpy().astype(np.uint8))
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def test_thresholds_by_hand():
    # c = +2, d = -3: sign(2 * a - 3) = +1 iff a >= 1.5 -> a >= 2
    # c = -1, d = 4.5: sign(-a + 4.5) = +1 iff a <= 4.5 -> a <= 4 (flipped)
    # c = 0, d = -1: always -1; scale 2/255 and offset -10 for a first layer: 2 * (2a/255 - 10) - 3 >= 0
    t, flip = thresholds(np.array([2.0, -1.0, 0.0, 2.0]), np.array([-3.0, 4.5, -1.0, -3.0]),
                         1.0, np.array([0.0, 0.0, 0.0, 0.0]))
    assert t[:2].tolist() == [2, 4] and flip.tolist() == [False, True, False, False]
    assert t[2] == np.iinfo(np.int32).max  # "a >= +inf": never +1
    t, flip = thresholds(np.array([2.0]), np.array([-3.0]), 2.0 / 255.0, np.array([-10.0]))
    # 2a/255 - 10 >= 1.5  <=>  a >= 11.5 * 127.5 = 1466.25 -> 1467
    assert t.tolist() == [1467]


def test_tiny_bn_scale_saturates_instead_of_wrapping():
    """gamma = +-1e-22 puts the real-valued threshold far outside int64: the channel is a constant (+1 where
    the BN output's sign is that of beta), exactly as PyTorch computes it; no channel may invert."""
    from lowbit.models import mlp

    torch.manual_seed(0)
    model = mlp(in_shape=(1, 8, 8), hidden=64, depth=2, num_classes=10)
    _randomize_bn(model, seed=1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d) and m.num_features == 64:
            m.weight.data[1::2] = 1e-22
            m.weight.data[2::2] = -1e-22
    model.eval()
    t, flip = thresholds(np.array([1e-22, -1e-22, 1e-22, -1e-22]), np.array([0.5, 0.5, -0.5, -0.5]),
                         1.0, np.zeros(4))
    i32 = np.iinfo(np.int32)
    # sign(c a + d): +1 always when d > 0 (ge at -inf / le at +inf), never when d < 0
    assert t.tolist() == [i32.min, i32.max, i32.max, i32.min] and flip.tolist() == [False, True, False, True]
    meta, arrays = export_model(model, (1, 8, 8), 10)
    x = torch.randint(0, 256, (200, 1, 8, 8)).float()
    with torch.no_grad():
        ref = model(x).numpy()
    out = _roundtrip(meta, arrays).predict(x.numpy().astype(np.uint8))
    assert (out.argmax(1) == ref.argmax(1)).all()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4)


def _roundtrip(meta, arrays):
    import tempfile
    from pathlib import Path

    d = tempfile.mkdtemp()
    save_model_file(Path(d) / "m.lbt", "binary_sequential", meta, arrays)
    return load(Path(d) / "m.lbt")


def test_export_refuses_what_the_runtime_cannot_run_exactly(tmp_path):
    zero_pad = nn.Sequential(QuantConv2d(4, 4, 3, padding=1, bias=False, pad_value=0.0), nn.BatchNorm2d(4), QuantAct())
    with pytest.raises(CheckpointError, match="pads with 0.0"):
        export_model(zero_pad, (4, 5, 5), 10, binary_input=True, output="bits")
    from lowbit.models import mlp
    float_weights = mlp(hidden=8, depth=1, weight_quantizer="identity")
    with pytest.raises(CheckpointError, match="32-bit weights"):
        export_model(float_weights, (1, 28, 28), 10)
    float_acts = mlp(hidden=8, depth=1, act_quantizer="identity")
    with pytest.raises(CheckpointError, match="32-bit"):
        export_model(float_acts, (1, 28, 28), 10)


def test_bad_model_files(trained, tmp_path, monkeypatch):
    good = (trained["mlp"] / "model.lbt").read_bytes()
    import lowbit.runtime.modelfile as modelfile

    parts = load_model_file(trained["mlp"] / "model.lbt")
    monkeypatch.setattr(modelfile, "FORMAT_VERSION", 99)  # what a future lowbit would write
    save_model_file(tmp_path / "future.lbt", *parts)
    monkeypatch.undo()
    cases = {
        "truncated": (good[: len(good) - 100], "truncated"),
        "foreign": (b"PK\x03\x04 a zip file" + good[20:], "not a lowbit model file"),
        "corrupt": (good[:-10] + bytes(b ^ 0xFF for b in good[-10:]), "checksum"),
        "newer": ((tmp_path / "future.lbt").read_bytes(), "version 99.*upgrade lowbit"),
    }
    for name, (blob, message) in cases.items():
        p = tmp_path / f"{name}.lbt"
        p.write_bytes(blob)
        with pytest.raises(CheckpointError, match=message):
            load(p)
    with pytest.raises(CheckpointError, match="does not exist"):
        load(tmp_path / "nothing.lbt")


def test_bad_runtime_input(trained):
    net = load(trained["cnn"] / "model.lbt")
    with pytest.raises(ShapeError, match=r"shape \(N, 1, 28, 28\)"):
        net.predict(np.zeros((2, 3, 28, 28), np.uint8))
    with pytest.raises(InputError, match="8-bit"):
        net.predict(np.full((1, 1, 28, 28), 0.5))
    with pytest.raises(InputError, match="8-bit"):
        net.predict(np.full((1, 1, 28, 28), 300))
    assert net.predict(np.zeros((1, 784), np.int64)).shape == (1, 10)  # flat integer pixels are fine


def test_export_cli_reports_size_and_eval_rejects_missing(trained, capsys, tmp_path):
    assert main(["export", str(trained["mlp"] / "checkpoint.pt"), "-o", str(tmp_path / "x.lbt")]) == 0
    assert "smaller than the fp32 state_dict" in capsys.readouterr().out
    kind, meta, arrays = load_model_file(tmp_path / "x.lbt")
    assert kind == "graph" and meta["recipe"] == "mnist-mlp"
    assert all(a.dtype != np.float64 for a in arrays.values())
    assert main(["eval", str(tmp_path / "missing.lbt")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_summary_of_the_paper_mlp_by_hand(capsys):
    from lowbit.summary import summarize_target
    s = summarize_target("mnist-mlp")
    t = s["totals"]
    macs = 784 * 4096 + 2 * 4096 * 4096 + 4096 * 10
    assert t["macs"] == macs
    assert t["binary_macs"] == 2 * 4096 * 4096 + 4096 * 10
    assert t["binary_mac_fraction"] == pytest.approx((2 * 4096 * 4096 + 40960) / macs)
    first = s["layers"][0]
    assert (first["weight_bits"], first["input_bits"], first["mac_kind"]) == (1, 8, "int8_x_binary_mac")
    weights = 784 * 4096 + 2 * 4096 * 4096 + 4096 * 10
    bn = 2 * (3 * 4096 + 10)
    assert t["params"] == weights + bn
    assert t["memory_bytes"] == weights / 8 + bn * 4
    assert t["compression"] == pytest.approx((weights + bn) * 4 / (weights / 8 + bn * 4))
    assert main(["summary", "mnist-mlp"]) == 0
    out = capsys.readouterr().out
    assert "binary 91.3%" in out and "Horowitz" in out and "smaller" in out


def test_shift_bn_convnet_deploys_with_identical_predictions(shared_data, tmp_path):
    """Shift-based BN in eval mode is an affine map with power-of-two factors: it folds into the same integer
    thresholds. A shift-BN MNIST ConvNet trained one (short) epoch on real data gives the runtime the same
    class as PyTorch on all 10,000 test images."""
    from lowbit.data import load_dataset
    from lowbit.nn.norm import ShiftBatchNorm2d

    d = tmp_path / "sbn"
    assert main(["train", "mnist-cnn-qnn", "--epochs", "1", "--data-dir", str(shared_data), "--out", str(d),
                 "--set", "train_subset=3000", "--set", "model.channels=16,M,32,M", "--set", "model.fc=64",
                 "--set", "model.norm=shift_bn", "--set", "bn_recalibrate=2000", "--no-progress"]) == 0
    assert main(["export", str(d / "checkpoint.pt"), "-o", str(d / "model.lbt")]) == 0
    model = lowbit.load_checkpoint(d / "checkpoint.pt")
    assert any(isinstance(m, ShiftBatchNorm2d) for m in model.modules())
    test = load_dataset("mnist", "test", data_dir=shared_data)
    with torch.no_grad():
        ref = torch.cat([model(torch.from_numpy(test.images[i:i + 2000]).float()).argmax(1)
                         for i in range(0, 10000, 2000)]).numpy()
    ours = load(d / "model.lbt").classify(test.images)
    assert (ours == ref).all() and (ref == test.labels).mean() > 0.6  # a trained network (chance: 0.1)


def test_export_refuses_a_quantized_pixel_input():
    """A first layer on 8-bit pixels whose input quantizer is not the identity would run on other values in
    the runtime (it multiplies the pixels themselves): refused, naming the layer and the quantizer."""
    from lowbit.models import mlp

    m = mlp(in_shape=(1, 4, 4), hidden=8, depth=1).eval()
    first = m[1]
    first.input_quantizer = lowbit.quant.get_quantizer("linear:bits=4,mode=unsigned")
    with pytest.raises(CheckpointError, match="takes 8-bit pixels through a 4-bit input quantizer"):
        export_model(m, (1, 4, 4), 10)
