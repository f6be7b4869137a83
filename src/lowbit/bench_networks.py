"""Whole networks on the runtime vs the same networks in PyTorch fp32 and onnxruntime fp32.

    lowbit bench --run networks        (or: python benchmarks/bench_networks.py [--quick] [--only NAME])

For each network (the recipes' architectures at their full size, random latent weights and random BN
statistics: speed does not depend on the values): the quantized model is exported with
:func:`lowbit.export.export_model` and its runtime predictions are checked against PyTorch's on the timed
batch; then, side by side in one process (interleaved rounds, median), the runtime, the network's float
twin (identity quantizers: the same layers in fp32, PyTorch eval) and that twin through onnxruntime
(``torch.onnx.export``; skipped when onnxruntime is not installed). 2 threads for everyone unless
``--threads`` says. Writes ``networks.json`` / ``networks.md`` to the results folder.
"""
from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from .benchmarking import (PROBE_NAMES, machine_record, markdown_table, medians, probe_peaks, results_dir,
                           time_interleaved, write_results)

W2A2 = {"weight_quantizer": "linear:bits=2", "act_quantizer": "linear:bits=2"}
PACT_SAWB = {"weight_quantizer": "sawb:bits=2", "act_quantizer": "pact:bits=2,alpha=3.0"}
FLOAT = {"weight_quantizer": "identity", "act_quantizer": "identity"}

# (name, recipe, model-argument changes, input (C, H, W), batches)
NETWORKS = [
    ("imagenet-resnet18-pact-sawb (W2A2)", "imagenet-resnet18-pact-sawb", {}, (3, 224, 224), (1, 16)),
    ("imagenet-alexnet (W1A2)", "imagenet-alexnet", {}, (3, 224, 224), (1, 16)),
    ("cifar10-cnn (W1A1)", "cifar10-cnn", {}, (3, 32, 32), (1, 64)),
    ("cifar10-cnn W2A2", "cifar10-cnn", dict(W2A2, norm="bn"), (3, 32, 32), (1, 64)),
    ("cifar10-resnet (W1A1, real shortcuts)", "cifar10-resnet", {}, (3, 32, 32), (1, 64)),
    ("mnist-mlp W2A2 PACT+SAWB", "mnist-mlp-qnn", PACT_SAWB, (1, 28, 28), (256,)),
    ("mnist-cnn W2A2 PACT+SAWB", "mnist-cnn-qnn", PACT_SAWB, (1, 28, 28), (256,)),
]


def build(recipe: str, changes: dict, float_twin: bool = False):
    from .models import build_model
    from .train.config import get_recipe

    cfg = get_recipe(recipe)
    args = dict(cfg.model_args, **changes)
    if float_twin:
        args.update(FLOAT)
    return build_model(cfg.model, **args).eval()


def randomize(model, seed: int = 0):
    """Trained-looking BN statistics and PACT clip levels (speed and exactness checks without training)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if getattr(m, "running_mean", None) is not None:
            n = m.running_mean.numel()
            m.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 4)
            m.running_var.copy_(torch.rand(n, generator=g) * 4 + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.25)
                m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
        if type(m).__name__ == "PACT":
            m.alpha.data.fill_(2.0)
    return model


def onnx_session(model, x, threads: int):
    """An onnxruntime session of ``model`` (fp32), or None when onnxruntime is not installed."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    import torch

    buf = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(model, (x,), buf, input_names=["x"], output_names=["y"], dynamo=False)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # its pool threads otherwise spin-wait after each run and take the cores of the contender timed next:
    # AlexNet W1A2 at batch 1 timed 37 ms in lowbit's runtime after onnxruntime vs 22-24 ms alone, with 20 ms
    # of untimed calls between (settle), while onnxruntime itself ran no slower with blocking waits (75 ms)
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(buf.getvalue(), opts, providers=["CPUExecutionProvider"])


def bench_one(name, recipe, changes, shape, batch, reps, threads, seed=0) -> dict:
    import numpy as np
    import torch

    from .export import export_model
    from .runtime import load

    torch.manual_seed(seed)
    model = randomize(build(recipe, changes), seed)
    twin = randomize(build(recipe, changes, float_twin=True), seed)
    x = torch.randint(0, 256, (batch,) + tuple(shape), generator=torch.Generator().manual_seed(seed)).float()
    xu = x.numpy().astype(np.uint8)
    with tempfile.TemporaryDirectory() as d:
        report = export_model(model, x[:1], Path(d) / "m.lbt")
        net = load(Path(d) / "m.lbt")
    with torch.no_grad():
        ref = model(x).numpy()
    out = net.predict(xu)
    agree = float((out.argmax(1) == ref.argmax(1)).mean())
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    sess = onnx_session(twin, x, threads)

    def torch_run():
        with torch.no_grad():
            twin(x)

    fns = {"lowbit": lambda: net.predict(xu), "torch": torch_run}
    if sess is not None:
        xo = x.numpy()
        fns["onnxruntime"] = lambda: sess.run(None, {"x": xo})
    t = medians(time_interleaved(fns, min_repeats=reps, max_repeats=reps, warmup=1, settle=0.02))
    r = {"network": name, "recipe": recipe, "changes": changes, "batch": batch, "input": list(shape),
         "lowbit_ms": 1e3 * t["lowbit"], "torch_fp32_ms": 1e3 * t["torch"],
         "onnxruntime_fp32_ms": 1e3 * t["onnxruntime"] if "onnxruntime" in t else None,
         "speedup_vs_torch": t["torch"] / t["lowbit"],
         "speedup_vs_onnxruntime": t["onnxruntime"] / t["lowbit"] if "onnxruntime" in t else None,
         "argmax_agreement": agree, "model_file_bytes": report["bytes"],
         "fp32_state_dict_bytes": len(buf.getvalue()), "kernels": report["layers"]}
    r["size_ratio"] = r["fp32_state_dict_bytes"] / r["model_file_bytes"]
    return r


