"""GPU benchmark of lowbit's Triton kernels (lowbit.kernels.gpu) against the paper's GPU claims and cuBLAS.

The paper (Hubara et al., QNN, Run-time/ code; GTX 750): the XNOR kernel is ~23x faster than the same
tiled GEMM in float (its "unoptimized" baseline) and 3.4x faster than cuBLAS at 8192^3, and the MNIST
MLP runs 7x faster than with the baseline kernel. One run of this script measures, on the current GPU:

1. **GEMMs** at 8192^3 and at the MNIST MLP's layers (batch 100 and 256, 784-4096-4096-4096-10): the
   tiled XNOR GEMM on pre-packed operands (tile chosen by a short sweep, all tiles recorded), the same
   plus packing the activations, the naive XNOR kernel (one program per output; timed on a share of the
   rows and scaled when a full run would be long), the bit-serial 2-bit GEMM (u2 activations x o2
   weights), the tiled float32 Triton GEMM of the same structure (the paper's baseline), and cuBLAS
   through torch: fp32 (TF32 off), TF32, bf16, and ``torch._int_mm`` (int8 tensor cores, where its
   shape rules allow). Every XNOR result is checked against the fp32 product (exact for +-1).
2. **MNIST MLP inference end to end** (a lowbit ``mlp`` with random weights, eval mode): the binary
   pipeline (first layer u8 pixels x binary weights by ``quant_matmul``, hidden and last layers XNOR GEMMs
   on packed weights, each followed by the model's own batch norm and sign packing) vs the model's fp32
   forward in PyTorch, the same with weights binarized beforehand, and the pipeline with the Triton float
   baseline kernel in every layer (the paper's 7x comparison). Predictions are compared with the model's.
3. **One training step** of the BNN ConvNet (CIFAR-10 shape, fake-quantized binary weights and
   activations) vs its fp32 twin (identity quantizers), forward + backward + Adam step.
4. **PTX**: whether the kernels that ran contain ``popc`` (the SWAR count lowered to the instruction),
   and the same for ahead-of-time builds of every popcount kernel.

Times are medians of CUDA-event timings (each sample times enough back-to-back calls to last about a
millisecond, so launch overhead is included as a caller sees it). Results: benchmarks/results/gpu_gemm.json
and .md, naming the GPU. Without CUDA the script exits with status 2.

``--smoke`` runs every step at tiny sizes through Triton's CPU interpreter (TRITON_INTERPRET=1, wall-clock
timing) to check the script end to end without a GPU; its numbers are not GPU figures, and it writes to a
temporary directory unless ``--out`` says otherwise.

Usage on a GPU machine: ``pip install -e '.[gpu]' && python benchmarks/gpu_gemm.py`` (about 2-4 minutes).
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from lowbit.benchmarking import machine_record, write_results

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

FULL = {
    "square": (8192, 8192, 8192),
    "batches": (100, 256),
    "mlp": (784, 4096, 3, 10),  # in, hidden, depth, classes
    "conv": dict(in_shape=(3, 32, 32), batch=100),
    "naive_budget_s": 8.0,  # a longer naive run is timed on a share of the rows and scaled
}
SMOKE = {
    "square": (24, 20, 100),
    "batches": (4, 20),
    "mlp": (784, 32, 3, 10),
    "conv": dict(in_shape=(3, 8, 8), batch=4, channels=(8, "M", 8, "M"), fc=(16,)),
    "naive_budget_s": 1.0,
}

XNOR_TILES = [(64, 64, 4, 8), (64, 64, 8, 8), (128, 64, 4, 8), (128, 128, 2, 8), (64, 64, 2, 4),
              (32, 64, 4, 4), (32, 32, 8, 4), (16, 64, 4, 4), (16, 128, 4, 4)]
BITSERIAL_TILES = [(64, 64, 2, 8), (64, 64, 4, 8), (32, 64, 2, 4), (16, 64, 2, 4)]
FLOAT_TILES = [(64, 64, 8, 8), (64, 64, 16, 8), (32, 32, 16, 4)]


# ---------------------------------------------------------------------------------------------------
# timing
# ---------------------------------------------------------------------------------------------------
class Timer:
    """Median time of a callable: CUDA events on the GPU, perf_counter under the interpreter."""

    def __init__(self, torch, cuda: bool, samples: int):
        self.torch, self.cuda, self.samples = torch, cuda, samples

    def _once(self, fn, inner: int) -> float:
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(inner):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3 / inner
        t = time.perf_counter()
        for _ in range(inner):
            fn()
        return (time.perf_counter() - t) / inner

    def __call__(self, fn, samples: int = None) -> float:
        """Seconds per call (median). Under the interpreter (smoke runs): one call, no warm-up."""
        if not self.cuda:
            return self._once(fn, 1)
        fn()  # warm-up (compiles on first use)
        first = self._once(fn, 1)
        inner = max(1, min(200, int(1e-3 / max(first, 1e-7)))) if self.cuda else 1
        return statistics.median(self._once(fn, inner) for _ in range(samples or self.samples))


def _tops(m, n, k, seconds) -> float:
    return 2.0 * m * n * k / seconds / 1e12


# ---------------------------------------------------------------------------------------------------
# 1. GEMMs
# ---------------------------------------------------------------------------------------------------
def _sweep(timer, run, tiles, Block, fits):
    """Time ``run(block)`` for each tile that fits; (best block, {tile: ms or error})."""
    table, best = {}, None
    for t in tiles:
        blk = Block(*t)
        if not fits(blk):
            continue
        try:
            sec = timer(lambda: run(blk), samples=3)
        except Exception as e:  # a tile that does not compile on this GPU is recorded, not fatal
            table[str(t)] = f"error: {type(e).__name__}: {str(e)[:120]}"
            continue
        table[str(t)] = round(sec * 1e3, 4)
        if best is None or sec < best[1]:
            best = (blk, sec)
    return best, table


def bench_gemm(torch, gpu, timer, dev, name, m, n, k, naive_budget_s, smoke):
    g = torch.Generator(device=dev).manual_seed(m * 7 + n * 3 + k)
    a = (torch.randint(0, 2, (m, k), generator=g, device=dev, dtype=torch.int8) * 2 - 1)
    b = (torch.randint(0, 2, (n, k), generator=g, device=dev, dtype=torch.int8) * 2 - 1)
    af, bf = a.float(), b.float()
    pa, pb = gpu.pack_bits(a), gpu.pack_bits(b)
    want = af @ bf.t() if not smoke else (a.long() @ b.long().t()).float()
    row = {"case": name, "M": m, "N": n, "K": k, "ms": {}, "notes": []}
    ms = row["ms"]

    def small_ok(blk):  # skip tiles far larger than the problem
        return blk.m <= max(16, 2 * m) and blk.n <= max(16, 2 * n)

    # XNOR tiled, packed operands: sweep the tile
    tiles = XNOR_TILES if not smoke else [(16, 16, 2, 1), (16, 32, 1, 2)]
    best, row["xnor_tiles_ms"] = _sweep(timer, lambda blk: gpu.binary_matmul_packed(pa, pb, k, block=blk), tiles,
                                        gpu.Block, small_ok)
    blk = best[0]
    row["xnor_tile"] = [blk.m, blk.n, blk.k, blk.num_warps]
    got = gpu.binary_matmul_packed(pa, pb, k, block=blk)
    row["xnor_exact"] = bool(torch.equal(got.float(), want))
    ms["xnor (packed)"] = timer(lambda: gpu.binary_matmul_packed(pa, pb, k, block=blk))
    ms["xnor + pack A"] = timer(lambda: gpu.binary_matmul_packed(gpu.pack_signs(af), pb, k, block=blk))
    ms["pack A only"] = timer(lambda: gpu.pack_signs(af))

    # naive XNOR: scaled from a share of the rows when a full run would be long
    rows, probe = m, min(m, 64 if not smoke else 1)  # probe enough rows to fill the GPU
    est = timer(lambda: gpu.binary_matmul_naive(pa[:probe], pb, k), samples=1) * m / probe
    if smoke:  # the interpreter runs one program at a time: one row is plenty
        rows = probe
        row["notes"].append(f"naive kernel timed on {rows} of {m} rows and scaled")
    elif est > naive_budget_s:
        rows = max(probe, int(m * naive_budget_s / est / 3))
        row["notes"].append(f"naive kernel timed on {rows} of {m} rows and scaled")
    sub = pa[:rows]
    t_naive = timer(lambda: gpu.binary_matmul_naive(sub, pb, k), samples=3 if not smoke else 1) * (m / rows)
    ms["naive xnor"] = t_naive
    row["naive_exact"] = bool(torch.equal(gpu.binary_matmul_naive(sub, pb, k).float(), want[:rows]))

    # bit-serial 2-bit: u2 activations x o2 weights, packed
    xa = torch.randint(0, 4, (m, k), generator=g, device=dev, dtype=torch.int8)
    wb = torch.randint(0, 4, (n, k), generator=g, device=dev, dtype=torch.int8) * 2 - 3
    qa, qb = gpu.pack_levels(xa, "u2"), gpu.pack_levels(wb, "o2")
    tiles = BITSERIAL_TILES if not smoke else [(16, 16, 2, 1)]
    best, row["bitserial_tiles_ms"] = _sweep(timer, lambda blk: gpu.quant_matmul_packed(qa, qb, block=blk), tiles,
                                             gpu.Block, small_ok)
    qblk = best[0]
    ms["bit-serial u2 x o2 (packed)"] = timer(lambda: gpu.quant_matmul_packed(qa, qb, block=qblk))
    row["bitserial_exact"] = bool(torch.equal(gpu.quant_matmul_packed(qa, qb, block=qblk).double(),
                                              xa.double() @ wb.double().t()))

    # the paper's baseline: the same tiled GEMM in float32
    tiles = FLOAT_TILES if not smoke else [(16, 16, 16, 1)]
    best, row["float_tiles_ms"] = _sweep(timer, lambda blk: gpu.float_matmul(af, bf, block=blk), tiles, gpu.Block,
                                         small_ok)
    fblk = best[0]
    ms["triton float32 tiled (baseline)"] = timer(lambda: gpu.float_matmul(af, bf, block=fblk))

    # cuBLAS through torch
    if not smoke:
        torch.backends.cuda.matmul.allow_tf32 = False
        ms["cuBLAS fp32"] = timer(lambda: af @ bf.t())
        torch.backends.cuda.matmul.allow_tf32 = True
        ms["cuBLAS tf32"] = timer(lambda: af @ bf.t())
        torch.backends.cuda.matmul.allow_tf32 = False
        ah, bh = a.to(torch.bfloat16), b.to(torch.bfloat16)
        ms["cuBLAS bf16"] = timer(lambda: ah @ bh.t())
        if m > 16 and k % 8 == 0 and n % 8 == 0:
            bt = b.t()
            ms["torch._int_mm int8"] = timer(lambda: torch._int_mm(a, bt))
        else:
            row["notes"].append("torch._int_mm needs M > 16 and K, N multiples of 8")
    else:
        ms["torch fp32 (CPU)"] = timer(lambda: af @ bf.t())

    row["ms"] = {key: round(v * 1e3, 4) for key, v in ms.items()}
    row["TOPS"] = {key: round(_tops(m, n, k, v), 3) for key, v in ms.items() if key != "pack A only"}
    x = ms["xnor (packed)"]
    row["speedup_of_xnor"] = {key: round(v / x, 2) for key, v in ms.items()
                              if key not in ("xnor (packed)", "pack A only")}
    return row


# ---------------------------------------------------------------------------------------------------
# 2. MNIST MLP end to end
# ---------------------------------------------------------------------------------------------------
def _mlp_model(torch, cfg, dev):
    from lowbit.models.image import mlp

    n_in, hidden, depth, classes = cfg
    torch.manual_seed(0)
    model = mlp(in_shape=(1, 28, 28), num_classes=classes, hidden=hidden, depth=depth)
    with torch.no_grad():  # batch norm statistics of the right scale, so that signs vary
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm1d):
                fan = 784 / 3 if mod is model[2] else hidden  # variance of a +-1-weighted sum
                mod.running_mean.normal_(0, 0.1 * math.sqrt(fan))
                mod.running_var.uniform_(0.5 * fan, 1.5 * fan)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.normal_(0, 0.1)
    return model.to(dev).eval()


def _binary_pipeline(torch, gpu, model, dev, float_kernel=False):
    """A forward function running the model's layers on lowbit's GPU kernels (weights prepared once)."""
    from lowbit.nn.layers import PIXEL_GAIN, QuantLinear

    linears = [mod for mod in model if isinstance(mod, QuantLinear)]
    norms = [mod for mod in model if isinstance(mod, torch.nn.BatchNorm1d)]
    signs = [torch.where(lin.weight >= 0, 1, -1).to(torch.int8).detach() for lin in linears]
    w1 = signs[0]
    w1_sum = w1.sum(1, dtype=torch.int32).float()
    packed = [(gpu.pack_bits(w, check=False), w.shape[1]) for w in signs[1:]]
    floats = [w.float() for w in signs]

    def forward(pixels_u8):
        x = pixels_u8.view(pixels_u8.shape[0], -1)
        if float_kernel:
            y = gpu.float_matmul(x.float(), floats[0]) * PIXEL_GAIN - w1_sum
        else:
            y = gpu.quant_matmul(x, w1, "u8", "binary", check=False).float() * PIXEL_GAIN - w1_sum
        h = norms[0](y)
        for i, (pw, k) in enumerate(packed):
            if float_kernel:
                acc = gpu.float_matmul(torch.where(h >= 0, 1.0, -1.0), floats[i + 1])
            else:
                acc = gpu.binary_matmul_packed(gpu.pack_signs(h), pw, k).float()
            h = norms[i + 1](acc)
        return h

    return forward


def _prebinarized_fp32(torch, model):
    """The model's forward in plain PyTorch fp32 with the weights binarized once (a fair fp32 baseline)."""
    import torch.nn.functional as F
    from lowbit.nn.layers import PIXEL_GAIN, QuantLinear

    linears = [mod for mod in model if isinstance(mod, QuantLinear)]
    norms = [mod for mod in model if isinstance(mod, torch.nn.BatchNorm1d)]
    ws = [torch.where(lin.weight >= 0, 1.0, -1.0).detach() for lin in linears]
    w1_sum = ws[0].sum(1)

    def forward(pixels):
        h = norms[0](F.linear(pixels.view(pixels.shape[0], -1), ws[0]) * PIXEL_GAIN - w1_sum)
        for w, bn in zip(ws[1:], norms[1:]):
            h = bn(F.linear(torch.where(h >= 0, 1.0, -1.0), w))
        return h

    return forward


