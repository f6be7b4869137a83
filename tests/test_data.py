"""Tests of lowbit.data: real MNIST from ../shared/data, and CIFAR-10 / SVHN / IDX / downloads on files the
tests write in the official formats. No test touches the network."""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import pickle
import struct
import tarfile
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED_DATA
import lowbit.data as data
from lowbit.data import DATASETS, ImageDataset, load_dataset, resolve_data_dir
from lowbit.data import download as dl
from lowbit.data import idx as idx_mod
from lowbit.data import svhn as svhn_mod
from lowbit.data.idx import write_idx
from lowbit.errors import ConfigError, DataError

from datapaths import SHARED_DATA as SHARED, WHERE  # noqa: E402
MNIST_DIR = SHARED / "mnist"
needs_mnist = pytest.mark.skipif(
    not all((MNIST_DIR / f).is_file() for f in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                                                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")),
    reason=f"real MNIST not available under {WHERE}")

TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ----------------------------------------------------------------------------------------------- helpers

def _rng(seed=0):
    return np.random.default_rng(seed)


def _write_mnist_like(directory: Path, split: str, n: int, seed: int = 0, gz: bool = True, dotted: bool = False):
    """Synthetic IDX pair in the official layout; returns (images (N,28,28), labels (N,))."""
    rng = _rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    stem_i, stem_l = idx_mod.STEMS[split]
    if dotted:
        stem_i, stem_l = stem_i.replace("-idx", ".idx"), stem_l.replace("-idx", ".idx")
    ext = ".gz" if gz else ""
    directory.mkdir(parents=True, exist_ok=True)
    write_idx(directory / (stem_i + ext), images)
    write_idx(directory / (stem_l + ext), labels)
    return images, labels


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """(N,3,32,32) -> (N,3072) the way the CIFAR-10 docs define a row: 1024 red, 1024 green, 1024 blue,
    each plane row-major."""
    rows = np.empty((images.shape[0], 3072), dtype=np.uint8)
    for i in range(images.shape[0]):
        rows[i] = np.concatenate([images[i, 0].ravel(), images[i, 1].ravel(), images[i, 2].ravel()])
    return rows


def _write_cifar(batch_dir: Path, n: int = 4, seed: int = 0):
    """The six batches + batches.meta as Python 3 pickles (protocol 2, bytes keys); returns
    {file: (images (N,3,32,32), labels)}."""
    rng = _rng(seed)
    batch_dir.mkdir(parents=True, exist_ok=True)
    out = {}
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=n)]
        d = {b"batch_label": f"batch {f}".encode(), b"labels": labels, b"data": _cifar_rows(images),
             b"filenames": [f"img{i}.png".encode() for i in range(n)]}
        with open(batch_dir / f, "wb") as fh:
            pickle.dump(d, fh, protocol=2)
        out[f] = (images, np.array(labels))
    meta = {b"label_names": [x.encode() for x in "airplane automobile bird cat deer dog frog horse ship truck".split()],
            b"num_cases_per_batch": n, b"num_vis": 3072}
    with open(batch_dir / "batches.meta", "wb") as fh:
        pickle.dump(meta, fh, protocol=2)
    return out


