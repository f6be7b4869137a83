"""End-to-end runtime benchmark: lowbit's bit-packed runtime vs the same network in PyTorch fp32 eval mode.

    lowbit bench --run            (or: python benchmarks/bench_runtime.py)

Measured side by side in one process, median of repeats, 2 threads for both unless --threads says:

* the paper's MNIST MLP 784-3x4096-10 (W1A1) at batch 1 and 256;
* a stack of four binary 3x3 convs, 64->256->256->256->256 channels at 56x56, batch 1, padding 1 with +1 pad,
  each followed by BN + sign: lowbit's native convolution (implicit GEMM on the packed words, threshold fused)
  vs PyTorch fp32 vs the runtime's previous path (NumPy im2col on the packed words + the binary GEMM + the
  threshold pass), with a per-layer breakdown;
* the model file size vs the fp32 ``state_dict``.

The networks have random latent weights and random BN statistics (speed does not depend on the values);
the runtime's outputs are checked against PyTorch's on the same inputs before timing. Writes
``benchmarks/results/runtime.json`` / ``runtime.md`` and ``conv_stack.json`` / ``conv_stack.md``
(``--conv-only``: the conv stack alone, ``conv_stack.*`` only).
"""

from __future__ import annotations

import argparse
import io
import tempfile
from pathlib import Path

from .benchmarking import (loadavg, machine_record, markdown_table, medians, results_dir, time_interleaved,
                           write_results)


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


def use_im2col(net) -> int:
    """Switch every convolution of a loaded network to the runtime's previous path (NumPy im2col + the
    binary GEMM + the threshold pass); returns how many were switched."""
    from .runtime.ops import Conv2d

    n = 0
    for layer in net.layers:
        if isinstance(layer.reduction, Conv2d) and layer.reduction.use_native:
            layer.reduction.use_native = False
            n += 1
    return n


class ForeignLoad:
    """The share of the machine's CPU time that *other* processes used while this one measured: all CPUs' busy
    time (/proc/stat) minus this process's own user + system time (every thread of it, torch's included), over
    the wall time x CPUs. A quiet run is near 0; with another process busy on one of 2 CPUs, ~0.5. None where
    /proc/stat does not exist (not Linux)."""

    def __enter__(self):
        self._start = self._sample()
        self.share = None
        return self

    @staticmethod
    def _sample():
        import os
        import resource

        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        hz = os.sysconf("SC_CLK_TCK")
        busy = (sum(fields[:8]) - fields[3] - fields[4]) / hz  # all but idle and iowait, in seconds
        total = sum(fields[:8]) / hz
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return busy, total, ru.ru_utime + ru.ru_stime

    def __exit__(self, *exc):
        end = self._sample()
        if self._start is not None and end is not None:
            busy, total, own = (b - a for a, b in zip(self._start, end))
            self.share = max(0.0, (busy - own) / total) if total > 0 else None
        return False


def bench_network(name, model, input_shape, batch, repeats, binary_input=False, output="logits", seed=0,
                  im2col_baseline=False, breakdown=False):
    """Time torch eval vs the runtime on one network; check they agree first. With ``im2col_baseline`` the
    runtime's previous conv path is timed alongside (same outputs checked); with ``breakdown`` each conv
    layer is timed alone (see :func:`conv_breakdown`)."""
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
        old = load(path) if im2col_baseline else None
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

    fns = {"ours": lambda: net.predict(xn), "plain": timer(plain), "fake": timer(model)}
    if old is not None:
        switched = use_im2col(old)
        assert switched and np.array_equal(old.predict(xn), out), "the im2col path must compute the same outputs"
        fns["im2col"] = lambda: old.predict(xn)
    with ForeignLoad() as foreign:
        times = time_interleaved(fns, min_repeats=repeats, max_repeats=repeats, warmup=2, settle=0.05)
    t = medians(times)
    t_ours, t_plain, t_fake = t["ours"], t["plain"], t["fake"]
    r = {"network": name, "batch": batch, "torch_fp32_ms": 1e3 * t_plain, "torch_fake_quant_ms": 1e3 * t_fake,
         "lowbit_ms": 1e3 * t_ours, "speedup": t_plain / t_ours, "speedup_vs_fake_quant": t_fake / t_ours,
         "agreement": agree, "max_abs_diff": max_diff,
         "model_file_bytes": size, "fp32_state_dict_bytes": fp32_size, "size_ratio": fp32_size / size,
         "foreign_cpu_share": foreign.share}
    if old is not None:
        r.update(lowbit_im2col_ms=1e3 * t["im2col"], im2col_speedup=t_plain / t["im2col"],
                 speedup_vs_im2col=t["im2col"] / t_ours,
                 # the spread of the ratio over the interleaved rounds (each round times all contenders once)
                 speedup_quartiles=_ratio_quartiles(times["plain"], times["ours"]))
    if breakdown:
        r["layers"] = conv_breakdown(net, xn, repeats)
    return r