def bench_mlp(torch, gpu, timer, dev, cfg, batch):
    model = _mlp_model(torch, cfg, dev)
    g = torch.Generator(device=dev).manual_seed(batch)
    pixels = torch.randint(0, 256, (batch, 1, 28, 28), generator=g, device=dev, dtype=torch.uint8)
    pix_f = pixels.float()
    binary = _binary_pipeline(torch, gpu, model, dev)
    baseline = _binary_pipeline(torch, gpu, model, dev, float_kernel=True)
    fp32 = _prebinarized_fp32(torch, model)
    with torch.no_grad():
        ref = model(pix_f)
        out = binary(pixels)
        out_base = baseline(pixels)
        ms = {
            "binary kernels (lowbit Triton)": timer(lambda: binary(pixels)),
            "PyTorch fp32, lowbit model (fake-quantized)": timer(lambda: model(pix_f)),
            "PyTorch fp32, weights binarized once": timer(lambda: fp32(pix_f)),
            "Triton float32 tiled baseline kernel": timer(lambda: baseline(pixels)),
        }
    x = ms["binary kernels (lowbit Triton)"]
    return {
        "batch": batch, "layers": f"{cfg[0]}-" + "-".join([str(cfg[1])] * cfg[2]) + f"-{cfg[3]}",
        "ms": {key: round(v * 1e3, 4) for key, v in ms.items()},
        "speedup_of_binary": {key: round(v / x, 2) for key, v in ms.items() if key != "binary kernels (lowbit Triton)"},
        "predictions_agree": float((out.argmax(1) == ref.argmax(1)).float().mean()),
        "max_abs_logit_diff": float((out - ref).abs().max()),
        "baseline_predictions_agree": float((out_base.argmax(1) == ref.argmax(1)).float().mean()),
    }