def markdown(report: dict) -> str:
    m = report["machine"]
    rows = []
    for r in report["results"]:
        ort = "-" if r["onnxruntime_fp32_ms"] is None else f"{r['onnxruntime_fp32_ms']:.2f} ms"
        vs_ort = "-" if r["speedup_vs_onnxruntime"] is None else f"{r['speedup_vs_onnxruntime']:.1f}x"
        rows.append([r["network"], r["batch"], f"{r['lowbit_ms']:.2f} ms", f"{r['torch_fp32_ms']:.2f} ms", ort,
                     f"**{r['speedup_vs_torch']:.1f}x**", vs_ort, f"{100 * r['argmax_agreement']:.0f}%",
                     f"{r['model_file_bytes'] / 1e6:.2f} MB", f"{r['size_ratio']:.1f}x"])
    return "\n".join([
        "# Whole networks: lowbit runtime vs the float twin in PyTorch fp32 and onnxruntime fp32", "",
        f"Machine: {m['cpu']}, {report['threads']} threads, kernel path `{m['kernel_path']}`; torch "
        f"{report['torch']}. Median of {report['reps']} interleaved rounds. *torch fp32* / *onnxruntime*: the same "
        "architecture with identity quantizers (fp32 weights and activations); onnxruntime's pool threads block "
        "between runs instead of spin-waiting (spinning, they slowed whichever contender ran next). *agree*: runtime "
        "vs the quantized PyTorch model's predicted classes on the timed batch.", "",
        markdown_table(["network", "batch", "lowbit", "torch fp32", "onnxruntime fp32", "vs torch", "vs onnxruntime",
                        "agree", "model file", "smaller than fp32"], rows, "lrrrrrrrrr"),
        "", ceiling(report.get("instruction_peaks_gops") or {}),
        "", "Reproduce: `lowbit bench --run networks` (or `python benchmarks/bench_networks.py`)."]) + "\n"


def ceiling(peaks: dict) -> str:
    """What the CPU's instruction rates allow: the bound on a k-bit layer's speed-up over an fp32 one."""
    vnni, fma, pop, amx = (peaks.get(PROBE_NAMES[i]) for i in (0, 5, 2, 7))
    if not fma:
        return ""
    parts = [f"**Ceiling on this CPU** (instruction-rate probe, all threads): vfmadd231ps zmm {fma:.0f} GOPS"]
    if vnni:
        parts.append(f"vpdpbusd zmm {vnni:.0f} GOPS, so a k-bit layer run on the VNNI int8 kernel is at most "
                     f"**{vnni / fma:.1f}x** an fp32 layer at the same efficiency")
    if amx:
        parts.append(f"AMX tdpbusd (32x32 blocks, tiles from L1) {amx:.0f} GOPS: **{amx / fma:.1f}x**")
    if pop:
        parts.append(f"xor+vpopcntq+add {pop:.0f} GOPS, so a binary layer at most **{pop / fma:.1f}x** (a bit-serial "
                     f"layer of p x q bit planes {pop / fma:.1f}/(p q) x)")
    return ("; ".join(parts) + ". Float layers (first, last, real-valued shortcuts) run on lowbit's own float32 "
            "kernel at most at the fp32 rate. A whole network can beat these ratios where PyTorch's fp32 runs "
            "below the FMA peak (small batches, convs with few channels).")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="3 repeats, batch 1 only, no results written")
    p.add_argument("--only", help="networks whose name contains this text")
    p.add_argument("--out", default=None, help="results folder (default: benchmarks/results of the checkout)")
    args = p.parse_args(argv)

    import torch

    from . import kernels
    from .registry import RECIPES

    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    reps = 3 if args.quick else 11
    results = []
    for name, recipe, changes, shape, batches in NETWORKS:
        if (args.only and args.only not in name) or recipe not in RECIPES:
            continue
        for batch in batches[:1] if args.quick else batches:
            r = bench_one(name, recipe, changes, shape, batch, reps, args.threads)
            results.append(r)
            ort = "" if r["onnxruntime_fp32_ms"] is None else f", onnxruntime {r['onnxruntime_fp32_ms']:.2f} ms"
            print(f"{name} batch {batch}: lowbit {r['lowbit_ms']:.2f} ms, torch fp32 {r['torch_fp32_ms']:.2f} ms{ort}: "
                  f"{r['speedup_vs_torch']:.1f}x torch; agree {r['argmax_agreement']:.3f}; file "
                  f"{r['size_ratio']:.1f}x smaller", flush=True)
    report = {"machine": machine_record(args.threads), "threads": args.threads, "torch": torch.__version__,
              "reps": reps, "results": results, "instruction_peaks_gops": probe_peaks(args.threads)}
    if not args.quick:
        out = Path(args.out) if args.out else (results_dir() or Path("lowbit-bench-results"))
        paths = write_results(out / "networks", report, markdown(report))
        print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
