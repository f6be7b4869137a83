"""Does a shift-BN network lose accuracy to its running statistics? Re-estimate them and see.

    PYTHONPATH=src python benchmarks/bn_recalibration.py [CHECKPOINT ...] [--images 20000]

For each checkpoint (default: the W1A1 shift-BN runs of qnn_ablation.py), test accuracy on full MNIST as
trained, then after replacing every batch norm's running mean/variance by a plain average over the first
``--images`` training images (train-mode forward passes, no gradient, weights untouched). Writes
benchmarks/results/bn_recalibration.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RESULTS = ROOT / "benchmarks" / "results"
DEFAULT = ["runs/qnn_ablation/cnn-w1a1g32-shift-bn/checkpoint.pt", "runs/qnn_ablation/cnn-w1a1g32-shift/checkpoint.pt",
           "runs/qnn_ablation/cnn-w1a1g32/checkpoint.pt", "runs/qnn_ablation/mlp-w1a1g32-shift-bn/checkpoint.pt"]


def accuracy(model, x, y, batch=500) -> float:
    model.eval()
    with torch.no_grad():
        return sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch)) / len(x)


def recalibrate(model, x, batch=100) -> None:
    """Running statistics := the plain average over ``x`` (momentum None = cumulative average)."""
    for mod in model.modules():
        if hasattr(mod, "running_var") and mod.running_var is not None:
            mod.reset_running_stats()
            mod.momentum = None
    model.train()
    with torch.no_grad():
        for i in range(0, len(x), batch):
            model(x[i:i + batch])


def main(argv=None) -> int:
    import lowbit
    from lowbit.data import load_dataset

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", default=DEFAULT)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "data"))
    args = p.parse_args(argv)
    train = load_dataset("mnist", "train", args.data_dir)
    test = load_dataset("mnist", "test", args.data_dir)
    xt = torch.from_numpy(train.images[:args.images]).float()
    x, y = torch.from_numpy(test.images).float(), torch.from_numpy(test.labels)
    rows = []
    for ck in args.checkpoints:
        path = ROOT / ck
        if not path.is_file():
            print(f"skip {ck}: not found (run benchmarks/qnn_ablation.py first)")
            continue
        model = lowbit.load_checkpoint(path)
        before = accuracy(model, x, y)
        recalibrate(model, xt)
        after = accuracy(model, x, y)
        rows.append({"checkpoint": ck, "as_trained": before, "recalibrated": after})
        print(f"{ck}: {100 * before:.2f}% -> {100 * after:.2f}%")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bn_recalibration.json").write_text(json.dumps({"images": args.images, "runs": rows}, indent=2))
    lines = ["# Batch-norm running statistics: as trained vs recalibrated (full MNIST test set)", "",
             f"Recalibrated = running mean/variance replaced by the average over the first {args.images} training "
             "images; weights untouched.", "",
             "| checkpoint | test acc as trained | recalibrated |", "|---|---:|---:|"]
    lines += [f"| {r['checkpoint']} | {100 * r['as_trained']:.2f}% | {100 * r['recalibrated']:.2f}% |" for r in rows]
    lines += ["", "Reproduce: `PYTHONPATH=src python benchmarks/bn_recalibration.py`", ""]
    (RESULTS / "bn_recalibration.md").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