def _ratio_quartiles(num, den):
    import numpy as np

    ratios = np.asarray(num) / np.asarray(den)
    return [float(q) for q in np.percentile(ratios, [25, 50, 75])]


def conv_breakdown(net, xn, repeats):
    """Each conv layer of ``net`` alone, on its real input: the native convolution with the threshold fused
    (what ``predict`` runs), its int32 variant, the previous path (NumPy im2col + binary GEMM + threshold pass)
    and, for scale, the binary GEMM alone on ready-made im2col rows. Binary ops: 2 * outputs * K (one XNOR and
    one popcount-add per +-1 product), per second."""
    import numpy as np

    from . import kernels
    from .runtime.ops import Conv2d, im2col

    h = net._k.pack_signs(np.ascontiguousarray(xn.transpose(0, 2, 3, 1)).reshape(-1, xn.shape[1]))
    h = h.reshape(xn.shape[0], xn.shape[2], xn.shape[3], -1)
    rows = []
    for i, layer in enumerate(net.layers):
        conv = layer.reduction
        if not isinstance(conv, Conv2d) or not conv.fuses_threshold or layer.maxpool:
            h = layer.run(kernels, h)
            continue
        ep, pad = layer.epilogue, layer.pad
        patches = im2col(h, conv.kh, conv.kw, conv.sh, conv.sw, conv.ph, conv.pw, 0)
        patches = patches.reshape(-1, patches.shape[-1])
        x_in = h

        def old():
            p = im2col(x_in, conv.kh, conv.kw, conv.sh, conv.sw, conv.ph, conv.pw, 0)
            acc = kernels.binary_matmul_packed(p.reshape(-1, p.shape[-1]), conv.state, p.shape[-1] * 64)
            return kernels.threshold_pack(acc, ep.sign, ep.signed_threshold, pad)

        fns = {"fused": lambda: conv.run_threshold(kernels, x_in, ep, pad),
               "int32": lambda: conv.run(kernels, x_in),
               "im2col": old,
               "gemm": lambda: kernels.binary_matmul_packed(patches, conv.state, patches.shape[1] * 64)}
        out = fns["fused"]()
        assert np.array_equal(out.reshape(-1, out.shape[-1]), fns["im2col"]()), f"layer {i}: fused != im2col path"
        with ForeignLoad() as foreign:
            t = medians(time_interleaved(fns, min_repeats=repeats, max_repeats=repeats, warmup=2))
        n, oh, ow, _ = out.shape
        k = conv.native.k  # bits per output, pad bits included (64 * words per position)
        ops = 2.0 * n * oh * ow * conv.native.out_channels * conv.kh * conv.kw * conv.native.in_channels
        rows.append({"layer": i, "in_channels": int(layer.spec.get("in_channels", 0)),
                     "out_channels": conv.native.out_channels, "out_hw": [oh, ow], "k_bits": k,
                     "fused_ms": 1e3 * t["fused"], "int32_ms": 1e3 * t["int32"], "im2col_path_ms": 1e3 * t["im2col"],
                     "gemm_only_ms": 1e3 * t["gemm"], "fused_gops": ops / t["fused"] / 1e9,
                     "gemm_only_gops": ops / t["gemm"] / 1e9, "speedup_vs_im2col": t["im2col"] / t["fused"],
                     "foreign_cpu_share": foreign.share})
        h = out
    return rows


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
             f"{r['lowbit_im2col_ms']:.2f} ms ({r['im2col_speedup']:.1f}x)" if "lowbit_im2col_ms" in r else "-",
             f"{100 * r['agreement']:.1f}%", f"{r['model_file_bytes'] / 1e6:.2f} MB",
             f"{r['fp32_state_dict_bytes'] / 1e6:.2f} MB", f"{r['size_ratio']:.1f}x"] for r in report["results"]]
    lines = ["# Runtime: lowbit bit-packed inference vs PyTorch fp32 eval (same network)", "",
             f"Machine: {m['cpu']}, {threads} threads, kernel path `{m['kernel_path']}` "
             f"(CPU flags used by dispatch: {', '.join(m.get('cpu_flags', m.get('dispatch_flags', [])))}); "
             f"torch {report['torch']}. Median of {report.get('reps', 15)} interleaved runs "
             f"({report.get('conv_reps', report.get('reps', 15))} for the conv stack). *torch fp32*: the same "
             "network with its weights binarized ahead of time, run by PyTorch's fp32 kernels in eval mode (the fair "
             "baseline); *fake-quant*: the lowbit training model in eval mode, which re-binarizes its latent weights "
             "on every call. *previous conv path*: the runtime's convolutions as they ran before the native binary "
             "convolution (NumPy im2col on the packed words + binary GEMM + threshold pass), with its speedup vs fp32 "
             "(details: conv_stack.md).", "",
             markdown_table(["network", "batch", "torch fp32", "fake-quant", "lowbit", "speedup vs fp32",
                             "vs fake-quant", "previous conv path", "outputs agree", "model file", "fp32 state_dict",
                             "smaller"], rows, "l" + "r" * 11),
             "", "Reproduce: `lowbit bench --run` (or `python benchmarks/bench_runtime.py`)."]
    return "\n".join(lines) + "\n"


