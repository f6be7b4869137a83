"""ImageNet folder loader, crops, the AlexNet and ResNet-18 PACT/SAWB models, and the streaming training task
on a tiny JPEG folder written here (one process and torchrun with 2 processes)."""

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import lowbit
from conftest import subprocess_env
from lowbit.cli import main as cli_main
from lowbit.errors import ConfigError, DataError
from lowbit.data.imagenet import (
    ImageFolder, eval_transform, find_imagenet_root, random_resized_crop_box, train_transform,
)
from lowbit.models.imagenet import Normalize, alexnet_qnn, resnet18_pact_sawb
from lowbit.train.tasks.imagenet import epoch_indices
from lowbit.nn.layers import QuantConv2d
from lowbit.quant.pact_sawb import PACT, SAWB

TINY_ALEXNET = ["--set", "model.widths=4,4,4,4,4", "--set", "model.fc=8,8", "--set", "model.num_classes=2"]
TINY_RESNET = ["--set", "model.widths=4,4,8,8", "--set", "model.blocks=1,1,1,1", "--set", "model.num_classes=2",
               "--set", "train_subset=4", "--set", "test_subset=2"]


def _write_folder(root: Path, per_class_train=4, per_class_val=2):
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (30, 50), (64, 64), (25, 33)]
    for split, count in (("train", per_class_train), ("val", per_class_val)):
        for c, cls in enumerate(["n01", "n02"]):
            d = root / split / cls
            d.mkdir(parents=True)
            for i in range(count):
                w, h = sizes[i % len(sizes)]
                arr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                arr[..., c] = 255 if split == "train" else 200  # a class-dependent colour channel
                Image.fromarray(arr).save(d / f"img{i}.JPEG", quality=90)
    return root


@pytest.fixture()
def folder(tmp_path):
    return _write_folder(tmp_path / "imagenet")


def test_folder_scan_and_items(folder):
    ds = ImageFolder(folder / "train", train=True)
    assert ds.classes == ["n01", "n02"] and len(ds) == 8
    assert [label for _, label in ds.samples] == [0] * 4 + [1] * 4
    x, y = ds[5]
    assert x.dtype == torch.uint8 and x.shape == (3, 224, 224) and y == 1
    ds.set_seed(3)
    assert torch.equal(ds[5][0], ds[5][0])  # augmentation is a function of (seed, index)
    ds.set_seed(4)
    val = ImageFolder(folder / "val", train=False, classes=ds.classes)
    assert len(val) == 4 and val[0][0].shape == (3, 224, 224)
    assert find_imagenet_root(folder.parent) == folder and find_imagenet_root(folder) == folder


def test_folder_errors(tmp_path, folder):
    with pytest.raises(DataError, match="ImageNet not found"):
        find_imagenet_root(tmp_path / "nothing")
    (folder / "val" / "n99").mkdir()
    with pytest.raises(DataError, match="n99"):
        ImageFolder(folder / "val", train=False, classes=["n01", "n02"])
    bad = folder / "train" / "n01" / "broken.JPEG"
    bad.write_bytes(b"not a jpeg")
    ds = ImageFolder(folder / "train", train=True)
    i = [p for p, _ in ds.samples].index(str(bad))
    with pytest.raises(DataError, match="broken.JPEG"):
        ds[i]


def test_crops():
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        left, top, w, h = random_resized_crop_box(500, 375, g)
        assert 0 <= left and 0 <= top and left + w <= 500 and top + h <= 375
        assert 0.08 * 500 * 375 * 0.9 <= w * h <= 500 * 375
        assert 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1
    # evaluation: shorter side -> 256, center 224 x 224. A 512 x 256 image is not resized: the crop is
    # columns 144..367, rows 16..239 of the original.
    arr = np.zeros((256, 512, 3), np.uint8)
    arr[:, :, 0] = np.arange(512)[None, :] % 256
    arr[:, :, 1] = np.arange(256)[:, None]
    out = np.asarray(eval_transform(Image.fromarray(arr)))
    assert out.shape == (224, 224, 3)
    assert np.array_equal(out, arr[16:240, 144:368])
    img = Image.fromarray(np.zeros((100, 80, 3), np.uint8))
    assert train_transform(img, torch.Generator().manual_seed(1)).size == (224, 224)
    assert eval_transform(img).size == (224, 224)


def test_epoch_indices_equal_shares():
    shares = [epoch_indices(7, 0, 0, r, 2) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == 4
    assert set(shares[0] + shares[1]) == set(range(7))
    assert epoch_indices(7, 0, 0, 0, 1) != epoch_indices(7, 0, 1, 0, 1)


def test_normalize():
    mean = torch.tensor([0.485, 0.456, 0.406]) * 255
    x = mean.view(1, 3, 1, 1).expand(1, 3, 2, 2)
    assert torch.allclose(Normalize()(x), torch.zeros(1, 3, 2, 2), atol=1e-6)
    assert torch.allclose(Normalize()(torch.full((1, 3, 1, 1), 255.0)).flatten(),
                          (1 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225]), atol=1e-5)


