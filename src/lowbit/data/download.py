"""Where each dataset comes from, and one generic, checksum-verified, atomic downloader.

``RESOURCES`` is the only place URLs and checksums live; loaders look them up at call time, so tests can
point a dataset at ``file://`` URLs with ``monkeypatch.setitem(RESOURCES, "mnist", {...})``.
"""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Dict, Optional, Tuple

from ..errors import DataError
from .base import PathLike

_MNIST = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_SVHN = "http://ufldl.stanford.edu/housenumbers/"

#: dataset -> file name -> (url, md5 of the file as downloaded). The md5s are the published ones
#: (the same torchvision checks).
RESOURCES: Dict[str, Dict[str, Tuple[str, str]]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": (_MNIST + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train-labels-idx1-ubyte.gz": (_MNIST + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        "t10k-images-idx3-ubyte.gz": (_MNIST + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        "t10k-labels-idx1-ubyte.gz": (_MNIST + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": (_FASHION + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train-labels-idx1-ubyte.gz": (_FASHION + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        "t10k-images-idx3-ubyte.gz": (_FASHION + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        "t10k-labels-idx1-ubyte.gz": (_FASHION + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    },
    "cifar10": {
        "cifar-10-python.tar.gz": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                                   "c58f30108f718f92721af3b95e74349a"),
    },
    "svhn": {
        "train_32x32.mat": (_SVHN + "train_32x32.mat", "e26dedcc434d2e4c54c9b2d4a06d8373"),
        "test_32x32.mat": (_SVHN + "test_32x32.mat", "eb5a983be6a315427106f1b164d9cef3"),
        "extra_32x32.mat": (_SVHN + "extra_32x32.mat", "a93ce644f1a588dc4d68dda5feec44a7"),
    },
}

DEFAULT_TIMEOUT = 60.0
_CHUNK = 1 << 20


class DownloadError(DataError):
    """The download itself failed (offline, refused, HTTP error, timeout, or a checksum mismatch)."""


def resource(dataset: str, filename: str) -> Tuple[str, str]:
    """(url, md5) for one file of a dataset, read from ``RESOURCES`` now (not at import)."""
    return RESOURCES[dataset][filename]


def origin_of(dataset: str) -> str:
    """Human-readable "where to get it": the common URL prefix of the dataset's files."""
    urls = [url for url, _ in RESOURCES[dataset].values()]
    if len(urls) == 1:
        return urls[0]
    prefix = os.path.commonprefix(urls)
    return prefix[: prefix.rfind("/") + 1] if "/" in prefix else prefix


def md5sum(path: PathLike) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def download_file(url: str, dest: PathLike, md5: Optional[str], timeout: float = DEFAULT_TIMEOUT,
                  progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` and return ``dest``.

    The bytes go to a temporary file next to ``dest``; only when the whole body has arrived and its md5
    equals ``md5`` (skipped if ``md5`` is None) is it renamed onto ``dest`` (atomic on one file system),
    so ``dest`` is either absent or complete, never partial. Any failure removes the temporary file and
    raises :class:`DownloadError`. ``file://`` URLs work too (tests use them offline). A tqdm bar shows
    size, rate and ETA.
    """
    from tqdm.auto import tqdm

    dest = Path(dest)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise DownloadError(f"cannot write into {dest.parent} to download {dest.name}: {e}") from e
    tmp = Path(tmp_name)
    try:
        h = hashlib.md5()
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length") if resp.headers is not None else None
                total = int(length) if length and length.isdigit() else None
                received = 0
                with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, miniters=1,
                          desc=f"downloading {dest.name}", disable=not progress, leave=False) as bar:
                    while True:
                        chunk = resp.read(_CHUNK)
                        if not chunk:
                            break
                        out.write(chunk)
                        h.update(chunk)
                        received += len(chunk)
                        bar.update(len(chunk))
        except urllib.error.HTTPError as e:
            raise DownloadError(f"downloading {url} failed: HTTP {e.code} {e.reason}") from e
        except urllib.error.URLError as e:
            raise DownloadError(f"downloading {url} failed: {e.reason}") from e
        except (OSError, http.client.HTTPException, ValueError) as e:
            # socket timeouts/resets mid-body, truncated responses, malformed URLs
            raise DownloadError(f"downloading {url} failed: {type(e).__name__}: {e}") from e
        if total is not None and received != total:
            raise DownloadError(f"downloading {url} failed: got {received} of {total} bytes")
        digest = h.hexdigest()
        if md5 is not None and digest != md5.lower():
            raise DownloadError(f"checksum mismatch for {dest.name} downloaded from {url}: md5 is {digest}, "
                                f"expected {md5} (the partial/foreign file was discarded)")
        try:
            os.replace(tmp, dest)
        except OSError as e:
            raise DownloadError(f"cannot move the downloaded {dest.name} into {dest.parent}: {e}") from e
    finally:
        if tmp.exists():
            try:
                tmp.unlink()
            except OSError:
                pass
    return dest
