"""Deployed = trained: every MNIST variant, trained on real MNIST, predicts the same classes in the runtime.

For each variant of ``mnist-mlp-qnn`` / ``mnist-cnn-qnn`` (the ablation grid's W/A bits, log quantizers,
PACT + SAWB, shift-BN; plus the plain W1A1 recipes and ``mnist-resnet`` when registered): ``lowbit train``
for ``--epochs`` (default 1) on the real training set, ``lowbit export`` to a model file, then both the
PyTorch model (eval) and the runtime classify all 10,000 test images. Reported: test accuracy of each,
the number of images whose predicted class differs (must be 0), the largest logit difference relative
to the logits' scale, and the kernels the runtime used.

    python benchmarks/export_exactness.py [--epochs 1] [--data-dir ../shared/data] [--quick]

``--quick`` uses the ablation's small widths (MLP 256 hidden, ConvNet 16-16-32-32-64-64 / 256): the
exactness question does not depend on width, and the full widths take hours on 2 cores.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from lowbit.benchmarking import machine_record, markdown_table, results_dir, write_results

HERE = Path(__file__).resolve().parent
DEFAULT_DATA = HERE.parent.parent / "shared" / "data"
GRID = [(1, 1), (1, 2), (2, 2), (3, 3), (4, 4), (6, 6)]
QUICK = {"mnist-mlp-qnn": ["model.hidden=256"], "mnist-mlp": ["model.hidden=256"],
         "mnist-cnn-qnn": ["model.channels=16,16,M,32,32,M,64,64,M", "model.fc=256"],
         "mnist-cnn": ["model.channels=16,16,M,32,32,M,64,64,M", "model.fc=256"]}


def spec(bits: int) -> str:
    return {1: "ste_sign", 32: "identity"}.get(bits, f"linear:bits={bits}")


def variants():
    out = [("mnist-mlp", "W1A1", []), ("mnist-cnn", "W1A1", [])]
    for recipe in ("mnist-mlp-qnn", "mnist-cnn-qnn"):
        for w, a in GRID:
            out.append((recipe, f"W{w}A{a} linear", [f"model.weight_quantizer={spec(w)}", f"model.act_quantizer={spec(a)}"]))
        out += [(recipe, "W4A3 log", ["model.weight_quantizer=log:bits=4", "model.act_quantizer=log:bits=3"]),
                (recipe, "W2A2 PACT+SAWB", ["model.weight_quantizer=sawb:bits=2", "model.act_quantizer=pact:bits=2,alpha=3.0",
                                            "pact_l2=0.0001"]),
                (recipe, "W1A1 shift-BN", ["model.norm=shift_bn", "optimizer=shift_adamax"])]
    from lowbit.registry import RECIPES

    if "mnist-resnet" in RECIPES:
        out.append(("mnist-resnet", "binary ResNet (real shortcuts)", []))
    return out


def compare(run_dir: Path, data_dir: Path) -> dict:
    import torch

    from lowbit.data import load_dataset
    from lowbit.runtime import load
    from lowbit.train.checkpoint import model_from_checkpoint, read_checkpoint

    test = load_dataset("mnist", "test", data_dir, download=False)
    test_x, test_y = test.images, test.labels
    model = model_from_checkpoint(read_checkpoint(run_dir / "checkpoint.pt"), str(run_dir)).eval()
    with torch.no_grad():
        ref = torch.cat([model(torch.from_numpy(test_x[i:i + 1000]).float()) for i in range(0, len(test_x), 1000)]).numpy()
    net = load(run_dir / "model.lbt")
    t = time.perf_counter()
    out = net.predict(test_x)
    runtime_s = time.perf_counter() - t
    return {"torch_accuracy": float((ref.argmax(1) == test_y).mean()),
            "runtime_accuracy": float((out.argmax(1) == test_y).mean()),
            "class_mismatches": int((ref.argmax(1) != out.argmax(1)).sum()),
            "max_logit_diff_rel": float(np.abs(out - ref).max() / (np.abs(ref).max() + 1e-12)),
            "runtime_seconds_10k": runtime_s, "kernels": sorted({l.split("[")[-1].rstrip("]") for l in net.layers() if "[" in l})}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--data-dir", default=str(DEFAULT_DATA))
    p.add_argument("--quick", action="store_true", help="the ablation's small widths")
    p.add_argument("--only", help="run only variants whose recipe or label contains this text")
    p.add_argument("--keep", help="keep the run directories under this folder (default: a temporary one)")
    args = p.parse_args(argv)
    data_dir = Path(args.data_dir)
    rows, records = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.keep or tmp
        for i, (recipe, label, sets) in enumerate(variants()):
            if args.only and args.only not in recipe and args.only not in label:
                continue
            overrides = (QUICK.get(recipe, []) if args.quick else []) + sets
            run_dir = Path(tmp) / f"run{i}"
            cmd = [sys.executable, "-m", "lowbit", "train", recipe, "--epochs", str(args.epochs), "--data-dir",
                   str(data_dir), "--out", str(run_dir), "--no-progress"] + [a for s in overrides for a in ("--set", s)]
            t = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            train_s = time.perf_counter() - t
            subprocess.run([sys.executable, "-m", "lowbit", "export", str(run_dir / "checkpoint.pt"), "-o",
                            str(run_dir / "model.lbt")], check=True, stdout=subprocess.DEVNULL)
            r = compare(run_dir, data_dir)
            r.update(recipe=recipe, variant=label, overrides=overrides, epochs=args.epochs, train_seconds=train_s)
            records.append(r)
            rows.append([recipe, label, f"{100 * r['torch_accuracy']:.2f}", f"{100 * r['runtime_accuracy']:.2f}",
                         r["class_mismatches"], f"{r['max_logit_diff_rel']:.1e}", ", ".join(r["kernels"])])
            print(" | ".join(map(str, rows[-1])), flush=True)
    machine = machine_record()
    md = [f"# Exported = trained on all 10,000 MNIST test images ({machine['cpu']})", "",
          f"Each variant trained {args.epochs} epoch(s) on real MNIST{' (small widths)' if args.quick else ''}, "
          "exported with `lowbit export`, and classified by PyTorch (eval) and by the runtime.", "",
          markdown_table(["recipe", "variant", "torch acc %", "runtime acc %", "class mismatches", "max logit diff (rel)",
                          "kernels"], rows, "llrrrrl"), "",
          "Reproduce: `python benchmarks/export_exactness.py" + (" --quick" if args.quick else "") + "`"]
    out = results_dir()
    if out is not None:
        for path in write_results(out / "export_exactness", {"machine": machine, "runs": records}, "\n".join(md) + "\n"):
            print("wrote", path)
    return 1 if any(r["class_mismatches"] for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