def _py2_batch_pickle(rows: np.ndarray, labels) -> bytes:
    """A batch pickled the way the official files are (Python 2 cPickle, protocol 2): str keys, numpy
    array via numpy.core.multiarray._reconstruct, the array bytes as a Python 2 str (BINSTRING)."""
    def sstr(s: bytes) -> bytes:
        return b"U" + bytes([len(s)]) + s

    def bint(v: int) -> bytes:
        return b"J" + struct.pack("<i", v)

    dtype = (b"cnumpy\ndtype\n" + sstr(b"u1") + b"K\x00K\x01\x87R"
             + b"(K\x03" + sstr(b"|") + b"NNN" + bint(-1) + bint(-1) + b"K\x00tb")
    raw = rows.tobytes()
    array = (b"cnumpy.core.multiarray\n_reconstruct\n" + b"cnumpy\nndarray\n" + b"K\x00\x85" + sstr(b"b")
             + b"\x87R" + b"(K\x01" + bint(rows.shape[0]) + bint(rows.shape[1]) + b"\x86" + dtype
             + b"\x89" + b"T" + struct.pack("<I", len(raw)) + raw + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return (b"\x80\x02}(" + sstr(b"batch_label") + sstr(b"training batch 1 of 5")
            + sstr(b"data") + array + sstr(b"labels") + label_list + b"u.")


def _write_svhn(directory: Path, split: str, n: int = 5, seed: int = 0, X=None, y=None):
    import scipy.io
    rng = _rng(seed)
    if X is None:
        X = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
    if y is None:
        y = rng.integers(1, 11, size=(n, 1)).astype(np.uint8)
        y[0, 0] = 10  # digit 0
        y[1, 0] = 3
    directory.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(directory / svhn_mod.SPLIT_FILES[split], {"X": X, "y": y})
    return X, y


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _files_in(d: Path):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


# -------------------------------------------------------------------------------------------- resolve dir

def test_resolve_data_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWBIT_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("LOWBIT_DATA")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_data_dir() == tmp_path / "home" / ".cache" / "lowbit" / "data"


def test_unknown_name_or_split():
    assert DATASETS == ("mnist", "fashion-mnist", "cifar10", "svhn")
    with pytest.raises(ConfigError, match="imagenet"):
        load_dataset("imagenet", "train")
    with pytest.raises(ConfigError, match="valid"):
        load_dataset("mnist", "valid")


# ------------------------------------------------------------------------------------------- real MNIST

@pytest.fixture(scope="module")
def real_mnist():
    return {s: load_dataset("mnist", s, data_dir=SHARED, download=False) for s in ("train", "test")}


@needs_mnist
def test_real_mnist(real_mnist):
    for split, n, counts in (("train", 60000, TRAIN_COUNTS), ("test", 10000, TEST_COUNTS)):
        ds = real_mnist[split]
        assert isinstance(ds, ImageDataset)
        assert (ds.name, ds.split, ds.num_classes, ds.is_sample) == ("mnist", split, 10, False)
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == np.uint8
        assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
        assert np.bincount(ds.labels, minlength=10).tolist() == counts
        assert str(MNIST_DIR) in ds.source and len(ds) == n
        assert 0 < ds.images.mean() < 255


@needs_mnist
def test_real_mnist_via_env_and_root_layout(real_mnist, monkeypatch, tmp_path):
    # LOWBIT_DATA pointing at the folder that holds the IDX files directly (no mnist/ subfolder),
    # uncompressed there: the same images come out.
    raw = gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(gzip.decompress((MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    monkeypatch.setenv("LOWBIT_DATA", str(tmp_path))
    ds = load_dataset("mnist", "test", download=False)
    assert np.array_equal(ds.images, real_mnist["test"].images)
    assert np.array_equal(ds.labels, real_mnist["test"].labels)


# -------------------------------------------------------------------------------------- IDX format/layouts

@pytest.mark.parametrize("gz,dotted,sub", [(True, False, "mnist"), (False, False, "mnist"), (False, True, ""),
                                           (True, True, "")])
def test_idx_gz_and_plain_and_dotted(tmp_path, gz, dotted, sub):
    images, labels = _write_mnist_like(tmp_path / sub if sub else tmp_path, "train", 7, gz=gz, dotted=dotted)
    ds = load_dataset("mnist", "train", data_dir=tmp_path, download=False)
    assert ds.images.shape == (7, 1, 28, 28) and ds.images.dtype == np.uint8
    assert np.array_equal(ds.images[:, 0], images)
    assert np.array_equal(ds.labels, labels.astype(np.int64)) and ds.labels.dtype == np.int64


def test_fashion_mnist_layout(tmp_path):
    images, labels = _write_mnist_like(tmp_path / "fashion-mnist", "test", 5, seed=3)
    _write_mnist_like(tmp_path / "mnist", "test", 5, seed=4)  # must not be picked up for fashion
    ds = load_dataset("fashion-mnist", "test", data_dir=tmp_path, download=False)
    assert ds.name == "fashion-mnist" and np.array_equal(ds.images[:, 0], images)
    assert np.array_equal(ds.labels, labels)


def _idx_bytes(magic, dims, payload: bytes) -> bytes:
    return struct.pack(">I" + "I" * len(dims), magic, *dims) + payload


# a corruption of a good IDX image file -> what the error must say
_IDX_CORRUPTIONS = {
    "truncated": (lambda good: good[:-5], "truncated"),
    "trailing": (lambda good: good + b"\0\0", "trailing"),
    "magic": (lambda good: struct.pack(">I", 0x0801) + good[4:], "magic"),
    "size": (lambda good: _idx_bytes(0x0803, (3, 27, 28), bytes(3 * 27 * 28)), "28x28"),
    "short_header": (lambda good: good[:10], "truncated"),
}


@pytest.mark.parametrize("what", list(_IDX_CORRUPTIONS))
def test_idx_image_corruption(tmp_path, what):
    d = tmp_path / "mnist"
    _write_mnist_like(d, "train", 3, gz=False)
    p = d / "train-images-idx3-ubyte"
    corrupt, match = _IDX_CORRUPTIONS[what]
    p.write_bytes(corrupt(p.read_bytes()))
    with pytest.raises(DataError, match=match) as e:
        load_dataset("mnist", "train", data_dir=tmp_path, download=False)
    assert "train-images-idx3-ubyte" in str(e.value)


def test_idx_truncated_inside_gzip(tmp_path):
    d = tmp_path / "mnist"
    _write_mnist_like(d, "test", 3, gz=False)
    p = d / "t10k-images-idx3-ubyte"
    (d / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(p.read_bytes()[:-1]))
    p.unlink()
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*truncated"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_idx_label_errors(tmp_path):
    d = tmp_path / "mnist"
    _, labels = _write_mnist_like(d, "train", 4, gz=False)
    p = d / "train-labels-idx1-ubyte"
    # count mismatch: 3 labels for 4 images
    write_idx(p, labels[:3])
    with pytest.raises(DataError, match="4 images but .*3 labels") as e:
        load_dataset("mnist", "train", data_dir=tmp_path, download=False)
    assert "train-labels-idx1-ubyte" in str(e.value) and "train-images-idx3-ubyte" in str(e.value)
    # label out of range
    bad = labels.copy()
    bad[2] = 10
    write_idx(p, bad)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*label 10 at index 2 is out of range"):
        load_dataset("mnist", "train", data_dir=tmp_path, download=False)
    # wrong magic (an image file where labels belong)
    p.write_bytes(_idx_bytes(0x0803, (4, 28, 28), bytes(4 * 784)))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*magic"):
        load_dataset("mnist", "train", data_dir=tmp_path, download=False)
    # truncated labels
    p.write_bytes(_idx_bytes(0x0801, (4,), bytes(3)))
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte.*truncated"):
        load_dataset("mnist", "train", data_dir=tmp_path, download=False)


@pytest.mark.parametrize("blob", [b"this is not gzip at all", None])
def test_corrupt_gzip(tmp_path, blob):
    d = tmp_path / "mnist"
    _write_mnist_like(d, "train", 3)
    p = d / "train-labels-idx1-ubyte.gz"
    if blob is None:  # a real gzip stream cut short
        blob = p.read_bytes()[:-12]
    p.write_bytes(blob)
    with pytest.raises(DataError, match=r"train-labels-idx1-ubyte\.gz.*gzip"):
        load_dataset("mnist", "train", data_dir=tmp_path, download=False)


# ---------------------------------------------------------------------------------------------- CIFAR-10

@pytest.mark.parametrize("layout", ["cifar-10-batches-py", "cifar10/cifar-10-batches-py"])
def test_cifar10_layout_and_pixels(tmp_path, layout):
    batches = _write_cifar(tmp_path / layout, n=4)
    train = load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    test = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert train.images.shape == (20, 3, 32, 32) and train.images.dtype == np.uint8
    assert test.images.shape == (4, 3, 32, 32) and test.labels.dtype == np.int64
    assert train.name == "cifar10" and train.num_classes == 10 and not train.is_sample
    expect = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    assert np.array_equal(train.images, expect)
    assert np.array_equal(train.labels, np.concatenate([batches[f"data_batch_{i}"][1] for i in range(1, 6)]))
    assert np.array_equal(test.images, batches["test_batch"][0])
    # one known pixel by hand: value at row index c*1024 + r*32 + s of the raw row lands at [i, c, r, s]
    rows = _cifar_rows(batches["test_batch"][0])
    i, c, r, s = 2, 1, 5, 30
    assert test.images[i, c, r, s] == rows[i, c * 1024 + r * 32 + s]


def test_cifar10_python2_official_pickle(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar(d, n=3)
    rng = _rng(9)
    images = rng.integers(0, 256, size=(3, 3, 32, 32), dtype=np.uint8)
    images[1, 2, 31, 0] = 7
    (d / "test_batch").write_bytes(_py2_batch_pickle(_cifar_rows(images), [9, 0, 4]))
    ds = load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert np.array_equal(ds.images, images) and ds.labels.tolist() == [9, 0, 4]
    assert ds.images[1, 2, 31, 0] == 7


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar10_pickle_with_global_is_refused_not_executed(tmp_path):
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar(d, n=2)
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    with open(d / "test_batch", "wb") as fh:
        pickle.dump({b"data": np.zeros((1, 3072), np.uint8), b"labels": [0], b"x": evil}, fh, protocol=2)
    with pytest.raises(DataError, match=r"test_batch.*(refused|global)") as e:
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert "system" in str(e.value)
    assert not marker.exists()
    # also a protocol-0 INST-style global and a top-level REDUCE
    (d / "test_batch").write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
    with pytest.raises(DataError, match="test_batch"):
        load_dataset("cifar10", "test", data_dir=tmp_path, download=False)
    assert not marker.exists()


@pytest.mark.parametrize("what,match", [
    ("truncated", "truncated"),
    ("garbage", "corrupt"),
    ("shape", r"\(N, 3072\)"),
    ("dtype", r"uint8"),
    ("label_range", "label 10 at index 1"),
    ("label_count", "3 images but 2 labels"),
    ("no_labels", "'labels'"),
    ("not_dict", "dict"),
])
def test_cifar10_corruption(tmp_path, what, match):
    d = tmp_path / "cifar-10-batches-py"
    _write_cifar(d, n=3)
    p = d / "data_batch_3"
    rows = np.zeros((3, 3072), np.uint8)
    objs = {
        "shape": {b"data": np.zeros((3, 3000), np.uint8), b"labels": [0, 1, 2]},
        "dtype": {b"data": np.zeros((3, 3072), np.int32), b"labels": [0, 1, 2]},
        "label_range": {b"data": rows, b"labels": [0, 10, 2]},
        "label_count": {b"data": rows, b"labels": [0, 1]},
        "no_labels": {b"data": rows},
        "not_dict": [rows],
    }
    if what == "truncated":
        p.write_bytes(p.read_bytes()[:-100])
    elif what == "garbage":
        p.write_bytes(b"\x80\x02garbage" * 10)
    else:
        p.write_bytes(pickle.dumps(objs[what], protocol=2))
    with pytest.raises(DataError, match=match) as e:
        load_dataset("cifar10", "train", data_dir=tmp_path, download=False)
    assert "data_batch_3" in str(e.value)


def _make_tar(path: Path, members):
    """members: list of (name, bytes | None for a dir | ('symlink', target))."""
    with tarfile.open(path, "w:gz") as tf:
        for name, content in members:
            ti = tarfile.TarInfo(name)
            if content is None:
                ti.type = tarfile.DIRTYPE
                tf.addfile(ti)
            elif isinstance(content, tuple):
                ti.type = tarfile.SYMTYPE
                ti.linkname = content[1]
                tf.addfile(ti)
            else:
                ti.size = len(content)
                tf.addfile(ti, io.BytesIO(content))


def test_cifar10_download_and_extract(tmp_path, monkeypatch):
    src = tmp_path / "src"
    batches = _write_cifar(src / "cifar-10-batches-py", n=2)
    tar = tmp_path / "cifar-10-python.tar.gz"
    _make_tar(tar, [("cifar-10-batches-py", None)] + [
        (f"cifar-10-batches-py/{p.name}", p.read_bytes()) for p in sorted((src / "cifar-10-batches-py").iterdir())])
    monkeypatch.setitem(dl.RESOURCES, "cifar10", {"cifar-10-python.tar.gz": (tar.as_uri(), _md5(tar))})
    root = tmp_path / "data"
    root.mkdir()
    ds = load_dataset("cifar10", "test", data_dir=root, download=True)
    assert np.array_equal(ds.images, batches["test_batch"][0])
    assert (root / "cifar10" / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not [p for p in (root / "cifar10").iterdir() if p.name.startswith(".")]  # no temp leftovers
    assert len(load_dataset("cifar10", "train", data_dir=root, download=False)) == 10


@pytest.mark.parametrize("bad", ["../evil", "/tmp/lowbit-evil-abs", "cifar-10-batches-py/../../evil", "symlink"])
def test_cifar10_unsafe_tar_refused(tmp_path, bad):
    root = tmp_path / "data"
    (root / "cifar10").mkdir(parents=True)
    tar = root / "cifar10" / "cifar-10-python.tar.gz"
    members = [("cifar-10-batches-py/test_batch", b"x")]
    members.append(("cifar-10-batches-py/link", ("symlink", "/etc/passwd")) if bad == "symlink" else (bad, b"evil"))
    _make_tar(tar, members)
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz.*refusing"):
        load_dataset("cifar10", "test", data_dir=root, download=False)
    assert not (tmp_path / "evil").exists() and not (root / "evil").exists()
    assert not Path("/tmp/lowbit-evil-abs").exists()
    assert not (root / "cifar10" / "cifar-10-batches-py").exists()  # nothing moved into place
    assert _files_in(root / "cifar10") == ["cifar-10-python.tar.gz"]


# -------------------------------------------------------------------------------------------------- SVHN

@pytest.mark.parametrize("sub", ["svhn", ""])
def test_svhn_layout_and_pixels(tmp_path, sub):
    X, y = _write_svhn(tmp_path / sub if sub else tmp_path, "train", n=5)
    ds = load_dataset("svhn", "train", data_dir=tmp_path, download=False)
    assert ds.images.shape == (5, 3, 32, 32) and ds.images.dtype == np.uint8
    assert ds.images.flags.c_contiguous
    assert ds.labels.dtype == np.int64 and ds.labels[0] == 0 and ds.labels[1] == 3
    assert np.array_equal(ds.labels, y[:, 0].astype(np.int64) % 10)
    r, s, c, i = 3, 17, 2, 4
    assert ds.images[i, c, r, s] == X[r, s, c, i]
    assert np.array_equal(ds.images, X.transpose(3, 2, 0, 1))


@pytest.mark.parametrize("what,match", [
    ("X_shape", r"'X' must have shape \(32, 32, 3, N\)"),
    ("y_shape", r"'y' must have shape \(4, 1\)"),
    ("label0", "label 0 at index 2 is not in 1..10"),
    ("label11", "label 11"),
    ("garbage", "corrupt"),
])
def test_svhn_corruption(tmp_path, what, match):
    d = tmp_path / "svhn"
    y = np.array([[1], [2], [3], [10]], np.uint8)
    if what == "X_shape":
        _write_svhn(d, "test", X=np.zeros((3, 32, 32, 4), np.uint8), y=y)
    elif what == "y_shape":
        _write_svhn(d, "test", X=np.zeros((32, 32, 3, 4), np.uint8), y=np.ones((3, 1), np.uint8))
    elif what in ("label0", "label11"):
        y = y.copy()
        y[2 if what == "label0" else 1, 0] = 0 if what == "label0" else 11
        _write_svhn(d, "test", X=np.zeros((32, 32, 3, 4), np.uint8), y=y)
    else:
        d.mkdir()
        (d / "test_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file" + bytes(200))
    with pytest.raises(DataError, match=match) as e:
        load_dataset("svhn", "test", data_dir=tmp_path, download=False)
    assert "test_32x32.mat" in str(e.value)


# ------------------------------------------------------------------------------------------- downloading

def test_download_file_url_ok_and_atomic_on_mismatch(tmp_path):
    src = tmp_path / "src.bin"
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    src.write_bytes(payload)
    dest_dir = tmp_path / "out"
    dest = dl.download_file(src.as_uri(), dest_dir / "file.bin", hashlib.md5(payload).hexdigest(), progress=False)
    assert dest.read_bytes() == payload and _files_in(dest_dir) == ["file.bin"]
    # checksum mismatch: DataError, nothing (partial or whole) left behind
    with pytest.raises(DataError, match=r"checksum mismatch for other\.bin"):
        dl.download_file(src.as_uri(), dest_dir / "other.bin", "0" * 32, progress=False)
    assert _files_in(dest_dir) == ["file.bin"]
    # a mismatch never clobbers an existing good file either
    with pytest.raises(DataError):
        dl.download_file(src.as_uri(), dest, "0" * 32, progress=False)
    assert dest.read_bytes() == payload and _files_in(dest_dir) == ["file.bin"]


def test_download_interrupted_leaves_nothing(tmp_path, monkeypatch):
    class Broken(io.BytesIO):
        headers = {"Content-Length": "100"}

        def read(self, n=-1):
            if self.tell() >= 10:
                raise TimeoutError("timed out")
            return super().read(10)

    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda url, timeout=None: Broken(bytes(100)))
    with pytest.raises(DataError, match="timed out"):
        dl.download_file("http://example.invalid/x.bin", tmp_path / "x.bin", None, progress=False)
    assert _files_in(tmp_path) == []


def _serve_mnist_files(tmp_path: Path, monkeypatch, dataset="mnist", n=6):
    """Official-named .gz files under tmp_path/served, and RESOURCES pointing at them via file://."""
    served = tmp_path / "served"
    imgs = {}
    for split in ("train", "test"):
        imgs[split] = _write_mnist_like(served, split, n, seed=len(split))
    table = {p.name: (p.as_uri(), _md5(p)) for p in served.iterdir()}
    monkeypatch.setitem(dl.RESOURCES, dataset, table)
    return imgs


@pytest.mark.parametrize("dataset", ["mnist", "fashion-mnist"])
def test_load_dataset_downloads_missing_files(tmp_path, monkeypatch, dataset):
    imgs = _serve_mnist_files(tmp_path, monkeypatch, dataset)
    root = tmp_path / "data"
    root.mkdir()
    ds = load_dataset(dataset, "test", data_dir=root, download=True)
    assert np.array_equal(ds.images[:, 0], imgs["test"][0]) and not ds.is_sample
    assert _files_in(root / dataset) == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_load_dataset_download_checksum_mismatch(tmp_path, monkeypatch):
    _serve_mnist_files(tmp_path, monkeypatch)
    url, _ = dl.RESOURCES["mnist"]["train-labels-idx1-ubyte.gz"]
    dl.RESOURCES["mnist"]["train-labels-idx1-ubyte.gz"] = (url, "f" * 32)
    root = tmp_path / "data"
    root.mkdir()
    with pytest.raises(DataError, match="checksum mismatch") as e:
        load_dataset("mnist", "train", data_dir=root, download=True)
    assert "train-labels-idx1-ubyte.gz" in str(e.value)
    assert "train-labels-idx1-ubyte.gz" not in _files_in(root / "mnist")
    assert not [n for n in _files_in(root / "mnist") if n.endswith(".part")]


def _offline(monkeypatch):
    def refuse(url, timeout=None):
        raise urllib.error.URLError(OSError(101, "Network is unreachable"))
    monkeypatch.setattr(dl.urllib.request, "urlopen", refuse)


@pytest.mark.parametrize("dataset,split,files,target", [
    ("mnist", "train", ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"], "mnist"),
    ("fashion-mnist", "test", ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"], "fashion-mnist"),
    ("cifar10", "train", ["cifar-10-python.tar.gz", "cifar-10-batches-py"], "cifar10"),
    ("svhn", "test", ["test_32x32.mat"], "svhn"),
])
def test_offline_message_names_files_and_directory(tmp_path, monkeypatch, dataset, split, files, target):
    _offline(monkeypatch)
    root = tmp_path / "nowhere"
    root.mkdir()
    with pytest.raises(DataError) as e:
        load_dataset(dataset, split, data_dir=root, download=True)
    msg = str(e.value)
    for f in files:
        assert f in msg
    assert str(root / target) in msg and "LOWBIT_DATA" in msg and "--data-dir" in msg
    assert "unreachable" in msg
    # download=False: the same instructions, without any network attempt
    with pytest.raises(DataError) as e2:
        load_dataset(dataset, split, data_dir=root, download=False)
    assert all(f in str(e2.value) for f in files) and str(root / target) in str(e2.value)
    assert "disabled" in str(e2.value)


def test_offline_unreachable_port(tmp_path, monkeypatch):
    table = {name: ("http://127.0.0.1:9/" + name, md5) for name, (url, md5) in dl.RESOURCES["svhn"].items()}
    monkeypatch.setitem(dl.RESOURCES, "svhn", table)
    with pytest.raises(DataError, match=r"test_32x32\.mat.*LOWBIT_DATA"):
        load_dataset("svhn", "test", data_dir=tmp_path, download=True)
    assert not (tmp_path / "svhn").exists() or _files_in(tmp_path / "svhn") == []


# ---------------------------------------------------------------------------------------- embedded sample

def _default_data_dir(monkeypatch, tmp_path):
    """No --data-dir, no $LOWBIT_DATA, and a home whose default data directory does not exist."""
    monkeypatch.delenv("LOWBIT_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


@pytest.mark.parametrize("download", [False, True])
def test_sample_fallback(tmp_path, monkeypatch, download):
    _offline(monkeypatch)
    _default_data_dir(monkeypatch, tmp_path)
    for split, n in (("train", 6000), ("test", 1000)):
        ds = load_dataset("mnist", split, download=download, allow_sample=True)
        assert ds.is_sample and ds.source.startswith("embedded sample") and str(n) in ds.source
        assert ds.images.shape == (n, 1, 28, 28) and ds.images.dtype == np.uint8
        assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
        assert set(np.unique(ds.labels).tolist()) == set(range(10))
    assert np.bincount(load_dataset("mnist", "train", download=False,
                                    allow_sample=True).labels).tolist() == [600] * 10
    # never for other datasets, never when the files exist but are corrupt
    with pytest.raises(DataError):
        load_dataset("fashion-mnist", "train", download=False, allow_sample=True)
    default = tmp_path / "home" / ".cache" / "lowbit" / "data"
    _write_mnist_like(default / "mnist", "test", 3)
    (default / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"junk")
    with pytest.raises(DataError, match="gzip"):
        load_dataset("mnist", "test", download=False, allow_sample=True)


@needs_mnist
def test_sample_is_real_mnist(real_mnist, tmp_path, monkeypatch):
    from lowbit.data.sample import sample_index
    _default_data_dir(monkeypatch, tmp_path)
    for split in ("train", "test"):
        ds = load_dataset("mnist", split, download=False, allow_sample=True)
        idx = sample_index(split)
        assert np.array_equal(ds.images, real_mnist[split].images[idx])
        assert np.array_equal(ds.labels, real_mnist[split].labels[idx])
    assert sample_index("test").tolist() == list(range(1000))


def test_sample_file_size():
    blob = Path(data.__file__).with_name("mnist_sample.npz")
    assert blob.is_file() and blob.stat().st_size < 2_600_000