def test_models_structure():
    a = alexnet_qnn(num_classes=3, widths=[4, 4, 4, 4, 4], fc=[8, 8])
    out = a(torch.rand(2, 3, 224, 224) * 255)
    assert out.shape == (2, 3)
    convs = [m for m in a.modules() if isinstance(m, QuantConv2d)]
    assert len(convs) == 5 and convs[0].kernel_size == (11, 11) and convs[0].stride == (4, 4)
    assert all(c.weight_bits == 1 for c in convs)
    acts = [m for m in a.modules() if type(m).__name__ == "QuantAct"]
    assert len(acts) == 7 and all(m.bits == 2 for m in acts)
    r = resnet18_pact_sawb(num_classes=3, widths=[4, 4, 8, 8])
    out = r(torch.rand(2, 3, 64, 64) * 255)
    assert out.shape == (2, 3)
    qconvs = [m for m in r.modules() if isinstance(m, QuantConv2d)]
    assert len(qconvs) == 16 and all(isinstance(c.weight_quantizer, SAWB) and c.weight_bits == 2 for c in qconvs)
    pacts = [m for m in r.modules() if isinstance(m, PACT)]
    assert len(pacts) == 17 and len({id(p.alpha) for p in pacts}) == 17  # one alpha per activation
    # full-precision first layer, last layer and shortcuts
    assert type(r.stem[0]) is torch.nn.Conv2d and type(r.fc) is torch.nn.Linear
    assert sum(type(m) is torch.nn.Conv2d for m in r.modules()) == 1 + 3
    with pytest.raises(ConfigError, match="widths"):
        alexnet_qnn(widths=[4, 4])


def _cli(args):
    return cli_main(["train", *args, "--no-progress"])


def test_train_and_evaluate_one_step_each(folder, tmp_path):
    out = tmp_path / "alex"
    rc = _cli(["imagenet-alexnet", "--data-dir", str(folder.parent), "--out", str(out), "--epochs", "1",
               "--set", "batch_size=8", "--set", "eval_batch_size=4", "--set", "data_workers=0", *TINY_ALEXNET])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    rec = m["epochs"][0]
    assert m["world_size"] == 1 and len(m["epochs"]) == 1
    assert 0.0 <= rec["test_accuracy"] <= rec["test_top5"] == 1.0  # 2 classes: top-5 is everything
    assert np.isfinite(rec["train_loss"]) and np.isfinite(rec["test_loss"])
    model = lowbit.load_checkpoint(out / "checkpoint.pt")
    assert model(torch.rand(1, 3, 224, 224) * 255).shape == (1, 2)

    out2 = tmp_path / "resnet"
    rc = _cli(["imagenet-resnet18-pact-sawb", "--data-dir", str(folder), "--out", str(out2), "--epochs", "1",
               "--set", "batch_size=4", "--set", "data_workers=1", *TINY_RESNET])
    assert rc == 0
    state = torch.load(out2 / "checkpoint.pt", weights_only=True)
    assert state["optimizer_state"]["state"]  # steps were taken
    alphas = [v.item() for k, v in state["model_state"].items() if k.endswith("alpha")]
    assert len(alphas) == 9 and any(a != 10.0 for a in alphas)  # PACT alphas trained (and L2-penalized)
    # resume continues the same run for a second epoch
    rc = _cli(["imagenet-resnet18-pact-sawb", "--data-dir", str(folder), "--out", str(out2), "--epochs", "2",
               "--set", "batch_size=4", "--set", "data_workers=0", *TINY_RESNET, "--resume"])
    assert rc == 0
    assert len(json.loads((out2 / "metrics.json").read_text())["epochs"]) == 2


def test_wrong_class_count_is_refused(folder, tmp_path, capsys):
    rc = _cli(["imagenet-alexnet", "--data-dir", str(folder), "--out", str(tmp_path / "o"), "--epochs", "1",
               "--set", "model.num_classes=1", "--set", "data_workers=0"])
    assert rc == 2
    assert "2 classes" in capsys.readouterr().err


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes(folder, tmp_path):
    out = tmp_path / "ddp"
    env = subprocess_env(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "lowbit", "train", "imagenet-alexnet", "--data-dir", str(folder),
           "--out", str(out), "--epochs", "1", "--no-progress", "--set", "batch_size=4", "--set", "data_workers=0",
           *TINY_ALEXNET]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    assert m["world_size"] == 2 and len(m["epochs"]) == 1
    assert (out / "checkpoint.pt").exists()