# ---------------------------------------------------------------------------------------------------
# 3. ConvNet training step
# ---------------------------------------------------------------------------------------------------
def bench_conv_step(torch, timer, dev, conv):
    from lowbit.models.image import convnet

    kw = {key: conv[key] for key in ("channels", "fc") if key in conv}
    out = {"batch": conv["batch"], "in_shape": list(conv["in_shape"]), "ms": {}}
    g = torch.Generator(device=dev).manual_seed(1)
    x = torch.randint(0, 256, (conv["batch"], *conv["in_shape"]), generator=g, device=dev).float()
    y = torch.randint(0, 10, (conv["batch"],), generator=g, device=dev)
    for label, quant in (("binary (fake-quantized)", "ste_sign"), ("fp32 twin", "identity")):
        torch.manual_seed(0)
        model = convnet(in_shape=conv["in_shape"], weight_quantizer=quant, act_quantizer=quant, **kw).to(dev)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

        out["ms"][label] = round(timer(step, samples=7) * 1e3, 3)
    out["binary_over_fp32"] = round(out["ms"]["binary (fake-quantized)"] / out["ms"]["fp32 twin"], 3)
    return out


# ---------------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------------
def _markdown(res) -> str:
    lines = [f"# GPU kernels: {res['device']}", ""]
    if res["smoke"]:
        lines += ["**SMOKE RUN under Triton's CPU interpreter: these are not GPU figures.**", ""]
    lines += [f"torch {res['torch']}, triton {res['triton']}, {res['date']}; medians of "
              f"{'CUDA-event' if not res['smoke'] else 'wall-clock'} timings.", ""]
    lines += ["## GEMMs (ms; speedup = contender time / XNOR time)", ""]
    for row in res["gemm"]:
        lines += [f"### {row['case']} (M={row['M']}, N={row['N']}, K={row['K']})", "",
                  f"XNOR tile {row['xnor_tile']} (block m, n, k words, warps); exact: XNOR {row['xnor_exact']}, "
                  f"naive {row['naive_exact']}, bit-serial {row['bitserial_exact']}", "",
                  "| kernel | ms | TOPS | XNOR speedup |", "|---|---:|---:|---:|"]
        for key, v in row["ms"].items():
            lines.append(f"| {key} | {v} | {row['TOPS'].get(key, '')} | {row['speedup_of_xnor'].get(key, '')} |")
        for note in row["notes"]:
            lines.append(f"\n_{note}_")
        lines.append("")
    lines += ["## MNIST MLP inference end to end (ms per batch)", ""]
    for r in res["mlp"]:
        lines += [f"### batch {r['batch']}, {r['layers']}", "", "| forward | ms | binary speedup |", "|---|---:|---:|"]
        for key, v in r["ms"].items():
            lines.append(f"| {key} | {v} | {r['speedup_of_binary'].get(key, '')} |")
        lines += ["", f"predictions agree with the model's: {r['predictions_agree']:.4f} (max |logit diff| "
                  f"{r['max_abs_logit_diff']:.3g}); float-baseline pipeline: {r['baseline_predictions_agree']:.4f}", ""]
    c = res["conv_step"]
    lines += ["## BNN ConvNet, one training step (forward + backward + Adam)", "",
              f"batch {c['batch']}, input {c['in_shape']}: " + ", ".join(f"{k} {v} ms" for k, v in c["ms"].items())
              + f"; binary / fp32 = {c['binary_over_fp32']}", ""]
    lines += ["## PTX", "", f"popc in the launched kernels' PTX: {res['ptx_launched'] or 'n/a (interpreted)'}", "",
              f"ahead-of-time builds: {res['ptx_aot']}", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes through Triton's CPU interpreter (not GPU figures; writes to a temp dir)")
    ap.add_argument("--out", type=Path, help="directory for gpu_gemm.json/.md (default benchmarks/results)")
    ap.add_argument("--samples", type=int, default=7, help="timing samples per measurement (median)")
    args = ap.parse_args(argv)

    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("gpu_gemm.py needs a CUDA GPU (torch.cuda.is_available() is False); use --smoke to check the "
              "script under Triton's CPU interpreter", file=sys.stderr)
        return 2
    from lowbit.kernels import gpu

    if not gpu.available():
        print("gpu_gemm.py needs triton: pip install 'triton>=3.0' (or pip install -e '.[gpu]')", file=sys.stderr)
        return 2
    import triton

    cfg = SMOKE if args.smoke else FULL
    dev = "cpu" if args.smoke else "cuda"
    if args.smoke and not gpu.interpreted():
        print("--smoke needs triton imported under TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    timer = Timer(torch, not args.smoke, args.samples if not args.smoke else 1)
    torch.backends.cuda.matmul.allow_tf32 = False
    t0 = time.time()
    res = {
        "device": torch.cuda.get_device_name(0) if not args.smoke else f"CPU ({platform.processor() or 'interpreter'})",
        "capability": list(torch.cuda.get_device_capability()) if not args.smoke else None,
        "smoke": bool(args.smoke), "torch": torch.__version__, "triton": triton.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine_record(), "gemm": [], "mlp": [],
    }
    m, n, k = cfg["square"]
    cases = [(f"square {m}x{n}x{k}", m, n, k)]
    n_in, hidden, depth, classes = cfg["mlp"]
    for bsz in cfg["batches"]:
        cases += [(f"MLP fc1 {n_in}->{hidden}, batch {bsz}", bsz, hidden, n_in),
                  (f"MLP fc2 {hidden}->{hidden}, batch {bsz}", bsz, hidden, hidden),
                  (f"MLP fc4 {hidden}->{classes}, batch {bsz}", bsz, classes, hidden)]
    for name, m, n, k in cases:
        row = bench_gemm(torch, gpu, timer, dev, name, m, n, k, cfg["naive_budget_s"], args.smoke)
        res["gemm"].append(row)
        print(f"[{time.time() - t0:6.1f}s] {name}: " + ", ".join(f"{key} {v} ms" for key, v in row["ms"].items()),
              flush=True)
    for bsz in cfg["batches"]:
        r = bench_mlp(torch, gpu, timer, dev, cfg["mlp"], bsz)
        res["mlp"].append(r)
        print(f"[{time.time() - t0:6.1f}s] MLP batch {bsz}: {r['ms']} agree {r['predictions_agree']}", flush=True)
    res["conv_step"] = bench_conv_step(torch, timer, dev, cfg["conv"])
    print(f"[{time.time() - t0:6.1f}s] ConvNet step: {res['conv_step']['ms']}", flush=True)
    res["ptx_launched"] = gpu.launched_ptx()
    try:
        res["ptx_aot"] = gpu.ptx_report() if not args.smoke else "n/a (interpreted)"
    except Exception as e:  # the measurement above stands without it
        res["ptx_aot"] = f"error: {type(e).__name__}: {str(e)[:200]}"
    res["seconds"] = round(time.time() - t0, 1)

    out_dir = args.out or (Path(tempfile.mkdtemp(prefix="gpu_gemm_smoke_")) if args.smoke else RESULTS)
    write_results(out_dir / "gpu_gemm", res, _markdown(res))
    print(f"wrote {out_dir / 'gpu_gemm.json'} and gpu_gemm.md in {res['seconds']} s"
          + (" (smoke run: not GPU figures)" if args.smoke else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
