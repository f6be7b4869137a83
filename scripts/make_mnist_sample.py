#!/usr/bin/env python
"""Build src/lowbit/data/mnist_sample.npz: the small real MNIST subset embedded in the package.

Takes the first PER_CLASS training images of each digit (kept in their original order) and the first
TEST_COUNT test images from the official IDX files, and stores them with their positions in the full sets:

    python scripts/make_mnist_sample.py [--data-dir ../shared/data] [--per-class 600] [--test 1000]

The data directory is searched like lowbit.data does (<dir>/mnist/ or <dir>/). Run it from a checkout; it
imports lowbit from src/ so no install is needed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from lowbit.data import load_dataset  # noqa: E402

OUT = REPO / "src" / "lowbit" / "data" / "mnist_sample.npz"
MAX_BYTES = 2_600_000


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--per-class", type=int, default=600)
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)

    train = load_dataset("mnist", "train", data_dir=args.data_dir, download=False)
    test = load_dataset("mnist", "test", data_dir=args.data_dir, download=False)
    if (len(train), len(test)) != (60000, 10000):
        raise SystemExit(f"expected the full MNIST (60000/10000), found {len(train)}/{len(test)}")

    picked = [np.flatnonzero(train.labels == c)[: args.per_class] for c in range(10)]
    train_index = np.sort(np.concatenate(picked))
    test_index = np.arange(min(args.test, len(test)))

    out = Path(args.out)
    np.savez_compressed(
        out,
        train_images=train.images[train_index, 0],
        train_labels=train.labels[train_index].astype(np.uint8),
        train_index=train_index.astype(np.int32),
        test_images=test.images[test_index, 0],
        test_labels=test.labels[test_index].astype(np.uint8),
        test_index=test_index.astype(np.int32),
    )
    size = out.stat().st_size
    counts = np.bincount(train.labels[train_index], minlength=10)
    print(f"wrote {out}: {len(train_index)} train (per class {counts.tolist()}) + {len(test_index)} test "
          f"images, {size / 1e6:.2f} MB (from {train.source} and {test.source})")
    if size > MAX_BYTES:
        print(f"warning: larger than {MAX_BYTES / 1e6:.1f} MB; use a smaller --per-class", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