def conv_markdown(report: dict) -> str:
    """conv_stack.md from the report (the JSON)."""
    m, threads, r = report["machine"], report["threads"], report["conv"]
    q = r.get("speedup_quartiles")
    rows = [["torch fp32 eval (weights binarized ahead)", f"{r['torch_fp32_ms']:.2f} ms", "1.0x"],
            ["torch fake-quant (the lowbit training model)", f"{r['torch_fake_quant_ms']:.2f} ms",
             f"{r['torch_fp32_ms'] / r['torch_fake_quant_ms']:.1f}x"],
            ["lowbit, previous path (NumPy im2col + binary GEMM + threshold pass)", f"{r['lowbit_im2col_ms']:.2f} ms",
             f"{r['im2col_speedup']:.1f}x"],
            ["**lowbit, native binary conv (implicit GEMM, threshold fused)**", f"**{r['lowbit_ms']:.2f} ms**",
             f"**{r['speedup']:.1f}x**"]]
    layer_rows = [[f"{x['in_channels']}->{x['out_channels']} @{x['out_hw'][0]}x{x['out_hw'][1]}",
                   f"{x['fused_ms']:.3f} ms", f"{x['int32_ms']:.3f} ms", f"{x['im2col_path_ms']:.3f} ms",
                   f"{x['gemm_only_ms']:.3f} ms", f"{x['fused_gops']:.0f}", f"{x['gemm_only_gops']:.0f}",
                   f"{x['speedup_vs_im2col']:.1f}x"] for x in r.get("layers", [])]
    lines = ["# Binary conv stack: lowbit's native convolution vs PyTorch fp32 vs the previous im2col path", "",
             f"{r['network']}, batch {r['batch']}, each conv followed by BN + sign (folded into integer thresholds, "
             f"packed back to bits). Machine: {m['cpu']} ({m.get('cpus')} CPUs, shared with other work; 1/5/15-minute "
             f"load averages {m.get('loadavg_start')} at the start, {m.get('loadavg')} at the end), {threads} threads for lowbit and torch, kernel path `{m['kernel_path']}`; torch "
             f"{report['torch']}. Median of {report['reps']} interleaved rounds (each round runs every contender "
             "once, after 50 ms of untimed calls of it).", "",
             markdown_table(["contender", "time", "speedup vs torch fp32"], rows, "lrr"), "",
             f"Outputs identical to PyTorch's: {100 * r['agreement']:.1f}% of the output values; the previous path's "
             f"too. Native vs the previous path: **{r['speedup_vs_im2col']:.1f}x**."
             + (f" Speedup vs torch fp32 per round: quartiles {q[0]:.1f}x / {q[1]:.1f}x / {q[2]:.1f}x." if q else ""),
             "", _foreign_note(r), "",
             "Per layer (each on its real input, median of the same number of interleaved runs; binary ops = "
             "2 x outputs x K, i.e. an XNOR and a popcount-add per +-1 product):", "",
             markdown_table(["layer", "native, fused", "native, int32 out", "previous path", "binary GEMM alone",
                             "native Gop/s", "GEMM Gop/s", "native vs previous"], layer_rows, "l" + "r" * 7),
             "", "*binary GEMM alone*: the existing XNOR GEMM on ready-made im2col rows (no im2col, no threshold), "
             "the rate the previous path's convolution was measured against.", "",
             "Reproduce: `python benchmarks/bench_runtime.py --conv-only` (the whole runtime benchmark: "
             "`lowbit bench --run`)."]
    return "\n".join(lines) + "\n"


def _foreign_note(r: dict) -> str:
    share = r.get("foreign_cpu_share")
    if share is None:
        return "(The CPU time other processes took during the timed runs is not known on this OS.)"
    layers = [x["foreign_cpu_share"] for x in r.get("layers", []) if x.get("foreign_cpu_share") is not None]
    return (f"Other processes took {100 * share:.1f}% of the machine's CPU time during these timed rounds"
            + (f" (at most {100 * max(layers):.1f}% during the per-layer timings)" if layers else "")
            + ": near 0 is a quiet run; another process busy on one of 2 CPUs shows as ~50%, and torch's 2 "
            "OpenMP threads then slow down several times (its spin barriers), inflating the ratio.")


