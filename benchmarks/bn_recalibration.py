"""Does a shift-BN network lose accuracy to its running statistics? Re-estimate them and see.

    python benchmarks/bn_recalibration.py [CHECKPOINT ...] [--images 20000]

For each checkpoint (default: W1A1 runs of qnn_ablation.py trained without recalibration), test accuracy
on full MNIST as trained, then after :func:`lowbit.nn.norm.recalibrate_batch_norm` over the first ``--images``
training images (the batch norms' running mean/variance := the average of their per-batch statistics;
weights untouched). Writes
benchmarks/results/bn_recalibration.{json,md}.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from lowbit.benchmarking import machine_record, markdown_table, write_results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# W1A1 ConvNet runs of qnn_ablation.py trained WITHOUT recalibration (bn_recalibrate=0):
#   PYTHONPATH=src python benchmarks/qnn_ablation.py --tag norecal --models cnn --epochs 2 \
#       --only 'cnn-w1a1g32,cnn-w1a1g32-shift*' --cnn-set model.channels=16,16,M,32,32,M,64,64,M --cnn-set model.fc=256
DEFAULT = ["runs/qnn_ablation_norecal/cnn-w1a1g32-shift-bn/checkpoint.pt",
           "runs/qnn_ablation_norecal/cnn-w1a1g32-shift/checkpoint.pt",
           "runs/qnn_ablation_norecal/cnn-w1a1g32/checkpoint.pt"]


def accuracy(model, x, y, batch=500) -> float:
    model.eval()
    with torch.no_grad():
        return sum((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item() for i in range(0, len(x), batch)) / len(x)


def main(argv=None) -> int:
    import lowbit
    from lowbit.data import load_dataset
    from lowbit.nn.norm import recalibrate_batch_norm

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="*", default=DEFAULT)
    p.add_argument("--images", type=int, default=20000)
    p.add_argument("--batch-size", type=int, default=100, help="the training batch size of the runs")
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
        recalibrate_batch_norm(model, xt, batch_size=args.batch_size)
        after = accuracy(model, x, y)
        rows.append({"checkpoint": ck, "as_trained": before, "recalibrated": after})
        print(f"{ck}: {100 * before:.2f}% -> {100 * after:.2f}%")
    lines = ["# Batch-norm running statistics: as trained vs recalibrated (full MNIST test set)", "",
             f"Recalibrated = running mean/variance replaced by the average over the first {args.images} training "
             "images; weights untouched.", "",
             markdown_table(["checkpoint", "test acc as trained", "recalibrated"],
                            [[r["checkpoint"], f"{100 * r['as_trained']:.2f}%", f"{100 * r['recalibrated']:.2f}%"]
                             for r in rows], "lrr")]
    lines += ["", "The checkpoints: W1A1 half-width ConvNets of `qnn_ablation.py` (2 epochs) trained without "
              "recalibration; since `bn_recalibrate` exists the ablation recalibrates every run before each evaluation.",
              "", "Reproduce:", "", "```bash",
              "PYTHONPATH=src python benchmarks/qnn_ablation.py --tag norecal --models cnn --epochs 2 "
              "--only 'cnn-w1a1g32,cnn-w1a1g32-shift,cnn-w1a1g32-shift-bn' "
              "--cnn-set model.channels=16,16,M,32,32,M,64,64,M --cnn-set model.fc=256",
              "PYTHONPATH=src python benchmarks/bn_recalibration.py", "```", ""]
    write_results(RESULTS / "bn_recalibration", {"images": args.images, "runs": rows, "machine": machine_record()},
                  "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
