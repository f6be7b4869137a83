"""MNIST accuracy of the W1A1 paper MLP and binary ConvNet, each beside its fp32 twin, on full real MNIST.

    python benchmarks/mnist_accuracy.py --data-dir ../shared/data [--only mlp-w1a1,cnn-w1a1] [--quick]

Each run is ``lowbit.train.run`` on a recipe with overrides (listed in RUNS), trained on all 60,000
training images and tested on the 10,000 test images; the fp32 twin is the same architecture with identity
quantizers (hardtanh activations). Also measured, side by side in one process: the time of one
fake-quantized training step vs the fp32 step (median of repeats, batch 100).

Results: benchmarks/results/mnist_accuracy.{json,md} and one curves PNG per run. A run whose result is
already in the JSON is skipped (delete it, or pass --force, to redo it), so the script can run in pieces.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from lowbit.benchmarking import machine_record, markdown_table, medians, time_interleaved, write_results

RESULTS = Path(__file__).resolve().parent / "results"

MLP_SETTINGS = ["model.hidden=2048", "model.depth=3", "model.dropout_in=0.0", "model.dropout_hidden=0.15",
                "lr_start=0.003", "lr_end=0.000003", "batch_size=100"]
# These runs start binary latent weights in the Glorot range (the recipes' init="glorot"), so the Glorot LR
# scale (x14..x33 per layer) made Adam move them 0.04-0.1 per step: the 7-epoch ConvNet kept flipping weights
# and underfit (98.87%); the ConvNet runs turn the scale off. (The Theano BNN code keeps the scale,
# W_LR_scale = "Glorot", but starts the latent weights in U[-1, 1]: H = 1; lowbit's layer default.)
CNN_SETTINGS = ["lr_scale=false", "lr_start=0.01", "lr_end=0.00001", "batch_size=100"]
# the runs from before mnist-cnn shifted its images and recalibrated BN by default, as they were measured
CNN_PLAIN = CNN_SETTINGS + ["random_shift=0", "bn_recalibrate=0"]
FP32 = ["model.weight_quantizer=identity", "model.act_quantizer=identity"]
# the 60-minute MLP: the mnist-mlp recipe (reference init U[-1, 1], Glorot LR scale) at 3x2048
MLP60_SETTINGS = ["model.hidden=2048", "model.depth=3", "model.dropout_in=0.2", "model.dropout_hidden=0.3",
                  "lr_start=0.003", "lr_end=0.000003", "batch_size=100"]
VALID = ["valid_size=10000"]
MLP60_SHIFT = [o for o in MLP60_SETTINGS if not o.startswith("model.dropout")] + [
    "model.dropout_in=0.0", "model.dropout_hidden=0.2", "random_shift=1"]
# bf16 convs on NHWC tensors (oneDNN's AMX / AVX-512 BF16 path; on an AVX2-only CPU bf16 is slower than fp32)
# and BN statistics re-estimated over 5,000 training images before each evaluation: on the AMX Xeon the
# ConvNet step goes from 262 to 156 ms, so 28 epochs (with the evaluations) fit the hour instead of 22.
# Evaluation stays fp32, the arithmetic of the exported network.
FAST_CNN = ["amp=bf16", "channels_last=true", "bn_recalibrate=5000"]

# name -> (recipe, epochs, overrides, accuracy target or None, training-time budget in minutes or None)
RUNS = {
    # the 45-minute runs of an earlier issue, from before init="reference" became the mnist-mlp default
    "mlp-w1a1": ("mnist-mlp", 20, MLP_SETTINGS + ["model.init=glorot"], 0.985, 45),
    "mlp-fp32": ("mnist-mlp", 20, MLP_SETTINGS + ["model.init=glorot"] + FP32, None, None),
    "cnn-w1a1": ("mnist-cnn", 9, CNN_PLAIN, 0.992, 45),
    "cnn-fp32": ("mnist-cnn", 9, CNN_PLAIN + FP32, None, None),
    # issue 11's 60-minute runs, each alone on the machine with 2 torch threads. The MLP is 3x2048: at 2
    # threads the paper's 3x4096 step takes 4x as long (0.34 s vs 0.08 s, fused Adam), so 60 minutes hold
    # 16 of its epochs against ~60 of 3x2048 (56 leave a margin). With that many epochs the paper's input
    # dropout fits (0.2; hidden 0.3, between our 0.15, which overfit, and the paper's 0.5).
    "mlp-w1a1-60min": ("mnist-mlp", 56, MLP60_SETTINGS, 0.990, 60),
    "mlp-fp32-60min": ("mnist-mlp", 56, MLP60_SETTINGS + FP32, None, None),
    "cnn-w1a1-60min": ("mnist-cnn", 24, CNN_PLAIN, 0.994, 60),
    "cnn-fp32-60min": ("mnist-cnn", 24, CNN_PLAIN + FP32, None, None),
    # the same ConvNet under the Theano BinaryNet protocol: train on the first 50,000 images, validate on the
    # last 10,000, report the test accuracy of the best-validation epoch (the paper's figures are these).
    # Measured on an Intel Xeon (family 6 model 167) at 2 threads: 385 training images/s, so an epoch of 50k
    # plus the two 10k evaluations takes ~150 s and 22 epochs fit in the hour.
    "cnn-w1a1-60min-val": ("mnist-cnn", 22, CNN_PLAIN + VALID, 0.994, 60),
    "cnn-fp32-60min-val": ("mnist-cnn", 22, CNN_PLAIN + VALID + FP32, None, None),
    "cnn-w1a1-60min-bf16": ("mnist-cnn", 28, CNN_PLAIN + FAST_CNN, 0.994, 60),
    "cnn-fp32-60min-bf16": ("mnist-cnn", 28, CNN_PLAIN + FAST_CNN + FP32, None, None),
    # the same with each training image shifted by up to 2 pixels (25 positions; the paper trains MNIST
    # unaugmented): without it the ConvNet reaches 99.8% training accuracy by epoch 12 and overfits
    "cnn-w1a1-60min-shift": ("mnist-cnn", 28, CNN_SETTINGS + FAST_CNN + ["random_shift=2"], 0.994, 60),
    "cnn-fp32-60min-shift": ("mnist-cnn", 28, CNN_SETTINGS + FAST_CNN + ["random_shift=2"] + FP32, None, None),
    # the 60-minute MLP with each training image shifted by up to 1 pixel (9 positions; the paper trains
    # unaugmented, so this departs from it): shifts regularize as input dropout did, so input dropout goes
    "mlp-w1a1-60min-shift": ("mnist-mlp", 48, MLP60_SHIFT, 0.990, 60),
    "mlp-fp32-60min-shift": ("mnist-mlp", 48, MLP60_SHIFT + FP32, None, None),
    # issue 11's three-way comparison, same seed and budget (4 epochs of the 3x2048 MLP): the BinaryNet
    # reference (latent weights U[-1, 1] and the Glorot LR scale), the Glorot start with the scale, and the
    # Glorot start without it (what the recipes ran)
    "mlp-init-reference-scale": ("mnist-mlp", 4, MLP_SETTINGS + ["model.init=reference", "lr_scale=true"], None, None),
    "mlp-init-glorot-scale": ("mnist-mlp", 4, MLP_SETTINGS + ["model.init=glorot", "lr_scale=true"], None, None),
    "mlp-init-glorot-noscale": ("mnist-mlp", 4, MLP_SETTINGS + ["model.init=glorot", "lr_scale=false"], None, None),
}


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def step_time_ratio(recipe: str, overrides, repeats: int = 15) -> dict:
    """Median wall time of one training step (forward, backward, optimizer step, clip) at batch 100:
    the quantized model vs its fp32 twin, interleaved so machine noise hits both alike."""
    import torch

    from lowbit.train.config import apply_overrides, get_recipe
    from lowbit.train.losses import square_hinge
    from lowbit.models import build_model
    from lowbit.train.optim import build_optimizer
    from lowbit.train.engine import keep_freed_memory

    keep_freed_memory()
    cfgs = {"quantized": apply_overrides(get_recipe(recipe), overrides),
            "fp32": apply_overrides(get_recipe(recipe), list(overrides) + FP32)}
    torch.manual_seed(0)
    x = torch.rand(100, *cfgs["fp32"].model_args["in_shape"]) * 255
    y = torch.randint(0, 10, (100,))
    setups = {}
    for k, cfg in cfgs.items():
        m = build_model(cfg.model, **cfg.model_args)
        setups[k] = (m, build_optimizer(m, lr=1e-3))
    def step(m, opt):
        loss = square_hinge(m(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    med = medians(time_interleaved({k: (lambda m=m, opt=opt: step(m, opt)) for k, (m, opt) in setups.items()},
                                   min_repeats=repeats, max_repeats=repeats, warmup=3))
    return {"quantized_ms": 1e3 * med["quantized"], "fp32_ms": 1e3 * med["fp32"],
            "ratio": med["quantized"] / med["fp32"], "repeats": repeats, "torch_threads": torch_threads()}


def markdown(results: dict) -> str:
    rows = []
    for name, r in results["runs"].items():
        target, budget = RUNS[name][3], RUNS[name][4]
        # a run with a validation split is scored as the paper scores it: at its best-validation epoch
        headline = r.get("test_accuracy_at_best_valid", r["test_accuracy"])
        met = "" if target is None else ("yes" if headline >= target and r["wall_time"] <= 60 * budget else "NO")
        at_best = ("" if "test_accuracy_at_best_valid" not in r else
                   f"{100 * r['test_accuracy_at_best_valid']:.2f}% (ep. {r['best_valid_epoch']})")
        tgt = "" if target is None else f">= {100 * target:.1f}% in <= {budget} min"
        rows.append([name, r["recipe"], r["epochs"], r.get("torch_threads", ""), f"{100 * r['test_accuracy']:.2f}%",
                     f"{100 * r['best_test_accuracy']:.2f}%", at_best, tgt, f"{r['wall_time'] / 60:.1f} min", met])
    lines = ["# MNIST accuracy: W1A1 vs fp32 twins (full real MNIST, 60k train / 10k test; the `-val` runs 50k train / 10k validation / 10k test)", "",
             f"Machine: {results['machine']['cpu']}, 2 cores, torch {results['machine']['torch']}. "
             "Runs with 1 torch thread ran two at a time, one per core; runs with 2 threads ran alone on the "
             "machine.", "",
             markdown_table(["run", "recipe", "epochs", "torch threads", "test accuracy (last epoch)", "best epoch",
                             "at best-validation epoch", "target", "training time", "met"], rows, "llrrrrrrrc")]
    if results.get("step_ratio"):
        lines += ["", "Training-step time (forward, backward, optimizer step, latent clip), fake-quantized vs fp32 "
                  "(median of interleaved repeats, batch 100, goal <= 1.5x):", "",
                  markdown_table(["model", "torch threads", "quantized step", "fp32 step", "ratio"],
                                 [[name, r.get("torch_threads", 1), f"{r['quantized_ms']:.1f} ms", f"{r['fp32_ms']:.1f} ms",
                                   f"{r['ratio']:.2f}x"] for name, r in results["step_ratio"].items()], "lrrrr")]
    lines += ["", "Settings of each run (`lowbit train RECIPE --epochs N --set ...`):", ""]
    for name, (recipe, epochs, overrides, *_) in RUNS.items():
        lines.append(f"- {name}: `lowbit train {recipe} --epochs {epochs} " + " ".join(f"--set {o}" for o in overrides) + "`")
    lines += ["", "Reproduce: `python benchmarks/mnist_accuracy.py --data-dir ../shared/data --only RUN --force "
              "--threads T`: the 45-minute runs and their twins ran as two processes with `--threads 1`, one per "
              "core; the 60-minute runs with `--threads 2`, one at a time, alone on the machine."]
    history = RESULTS / "mnist_accuracy_history.md"
    if history.exists():
        lines += ["", history.read_text().strip()]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--only", default=",".join(RUNS), help="comma-separated runs: " + ", ".join(RUNS))
    p.add_argument("--force", action="store_true", help="redo runs already in the results")
    p.add_argument("--quick", action="store_true", help="1 epoch on 5000 images (a smoke test; not saved)")
    p.add_argument("--no-ratio", action="store_true", help="skip the step-time measurement")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: all cores; 1 lets two benchmark processes share 2 cores "
                        "without OpenMP oversubscription)")
    args = p.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    from lowbit.train.config import apply_overrides, get_recipe
    from lowbit.train import run

    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "mnist_accuracy.json"
    results = json.loads(path.read_text()) if path.exists() and not args.quick else {"runs": {}}
    # several processes may share this file (e.g. the W1A1 runs and the fp32 twins side by side): re-read
    # it before every write so one does not drop the other's results.
    def save(name=None, record=None):
        latest = json.loads(path.read_text()) if path.exists() else {"runs": {}}
        if name is not None:
            latest["runs"][name] = record
        for key in ("machine", "step_ratio"):
            if key in results:
                latest[key] = results[key]
        write_results(RESULTS / "mnist_accuracy", latest, markdown(latest))
        return latest

    results["machine"] = machine_record()
    for name in [n.strip() for n in args.only.split(",") if n.strip()]:
        if name not in RUNS:
            p.error(f"unknown run {name!r}; known: {', '.join(RUNS)}")
        if name in results["runs"] and not args.force and not args.quick:
            print(f"{name}: already done ({results['runs'][name]['test_accuracy']:.4f}), skipping")
            continue
        recipe, epochs, overrides, target, _ = RUNS[name]
        overrides = list(overrides) + [f"epochs={1 if args.quick else epochs}"]
        if args.quick:
            overrides = [o for o in overrides if not o.startswith("valid_size=")]
            overrides += ["train_subset=5000", "test_subset=2000"] + (["valid_size=1000"] if VALID[0] in RUNS[name][2] else [])
        cfg = apply_overrides(get_recipe(recipe), overrides)
        out = Path("runs") / "bench_mnist" / name
        if out.exists():
            shutil.rmtree(out)
        print(f"== {name}: lowbit train {recipe} " + " ".join(f"--set {o}" for o in overrides), flush=True)
        m = run(cfg, out, data_dir=args.data_dir, progress=sys.stderr.isatty())
        if args.quick:
            print(f"{name}: quick test accuracy {m['test_accuracy']:.4f}")
            continue
        record = {"recipe": recipe, "epochs": epochs, "overrides": overrides,
                  "test_accuracy": m["test_accuracy"], "wall_time": m["wall_time"],
                  "best_test_accuracy": max(e["test_accuracy"] for e in m["epochs"]),
                  **({"test_accuracy_at_best_valid": m["test_accuracy_at_best_valid"], "best_valid_epoch": m["best_epoch"],
                      "valid_accuracy_at_best_valid": m["valid_accuracy_at_best_valid"]}
                     if "best_epoch" in m else {}),
                  # per epoch without the latent-weight histograms (1 MB a run; the run's weights.png shows them)
                  "per_epoch": [{k: v for k, v in e.items() if k != "weight_histogram"} for e in m["epochs"]],
                  "target": target, "data_source": m["data_source"],
                  "torch_threads": torch_threads()}
        shutil.copy(out / "curves.png", RESULTS / f"mnist_{name}_curves.png")
        results = save(name, record)
    if not args.no_ratio and not args.quick:
        results.setdefault("step_ratio", {}).update({
            "mlp (3x2048)": step_time_ratio("mnist-mlp", MLP_SETTINGS),
            "mlp (3x4096, paper)": step_time_ratio("mnist-mlp", [o for o in MLP_SETTINGS if "hidden" not in o]),
            "convnet": step_time_ratio("mnist-cnn", CNN_SETTINGS),
        })
        for k, r in results["step_ratio"].items():
            print(f"step time {k}: quantized {r['quantized_ms']:.1f} ms, fp32 {r['fp32_ms']:.1f} ms, ratio {r['ratio']:.2f}x")
    if not args.quick:
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