def conv_stack(hw: int):
    """The benchmark's 4 binary 3x3 convs, 64->256->256->256->256, padding 1 with +1 pad, BN + sign after each."""
    from torch import nn

    from .nn.layers import QuantAct, QuantConv2d

    layers = []
    chans = [64, 256, 256, 256, 256]
    for cin, cout in zip(chans[:-1], chans[1:]):
        layers += [QuantConv2d(cin, cout, 3, padding=1, bias=False, pad_value=1.0), nn.BatchNorm2d(cout), QuantAct()]
    return nn.Sequential(*layers)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="fewer repeats, smaller conv input (a smoke test)")
    p.add_argument("--conv-only", action="store_true", help="only the binary conv stack (writes conv_stack.*)")
    p.add_argument("--reps", type=int, default=None,
                   help="interleaved rounds per network (default 15; 41 for the conv stack)")
    p.add_argument("--out", default=None,
                   help="folder for runtime.json / runtime.md (default: the committed results of the source "
                        "checkout, $LOWBIT_BENCH_RESULTS, else ./lowbit-bench-results)")
    args = p.parse_args(argv)

    import torch

    from . import kernels
    from .models.image import mlp

    torch.set_num_threads(args.threads)
    kernels.set_num_threads(args.threads)
    load_start = loadavg()  # machine_record's loadavg is taken at the end: both go in the report
    reps = args.reps or (3 if args.quick else 15)
    conv_reps = args.reps or (3 if args.quick else 41)
    results = []
    hidden = 1024 if args.quick else 4096
    for batch in () if args.conv_only else (1, 256):
        model = mlp(hidden=hidden, depth=3, dropout_in=0.0, dropout_hidden=0.0)
        r = bench_network(f"MNIST MLP 784-3x{hidden}-10", model, (1, 28, 28), batch, reps)
        results.append(r)
        print(f"{r['network']} batch {batch}: torch fp32 {r['torch_fp32_ms']:.2f} ms (fake-quant model "
              f"{r['torch_fake_quant_ms']:.2f} ms), lowbit {r['lowbit_ms']:.2f} ms, speedup {r['speedup']:.1f}x "
              f"(argmax agreement {r['agreement']:.3f})", flush=True)
    hw = 28 if args.quick else 56
    r = bench_network(f"4 binary 3x3 convs 64-256-256-256-256 @{hw}x{hw}", conv_stack(hw), (64, hw, hw), 1,
                      conv_reps, binary_input=True, output="bits", im2col_baseline=True, breakdown=True)
    results.append(r)
    share = r["foreign_cpu_share"]
    print(f"{r['network']} batch 1: torch fp32 {r['torch_fp32_ms']:.2f} ms (fake-quant model "
          f"{r['torch_fake_quant_ms']:.2f} ms), lowbit {r['lowbit_ms']:.2f} ms, speedup {r['speedup']:.1f}x; "
          f"previous im2col path {r['lowbit_im2col_ms']:.2f} ms ({r['im2col_speedup']:.1f}x), native vs previous "
          f"{r['speedup_vs_im2col']:.1f}x (output agreement {r['agreement']:.4f}; other processes' CPU share "
          f"{'unknown' if share is None else f'{100 * share:.1f}%'})", flush=True)
    for x in r["layers"]:
        print(f"  {x['in_channels']}->{x['out_channels']}: native fused {x['fused_ms']:.3f} ms, int32 "
              f"{x['int32_ms']:.3f} ms, previous path {x['im2col_path_ms']:.3f} ms, GEMM alone "
              f"{x['gemm_only_ms']:.3f} ms", flush=True)

    machine = machine_record(args.threads)
    machine["loadavg_start"] = load_start
    if not args.quick:
        out = Path(args.out) if args.out else (results_dir() or Path("lowbit-bench-results"))
        conv_report = {"machine": machine, "threads": args.threads, "torch": torch.__version__, "reps": conv_reps,
                       "conv": results[-1]}
        paths = write_results(out / "conv_stack", conv_report, conv_markdown(conv_report))
        print(f"wrote {paths[0]} and {paths[1]}")
        if not args.conv_only:
            report = {"machine": machine, "threads": args.threads, "torch": torch.__version__,
                      "quick": args.quick, "reps": reps, "conv_reps": conv_reps, "results": results}
            paths = write_results(out / "runtime", report, markdown(report))
            print(f"wrote {paths[0]} and {paths[1]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
