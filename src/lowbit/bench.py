"""End-to-end runtime benchmark: lowbit's bit-packed runtime vs the same network in PyTorch fp32 eval mode.

    lowbit bench --run            (or: python benchmarks/bench_runtime.py)

Measured side by side in one process, median of repeats, 2 threads for both unless --threads says:

* the paper's MNIST MLP 784-3x4096-10 (W1A1) at batch 1 and 256;
* a stack of four binary 3x3 convs, 64->256->256->256->256 channels at 56x56, batch 1;
* the model file size vs the fp32 ``state_dict``.

The networks have random latent weights and random BN statistics (speed does not depend on the values);
the runtime's outputs are checked against PyTorch's on the same inputs before timing. Writes
``benchmarks/results/runtime.json`` and ``runtime.md``.
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from .benchmarking import machine_record, markdown_table, medians, results_dir, time_interleaved, write_results


def randomize_bn(model, seed: int = 0):
    """Random running statistics and affine parameters for every batch norm (about half the scales
    negative): a trained network's BN, for speed and exactness checks that do not train."""
    import torch
    from torch import nn

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 3)
            m.running_var.copy_(torch.rand(n, generator=g) * 50 + 1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)


def bench_network(name, model, input_shape, batch, repeats, binary_input=False, output="logits", seed=0):
    """Time torch eval vs the runtime on one network; check they agree first."""
    import numpy as np
    import torch

    from .export.image import export_model
    from .runtime import load
    from .runtime.modelfile import save_model_file

    torch.manual_seed(seed)
    randomize_bn(model, seed)
    model.eval()
    meta, arrays = export_model(model, input_shape, 10, binary_input=binary_input, output=output)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.lbt"
        save_model_file(path, "binary_sequential", meta, arrays)
        size = path.stat().st_size
        net = load(path)
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fp32_size = len(buf.getvalue())
    if binary_input:
        x = torch.where(torch.randn(batch, *input_shape) >= 0, 1.0, -1.0)
        xn = x.numpy()
    else:
        x = torch.randint(0, 256, (batch, *input_shape)).float()
        xn = x.numpy().astype(np.uint8)
    with torch.no_grad():
        ref = model(x).numpy()
    out = net.predict(xn)
    if output == "logits":
        agree = float((out.argmax(1) == ref.argmax(1)).mean())
        max_diff = float(np.abs(out - ref).max())
    else:
        agree = float((out == ref).mean())
        max_diff = float(np.abs(out - ref).max())

    plain = plain_fp32_twin(model)
    with torch.no_grad():
        assert torch.equal(plain(x), model(x)), "the pre-binarized twin must compute the same network"

    def timer(m):
        def run():
            with torch.no_grad():
                m(x)
        return run

    t = medians(time_interleaved({"ours": lambda: net.predict(xn), "plain": timer(plain), "fake": timer(model)},
                                 min_repeats=repeats, max_repeats=repeats, warmup=2, settle=0.05))
    t_ours, t_plain, t_fake = t["ours"], t["plain"], t["fake"]
    return {"network": name, "batch": batch, "torch_fp32_ms": 1e3 * t_plain, "torch_fake_quant_ms": 1e3 * t_fake,
            "lowbit_ms": 1e3 * t_ours, "speedup": t_plain / t_ours, "speedup_vs_fake_quant": t_fake / t_ours,
            "agreement": agree, "max_abs_diff": max_diff,
            "model_file_bytes": size, "fp32_state_dict_bytes": fp32_size, "size_ratio": fp32_size / size}


def plain_fp32_twin(model):
    """The same network with its weights binarized once, ahead of time: every forward is then PyTorch's
    plain fp32 GEMM/conv (the fair baseline; the lowbit model itself re-binarizes its latent weights on
    every call, as fake quantization does)."""
    import copy

    import torch

    from .nn.layers import QuantLayerMixin
    from .quant.base import Identity

    twin = copy.deepcopy(model).eval()
    for m in twin.modules():
        if isinstance(m, QuantLayerMixin):
            with torch.no_grad():
                m.weight.copy_(torch.where(m.weight >= 0, 1.0, -1.0))
            m.weight_quantizer = Identity()
    return twin


def markdown(report: dict) -> str:
    """runtime.md from the report (the JSON)."""
    m, threads = report["machine"], report["threads"]
    rows = [[r["network"], r["batch"], f"{r['torch_fp32_ms']:.2f} ms", f"{r['torch_fake_quant_ms']:.2f} ms",
             f"{r['lowbit_ms']:.2f} ms", f"**{r['speedup']:.1f}x**", f"{r['speedup_vs_fake_quant']:.1f}x",
             f"{100 * r['agreement']:.1f}%", f"{r['model_file_bytes'] / 1e6:.2f} MB",
             f"{r['fp32_state_dict_bytes'] / 1e6:.2f} MB", f"{r['size_ratio']:.1f}x"] for r in report["results"]]
    lines = ["# Runtime: lowbit bit-packed inference vs PyTorch fp32 eval (same network)", "",
             f"Machine: {m['cpu']}, {threads} threads, kernel path `{m['kernel_path']}` "
             f"(CPU flags used by dispatch: {', '.join(m.get('cpu_flags', m.get('dispatch_flags', [])))}); "
             f"torch {report['torch']}. Median of {report.get('reps', 15)} interleaved runs. *torch fp32*: the same "
             "network with its weights binarized ahead of time, run by PyTorch's fp32 kernels in eval mode (the fair "
             "baseline); *fake-quant*: the lowbit training model in eval mode, which re-binarizes its latent weights "
             "on every call.", "",
             markdown_table(["network", "batch", "torch fp32", "fake-quant", "lowbit", "speedup vs fp32",
                             "vs fake-quant", "outputs agree", "model file", "fp32 state_dict", "smaller"],
                            rows, "l" + "r" * 10),
             "", "Reproduce: `lowbit bench --run` (or `python benchmarks/bench_runtime.py`)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller conv input (a smoke test)")
    p.add_argument("--out", default=None,
                   help="folder for runtime.json / runtime.md (default: the committed results of the source "
                        "checkout, $LOWBIT_BENCH_RESULTS, else ./lowbit-bench-results)")
    args = p.parse_args(argv)

    import torch
    from torch import nn

    from . import kernels
    from .models.image import mlp
    from .nn.layers import QuantAct, QuantConv2d

    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    reps = 3 if args.quick else 15
    results = []
    hidden = 1024 if args.quick else 4096
    for batch in (1, 256):
        model = mlp(hidden=hidden, depth=3, dropout_in=0.0, dropout_hidden=0.0)
        r = bench_network(f"MNIST MLP 784-3x{hidden}-10", model, (1, 28, 28), batch, reps)
        results.append(r)
        print(f"{r['network']} batch {batch}: torch fp32 {r['torch_fp32_ms']:.2f} ms (fake-quant model "
              f"{r['torch_fake_quant_ms']:.2f} ms), lowbit {r['lowbit_ms']:.2f} ms, speedup {r['speedup']:.1f}x "
              f"(argmax agreement {r['agreement']:.3f})", flush=True)
    hw = 28 if args.quick else 56
    layers = []
    chans = [64, 256, 256, 256, 256]
    for cin, cout in zip(chans[:-1], chans[1:]):
        layers += [QuantConv2d(cin, cout, 3, padding=1, bias=False, pad_value=1.0), nn.BatchNorm2d(cout), QuantAct()]
    stack = nn.Sequential(*layers)
    r = bench_network(f"4 binary 3x3 convs 64-256-256-256-256 @{hw}x{hw}", stack, (64, hw, hw), 1, reps,
                      binary_input=True, output="bits")
    results.append(r)
    print(f"{r['network']} batch 1: torch fp32 {r['torch_fp32_ms']:.2f} ms (fake-quant model "
          f"{r['torch_fake_quant_ms']:.2f} ms), lowbit {r['lowbit_ms']:.2f} ms, speedup {r['speedup']:.1f}x "
          f"(output agreement {r['agreement']:.4f})", flush=True)

    report = {"machine": machine_record(args.threads), "threads": args.threads, "torch": torch.__version__,
              "quick": args.quick, "reps": reps, "results": results}
    if not args.quick:
        out = Path(args.out) if args.out else (results_dir() or Path("lowbit-bench-results"))
        paths = write_results(out / "runtime", report, markdown(report))
        print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
